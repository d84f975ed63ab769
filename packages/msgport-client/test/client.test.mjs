// The client against a fake WebSocket: what it writes, frame by frame (no gateway needed).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { IpcClient } from '../dist/client.js'
import { encodeTree, decodeTree } from '../dist/codec.js'

class FakeSocket extends EventTarget {
  readyState = 1
  bufferedAmount = 0
  binaryType = 'blob'
  sent = []
  send(bytes) {
    this.sent.push(decodeTree(bytes))
  }
  close() {
    this.readyState = 3
    this.dispatchEvent(Object.assign(new Event('close'), { code: 1000, reason: '' }))
  }
  /** Delivers a frame from the gateway. */
  deliver(frame) {
    const bytes = encodeTree(frame)
    const data = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)
    this.dispatchEvent(Object.assign(new Event('message'), { data }))
  }
}

const flushed = () => new Promise((resolve) => setTimeout(resolve, 20))
const ids = (frames) => frames.map((f) => (Number(f[0]) === 2 ? f[1].map((g) => g[2].get('d')) : f[2].get('d')))

test('a lone message leaves at once; a burst while the socket is busy leaves as one batch, in order', async () => {
  const ws = new FakeSocket()
  const client = new IpcClient(ws)
  client.send('a', 1)
  assert.equal(ws.sent.length, 1)
  ws.bufferedAmount = 100
  for (let i = 2; i <= 5; i++) client.send('a', i)
  assert.equal(ws.sent.length, 1, 'held while the socket is busy')
  await flushed()
  assert.deepEqual(ids(ws.sent), [1, [2, 3, 4, 5]])
  ws.bufferedAmount = 0
  client.send('a', 6)
  assert.deepEqual(ids(ws.sent), [1, [2, 3, 4, 5], 6])
  client.close()
})

test('ports carried by a message on a port closed here are closed back to the gateway', async () => {
  const ws = new FakeSocket()
  const client = new IpcClient(ws)
  // Port 8 was never given to this client (or closed since): the ports 10 and 12 it carries
  // must not stay open.
  ws.deliver([0, 8, null, [10, 12]])
  await flushed()
  const closes = ws.sent.filter((f) => Number(f[0]) === 1).map((f) => Number(f[1]))
  assert.deepEqual(closes.sort(), [10, 12])
  client.close()
})

test('a batch from the gateway is read frame by frame', async () => {
  const ws = new FakeSocket()
  const client = new IpcClient(ws)
  const got = []
  client.on('x', (e) => got.push(e.data))
  const send = (d) => [0, 0, new Map([['t', 'send'], ['ch', 'x'], ['d', d]]), []]
  ws.deliver([2, [send(1), send(2), send(3)]])
  assert.deepEqual(got, [1, 2, 3])
  client.close()
})

test('a goodbye before the close marks the end as a shutdown; pending invokes fail with main-gone', async () => {
  const ws = new FakeSocket()
  const client = new IpcClient(ws)
  const pending = client.invoke('slow', 1)
  ws.deliver([0, 0, new Map([['t', 'bye']]), []])
  ws.close()
  const info = await client.closed
  assert.equal(info.shutdown, true)
  await assert.rejects(pending, (e) => e.name === 'InvokeError' && e.kind === 'main-gone')
})

test('in Node.js, frames written in the same turn after the first leave as one batch', async () => {
  const ws = new FakeSocket()
  const client = new IpcClient(ws)
  for (let i = 1; i <= 4; i++) client.send('a', i) // bufferedAmount stays 0, as in Node
  assert.equal(ws.sent.length, 1, 'the first at once, the rest held until the turn ends')
  await new Promise((resolve) => setImmediate(resolve))
  assert.deepEqual(ids(ws.sent), [1, [2, 3, 4]])
  await flushed()
  client.send('a', 5) // a new turn: at once
  assert.deepEqual(ids(ws.sent), [1, [2, 3, 4], 5])
  client.close()
})
