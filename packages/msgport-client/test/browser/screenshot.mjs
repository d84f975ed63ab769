// Opens a page in headless Chromium, waits for `selector`, and saves a screenshot.
// Usage: node screenshot.mjs URL SELECTOR OUT.png
import { chromium } from 'playwright-core'

const [url, selector, out] = process.argv.slice(2)
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
try {
  const page = await browser.newPage({ viewport: { width: 760, height: 560 } })
  page.on('console', (m) => console.error(`page: ${m.text()}`))
  await page.goto(url)
  await page.waitForSelector(selector, { timeout: 30000 })
  await page.screenshot({ path: out })
  console.log(`saved ${out}`)
} finally {
  await browser.close()
}
