// Runs run.mjs in Node.js (`node`) or in headless Chromium (`chromium`) and prints its result
// as one JSON line. Used by msgport-bench's `bridge` group:
//   node bench/drive.mjs node|chromium BASE BRIDGE_URL PLAIN_URL REPS N_RTT N_TPUT
import { bench } from './run.mjs'

const [where, base, bridgeUrl, plainUrl, reps, nRtt, nTput] = process.argv.slice(2)
const params = { bridgeUrl, plainUrl, reps: Number(reps), nRtt: Number(nRtt), nTput: Number(nTput) }

if (where === 'node') {
  const { connect } = await import('msgport-client')
  const { WebSocket } = await import('ws')
  console.log(JSON.stringify(await bench({ connect, WS: WebSocket, ...params })))
} else {
  const { launchChromium } = await import('../test/browser/launch.mjs')
  const browser = await launchChromium()
  try {
    const page = await browser.newPage()
    page.on('console', (m) => console.error(`page: ${m.text()}`))
    await page.goto(`${base}/bench.html`)
    const result = await page.evaluate(async (p) => {
      const { connect } = await import('msgport-client')
      const { bench } = await import('/bench/run.mjs')
      return bench({ connect, ...p })
    }, params)
    console.log(JSON.stringify(result))
  } finally {
    await browser.close()
  }
}
