//! The main process: spawns children, dispatches their messages to listeners and handlers.
//!
//! Each child's connection is served by a thread of its own, which runs the listeners and
//! handlers for that child's messages, one at a time, in order. A slow handler delays only its
//! own child.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use msgport::{process, MessagePort, PostError, Value};
use serde::Serialize;

use crate::envelope::Envelope;
use crate::event::IpcEvent;
use crate::tasks::{BoxFuture, Runner, Unfinished};
use crate::{InvokeError, ListenerId, MAX_PENDING_INVOKES};

/// How long the listener waits after a failed `accept` before it tries again.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

type Listener = Arc<Mutex<dyn FnMut(&mut IpcMainEvent) + Send>>;
type SyncHandler = Arc<dyn Fn(&IpcMainEvent) -> Result<Value, String> + Send + Sync>;
type OnceHandler = Box<dyn FnOnce(&IpcMainEvent) -> Result<Value, String> + Send>;
type AsyncHandler = Arc<dyn Fn(IpcMainEvent) -> BoxFuture<Result<Value, String>> + Send + Sync>;

/// A channel's `invoke` handler: run on the child's connection thread, or a future run by an
/// executor (the connection thread goes on serving meanwhile).
#[derive(Clone)]
enum Handler {
    Now(SyncHandler),
    /// Taken out of the table by the invoke that runs it (under the table's lock): a second
    /// invoke finds no handler.
    Once(Arc<Mutex<Option<OnceHandler>>>),
    Later(AsyncHandler, Runner),
}
type ExitListener = Arc<dyn Fn(&ChildExit) + Send + Sync>;

struct Registered {
    id: ListenerId,
    once: bool,
    f: Listener,
}

/// At most this many messages wait for a listener on one channel, and in all; later ones are
/// dropped (with a warning) until someone listens.
const QUEUED_PER_CHANNEL: usize = 1024;
const QUEUED_IN_ALL: usize = 16 * 1024;
/// And at most this much data in all (as [`data_size`] counts it, ports as [`PORT_COST`]): a
/// child's messages may be large (up to the transport's message limit) or carry many ports,
/// and nobody may ever listen.
const QUEUED_BYTES: usize = 64 << 20;
/// What a waiting message's port counts for there: it holds a descriptor (a socket) of main's,
/// and descriptors are few (the transport charges a received one 16 KiB too). At most 4,096
/// ports wait.
const PORT_COST: usize = 16 << 10;

#[derive(Default)]
struct Shared {
    listeners: Mutex<HashMap<String, Vec<Registered>>>,
    /// Messages that arrived on channels nobody listened to yet, in order.
    queued: Mutex<Queued>,
    handlers: Mutex<HashMap<String, Handler>>,
    exit_listeners: Mutex<Vec<ExitListener>>,
    /// Children whose connection is open, for `shutdown`.
    children: Mutex<Vec<ChildRef>>,
    next: AtomicU64,
    next_child: AtomicU64,
}

#[derive(Default)]
struct Queued {
    /// Each message with its [`data_size`].
    by_channel: HashMap<String, std::collections::VecDeque<(IpcMainEvent, usize)>>,
    total: usize,
    bytes: usize,
}

/// About what a message's data holds in memory: its strings' and byte strings' lengths, and a
/// word or two per item. Walked once, for a message that must wait for a listener.
fn data_size(v: &Value) -> usize {
    16 + match v {
        Value::String(s) => s.len(),
        Value::Binary(b) => b.bytes.len(),
        Value::BigInt(b) => b.magnitude().len(),
        Value::RegExp { source, flags } => source.len() + flags.len(),
        Value::Array(items) | Value::Set(items) => items.iter().map(data_size).sum(),
        Value::Object(entries) => entries.iter().map(|(k, v)| k.len() + data_size(v)).sum(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| data_size(k) + data_size(v)).sum(),
        Value::Error(e) => e.name.len() + e.message.len() + e.stack.as_ref().map_or(0, String::len),
        _ => 0,
    }
}

/// The main side of the IPC layer (Electron's `ipcMain`, plus spawning).
#[derive(Clone, Default)]
pub struct IpcMain {
    shared: Arc<Shared>,
}

impl fmt::Debug for IpcMain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let children = self
            .shared
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let channels = self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        f.debug_struct("IpcMain")
            .field("connected_children", &children)
            .field("channels_listened", &channels)
            .finish()
    }
}

/// A peer of main, as main knows it: main's id for it, and its connection; for a child process
/// its pid, for a remote peer (a web page or a Node.js program through a gateway such as
/// msgport-bridge, admitted with [`IpcMain::admit_remote`]) where it connected from
/// ([`remote`](Self::remote)). Listeners, handlers and senders treat both kinds alike. Two
/// `ChildRef`s are equal when they name the same peer; compare `event.sender` with the
/// `ChildRef` returned by [`IpcMain::spawn`] (or given to a gateway's connect callback) to
/// check who sent a message.
#[derive(Clone)]
pub struct ChildRef {
    id: u64,
    pid: u32,
    port: Arc<MessagePort>,
    life: Arc<Life>,
    remote: Option<Arc<RemoteInfo>>,
}

/// Where a remote peer connected from, as the gateway that admitted it saw the connection
/// (not what the peer claims: a peer cannot change it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteInfo {
    /// The gateway's name for the kind of connection (`"websocket"` for msgport-bridge).
    pub transport: &'static str,
    /// The `Origin` the connection came from (a browser always sends one; other clients may not).
    pub origin: Option<String>,
    /// The remote socket address, when the gateway knows it.
    pub address: Option<std::net::SocketAddr>,
}

impl RemoteInfo {
    /// A remote peer's description.
    pub fn new(
        transport: &'static str,
        origin: Option<String>,
        address: Option<std::net::SocketAddr>,
    ) -> RemoteInfo {
        RemoteInfo {
            transport,
            origin,
            address,
        }
    }
}

/// What main knows of a child's process: a pidfd (signals can never reach another process that
/// reused the pid), its exit status once reaped, and the stdio pipes the caller asked for.
#[derive(Default)]
struct Life {
    pidfd: Option<std::os::fd::OwnedFd>,
    /// Main spawned it (so it reaps it and knows its exit status).
    spawned: bool,
    status: Mutex<Option<ExitStatus>>,
    exited: Condvar,
    stdin: Mutex<Option<ChildStdin>>,
    stdout: Mutex<Option<ChildStdout>>,
    stderr: Mutex<Option<ChildStderr>>,
}

impl Life {
    fn of_pid(pid: u32, spawned: bool) -> Life {
        let pidfd = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .and_then(|pid| {
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
            });
        Life {
            pidfd,
            spawned,
            ..Life::default()
        }
    }
}

impl PartialEq for ChildRef {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for ChildRef {}

impl fmt::Debug for ChildRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ChildRef");
        d.field("id", &self.id);
        match &self.remote {
            Some(remote) => d.field("remote", remote),
            None => d.field("pid", &self.pid),
        };
        d.finish()
    }
}

impl ChildRef {
    /// Main's id for this child (unique in this main process, never reused).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The child's OS process id; 0 for a remote peer, which has no process of its own here
    /// (see [`remote`](Self::remote)).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where a remote peer connected from; `None` for a child process.
    pub fn remote(&self) -> Option<&RemoteInfo> {
        self.remote.as_deref()
    }

    /// Sends `data` on `channel` to this child (Electron's `webContents.send`). Messages to a
    /// channel the child does not listen to yet are queued there, in order.
    pub fn send<T: Serialize>(&self, channel: &str, data: T) -> Result<(), PostError> {
        self.post_message(channel, data, [])
    }

    /// Sends `data` and transfers `ports` on `channel` (Electron's `webContents.postMessage`).
    pub fn post_message<T, I>(&self, channel: &str, data: T, ports: I) -> Result<(), PostError>
    where
        T: Serialize,
        I: IntoIterator<Item = MessagePort>,
    {
        crate::envelope::post_send(&self.port, channel, data, ports)
    }

    /// Kills the child (SIGKILL). Its exit is reported to [`IpcMain::on_exit`] listeners and
    /// [`wait`](Self::wait). The signal goes through a pidfd taken when the child was spawned
    /// (or admitted), so it can never reach another process that reused the pid: once the
    /// child has exited, this is an error (`ESRCH`).
    pub fn kill(&self) -> std::io::Result<()> {
        let Some(pidfd) = &self.life.pidfd else {
            return Err(std::io::Error::other("no handle on this process"));
        };
        if self.try_wait().is_some() {
            return Err(std::io::Error::from_raw_os_error(
                rustix::io::Errno::SRCH.raw_os_error(),
            ));
        }
        rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL)?;
        Ok(())
    }

    /// Waits until the child has exited and returns its status. Only for children main
    /// spawned (a process admitted by [`IpcMain::listen`] is not main's to reap:
    /// `Unsupported`).
    pub fn wait(&self) -> std::io::Result<ExitStatus> {
        if !self.life.spawned {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "main did not spawn this process",
            ));
        }
        let mut status = self.life.status.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(status) = *status {
                return Ok(status);
            }
            status = self
                .life
                .exited
                .wait(status)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The child's exit status if it has exited (and main spawned it).
    pub fn try_wait(&self) -> Option<ExitStatus> {
        *self.life.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The child's standard input, if it was spawned with `Stdio::piped()` (once).
    pub fn take_stdin(&self) -> Option<ChildStdin> {
        self.life
            .stdin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The child's standard output, if it was spawned with `Stdio::piped()` (once). Read it: a
    /// child blocks when the pipe is full.
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.life
            .stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The child's standard error, if it was spawned with `Stdio::piped()` (once).
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        self.life
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// A message from a child, as main's listeners and handlers see it (`sender` is the child,
/// taken from the connection it arrived on: unforgeable).
pub type IpcMainEvent = IpcEvent<ChildRef>;

/// A child's exit, as [`IpcMain::on_exit`] reports it.
#[derive(Debug, Clone)]
pub struct ChildExit {
    /// The child.
    pub child: ChildRef,
    /// How it ended (`status.code()`, or the signal through `ExitStatusExt`).
    pub status: ExitStatus,
}

impl IpcMain {
    /// A main side with no listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts connections from processes this one did not spawn (they call
    /// [`IpcChild::connect_to`](crate::IpcChild::connect_to) with the same path). `admit` sees
    /// each connecting process's credentials, read from the socket by the kernel (pid, uid,
    /// gid), and decides: a refused process sees its connection closed. Admitted processes are
    /// served like spawned children (no exit status: their connection closing is the end).
    /// The path must not exist yet.
    pub fn listen<F>(&self, path: impl AsRef<std::path::Path>, admit: F) -> std::io::Result<()>
    where
        F: Fn(&process::PeerCredentials) -> bool + Send + 'static,
    {
        let listener = process::listen(path)?;
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("msgport-ipc-listen".into())
            .spawn(move || loop {
                let (port, creds) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors (or memory), accept fails at once for as long as
                        // the condition lasts: wait instead of spinning, the connection stays
                        // in the backlog.
                        tracing::warn!("msgport-ipc: accept failed: {e}");
                        std::thread::sleep(ACCEPT_RETRY);
                        continue;
                    }
                };
                if !admit(&creds) {
                    drop(port);
                    continue;
                }
                let life = Life::of_pid(creds.pid, false);
                let child = new_peer(&shared, port, creds.pid, life, None);
                if let Err(e) = start_serving(&shared, &child) {
                    tracing::warn!("msgport-ipc: cannot serve an admitted process: {e}");
                }
            })?;
        Ok(())
    }

    /// Spawns `cmd` as a child with a connection to this main process. The child calls
    /// [`IpcChild::connect`](crate::IpcChild::connect). When it exits, `on_exit` listeners
    /// run, and every port it held is observed closed by its peer.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<ChildRef> {
        let (mut child, port) = process::spawn(cmd)?;
        // Taken before anyone can reap the child: the pidfd names this process for good.
        let life = Life::of_pid(child.id(), true);
        *life.stdin.lock().unwrap_or_else(|p| p.into_inner()) = child.stdin.take();
        *life.stdout.lock().unwrap_or_else(|p| p.into_inner()) = child.stdout.take();
        *life.stderr.lock().unwrap_or_else(|p| p.into_inner()) = child.stderr.take();
        let child_ref = new_peer(&self.shared, port, child.id(), life, None);
        start_serving(&self.shared, &child_ref)?;
        let shared = self.shared.clone();
        let me = child_ref.clone();
        std::thread::Builder::new()
            .name(format!("msgport-ipc-wait-{}", me.id))
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    *me.life.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                    me.life.exited.notify_all();
                    let exit = ChildExit { child: me, status };
                    let listeners: Vec<ExitListener> = shared
                        .exit_listeners
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    for l in listeners {
                        l(&exit);
                    }
                }
            })?;
        Ok(child_ref)
    }

    /// Serves `connection` as a remote peer (the gateway's end of a port whose other end stands
    /// for a web page or another remote program): its messages reach the same listeners and
    /// handlers as children's, with the returned `ChildRef` as their sender, and the
    /// `ChildRef` sends to it. The peer's end is its connection closing (no exit status).
    /// Gateways call this; see msgport-bridge.
    pub fn admit_remote(&self, connection: MessagePort, remote: RemoteInfo) -> ChildRef {
        let peer = new_peer(&self.shared, connection, 0, Life::default(), Some(remote));
        if let Err(e) = start_serving(&self.shared, &peer) {
            // No thread, no service: the peer sees its connection close.
            tracing::warn!("msgport-ipc: cannot serve a remote peer: {e}");
            peer.port.close();
        }
        peer
    }

    fn add(&self, channel: &str, once: bool, f: Listener) -> ListenerId {
        let id = ListenerId(self.shared.next.fetch_add(1, Ordering::Relaxed) + 1);
        // Messages that arrived before anyone listened go to the first listener, in order; the
        // listeners lock is taken first so that no message overtakes them.
        loop {
            let mut all = self
                .shared
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let next = {
                let mut queued = self.shared.queued.lock().unwrap_or_else(|p| p.into_inner());
                let next = queued
                    .by_channel
                    .get_mut(channel)
                    .and_then(std::collections::VecDeque::pop_front);
                next.map(|(event, size)| {
                    queued.total -= 1;
                    queued.bytes -= size;
                    event
                })
            };
            let Some(mut event) = next else {
                all.entry(channel.to_owned())
                    .or_default()
                    .push(Registered { id, once, f });
                return id;
            };
            drop(all);
            call(&f, &mut event);
            if once {
                return id;
            }
        }
    }

    /// Calls `f` for every message children send on `channel` (`send` and `post_message`),
    /// starting with those that arrived before anyone listened on it (in order: at most 1,024
    /// per channel, and 16,384 holding 64 MiB of data in all, a port counting 16 KiB, wait;
    /// later ones are dropped with a warning: their ports close).
    pub fn on<F>(&self, channel: &str, f: F) -> ListenerId
    where
        F: FnMut(&mut IpcMainEvent) + Send + 'static,
    {
        self.add(channel, false, Arc::new(Mutex::new(f)))
    }

    /// Like [`on`](Self::on), for the next message only.
    pub fn once<F>(&self, channel: &str, f: F) -> ListenerId
    where
        F: FnMut(&mut IpcMainEvent) + Send + 'static,
    {
        self.add(channel, true, Arc::new(Mutex::new(f)))
    }

    /// Removes one listener (also from inside a listener: it gets no later message); returns
    /// whether it was registered. Same as [`remove_listener`](Self::remove_listener).
    pub fn off(&self, channel: &str, id: ListenerId) -> bool {
        self.remove_listener(channel, id)
    }

    /// Removes every listener of `channel` (also from inside one of them); later messages wait
    /// for the next listener, as before the first.
    pub fn remove_all_listeners(&self, channel: &str) {
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(channel);
    }

    /// Removes a listener (also from inside a listener); returns whether it was registered.
    pub fn remove_listener(&self, channel: &str, id: ListenerId) -> bool {
        let mut all = self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(list) = all.get_mut(channel) else {
            return false;
        };
        let before = list.len();
        list.retain(|r| r.id != id);
        before != list.len()
    }

    /// Answers `invoke` on `channel`: `Ok(value)` is the reply, `Err(message)` fails the
    /// caller's `invoke` with [`InvokeError::HandlerFailed`]; a panic fails it with
    /// [`InvokeError::HandlerPanicked`] and main keeps serving. Replaces an earlier handler.
    pub fn handle<F>(&self, channel: &str, f: F)
    where
        F: Fn(&IpcMainEvent) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.set_handler(channel, Handler::Now(Arc::new(f)));
    }

    /// Answers `invoke` on `channel` with a future (Electron's `ipcMain.handle` with an async
    /// function): `Ok(r)` is the reply (any `Serialize`), `Err(e)` fails the caller's `invoke`
    /// with [`InvokeError::HandlerFailed`]`(e.to_string())`, a panic with
    /// [`InvokeError::HandlerPanicked`]. While the future runs, the child's connection goes on
    /// serving: its other messages and invokes do not wait for it, and answers may come back in
    /// any order. At most [`MAX_PENDING_INVOKES`] of one child's invokes wait for such futures
    /// at once; main refuses more at once with [`InvokeError::Busy`]. Replaces an earlier
    /// handler.
    ///
    /// **Executor.** Registered from inside a tokio runtime (feature `tokio`, on by default), the
    /// futures are spawned on that runtime, so they may use tokio's timers and I/O. Registered
    /// anywhere else, they run on one thread of msgport-ipc's own: any executor-agnostic future
    /// works there (msgport's `recv`, `futures` channels), a future that blocks its thread delays
    /// the others, and one that needs tokio panics (the invoke fails, main keeps serving). If the
    /// runtime shuts down before a future finishes, its invoke fails with `HandlerFailed`.
    ///
    /// ```no_run
    /// # async fn lookup(_: u32) -> Result<String, std::io::Error> { Ok(String::new()) }
    /// let main = msgport_ipc::IpcMain::new();
    /// # let rt = tokio::runtime::Runtime::new().unwrap();
    /// # let _in = rt.enter();
    /// main.handle_async("user-name", |event| async move {
    ///     let id: u32 = event.data().map_err(|e| e.to_string())?;
    ///     lookup(id).await.map_err(|e| e.to_string())
    /// });
    /// ```
    pub fn handle_async<F, Fut, R, E>(&self, channel: &str, f: F)
    where
        F: Fn(IpcMainEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize,
        E: fmt::Display,
    {
        let handler: AsyncHandler = Arc::new(move |event| {
            let future = f(event);
            Box::pin(async move { answer(future.await) })
        });
        self.set_handler(channel, Handler::Later(handler, Runner::current()));
    }

    /// [`handle`](Self::handle) with any serializable answer and any displayable error:
    /// `Ok(r)` is the reply (through serde), `Err(e)` fails the caller's `invoke` with
    /// [`InvokeError::HandlerFailed`]`(e.to_string())`. Pairs with
    /// [`IpcChild::invoke_as`](crate::IpcChild::invoke_as).
    ///
    /// ```no_run
    /// let main = msgport_ipc::IpcMain::new();
    /// main.handle_typed("double", |e| e.data::<u32>().map(|n| n * 2));
    /// ```
    pub fn handle_typed<F, R, E>(&self, channel: &str, f: F)
    where
        F: Fn(&IpcMainEvent) -> Result<R, E> + Send + Sync + 'static,
        R: Serialize,
        E: fmt::Display,
    {
        self.handle(channel, move |event| answer(f(event)));
    }

    /// Like [`handle`](Self::handle), for the next `invoke` on `channel` only (Electron's
    /// `ipcMain.handleOnce`): the handler is removed before it runs.
    pub fn handle_once<F>(&self, channel: &str, f: F)
    where
        F: FnOnce(&IpcMainEvent) -> Result<Value, String> + Send + 'static,
    {
        let once: OnceHandler = Box::new(f);
        self.set_handler(channel, Handler::Once(Arc::new(Mutex::new(Some(once)))));
    }

    /// Installs the handler of `channel`, replacing an earlier one.
    fn set_handler(&self, channel: &str, handler: Handler) {
        self.shared
            .handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.to_owned(), handler);
    }

    /// Removes the handler of `channel`.
    pub fn remove_handler(&self, channel: &str) {
        self.shared
            .handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(channel);
    }

    /// Says goodbye to every connected child: they then see main's close as a shutdown, not a
    /// crash (children made with [`IpcChild::connect`](crate::IpcChild::connect) exit with
    /// status 0 instead of [`EXIT_MAIN_LOST`](crate::EXIT_MAIN_LOST)), and the connections
    /// close. Call it before main exits on purpose.
    pub fn shutdown(&self) {
        let children = std::mem::take(
            &mut *self
                .shared
                .children
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for child in &children {
            let _ = child.port.post_message(Envelope::Bye.into_value(), []);
            child.port.close();
        }
        // Best effort: a child that reads nothing for a second misses its goodbye (and sees a
        // lost main).
        let _ = process::flush(std::time::Duration::from_secs(1));
    }

    /// Calls `f` when a spawned child exits (normally, by crash, or killed).
    pub fn on_exit<F>(&self, f: F)
    where
        F: Fn(&ChildExit) + Send + Sync + 'static,
    {
        self.shared
            .exit_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(f));
    }
}

/// A peer with the next id.
fn new_peer(
    shared: &Shared,
    port: MessagePort,
    pid: u32,
    life: Life,
    remote: Option<RemoteInfo>,
) -> ChildRef {
    ChildRef {
        id: shared.next_child.fetch_add(1, Ordering::Relaxed) + 1,
        pid,
        port: Arc::new(port),
        life: Arc::new(life),
        remote: remote.map(Arc::new),
    }
}

/// Counts `peer` among the connected ones (for `shutdown`) and serves its connection on a
/// thread of its own; undone if the thread cannot start.
fn start_serving(shared: &Arc<Shared>, peer: &ChildRef) -> std::io::Result<()> {
    let children = || shared.children.lock().unwrap_or_else(|p| p.into_inner());
    children().push(peer.clone());
    let kind = if peer.remote.is_some() {
        "remote"
    } else {
        "child"
    };
    let (me, serving) = (peer.clone(), shared.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("msgport-ipc-{kind}-{}", peer.id))
        .spawn(move || serve(&serving, &me));
    if let Err(e) = spawned {
        children().retain(|c| c != peer);
        return Err(e);
    }
    Ok(())
}

/// Serves one child's connection until it closes. This thread only ever pulls from the
/// connection, so it reads the socket itself (low-latency mode: no hand-off per message).
fn serve(shared: &Shared, child: &ChildRef) {
    serve_connection(shared, child);
    shared
        .children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|c| c != child);
}

fn serve_connection(shared: &Shared, child: &ChildRef) {
    child.port.set_low_latency(true);
    // This child's invokes waiting for async handlers (see `MAX_PENDING_INVOKES`): raised
    // here only, lowered as each is answered.
    let pending = Arc::new(AtomicUsize::new(0));
    while let Some(mut message) = child.port.blocking_recv() {
        let ports = std::mem::take(&mut message.ports);
        let Some(envelope) = message.value().ok().and_then(Envelope::from_value) else {
            tracing::warn!(
                child = child.id,
                "msgport-ipc: ignoring a malformed message"
            );
            continue;
        };
        match envelope {
            Envelope::Send { channel, data } => {
                let mut event = IpcMainEvent {
                    sender: child.clone(),
                    channel,
                    data,
                    ports,
                };
                emit(shared, &mut event);
            }
            Envelope::Invoke { channel, id, data } => {
                let handler = {
                    let mut handlers = shared.handlers.lock().unwrap_or_else(|p| p.into_inner());
                    match handlers.get(&channel) {
                        Some(Handler::Once(_)) => handlers.remove(&channel),
                        other => other.cloned(),
                    }
                };
                let event = IpcMainEvent {
                    sender: child.clone(),
                    channel,
                    data,
                    ports,
                };
                match handler {
                    None => reply(
                        &child.port,
                        id,
                        Err(InvokeError::NoHandler(event.channel.clone())),
                    ),
                    Some(Handler::Once(slot)) => {
                        let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                        let result = match taken {
                            None => Err(InvokeError::NoHandler(event.channel.clone())),
                            Some(h) => run_handler(h, &event),
                        };
                        reply(&child.port, id, result);
                    }
                    Some(Handler::Now(h)) => {
                        reply(&child.port, id, run_handler(|e| h(e), &event));
                    }
                    Some(Handler::Later(..))
                        if pending.load(Ordering::Acquire) >= MAX_PENDING_INVOKES =>
                    {
                        reply(&child.port, id, Err(InvokeError::Busy));
                    }
                    Some(Handler::Later(h, runner)) => {
                        // Making the future runs the handler's synchronous part: guard it too.
                        let future = match catch_unwind(AssertUnwindSafe(|| h(event))) {
                            Ok(future) => future,
                            Err(p) => {
                                let panicked = InvokeError::HandlerPanicked(crate::panic_text(&*p));
                                reply(&child.port, id, Err(panicked));
                                continue;
                            }
                        };
                        let port = child.port.clone();
                        pending.fetch_add(1, Ordering::AcqRel);
                        let pending = pending.clone();
                        runner.spawn(future, move |out| {
                            // Lowered before the answer leaves: the child may invoke again as
                            // soon as it has it.
                            pending.fetch_sub(1, Ordering::AcqRel);
                            let result = match out {
                                Ok(Ok(v)) => Ok(v),
                                Ok(Err(message)) => Err(InvokeError::HandlerFailed(message)),
                                Err(Unfinished::Panicked(text)) => {
                                    Err(InvokeError::HandlerPanicked(text))
                                }
                                Err(Unfinished::Dropped) => Err(InvokeError::HandlerFailed(
                                    "the handler's task was dropped unfinished (its runtime \
                                     shut down)"
                                        .into(),
                                )),
                            };
                            reply(&port, id, result);
                        });
                    }
                }
            }
            Envelope::Reply { .. } | Envelope::Bye => {
                tracing::warn!(
                    child = child.id,
                    "msgport-ipc: ignoring a reply from a child"
                );
            }
        }
    }
}

/// A typed handler's result as the reply it makes: the answer through serde, the error's text.
fn answer<R: Serialize, E: fmt::Display>(result: Result<R, E>) -> Result<Value, String> {
    match result {
        Ok(r) => msgport::to_value(&r).map_err(|e| format!("the answer does not serialize: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs a synchronous handler: its error and its panic become the caller's typed error.
fn run_handler(
    h: impl FnOnce(&IpcMainEvent) -> Result<Value, String>,
    event: &IpcMainEvent,
) -> Result<Value, InvokeError> {
    match catch_unwind(AssertUnwindSafe(|| h(event))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(message)) => Err(InvokeError::HandlerFailed(message)),
        Err(p) => Err(InvokeError::HandlerPanicked(crate::panic_text(&*p))),
    }
}

/// Answers invoke `id`. A reply that cannot be sent (say, a value holding a port slot) must not
/// leave the caller waiting: it gets the reason instead. The child may be gone meanwhile:
/// nothing to do then.
fn reply(port: &MessagePort, id: u64, result: Result<Value, InvokeError>) {
    if let Err(e) = port.post_message(Envelope::Reply { id, result }.into_value(), []) {
        let result = Err(InvokeError::HandlerFailed(format!(
            "the handler's result could not be sent: {e}"
        )));
        let _ = port.post_message(Envelope::Reply { id, result }.into_value(), []);
    }
}

fn emit(shared: &Shared, event: &mut IpcMainEvent) {
    let listeners: Vec<Listener> = {
        let mut all = shared.listeners.lock().unwrap_or_else(|p| p.into_inner());
        match all.get_mut(&event.channel) {
            Some(list) if !list.is_empty() => {
                let picked = list.iter().map(|r| r.f.clone()).collect();
                list.retain(|r| !r.once);
                picked
            }
            _ => {
                // Nobody listens yet: keep it for the first listener (the lock on listeners is
                // held, so `on` cannot slip in between).
                let mut queued = shared.queued.lock().unwrap_or_else(|p| p.into_inner());
                let waiting = queued.by_channel.get(&event.channel).map_or(0, |q| q.len());
                let size = data_size(&event.data) + event.ports.len() * PORT_COST;
                if waiting >= QUEUED_PER_CHANNEL
                    || queued.total >= QUEUED_IN_ALL
                    || queued.bytes + size > QUEUED_BYTES
                {
                    tracing::warn!(
                        channel = event.channel,
                        "msgport-ipc: dropping a message nobody listens to (queue full)"
                    );
                    return;
                }
                let moved = IpcMainEvent {
                    sender: event.sender.clone(),
                    channel: event.channel.clone(),
                    data: std::mem::replace(&mut event.data, Value::Undefined),
                    ports: std::mem::take(&mut event.ports),
                };
                queued
                    .by_channel
                    .entry(moved.channel.clone())
                    .or_default()
                    .push_back((moved, size));
                queued.total += 1;
                queued.bytes += size;
                return;
            }
        }
    };
    for f in listeners {
        call(&f, event);
    }
}

fn call(f: &Listener, event: &mut IpcMainEvent) {
    let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
    if catch_unwind(AssertUnwindSafe(|| (*f)(event))).is_err() {
        tracing::error!("msgport-ipc: a listener panicked");
    }
}
