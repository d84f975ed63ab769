// The scenarios (scenarios.mjs) from Node.js against a live gateway. The gateway and its Rust
// side are started by crates/msgport-bridge/tests/node_client.rs, which runs this file with
// MSGPORT_URL set (`cargo test -p msgport-bridge --test node_client`); without it, these
// tests are skipped.
import { test } from 'node:test'
import { connect } from 'msgport-client'
import { scenarios } from './scenarios.mjs'

const url = process.env.MSGPORT_URL
const options = { skip: url ? false : 'MSGPORT_URL is not set: run through cargo test' }

test('a wrong token is refused', options, async () => {
  const wrong = new URL(url)
  wrong.searchParams.set('token', 'not-the-token')
  await connect(wrong.toString()).then(
    () => {
      throw new Error('connected with a wrong token')
    },
    () => {},
  )
})

for (const [name, scenario] of Object.entries(scenarios)) {
  test(name, options, async () => {
    const client = await connect(url)
    try {
      await scenario({ client, connect, url })
    } finally {
      client.close()
      await client.closed
    }
  })
}

test('closing the connection closes every port it relays, on the Rust side', options, async () => {
  const client = await connect(url)
  const name = `conn-end-${Date.now()}`
  const got = new Promise((resolve) => client.once('port', resolve))
  client.send('give-port', name)
  const [port] = (await got).ports
  port.postMessage(1)
  await new Promise((resolve) => (port.onmessage = resolve))
  client.close()
  const info = await client.closed
  if (info.code !== 1000 && info.code !== 1005) throw new Error(`closed with ${info.code}`)
  const other = await connect(url)
  try {
    const deadline = Date.now() + 10000
    for (;;) {
      const log = await other.invoke('log')
      if (log.includes(`closed:${name}`)) break
      if (Date.now() > deadline) throw new Error('Rust never saw the close')
      await new Promise((r) => setTimeout(r, 20))
    }
  } finally {
    other.close()
  }
})
