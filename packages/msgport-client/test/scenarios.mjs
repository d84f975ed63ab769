// Scenarios against a live gateway whose Rust side is crates/msgport-bridge/tests/support
// (the "scenario host"). Shared by Node.js (live.test.mjs, under node --test) and the browser
// (test.html, driven by playwright-core from the Rust test crates/msgport-bridge/tests/browser.rs).
// Each scenario is `async (ctx) => void` and throws on failure; ctx = { client, connect, url, token }.

import { InvokeError, DataCloneError, TrackedMessageChannel, NATIVE_CLOSE } from 'msgport-client'
import { same } from './same.mjs'

export function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`)
}

/** The next message on `port`, or fails after `ms`. */
export function next(port, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no message in time')), ms)
    port.addEventListener('message', function once(e) {
      port.removeEventListener('message', once)
      clearTimeout(timer)
      resolve(e.data)
    })
    port.start()
  })
}

/** Resolves when `port` sees `close` (native or delivered by the client). */
export function closed(port, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no close in time')), ms)
    port.addEventListener('close', () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

function nextIpc(client, channel, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nothing on ${channel} in time`)), ms)
    client.once(channel, (event) => {
      clearTimeout(timer)
      resolve(event)
    })
  })
}

/** Waits until main's log (what the Rust side observed) holds `entry`. */
async function logged(client, entry, ms = 10000) {
  const deadline = Date.now() + ms
  for (;;) {
    const log = await client.invoke('log')
    if (log.includes(entry)) return
    if (Date.now() > deadline) throw new Error(`main never logged ${entry}: ${JSON.stringify(log)}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

let labels = 0
const label = (what) => `${what}-${Date.now()}-${labels++}`

/** Every structured-clone kind msgport carries, as a page holds it. */
export function everyKind() {
  return {
    undefined: undefined, null: null, yes: true, no: false,
    int: 42, negative: -7, big: 2 ** 53, fraction: 1.5, negZero: -0, nan: NaN,
    inf: Infinity, ninf: -Infinity,
    bigint: 123456789012345678901234567890n, smallBigint: 1n, zeroBigint: 0n, negBigint: -1n,
    text: 'héllo ☃ 😀', empty: '',
    date: new Date(1700000000123), invalidDate: new Date(NaN),
    regexp: /a+b/gi,
    array: [1, 'two', [3]], object: { nested: { deep: [true] } },
    map: new Map([[1, 'one'], ['k', { v: 2 }], [{}, 3]]), set: new Set([1, 'x']),
    error: new TypeError('bad thing'),
    buffer: new Uint8Array([1, 2, 255]).buffer,
    dataView: new DataView(new Uint8Array([9, 8]).buffer),
    u8: new Uint8Array([1, 255]), u8c: new Uint8ClampedArray([0, 255]), i8: new Int8Array([-1, 1]),
    u16: new Uint16Array([65535]), i16: new Int16Array([-2]), u32: new Uint32Array([4294967295]),
    i32: new Int32Array([-3]), f32: new Float32Array([1.5]), f64: new Float64Array([Math.PI]),
    bu64: new BigUint64Array([2n ** 64n - 1n]), bi64: new BigInt64Array([-(2n ** 63n)]),
  }
}

export const scenarios = {
  async 'invoke round-trips every structured-clone kind'({ client }) {
    const all = everyKind()
    for (const [name, value] of Object.entries(all)) {
      const back = await client.invoke('echo', value)
      check(same(back, value), `${name}: ${String(back)} is not ${String(value)}`)
    }
    const back = await client.invoke('echo', all)
    check(same(back, all), 'all kinds in one object')
  },

  async 'send, and main answers by send'({ client }) {
    const pong = nextIpc(client, 'pong')
    client.send('ping', { n: 1 })
    const event = await pong
    check(same(event.data, { n: 1 }), 'the pong carries the ping')
    check(event.sender === 'main' && event.ports.length === 0, 'event shape')
  },

  async 'invoke errors are typed'({ client }) {
    try {
      await client.invoke('nobody-handles-this', 1)
      check(false, 'no-handler rejects')
    } catch (e) {
      check(e instanceof InvokeError && e.kind === 'no-handler', `no-handler: ${e}`)
      check(e.detail === 'nobody-handles-this', 'the detail names the channel')
    }
    try {
      await client.invoke('fail')
      check(false, 'a failing handler rejects')
    } catch (e) {
      check(e instanceof InvokeError && e.kind === 'handler-failed' && e.detail === 'no luck', `handler-failed: ${e}`)
    }
  },

  async 'what msgport cannot carry throws DataCloneError at the sender'({ client }) {
    const cyclic = { a: 1 }
    cyclic.self = cyclic
    const shared = { s: 1 }
    const bad = [cyclic, [shared, shared], () => 1, Symbol('s'), '\ud800 lone', { [String.fromCharCode(0xdc00)]: 1 }]
    for (const value of bad) {
      let threw = false
      try {
        client.send('ping', value)
      } catch (e) {
        threw = e instanceof DataCloneError
      }
      check(threw, `DataCloneError for ${typeof value}`)
    }
    // The connection still works.
    check((await client.invoke('echo', 5)) === 5, 'still connected')
  },

  async 'a Rust port arrives as a real MessagePort; messages both ways, in order'({ client }) {
    const got = nextIpc(client, 'port')
    client.send('give-port', label('doubler'))
    const event = await got
    const [port] = event.ports
    check(port instanceof MessagePort, 'a MessagePort')
    port.postMessage(21)
    check((await next(port)) === 42, 'doubled')
    // 10,000 ordered messages.
    const n = 10000
    const all = new Promise((resolve, reject) => {
      let expect = 0
      const timer = setTimeout(() => reject(new Error(`only ${expect} of ${n} arrived`)), 60000)
      port.onmessage = (e) => {
        if (e.data !== expect * 2) {
          clearTimeout(timer)
          reject(new Error(`message ${expect} was ${e.data}`))
        }
        if (++expect === n) {
          clearTimeout(timer)
          resolve()
        }
      }
    })
    for (let i = 0; i < n; i++) port.postMessage(i)
    await all
    port.onmessage = null
    port.close()
  },

  async 'reply streams: one request, a stream of replies, ended by close'({ client }) {
    const { port1, port2 } = new TrackedMessageChannel()
    client.postMessage('take-port', label('stream'), [port2])
    const received = []
    const ended = closed(port1)
    port1.onmessage = (e) => received.push(e.data)
    port1.postMessage({ stream: 5 })
    await ended
    check(same(received, [0, 1, 2, 3, 4]), `the stream: ${received}`)
  },

  async 'a page closing a Rust port is seen by Rust'({ client }) {
    const name = label('closed-by-page')
    const got = nextIpc(client, 'port')
    client.send('give-port', name)
    const [port] = (await got).ports
    port.postMessage(1)
    check((await next(port)) === 2, 'live')
    port.close()
    await logged(client, `closed:${name}`)
  },

  async 'a page port given to Rust: Rust closing it is seen by the page'({ client }) {
    const { port1, port2 } = new TrackedMessageChannel()
    client.postMessage('take-port', label('closed-by-rust'), [port2])
    const ended = closed(port1)
    port1.start()
    port1.postMessage('close')
    await ended
  },

  async 'a page port given to Rust, closed by the page'({ client }) {
    const name = label('page-port-closed')
    const { port1, port2 } = new TrackedMessageChannel()
    client.postMessage('take-port', name, [port2])
    port1.postMessage('hi')
    check(same(await next(port1), { echo: 'hi' }), 'echoed')
    port1.close()
    await logged(client, `closed:${name}`)
  },

  async 'a port comes back: Rust returns a page port to the page'({ client }) {
    const { port1, port2 } = new TrackedMessageChannel()
    const back = nextIpc(client, 'returned')
    client.postMessage('return-port', null, [port2])
    const [returned] = (await back).ports
    returned.postMessage('round trip')
    check((await next(port1)) === 'round trip', 'the port that came back is entangled with port1')
    port1.close()
    returned.close()
  },

  async 'a port forwarded to a child process: page and child talk, main off the path'({ client }) {
    const { port1, port2 } = new TrackedMessageChannel()
    client.postMessage('to-child', label('child'), [port2])
    port1.postMessage('hello')
    check((await next(port1)) === 'child says hello', 'the child answers')
    port1.postMessage('again')
    check((await next(port1)) === 'child says again', 'twice')
    port1.close()
  },

  async 'the death of the child process holding a page port is seen by the page'({ client }) {
    const { port1, port2 } = new TrackedMessageChannel()
    client.postMessage('to-child', label('child-dies'), [port2])
    port1.postMessage('hello')
    check((await next(port1)) === 'child says hello', 'the child answers')
    const ended = closed(port1)
    client.send('kill-child')
    await ended
  },

  async 'ports inside messages on ports (two hops)'({ client }) {
    const got = nextIpc(client, 'port')
    client.send('give-port', label('hops'))
    const [port] = (await got).ports
    port.postMessage('nest')
    const data = await next(port)
    const inner = data.port
    check(inner instanceof MessagePort, 'a port inside the data')
    inner.postMessage(4)
    check((await next(inner)) === 8, 'the inner port doubles too')
    inner.close()
    port.close()
  },

  async 'the native close event is used where it exists'() {
    const supported = 'onclose' in MessagePort.prototype
    check(NATIVE_CLOSE === (supported || typeof process !== 'undefined'), `NATIVE_CLOSE is ${NATIVE_CLOSE}`)
  },
}

/** Runs every scenario; returns [{name, ok, error}]. */
export async function runAll(ctx, only) {
  const results = []
  for (const [name, f] of Object.entries(scenarios)) {
    if (only && !only.includes(name)) continue
    try {
      await f(ctx)
      results.push({ name, ok: true })
    } catch (e) {
      results.push({ name, ok: false, error: String(e && e.stack || e) })
    }
  }
  return results
}
