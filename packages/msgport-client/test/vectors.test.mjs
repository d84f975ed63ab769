// The shared vectors (testdata/wire-vectors.json) through the client's codec: every vector
// decodes to its value; those marked "both" encode to exactly their bytes.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { encode, decode } from '../dist/codec.js'
import { same } from './same.mjs'

const file = JSON.parse(readFileSync(new URL('../../../testdata/wire-vectors.json', import.meta.url)))

const hex = (s) => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16))
const toHex = (bytes) => Buffer.from(bytes).toString('hex')
const KINDS = {
  Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array,
  Float32Array, Float64Array, BigInt64Array, BigUint64Array,
}
const PORT = (i) => ({ port: i })

export function parse(j, ports = []) {
  if (j === null || typeof j !== 'object') return j
  if (Array.isArray(j)) return j.map((x) => parse(x, ports))
  const [[key, arg]] = Object.entries(j)
  switch (key) {
    case 'undefined': return undefined
    case 'number': return { NaN: NaN, '-0': -0, Infinity: Infinity, '-Infinity': -Infinity }[arg] ?? arg
    case 'bigint': return BigInt(arg)
    case 'object': {
      const o = {}
      for (const [k, v] of arg) Object.defineProperty(o, k, { value: parse(v, ports), enumerable: true, writable: true, configurable: true })
      return o
    }
    case 'map': return new Map(arg.map(([k, v]) => [parse(k, ports), parse(v, ports)]))
    case 'set': return new Set(arg.map((x) => parse(x, ports)))
    case 'date': return new Date(arg === 'NaN' ? NaN : arg)
    case 'regexp': return new RegExp(arg[0], arg[1])
    case 'error': {
      const E = globalThis[arg[0]] ?? Error
      const e = new E(arg[1])
      if (arg[2] === null) delete e.stack
      else Object.defineProperty(e, 'stack', { value: arg[2], writable: true, configurable: true })
      return e
    }
    case 'binary': {
      const bytes = hex(arg[1]).buffer
      if (arg[0] === 'ArrayBuffer') return bytes
      if (arg[0] === 'DataView') return new DataView(bytes)
      return new KINDS[arg[0]](bytes)
    }
    case 'port': return ports[arg] ?? PORT(arg)
  }
  throw new Error(`unknown notation ${key}`)
}

for (const v of file.vectors) {
  test(`vector: ${v.name}`, () => {
    const channel = new MessageChannel()
    const ports = [channel.port1]
    const value = parse(v.value, ports)
    const bytes = hex(v.cbor)
    const decoded = decode(bytes, ports)
    assert.ok(same(decoded, value), `decoded ${String(decoded)} (${typeof decoded}), want ${String(value)}`)
    if (v.direction === 'both') {
      assert.equal(toHex(encode(value, ports)), v.cbor)
    }
    channel.port1.close()
  })
}

test('DataCloneError names where the value is', () => {
  assert.throws(() => encode({ a: [1, { b() {} }] }), (e) => e.name === 'DataCloneError' && e.message.startsWith('data.a[1].b:'))
  const shared = {}
  assert.throws(() => encode([shared, { x: shared }]), (e) => e.name === 'DataCloneError' && e.message.startsWith('data[1].x:'))
})
