// Debian's Chromium under playwright-core, headless, loopback only: the flags keep it from
// reaching for the network at start (this machine's network is closed).
import { chromium } from 'playwright-core'

export function launchChromium({ closeEvent = false } = {}) {
  const args = [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ]
  if (closeEvent) args.push('--enable-blink-features=MessagePortCloseEvent')
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args })
}
