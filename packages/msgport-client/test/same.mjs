// Structured-clone equality for the tests: NaN equals NaN, -0 is not 0, Dates by time, RegExps
// by source and flags, Errors by name, message and stack, binary by bytes, keys in order.
export function same(a, b) {
  if (typeof a !== typeof b) return false
  if (typeof a === 'number') return Object.is(a, b)
  if (a === null || typeof a !== 'object') return a === b
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false
  if (a instanceof Date) return Object.is(a.getTime(), b.getTime())
  if (a instanceof RegExp) return a.source === b.source && a.flags === b.flags
  if (a instanceof Error) return a.name === b.name && a.message === b.message && a.stack === b.stack
  const bytes = (x) =>
    Array.from(new Uint8Array(x instanceof ArrayBuffer ? x : x.buffer, x.byteOffset ?? 0, x.byteLength)).join()
  if (a instanceof ArrayBuffer || ArrayBuffer.isView(a)) return bytes(a) === bytes(b)
  if (a instanceof Map) {
    const ea = [...a], eb = [...b]
    return ea.length === eb.length && ea.every(([k, v], i) => same(k, eb[i][0]) && same(v, eb[i][1]))
  }
  if (a instanceof Set) return same([...a], [...b])
  if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => same(x, b[i]))
  const ka = Object.keys(a), kb = Object.keys(b)
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && same(a[k], b[k]))
}
