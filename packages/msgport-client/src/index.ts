// msgport-client: real MessagePorts in web pages and Node.js, entangled with Rust msgport
// ports through a msgport-bridge gateway.

export { connect, IpcClient, InvokeError, TrackedMessageChannel, NATIVE_CLOSE } from './client.js'
export type { ClosedInfo, ConnectOptions, IpcListener, IpcRendererEvent } from './client.js'
export { encode, decode, DataCloneError, MessageDecodeError } from './codec.js'
