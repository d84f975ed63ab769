// Opens a page in headless Chromium, waits for `selector`, and saves a screenshot.
// Usage: node screenshot.mjs URL SELECTOR OUT.png
import { launchChromium } from './launch.mjs'

const [url, selector, out] = process.argv.slice(2)
const browser = await launchChromium()
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
