// Drives Debian's Chromium (headless, via playwright-core) through the browser scenarios and
// prints one JSON line per result: {"name", "ok", "error"?}. Run by
// crates/msgport-bridge/tests/browser.rs, which serves the pages and the gateway.
// Environment: MSGPORT_BASE (the page server), MSGPORT_URL (gateway URL with token),
// MSGPORT_FOREIGN (a page of another origin), MSGPORT_CLOSE_EVENT=1 to enable Chromium's
// MessagePort close event, CHROMIUM (default /usr/bin/chromium).
import { launchChromium } from './launch.mjs'
import { connect } from 'msgport-client'

const base = process.env.MSGPORT_BASE
const url = process.env.MSGPORT_URL
const closeEvent = process.env.MSGPORT_CLOSE_EVENT === '1'

const report = (r) => console.log(JSON.stringify(r))
const browser = await launchChromium({ closeEvent })
const context = await browser.newContext()
const page = () => context.newPage()
const q = (params) => new URLSearchParams(params).toString()

async function waitLog(entry, ms = 10000) {
  const client = await connect(url)
  try {
    const deadline = Date.now() + ms
    for (;;) {
      if ((await client.invoke('log')).includes(entry)) return
      if (Date.now() > deadline) throw new Error(`main never logged ${entry}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  } finally {
    client.close()
  }
}

async function scenario(name, f) {
  try {
    await f()
    report({ name, ok: true })
  } catch (e) {
    report({ name, ok: false, error: String(e && e.stack || e) })
  }
}

try {
  // The shared scenarios, in a page.
  const p = await page()
  p.on('console', (m) => m.type() === 'error' && console.error(`page: ${m.text()}`))
  await p.goto(`${base}/test/browser/page.html?${q({ ws: url })}`)
  const native = await p.evaluate(() => 'onclose' in MessagePort.prototype)
  report({ name: `native close event is ${closeEvent ? 'on' : 'off'}`, ok: native === closeEvent })
  for (const r of await p.evaluate(() => window.results)) report(r)
  await p.close()

  await scenario('a tab closed: Rust sees its ports close', async () => {
    const label = `tab-${Date.now()}`
    const tab = await page()
    await tab.goto(`${base}/test/browser/hold.html?${q({ ws: url, label })}`)
    if ((await tab.evaluate(() => window.ready)) !== 2) throw new Error('the port did not answer')
    await tab.close()
    await waitLog(`closed:${label}`)
  })

  await scenario('a dropped WebSocket: Rust sees its ports close', async () => {
    const label = `socket-${Date.now()}`
    const tab = await page()
    await tab.goto(`${base}/test/browser/hold.html?${q({ ws: url, label })}`)
    await tab.evaluate(() => window.ready)
    // The page's connection ends (as when the network goes): every port it relays closes.
    const info = await tab.evaluate(async () => {
      window.client.close()
      return window.client.closed
    })
    if (info.code !== 1000) throw new Error(`closed with ${info.code}`)
    await waitLog(`closed:${label}`)
    await tab.close()
  })

  await scenario('a page of another origin is refused, even with the token', async () => {
    const tab = await page()
    await tab.goto(`${process.env.MSGPORT_FOREIGN}?${q({ ws: url })}`)
    const outcome = await tab.evaluate(() => window.outcome)
    if (outcome !== 'refused') throw new Error(outcome)
    await tab.close()
  })

  await scenario('a wrong token is refused', async () => {
    const tab = await page()
    await tab.goto(`${base}/test/browser/page.html?${q({ ws: url.replace(/token=[^&]*/, 'token=wrong') })}`)
    const outcome = await tab.evaluate(() => window.results.then(() => 'opened', (e) => String(e)))
    if (!/refused/.test(outcome)) throw new Error(outcome)
    await tab.close()
  })
} finally {
  await browser.close()
}
