// The bridge benchmark's measuring side, the same in Node.js and in a page: 64 B struct
// messages (msgport-bench's `Small`: {seq, rest: [7 numbers]}) through the bridge (a real
// MessagePort relayed to a Rust port, which decodes each message as its typed struct) and through
// a plain WebSocket (JSON, as web code writes it; the Rust end decodes the same struct with
// serde_json). Contenders run interleaved, rep by rep.

const small = (i) => ({ seq: i, rest: [i, i, i, i, i, i, i] })

export async function bench({ connect, WS, bridgeUrl, plainUrl, reps, nRtt, nTput }) {
  const ipc = await connect(bridgeUrl, WS ? { WebSocket: WS } : {})
  const port = async (mode, n) => {
    const got = new Promise((resolve) => ipc.once('bench-port', resolve))
    ipc.send('bench-port', { mode, n })
    return (await got).ports[0]
  }
  const open = (mode, n) =>
    new Promise((resolve, reject) => {
      const ws = new (WS ?? WebSocket)(`${plainUrl}?mode=${mode}&n=${n}`)
      ws.onopen = () => resolve(ws)
      ws.onerror = reject
    })
  const echo = await port('echo', 0)
  const plainEcho = await open('echo', 0)

  const bridgeRtt = async (n) => {
    let resolve
    echo.onmessage = (e) => resolve(e.data)
    const t0 = performance.now()
    for (let i = 0; i < n; i++) {
      const reply = new Promise((r) => (resolve = r))
      echo.postMessage(small(i))
      const back = await reply
      if (back.seq !== i) throw new Error('out of order')
    }
    return ((performance.now() - t0) * 1000) / n
  }
  const plainRtt = async (n) => {
    let resolve
    plainEcho.onmessage = (e) => resolve(JSON.parse(e.data))
    const t0 = performance.now()
    for (let i = 0; i < n; i++) {
      const reply = new Promise((r) => (resolve = r))
      plainEcho.send(JSON.stringify(small(i)))
      const back = await reply
      if (back.seq !== i) throw new Error('out of order')
    }
    return ((performance.now() - t0) * 1000) / n
  }
  const bridgeTput = async (n) => {
    const sink = await port('sink', n)
    const done = new Promise((r) => (sink.onmessage = r))
    const t0 = performance.now()
    for (let i = 0; i < n; i++) sink.postMessage(small(i))
    await done
    const rate = n / ((performance.now() - t0) / 1000)
    sink.close()
    return rate
  }
  const plainTput = async (n) => {
    const ws = await open('sink', n)
    const done = new Promise((r) => (ws.onmessage = r))
    const t0 = performance.now()
    for (let i = 0; i < n; i++) ws.send(JSON.stringify(small(i)))
    await done
    const rate = n / ((performance.now() - t0) / 1000)
    ws.close()
    return rate
  }

  const out = { bridgeRtt: [], plainRtt: [], bridgeTput: [], plainTput: [] }
  // Warm-up, then interleaved reps.
  await bridgeRtt(nRtt / 10)
  await plainRtt(nRtt / 10)
  await bridgeTput(nTput / 10)
  await plainTput(nTput / 10)
  for (let r = 0; r < reps; r++) {
    out.bridgeRtt.push(await bridgeRtt(nRtt))
    out.plainRtt.push(await plainRtt(nRtt))
    out.bridgeTput.push(await bridgeTput(nTput))
    out.plainTput.push(await plainTput(nTput))
  }
  echo.close()
  plainEcho.close()
  ipc.close()
  return out
}
