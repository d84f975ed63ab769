// The structured-clone data model <-> msgport's CBOR (docs/wire-format.md), on cbor-x.
//
// cbor-x writes and reads the bytes; this module decides what each JavaScript value becomes.
// Before encoding, a value is turned into a tree of what cbor-x writes exactly as msgport
// does (tags as `Tag`, byte strings as `Uint8Array`, integers past 32 bits as `bigint`, -0 as
// a forced double); after decoding, msgport's tags are turned back into JavaScript values.

import { Decoder, Encoder, Tag, addExtension } from 'cbor-x'

/** The web's `DataCloneError`: a value msgport's data model cannot carry. */
export class DataCloneError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'DataCloneError'
  }
}

/** Bytes that are not a message of msgport's data model (the web's `messageerror`). */
export class MessageDecodeError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'MessageDecodeError'
  }
}

export const TAG_DATE = 1
export const TAG_EXTENDED_TIME = 1001
export const TAG_POS_BIGNUM = 2
export const TAG_NEG_BIGNUM = 3
export const TAG_SET = 258
export const TAG_MAP = 259
export const TAG_REGEXP = 21066
export const TAG_PORT = 0x6d700001
export const TAG_ERROR = 0x6d700002
export const TAG_DATAVIEW = 0x6d700003
const TAG_SELF_DESCRIBED = 55799

type TypedArray =
  | Uint8Array | Uint8ClampedArray | Int8Array | Uint16Array | Int16Array | Uint32Array
  | Int32Array | Float32Array | Float64Array | BigUint64Array | BigInt64Array
type TypedArrayClass = { new (buffer: ArrayBuffer): TypedArray; BYTES_PER_ELEMENT: number }

/** RFC 8746 little-endian tags, as msgport writes them. */
const TYPED: Array<[number, TypedArrayClass]> = [
  [64, Uint8Array], [68, Uint8ClampedArray], [72, Int8Array], [69, Uint16Array],
  [70, Uint32Array], [71, BigUint64Array], [77, Int16Array], [78, Int32Array],
  [79, BigInt64Array], [85, Float32Array], [86, Float64Array],
]
/** The big-endian tags decoders also accept (bytes swapped on reading). */
const TYPED_BIG_ENDIAN: Array<[number, TypedArrayClass]> = [
  [65, Uint16Array], [66, Uint32Array], [67, BigUint64Array], [73, Int16Array],
  [74, Int32Array], [75, BigInt64Array], [81, Float32Array], [82, Float64Array],
]
const TAG_OF_TYPED = new Map<Function, number>(TYPED.map(([tag, cls]) => [cls, tag]))
const TYPED_OF_TAG = new Map<number, TypedArrayClass>(TYPED)
const TYPED_BE_OF_TAG = new Map<number, TypedArrayClass>(TYPED_BIG_ENDIAN)

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1
const TWO_53 = 2 ** 53
const ERROR_NAMES = new Set([
  'Error', 'EvalError', 'RangeError', 'ReferenceError', 'SyntaxError', 'TypeError', 'URIError',
])

/** A number cbor-x must write as a double (-0): it has no other way to keep the sign. */
class Double {
  constructor(readonly value: number) {}
}

/** A tag read from the wire, before it becomes a JavaScript value. */
class Tagged {
  constructor(readonly tag: number, readonly value: unknown) {}
}

let extensionsInstalled = false
function installExtensions(): void {
  if (extensionsInstalled) return
  extensionsInstalled = true
  addExtension({
    Class: Double,
    // No tag: the extension writes the double itself.
    getTag: () => undefined,
    encode(this: { alwaysUseFloat?: boolean }, d: Double, encode: (v: unknown) => void) {
      const before = this.alwaysUseFloat
      this.alwaysUseFloat = true
      try {
        encode(d.value)
      } finally {
        this.alwaysUseFloat = before
      }
    },
  } as never)
  const tags = [
    TAG_DATE, TAG_EXTENDED_TIME, TAG_POS_BIGNUM, TAG_NEG_BIGNUM, TAG_SET, TAG_MAP, TAG_REGEXP,
    TAG_PORT, TAG_ERROR, TAG_DATAVIEW, TAG_SELF_DESCRIBED,
    ...TYPED.map(([t]) => t), ...TYPED_BIG_ENDIAN.map(([t]) => t),
  ]
  for (const tag of tags) {
    addExtension({ tag, decode: (value: unknown) => new Tagged(tag, value) } as never)
  }
}

function encoder(): Encoder {
  installExtensions()
  return new Encoder({
    useRecords: false,
    mapsAsObjects: false,
    useTag259ForMaps: false,
    tagUint8Array: false,
    structuredClone: false,
    pack: false,
    variableMapSize: true,
  } as never)
}

function decoder(): Decoder {
  installExtensions()
  return new Decoder({ useRecords: false, mapsAsObjects: false, structuredClone: false } as never)
}

let sharedEncoder: Encoder | undefined
let sharedDecoder: Decoder | undefined

function bytesOf(view: ArrayBufferView): Uint8Array {
  // A copy: the message must not see later writes to the sender's buffer.
  return new Uint8Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength))
}

function bigintMagnitude(n: bigint): Uint8Array {
  const hex = n.toString(16)
  const even = hex.length % 2 ? '0' + hex : hex
  const out = new Uint8Array(n === 0n ? 0 : even.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = parseInt(even.slice(2 * i, 2 * i + 2), 16)
  return out
}

function numberTree(n: number): unknown {
  if (Object.is(n, -0)) return new Double(n)
  if (Number.isInteger(n) && Math.abs(n) <= TWO_53) {
    // cbor-x writes integers past 32 bits as doubles; msgport as integers.
    return n >= 2 ** 32 || n < -(2 ** 32) ? BigInt(n) : n
  }
  return n
}

/** Date: tag 1 over seconds when they carry the milliseconds exactly, else tag 1001. */
function dateTree(ms: number): unknown {
  const secs = ms / 1000
  if (Number.isNaN(ms) || roundHalfAway(secs * 1000) === ms) {
    return new Tag(numberTree(secs), TAG_DATE)
  }
  const whole = Math.floor(ms / 1000)
  const millis = ms - whole * 1000
  return new Tag(new Map<number, unknown>([[1, numberTree(whole)], [-3, numberTree(millis)]]), TAG_EXTENDED_TIME)
}

/** Rounds half away from zero, as Rust's `f64::round` (JavaScript's Math.round rounds half up). */
export function roundHalfAway(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x)
}

function isPort(x: unknown): x is MessagePort {
  return typeof MessagePort !== 'undefined' && x instanceof MessagePort
}

/**
 * Turns `value` into the tree cbor-x writes as msgport's CBOR. Ports inside the data must be
 * in `transfer` (they become port slots). Throws `DataCloneError` for what msgport cannot
 * carry: functions, symbols, cycles and shared references, lone surrogates, unknown objects.
 */
export function toTree(value: unknown, transfer: readonly unknown[] = []): unknown {
  const onPath = new Set<object>()
  const seen = new Set<object>()
  // The path to the value being walked, made into text only for an error message.
  const path: Array<string | number> = []
  const at = (): string =>
    path.reduce<string>((text, p) => (typeof p === 'number' ? `${text}[${p}]` : `${text}${p}`), 'data')
  const child = (v: unknown, step: string | number): unknown => {
    path.push(step)
    const out = walk(v)
    path.pop()
    return out
  }
  const walk = (v: unknown): unknown => {
    switch (typeof v) {
      case 'undefined':
      case 'boolean':
        return v
      case 'number':
        return numberTree(v)
      case 'bigint':
        return v < 0n
          ? new Tag(bigintMagnitude(-1n - v), TAG_NEG_BIGNUM)
          : new Tag(bigintMagnitude(v), TAG_POS_BIGNUM)
      case 'string':
        if (!(v as string & { isWellFormed(): boolean }).isWellFormed()) {
          throw new DataCloneError(`${at()}: a string with a lone surrogate cannot be sent`)
        }
        return v
      case 'symbol':
      case 'function':
        throw new DataCloneError(`${at()}: a ${typeof v} cannot be cloned`)
    }
    if (v === null) return null
    const obj = v as object
    if (onPath.has(obj)) throw new DataCloneError(`${at()}: a cycle cannot be sent`)
    if (seen.has(obj)) {
      throw new DataCloneError(`${at()}: an object referenced twice cannot be sent (msgport's data model is a tree)`)
    }
    if (isPort(obj)) {
      const i = transfer.indexOf(obj)
      if (i < 0) throw new DataCloneError(`${at()}: a MessagePort must be in the transfer list`)
      seen.add(obj)
      return new Tag(i, TAG_PORT)
    }
    seen.add(obj)
    onPath.add(obj)
    try {
      return walkObject(obj)
    } finally {
      onPath.delete(obj)
    }
  }
  const walkObject = (obj: object): unknown => {
    if (Array.isArray(obj)) {
      const out = new Array(obj.length)
      // Holes are not represented: they travel as undefined.
      for (let i = 0; i < obj.length; i++) out[i] = child(obj[i], i)
      return out
    }
    if (obj instanceof Date) return dateTree(obj.getTime())
    if (obj instanceof RegExp) return new Tag([obj.source, obj.flags], TAG_REGEXP)
    if (obj instanceof Map) {
      const out = new Map()
      for (const [k, v] of obj) out.set(child(k, '.keys()'), child(v, '.get(...)'))
      return new Tag(out, TAG_MAP)
    }
    if (obj instanceof Set) {
      return new Tag([...obj].map((x) => child(x, '.values()')), TAG_SET)
    }
    if (obj instanceof Error) {
      const name = ERROR_NAMES.has(obj.name) ? obj.name : 'Error'
      const stack = typeof obj.stack === 'string' ? child(obj.stack, '.stack') : null
      return new Tag([name, child(String(obj.message), '.message'), stack], TAG_ERROR)
    }
    if (obj instanceof ArrayBuffer) return new Uint8Array(obj.slice(0))
    if (obj instanceof DataView) return new Tag(bytesOf(obj), TAG_DATAVIEW)
    if (ArrayBuffer.isView(obj)) {
      const tag = TAG_OF_TYPED.get(obj.constructor)
      if (tag === undefined) {
        throw new DataCloneError(`${at()}: ${obj.constructor.name} cannot be cloned`)
      }
      if (!LITTLE_ENDIAN) throw new DataCloneError('typed arrays need a little-endian host')
      return new Tag(bytesOf(obj), tag)
    }
    if (obj instanceof Number || obj instanceof String || obj instanceof Boolean) {
      return walk(obj.valueOf())
    }
    const proto = Object.getPrototypeOf(obj)
    if (proto !== Object.prototype && proto !== null) {
      const name = (obj.constructor && obj.constructor.name) || 'object'
      // Blob, File, ImageData, class instances...: not in msgport's data model.
      if (typeof (obj as { then?: unknown }).then === 'function' || isPlatformObject(obj)) {
        throw new DataCloneError(`${at()}: ${name} cannot be cloned`)
      }
    }
    // A plain object (or a class instance: its own enumerable string keys, as structured clone).
    const out = new Map<string, unknown>()
    for (const key of Object.keys(obj)) {
      if (!(key as string & { isWellFormed(): boolean }).isWellFormed()) {
        throw new DataCloneError(`${at()}: a key with a lone surrogate cannot be sent`)
      }
      out.set(key, child((obj as Record<string, unknown>)[key], `.${key}`))
    }
    // A Map, not an object: cbor-x looks at an object's `constructor`, which may be data.
    return out
  }
  return walk(value)
}

function isPlatformObject(obj: object): boolean {
  const tag = Object.prototype.toString.call(obj)
  return tag !== '[object Object]'
}

/** Encodes a value (with its transfer list) as msgport's CBOR. */
export function encode(value: unknown, transfer: readonly unknown[] = []): Uint8Array {
  return encodeTree(toTree(value, transfer))
}

/** Encodes a tree made by `toTree` (or of plain numbers, strings, arrays). */
export function encodeTree(tree: unknown): Uint8Array {
  sharedEncoder ??= encoder()
  return sharedEncoder.encode(tree)
}

/** Decodes msgport's CBOR into a JavaScript value; port slots index `ports`. */
export function decode(bytes: Uint8Array, ports: readonly unknown[] = []): unknown {
  return fromTree(decodeTree(bytes), ports)
}

/** cbor-x's reading of the bytes, msgport's tags left as they are. */
export function decodeTree(bytes: Uint8Array): unknown {
  sharedDecoder ??= decoder()
  try {
    return sharedDecoder.decode(bytes)
  } catch (e) {
    throw new MessageDecodeError(`not CBOR: ${(e as Error).message}`)
  }
}

const MAX_DEPTH = 256

/** Turns a tree cbor-x read into the JavaScript value msgport's data model says. */
export function fromTree(tree: unknown, ports: readonly unknown[] = []): unknown {
  const bad = (why: string): never => {
    throw new MessageDecodeError(why)
  }
  const number = (v: unknown): number => {
    if (typeof v === 'number') return v
    if (typeof v === 'bigint') return Number(v)
    return bad('expected a number')
  }
  const text = (v: unknown): string => (typeof v === 'string' ? v : bad('expected a text string'))
  const walk = (v: unknown, depth: number): unknown => {
    if (depth > MAX_DEPTH) bad('nested deeper than 256')
    switch (typeof v) {
      case 'undefined':
      case 'boolean':
      case 'number':
        return v
      case 'string':
        return v
      case 'bigint':
        // A plain integer: a number within ±2^53 (inclusive), else a bigint.
        return v <= BigInt(TWO_53) && v >= -BigInt(TWO_53) ? Number(v) : v
    }
    if (v === null) return null
    if (v instanceof Uint8Array) return v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength)
    if (Array.isArray(v)) return v.map((x) => walk(x, depth + 1))
    if (v instanceof Map) {
      if ([...v.keys()].every((k) => typeof k === 'string')) {
        const out: Record<string, unknown> = {}
        for (const [k, x] of v) {
          // defineProperty: a key named __proto__ is data, never the prototype.
          Object.defineProperty(out, k as string, {
            value: walk(x, depth + 1), enumerable: true, writable: true, configurable: true,
          })
        }
        return out
      }
      return new Map([...v].map(([k, x]) => [walk(k, depth + 1), walk(x, depth + 1)]))
    }
    if (v instanceof Tagged) return tagged(v, depth)
    if (v instanceof Tag) return bad(`unknown tag ${v.tag}`)
    return bad(`unexpected ${Object.prototype.toString.call(v)}`)
  }
  const bytes = (v: unknown): Uint8Array => (v instanceof Uint8Array ? v : bad('expected a byte string'))
  const tagged = (t: Tagged, depth: number): unknown => {
    const v = t.value
    switch (t.tag) {
      case TAG_SELF_DESCRIBED:
        return walk(v, depth + 1)
      case TAG_DATE: {
        const secs = number(v)
        return new Date(roundHalfAway(secs * 1000))
      }
      case TAG_EXTENDED_TIME: {
        if (!(v instanceof Map)) return bad('extended time must be {1: seconds, -3: milliseconds}')
        let secs: number | undefined
        let millis = 0
        for (const [k, x] of v) {
          const key = typeof k === 'bigint' ? Number(k) : k
          if (key === 1) secs = number(x)
          else if (key === -3) millis = number(x)
          else bad('extended time must be {1: seconds, -3: milliseconds}')
        }
        if (secs === undefined) bad('extended time without seconds')
        return new Date(secs! * 1000 + millis)
      }
      case TAG_POS_BIGNUM:
      case TAG_NEG_BIGNUM: {
        let n = 0n
        for (const b of bytes(v)) n = (n << 8n) | BigInt(b)
        return t.tag === TAG_POS_BIGNUM ? n : -1n - n
      }
      case TAG_SET: {
        if (!Array.isArray(v)) return bad('a set must be an array')
        return new Set(v.map((x) => walk(x, depth + 1)))
      }
      case TAG_MAP: {
        if (!(v instanceof Map)) return bad('tag 259 must be over a map')
        return new Map([...v].map(([k, x]) => [walk(k, depth + 1), walk(x, depth + 1)]))
      }
      case TAG_REGEXP: {
        if (!Array.isArray(v) || v.length !== 2) return bad('a RegExp must be [source, flags]')
        try {
          return new RegExp(text(v[0]), text(v[1]))
        } catch (e) {
          return bad(`a RegExp this engine refuses: ${(e as Error).message}`)
        }
      }
      case TAG_ERROR: {
        if (!Array.isArray(v) || v.length !== 3) return bad('an Error must be [name, message, stack]')
        const name = text(v[0])
        const Class = ERROR_NAMES.has(name)
          ? ((globalThis as unknown as Record<string, ErrorConstructor>)[name] ?? Error)
          : Error
        const error = new Class(text(v[1]))
        if (!ERROR_NAMES.has(name)) error.name = name
        if (v[2] === null || v[2] === undefined) {
          delete (error as { stack?: string }).stack
        } else {
          Object.defineProperty(error, 'stack', {
            value: text(v[2]), writable: true, configurable: true, enumerable: false,
          })
        }
        return error
      }
      case TAG_PORT: {
        const i = number(v)
        if (!Number.isInteger(i) || i < 0 || i >= ports.length) return bad(`port slot ${i} past the transfer list`)
        return ports[i]
      }
      case TAG_DATAVIEW: {
        const b = bytes(v)
        return new DataView(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength))
      }
    }
    const little = TYPED_OF_TAG.get(t.tag)
    const big = TYPED_BE_OF_TAG.get(t.tag)
    const Class = little ?? big
    if (Class) {
      const b = bytes(v)
      const size = Class.BYTES_PER_ELEMENT
      if (b.byteLength % size) return bad(`a ${Class.name} of ${b.byteLength} bytes`)
      const copy = b.slice()
      if (big !== undefined || !LITTLE_ENDIAN) {
        for (let i = 0; i < copy.length; i += size) copy.subarray(i, i + size).reverse()
      }
      return new Class(copy.buffer)
    }
    return bad(`unknown tag ${t.tag}`)
  }
  return walk(tree, 0)
}
