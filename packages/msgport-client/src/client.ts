// The connection to a msgport-bridge gateway: an ipcRenderer-shaped object, and the relays
// that make each port the gateway knows a real MessagePort here.
//
// Protocol (one CBOR item per binary WebSocket message, crates/msgport-bridge/src/frame.rs):
//   [0, port, data, [id, ...]]   a message on `port`, transferring the ports named by the ids
//   [1, port]                    `port` is closed
// Port 0 carries msgport-ipc's envelopes. The gateway names ports 2, 4, 6...; this client
// names the ports it sends 1, 3, 5...

import { DataCloneError, MessageDecodeError, decodeTree, encodeTree, fromTree, toTree } from './codec.js'

/** Why an `invoke` failed: msgport-ipc's `InvokeError`, field for field. */
export class InvokeError extends Error {
  /** `no-handler`, `handler-failed`, `handler-panicked`, `busy`, `main-gone`, `post`, `data`, `timeout`. */
  readonly kind: string
  /** What the error carries: the channel of `no-handler`, the handler's own message... */
  readonly detail: string | undefined
  constructor(kind: string, message: string, detail?: string) {
    super(message)
    this.name = 'InvokeError'
    this.kind = kind
    this.detail = detail
  }
}

/** A message from main on a named channel. */
export interface IpcRendererEvent {
  /** The channel it was sent on. */
  channel: string
  /** The data, as structured clone gives it. */
  data: unknown
  /** The ports main transferred with it (`post_message`): real MessagePorts. */
  ports: MessagePort[]
  /** Who sent it: always main (a page only ever hears from its gateway). */
  sender: 'main'
}

export type IpcListener = (event: IpcRendererEvent) => void

/** How the connection ended. */
export interface ClosedInfo {
  /** The WebSocket close code (1000 normal, 1002 protocol error, 1008 policy, 1006 lost). */
  code: number
  /** The reason the gateway gave, if any. */
  reason: string
  /** Main said goodbye first (`IpcMain::shutdown`): the end was on purpose. */
  shutdown: boolean
}

export interface ConnectOptions {
  /** The gateway's per-launch token (`Bridge::token`), sent as the `token` query parameter. */
  token?: string
  /** A WebSocket class (default: the global one; in Node.js 20, the `ws` package). */
  WebSocket?: unknown
  /** Milliseconds to wait for the connection to open (default 10,000). */
  timeout?: number
}

/** Messages waiting for a channel's first listener (then dropped, as main does). */
const QUEUED_PER_CHANNEL = 1024

const IS_NODE = !!(globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node
/** Node.js's setImmediate (a check-phase callback after the turn's I/O), where it exists. */
const nodeSetImmediate = (globalThis as { setImmediate?: (f: () => void) => unknown }).setImmediate

/** Whether MessagePorts here fire `close` themselves (Node.js; Chromium with MessagePortCloseEvent). */
export const NATIVE_CLOSE =
  IS_NODE || (typeof MessagePort !== 'undefined' && 'onclose' in MessagePort.prototype)

/** Ends of channels made with this package's `MessageChannel`: each end's partner. */
const partners = new WeakMap<MessagePort, MessagePort>()

/**
 * The platform's `MessageChannel`, remembering which two ports belong together. Send one end
 * of such a channel to Rust and the other end gets a `close` event when Rust closes it, also
 * where the browser has no close event of its own (and the client notices its `close()`).
 */
export class TrackedMessageChannel extends globalThis.MessageChannel {
  constructor() {
    super()
    partners.set(this.port1, this.port2)
    partners.set(this.port2, this.port1)
  }
}

/**
 * One port the gateway knows, relayed: `local` is the end this client listens on; `partner`
 * (when known) is the page's end entangled with it, to which the client delivers `close` where
 * the platform does not.
 */
class Relay {
  /** Messages posted on `local` towards the partner, and how many the partner has seen. */
  posted = 0
  delivered = 0
  /** Messages the partner posted towards `local`, and how many `local` has forwarded. */
  sentByPage = 0
  forwarded = 0
  /** Rust (or the connection) closed it: finish once the partner has seen every message. */
  closing = false
  /** The page closed its end: tell the gateway once every message it sent is forwarded. */
  pageClosing = false
  done = false

  constructor(
    readonly id: number,
    readonly local: MessagePort,
    readonly partner: MessagePort | undefined,
    readonly client: IpcClient,
  ) {}

  start(): void {
    const { local, partner } = this
    local.onmessage = (e: MessageEvent) => {
      this.forwarded++
      this.client.forward(this.id, e.data, e.ports)
      this.checkPageClose()
    }
    if (NATIVE_CLOSE) {
      local.addEventListener('close', () => this.client.pageClosed(this))
    }
    if (partner && !NATIVE_CLOSE) {
      // Counting what the partner receives: addEventListener does not start the port, so
      // messages still wait for the page's own listener.
      partner.addEventListener('message', () => {
        this.delivered++
        if (this.closing) this.maybeFinish()
      })
      const close = partner.close.bind(partner)
      const post = partner.postMessage.bind(partner) as (m: unknown, t?: unknown) => void
      Object.defineProperty(partner, 'postMessage', {
        configurable: true,
        writable: true,
        value: (message: unknown, transfer?: unknown) => {
          post(message, transfer)
          this.sentByPage++
        },
      })
      Object.defineProperty(partner, 'close', {
        configurable: true,
        writable: true,
        value: () => {
          close()
          this.pageClosing = true
          this.checkPageClose()
        },
      })
    }
  }

  private checkPageClose(): void {
    if (this.pageClosing && this.forwarded >= this.sentByPage) this.client.pageClosed(this)
  }

  /** Delivers `value` to the page's end. */
  post(value: unknown, transfer: MessagePort[]): void {
    this.posted++
    this.local.postMessage(value, transfer)
  }

  /** The other side closed: the page's end sees `close` after every earlier message. */
  close(): void {
    if (this.closing) return
    this.closing = true
    this.maybeFinish()
  }

  private maybeFinish(): void {
    if (this.done) return
    if (this.partner && !NATIVE_CLOSE && this.delivered < this.posted) return
    this.done = true
    // After the dispatch of the last message (its listeners run first).
    setTimeout(() => {
      this.local.close()
      if (this.partner && !NATIVE_CLOSE) this.partner.dispatchEvent(new Event('close'))
    }, 0)
  }
}

type Pending = { resolve: (v: unknown) => void; reject: (e: unknown) => void }

/** A connection to a gateway: Electron's `ipcRenderer`, for a page or a Node.js program. */
export class IpcClient {
  private readonly ws: WebSocket
  private readonly relays = new Map<number, Relay>()
  /** Numbers of ports this client sends (odd), and ever named by the gateway (even). */
  private nextId = 1
  private readonly listeners = new Map<string, Array<{ f: IpcListener; once: boolean }>>()
  private readonly queued = new Map<string, IpcRendererEvent[]>()
  private readonly pending = new Map<number, Pending>()
  private nextInvoke = 1
  private bye = false
  private ended: ClosedInfo | undefined
  private endListeners: Array<(info: ClosedInfo) => void> = []
  /** Resolves when the connection has ended, for whatever reason. */
  readonly closed: Promise<ClosedInfo>
  private pendingFrames: unknown[][] = []
  /** A frame left at once and the flusher's task has not run since. */
  private sentThisTurn = false
  /** A zero-delay task (unlike setTimeout, never clamped) for flushing batched frames. */
  private readonly flusher = new MessageChannel()

  /** @internal Use `connect`. */
  constructor(ws: WebSocket) {
    this.ws = ws
    this.closed = new Promise((resolve) => this.endListeners.push(resolve))
    ws.binaryType = 'arraybuffer'
    this.flusher.port1.onmessage = () => this.flush()
    // In Node.js a listening port keeps the process alive; the socket does that already.
    ;(this.flusher.port1 as { unref?: () => void }).unref?.()
    ws.addEventListener('message', (e: MessageEvent) => this.receive(e.data))
    ws.addEventListener('close', (e: CloseEvent) => this.end(e.code, e.reason))
    ws.addEventListener('error', () => {
      /* the close event follows */
    })
  }

  /** Sends `data` on `channel` (fire and forget). Throws `DataCloneError` for data msgport cannot carry. */
  send(channel: string, data?: unknown): void {
    this.postMessage(channel, data, [])
  }

  /** Sends `data` and transfers `ports` on `channel` (main gets them in `event.ports`). */
  postMessage(channel: string, data: unknown, ports: readonly MessagePort[] = []): void {
    this.envelope({ t: 'send', ch: channel, d: data }, ports)
  }

  /** Calls main's handler of `channel`; rejects with `InvokeError`. */
  invoke(channel: string, data?: unknown): Promise<unknown> {
    const id = this.nextInvoke++
    return new Promise((resolve, reject) => {
      if (this.ended) {
        reject(new InvokeError('main-gone', 'main process went away'))
        return
      }
      this.pending.set(id, { resolve, reject })
      try {
        this.envelope({ t: 'invoke', ch: channel, id, d: data }, [])
      } catch (e) {
        this.pending.delete(id)
        reject(e)
      }
    })
  }

  /** Calls `listener` for every message main sends on `channel` (first those that waited). */
  on(channel: string, listener: IpcListener): this {
    return this.add(channel, listener, false)
  }

  /** Like `on`, for the next message only. */
  once(channel: string, listener: IpcListener): this {
    return this.add(channel, listener, true)
  }

  /** Removes a listener. */
  off(channel: string, listener: IpcListener): this {
    const list = this.listeners.get(channel)
    if (list) {
      const i = list.findIndex((l) => l.f === listener)
      if (i >= 0) list.splice(i, 1)
    }
    return this
  }

  /** Removes every listener of `channel` (or of every channel). */
  removeAllListeners(channel?: string): this {
    if (channel === undefined) this.listeners.clear()
    else this.listeners.delete(channel)
    return this
  }

  /** Ends the connection: every port relayed through it closes, on both sides. */
  close(): void {
    this.ws.close(1000, 'the client closed the connection')
  }

  private add(channel: string, f: IpcListener, once: boolean): this {
    const waiting = this.queued.get(channel)
    if (waiting?.length) {
      this.queued.delete(channel)
      while (waiting.length) {
        const event = waiting.shift()!
        f(event)
        if (once) {
          if (waiting.length) this.queued.set(channel, waiting)
          return this
        }
      }
    }
    const list = this.listeners.get(channel) ?? []
    list.push({ f, once })
    this.listeners.set(channel, list)
    return this
  }

  private emit(event: IpcRendererEvent): void {
    const list = this.listeners.get(event.channel)
    if (!list?.length) {
      const waiting = this.queued.get(event.channel) ?? []
      if (waiting.length >= QUEUED_PER_CHANNEL) {
        console.warn(`msgport-client: dropping a message on ${event.channel}: nobody listens`)
        return
      }
      waiting.push(event)
      this.queued.set(event.channel, waiting)
      return
    }
    for (const l of [...list]) {
      if (l.once) this.off(event.channel, l.f)
      try {
        l.f(event)
      } catch (e) {
        setTimeout(() => {
          throw e
        })
      }
    }
  }

  private envelope(envelope: Record<string, unknown>, ports: readonly MessagePort[]): void {
    this.forward(0, envelope, ports)
  }

  /** @internal Writes a message on port `id`, relaying the ports it transfers. */
  forward(id: number, data: unknown, ports: readonly MessagePort[]): void {
    if (!this.open()) return
    const tree = toTree(data, ports)
    const ids: number[] = []
    for (const port of ports) {
      const n = this.nextId
      this.nextId += 2
      ids.push(n)
      this.relay(n, port, partners.get(port))
    }
    this.write([0, id, tree, ids])
  }

  private relay(id: number, local: MessagePort, partner: MessagePort | undefined): Relay {
    const relay = new Relay(id, local, partner, this)
    this.relays.set(id, relay)
    relay.start()
    return relay
  }

  /** @internal The page closed its end of relay `r`. */
  pageClosed(r: Relay): void {
    if (this.relays.get(r.id) !== r) return
    this.relays.delete(r.id)
    r.done = true
    r.local.close()
    if (this.open()) this.write([1, r.id])
  }

  /**
   * Writes a frame. While the socket still holds unsent bytes, frames wait and leave together,
   * as one batch frame `[2, [frame, ...]]`, in a task of their own: a burst costs one
   * WebSocket message per batch instead of one per message (in Chromium each is a hop to the
   * network process), and a lone message (a request, a reply) leaves at once.
   */
  private write(frame: unknown[]): void {
    if (this.pendingFrames.length === 0 && this.ws.bufferedAmount === 0 && !this.sentThisTurn) {
      this.ws.send(encodeTree(frame))
      if (IS_NODE && nodeSetImmediate) {
        // In Node.js a socket write completes at once (bufferedAmount stays 0): frames
        // written later in the same turn of the event loop join a batch, sent by
        // setImmediate. (In a browser this would cost a task per message; bufferedAmount
        // tells there.)
        this.sentThisTurn = true
        nodeSetImmediate!(() => this.flush())
      }
      return
    }
    this.pendingFrames.push(frame)
    if (this.pendingFrames.length === 1 && !this.sentThisTurn) this.flusher.port2.postMessage(null)
  }

  private flush(): void {
    this.sentThisTurn = false
    const frames = this.pendingFrames
    this.pendingFrames = []
    if (frames.length && this.open()) {
      this.ws.send(encodeTree(frames.length === 1 ? frames[0] : [2, frames]))
    }
  }

  /** Whether frames can still be written (not once the connection is closing). */
  private open(): boolean {
    return !this.ended && this.ws.readyState === 1
  }

  private receive(raw: unknown): void {
    let frame: unknown
    try {
      if (!(raw instanceof ArrayBuffer)) throw new MessageDecodeError('a text message')
      frame = decodeTree(new Uint8Array(raw))
      if (Array.isArray(frame) && frame[0] === 2 && Array.isArray(frame[1])) {
        for (const f of frame[1]) this.frame(f)
      } else this.frame(frame)
    } catch (e) {
      console.warn(`msgport-client: ${(e as Error).message}`)
    }
  }

  private frame(frame: unknown): void {
    try {
      if (!Array.isArray(frame)) throw new MessageDecodeError('not a frame')
      const [kind, port] = frame as [unknown, unknown]
      const id = typeof port === 'bigint' ? Number(port) : port
      if (typeof id !== 'number') throw new MessageDecodeError('no port number')
      if (kind === 1) {
        const relay = this.relays.get(id)
        if (relay) {
          this.relays.delete(id)
          relay.close()
        }
        return
      }
      if (kind !== 0) throw new MessageDecodeError('unknown frame kind')
      const transfer = (frame[3] as unknown[]).map((n) => Number(n))
      const handed: MessagePort[] = []
      const made: Relay[] = []
      for (const n of transfer) {
        const channel = new MessageChannel()
        made.push(this.relay(n, channel.port2, channel.port1))
        handed.push(channel.port1)
      }
      const target = id === 0 ? undefined : this.relays.get(id)
      if (id !== 0 && !target) {
        // The port closed here meanwhile: its message is lost, and the ports it carried are
        // closed for the gateway to see.
        for (const r of made) this.pageClosed(r)
        for (const p of handed) p.close()
        return
      }
      let data: unknown
      try {
        data = fromTree(frame[2], handed)
      } catch (e) {
        for (const r of made) this.pageClosed(r)
        throw e
      }
      if (target) target.post(data, handed)
      else this.ipc(data, handed)
    } catch (e) {
      // A frame this client cannot read: the web's messageerror, for that message only.
      console.warn(`msgport-client: ${(e as Error).message}`)
    }
  }

  private ipc(envelope: unknown, ports: MessagePort[]): void {
    const e = envelope as { t?: unknown; ch?: unknown; id?: unknown; d?: unknown; ok?: unknown; err?: unknown }
    if (e === null || typeof e !== 'object') return
    switch (e.t) {
      case 'send':
        if (typeof e.ch === 'string') {
          this.emit({ channel: e.ch, data: e.d, ports, sender: 'main' })
        }
        return
      case 'reply': {
        const pending = this.pending.get(Number(e.id))
        if (!pending) return
        this.pending.delete(Number(e.id))
        if ('err' in e) {
          const err = (e.err ?? {}) as { kind?: string; message?: string; detail?: string }
          pending.reject(new InvokeError(err.kind ?? 'handler-failed', err.message ?? '', err.detail))
        } else pending.resolve(e.ok)
        return
      }
      case 'bye':
        this.bye = true
        return
    }
  }

  private end(code: number, reason: string): void {
    if (this.ended) return
    this.flusher.port1.close()
    this.ended = { code, reason, shutdown: this.bye }
    for (const relay of this.relays.values()) relay.close()
    this.relays.clear()
    for (const p of this.pending.values()) p.reject(new InvokeError('main-gone', 'main process went away'))
    this.pending.clear()
    for (const f of this.endListeners) f(this.ended)
  }
}

/** Opens a connection to a msgport-bridge gateway (`ws://127.0.0.1:PORT/msgport`). */
export async function connect(url: string, options: ConnectOptions = {}): Promise<IpcClient> {
  const target = new URL(url, typeof location !== 'undefined' ? location.href : undefined)
  if (options.token !== undefined) target.searchParams.set('token', options.token)
  let Ws = options.WebSocket as (new (url: string) => WebSocket) | undefined
  Ws ??= (globalThis as { WebSocket?: new (url: string) => WebSocket }).WebSocket
  if (!Ws && IS_NODE) {
    const ws = (await import('ws' as string)) as { WebSocket: new (url: string) => WebSocket }
    Ws = ws.WebSocket
  }
  if (!Ws) throw new Error('msgport-client: no WebSocket here; pass options.WebSocket')
  const ws = new Ws(target.toString())
  const client = new IpcClient(ws)
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`msgport-client: ${url} did not open in time`))
      ws.close()
    }, options.timeout ?? 10_000)
    ws.addEventListener('open', () => {
      clearTimeout(timer)
      resolve()
    })
    ws.addEventListener('close', (e: CloseEvent) => {
      clearTimeout(timer)
      reject(new Error(`msgport-client: connection refused or lost (code ${e.code})`))
    })
  })
  return client
}

export { DataCloneError, MessageDecodeError }
