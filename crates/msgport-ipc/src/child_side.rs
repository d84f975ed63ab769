//! A child process's side: its connection to main, named channels, `invoke`.
//!
//! A thread of the child's reads the connection: it runs the channel listeners (one at a time,
//! in order), queues messages for channels nobody listens to yet, and routes `invoke` replies to
//! their callers. When the connection closes (main exited or crashed), pending invokes fail
//! with [`InvokeError::MainGone`] and, unless told otherwise, the child exits.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use msgport::{process, MessageChannel, MessagePort, PostError, Value};
use serde::Serialize;

use crate::envelope::Envelope;
use crate::event::{IpcEvent, MainRef};
use crate::{InvokeError, ListenerId};

type ChildListener = Arc<Mutex<dyn FnMut(IpcChildEvent) + Send>>;

struct Registered {
    id: ListenerId,
    once: bool,
    f: ChildListener,
}

/// A message from main, as a child's listener gets it (`sender` is main).
pub type IpcChildEvent = IpcEvent<MainRef>;

#[derive(Default)]
struct Pending {
    /// Reply ports of invokes in flight, by request id, with their deadlines.
    replies: HashMap<u64, (MessagePort, Option<Instant>)>,
    /// The connection closed: no reply will ever come.
    gone: bool,
    /// The timer thread that fails invokes past their deadline runs.
    timer: bool,
}

#[derive(Default)]
struct Channels {
    listeners: HashMap<String, Vec<Registered>>,
    queued: HashMap<String, VecDeque<IpcChildEvent>>,
}

/// How the connection to main ended, as [`IpcChild::on_main_gone`] and
/// [`IpcChild::wait_main_gone`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainGone {
    /// Main said goodbye first ([`IpcMain::shutdown`](crate::IpcMain::shutdown)).
    Shutdown,
    /// The connection closed without a goodbye: main exited without `shutdown`, crashed, or
    /// was killed.
    Lost,
}

/// The exit status of a child whose main went away without a goodbye (see
/// [`IpcChild::connect`]): not 0, so that a crash of main does not look like success.
pub const EXIT_MAIN_LOST: i32 = 70;

type GoneHook = Box<dyn FnOnce(MainGone) + Send>;

#[derive(Default)]
struct Lifecycle {
    bye: bool,
    gone: Option<MainGone>,
    hooks: Vec<GoneHook>,
}

struct Inner {
    port: MessagePort,
    main: MainRef,
    life: Mutex<Lifecycle>,
    gone: Condvar,
    pending: Mutex<Pending>,
    /// Wakes the timer thread when an earlier deadline is set.
    deadlines: Condvar,
    channels: Mutex<Channels>,
    next: AtomicU64,
    /// `invoke`'s timeout (none by default).
    timeout: Mutex<Option<Duration>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A child's connection to main (Electron's `ipcRenderer`). Cheap to clone.
#[derive(Clone)]
pub struct IpcChild {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IpcChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = lock(&self.inner.pending).replies.len();
        f.debug_struct("IpcChild")
            .field("pending_invokes", &pending)
            .field("main_gone", &lock(&self.inner.life).gone)
            .finish()
    }
}

/// How a child connects to main: [`IpcChild::connect`] is `ConnectOptions::new().connect()`.
///
/// ```no_run
/// use msgport_ipc::ConnectOptions;
///
/// // Stay alive when main goes away (to reconnect, or finish work alone).
/// let ipc = ConnectOptions::new().exit_when_main_goes(false).connect()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    exit_when_main_goes: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            exit_when_main_goes: true,
        }
    }
}

impl ConnectOptions {
    /// The defaults: this process exits when main goes away.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether this process exits when the connection to main closes (default: yes). When it
    /// does, pending invokes fail, the [`on_main_gone`](IpcChild::on_main_gone) hooks run,
    /// messages this process posted are flushed (for up to a second), and it exits with status
    /// 0 if main said goodbye ([`IpcMain::shutdown`](crate::IpcMain::shutdown)), else with
    /// [`EXIT_MAIN_LOST`].
    pub fn exit_when_main_goes(mut self, on: bool) -> Self {
        self.exit_when_main_goes = on;
        self
    }

    /// Connects to the main process that spawned this one with
    /// [`IpcMain::spawn`](crate::IpcMain::spawn).
    pub fn connect(&self) -> std::io::Result<IpcChild> {
        let (port, creds) = process::bootstrap_with_credentials().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                std::io::Error::new(
                    e.kind(),
                    "this process was not started by IpcMain::spawn (for a main process that \
                     listens on a path, use IpcChild::connect_to)",
                )
            } else {
                e
            }
        })?;
        Ok(IpcChild::serve_over(port, Some(creds.pid), self))
    }

    /// Connects to a main process that [`listen`](crate::IpcMain::listen)s on `path` (for
    /// processes main did not spawn).
    pub fn connect_to(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<IpcChild> {
        let (port, creds) = process::connect_with_credentials(path)?;
        Ok(IpcChild::serve_over(port, Some(creds.pid), self))
    }

    /// Serves the IPC protocol over an existing port to main (for example one from
    /// `msgport::process::connect`).
    pub fn over(&self, port: MessagePort) -> IpcChild {
        IpcChild::serve_over(port, None, self)
    }
}

impl IpcChild {
    /// Connects to the main process that spawned this one with
    /// [`IpcMain::spawn`](crate::IpcMain::spawn). When main goes away, pending invokes fail,
    /// the [`on_main_gone`](Self::on_main_gone) hooks run, messages this process posted are
    /// flushed (for up to a second), and this process exits: with status 0 if main said goodbye
    /// ([`IpcMain::shutdown`](crate::IpcMain::shutdown)), else with [`EXIT_MAIN_LOST`]. See
    /// [`ConnectOptions`] to stay alive instead.
    pub fn connect() -> std::io::Result<IpcChild> {
        ConnectOptions::new().connect()
    }

    /// Like [`connect`](Self::connect); `exit_when_main_goes` chooses whether this process
    /// exits when the connection to main closes.
    #[deprecated(
        since = "0.1.1",
        note = "use `ConnectOptions::new().exit_when_main_goes(..).connect()`"
    )]
    pub fn connect_with(exit_when_main_goes: bool) -> std::io::Result<IpcChild> {
        ConnectOptions::new()
            .exit_when_main_goes(exit_when_main_goes)
            .connect()
    }

    /// Connects to a main process that [`listen`](crate::IpcMain::listen)s on `path` (for
    /// processes main did not spawn). This process does not exit when main goes away
    /// (`ConnectOptions::new().exit_when_main_goes(false).connect_to(path)`).
    pub fn connect_to(path: impl AsRef<std::path::Path>) -> std::io::Result<IpcChild> {
        ConnectOptions::new()
            .exit_when_main_goes(false)
            .connect_to(path)
    }

    /// Serves the IPC protocol over an existing port to main (for example one from
    /// `msgport::process::connect`).
    #[deprecated(
        since = "0.1.1",
        note = "use `ConnectOptions::new().exit_when_main_goes(..).over(port)`"
    )]
    pub fn over(port: MessagePort, exit_when_main_goes: bool) -> IpcChild {
        ConnectOptions::new()
            .exit_when_main_goes(exit_when_main_goes)
            .over(port)
    }

    fn serve_over(port: MessagePort, main_pid: Option<u32>, options: &ConnectOptions) -> IpcChild {
        let inner = Arc::new(Inner {
            port,
            main: MainRef { pid: main_pid },
            life: Mutex::default(),
            gone: Condvar::new(),
            pending: Mutex::default(),
            deadlines: Condvar::new(),
            channels: Mutex::default(),
            next: AtomicU64::new(1),
            timeout: Mutex::new(None),
        });
        let served = inner.clone();
        let exit_when_main_goes = options.exit_when_main_goes;
        std::thread::Builder::new()
            .name("msgport-ipc-main".into())
            .spawn(move || serve(&served, exit_when_main_goes))
            .expect("spawn the msgport-ipc thread");
        IpcChild { inner }
    }

    /// Main, as the `sender` of this connection's events.
    pub fn main(&self) -> MainRef {
        self.inner.main
    }

    /// Sends `data` on `channel` to main (fire-and-forget).
    pub fn send<T: Serialize>(&self, channel: &str, data: T) -> Result<(), PostError> {
        self.post_message(channel, data, [])
    }

    /// Sends `data` and transfers `ports` on `channel` to main.
    pub fn post_message<T, I>(&self, channel: &str, data: T, ports: I) -> Result<(), PostError>
    where
        T: Serialize,
        I: IntoIterator<Item = MessagePort>,
    {
        crate::envelope::post_send(&self.inner.port, channel, data, ports)
    }

    /// Asks main's handler for `channel` and waits for its answer (any executor). Waits for ever
    /// unless a timeout is set ([`set_invoke_timeout`](Self::set_invoke_timeout)); fails with
    /// [`InvokeError::MainGone`] if main goes away first.
    pub async fn invoke<T: Serialize>(&self, channel: &str, data: T) -> Result<Value, InvokeError> {
        let reply = self.request(channel, data, self.default_timeout())?;
        Self::answer(reply.recv().await)
    }

    /// [`invoke`](Self::invoke), blocking this thread.
    pub fn invoke_blocking<T: Serialize>(
        &self,
        channel: &str,
        data: T,
    ) -> Result<Value, InvokeError> {
        let reply = self.request(channel, data, self.default_timeout())?;
        Self::answer(reply.blocking_recv())
    }

    /// [`invoke`](Self::invoke), the answer decoded as `R` (a mismatch is [`InvokeError::Data`]).
    pub async fn invoke_as<R, T>(&self, channel: &str, data: T) -> Result<R, InvokeError>
    where
        R: serde::de::DeserializeOwned,
        T: Serialize,
    {
        decode(self.invoke(channel, data).await?)
    }

    /// [`invoke_blocking`](Self::invoke_blocking), the answer decoded as `R`.
    pub fn invoke_blocking_as<R, T>(&self, channel: &str, data: T) -> Result<R, InvokeError>
    where
        R: serde::de::DeserializeOwned,
        T: Serialize,
    {
        decode(self.invoke_blocking(channel, data)?)
    }

    /// [`invoke`](Self::invoke) that fails with [`InvokeError::Timeout`] when no answer came
    /// within `timeout` (a late answer is then discarded).
    pub async fn invoke_timeout<T: Serialize>(
        &self,
        channel: &str,
        data: T,
        timeout: Duration,
    ) -> Result<Value, InvokeError> {
        let reply = self.request(channel, data, Some(timeout))?;
        Self::answer(reply.recv().await)
    }

    /// Sets the timeout of every later [`invoke`](Self::invoke) and
    /// [`invoke_blocking`](Self::invoke_blocking) on this connection (and its clones). `None`,
    /// the default (as in Electron), waits for ever: a handler that never answers keeps its
    /// caller waiting until main goes away.
    pub fn set_invoke_timeout(&self, timeout: Option<Duration>) {
        *lock(&self.inner.timeout) = timeout;
    }

    fn default_timeout(&self) -> Option<Duration> {
        *lock(&self.inner.timeout)
    }

    fn request<T: Serialize>(
        &self,
        channel: &str,
        data: T,
        timeout: Option<Duration>,
    ) -> Result<MessagePort, InvokeError> {
        let data = msgport::to_value(&data).map_err(|e| InvokeError::Data(e.to_string()))?;
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (reply, reply_in) = MessageChannel::new().into_ports();
        let deadline = timeout.map(|t| Instant::now() + t);
        {
            let mut pending = lock(&self.inner.pending);
            if pending.gone {
                return Err(InvokeError::MainGone);
            }
            pending.replies.insert(id, (reply_in, deadline));
            if deadline.is_some() && !pending.timer {
                pending.timer = true;
                let inner = Arc::downgrade(&self.inner);
                std::thread::Builder::new()
                    .name("msgport-ipc-timeouts".into())
                    .spawn(move || expire(&inner))
                    .map_err(|e| InvokeError::Data(format!("no timer thread: {e}")))?;
            }
        }
        self.inner.deadlines.notify_all();
        let envelope = Envelope::Invoke {
            channel: channel.to_owned(),
            id,
            data,
        }
        .into_value();
        if let Err(e) = self.inner.port.post_message(envelope, []) {
            lock(&self.inner.pending).replies.remove(&id);
            return Err(e.into());
        }
        Ok(reply)
    }

    fn answer(reply: Option<msgport::MessageEvent>) -> Result<Value, InvokeError> {
        let Some(mut event) = reply else {
            return Err(InvokeError::MainGone);
        };
        match event
            .take_data::<Value>()
            .ok()
            .and_then(Envelope::from_value)
        {
            Some(Envelope::Reply { result, .. }) => result,
            _ => Err(InvokeError::Data("malformed reply".into())),
        }
    }

    /// Calls `f` for every message main sends on `channel`, starting with those that arrived
    /// before anyone listened (in order), and returns its id for [`off`](Self::off). Adds to the
    /// channel's listeners (as Electron's `ipcRenderer.on`): each message goes to every
    /// listener, in the order they were added; the first gets the transferred ports, the others
    /// a copy of the data without them. Listeners run on the connection's thread, one message at
    /// a time; a panic in one is caught and logged.
    pub fn on<F>(&self, channel: &str, f: F) -> ListenerId
    where
        F: FnMut(IpcChildEvent) + Send + 'static,
    {
        self.add(channel, false, Arc::new(Mutex::new(f)))
    }

    /// Like [`on`](Self::on), for one message only (Electron's `ipcRenderer.once`).
    pub fn once<F>(&self, channel: &str, f: F) -> ListenerId
    where
        F: FnMut(IpcChildEvent) + Send + 'static,
    {
        self.add(channel, true, Arc::new(Mutex::new(f)))
    }

    fn add(&self, channel: &str, once: bool, f: ChildListener) -> ListenerId {
        let id = ListenerId(self.inner.next.fetch_add(1, Ordering::Relaxed));
        loop {
            let next = {
                let mut ch = lock(&self.inner.channels);
                match ch.queued.get_mut(channel).and_then(VecDeque::pop_front) {
                    Some(event) => event,
                    None => {
                        ch.listeners
                            .entry(channel.to_owned())
                            .or_default()
                            .push(Registered { id, once, f });
                        return id;
                    }
                }
            };
            call(&f, next);
            if once {
                return id;
            }
        }
    }

    /// Removes one listener (also from inside a listener: it gets no later message); returns
    /// whether it was registered.
    pub fn off(&self, channel: &str, id: ListenerId) -> bool {
        let mut ch = lock(&self.inner.channels);
        let Some(list) = ch.listeners.get_mut(channel) else {
            return false;
        };
        let before = list.len();
        list.retain(|r| r.id != id);
        before != list.len()
    }

    /// Runs `f` once the connection to main has closed (after pending invokes failed), on the
    /// connection's thread, before the process exits (if it does): to save state, tell other
    /// processes, or log. Runs at once if main is already gone.
    pub fn on_main_gone<F>(&self, f: F)
    where
        F: FnOnce(MainGone) + Send + 'static,
    {
        let mut life = lock(&self.inner.life);
        match life.gone {
            Some(how) => {
                drop(life);
                f(how);
            }
            None => life.hooks.push(Box::new(f)),
        }
    }

    /// Blocks until the connection to main has closed; says how.
    pub fn wait_main_gone(&self) -> MainGone {
        let mut life = lock(&self.inner.life);
        loop {
            if let Some(how) = life.gone {
                return how;
            }
            life = self
                .inner
                .gone
                .wait(life)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Removes every listener of `channel` (also from inside one of them); later messages are
    /// queued again until someone listens (Electron's `removeAllListeners(channel)`).
    pub fn remove_all_listeners(&self, channel: &str) {
        lock(&self.inner.channels).listeners.remove(channel);
    }

    /// Removes every listener of `channel`: [`remove_all_listeners`](Self::remove_all_listeners).
    #[deprecated(
        since = "0.1.1",
        note = "named `remove_all_listeners`, as in Electron; `off` removes one listener"
    )]
    pub fn remove_listener(&self, channel: &str) {
        self.remove_all_listeners(channel);
    }
}

fn decode<R: serde::de::DeserializeOwned>(v: Value) -> Result<R, InvokeError> {
    crate::event::decode(v).map_err(|e| InvokeError::Data(e.to_string()))
}

fn call(f: &ChildListener, event: IpcChildEvent) {
    let mut f = lock(f);
    if catch_unwind(AssertUnwindSafe(|| (*f)(event))).is_err() {
        tracing::error!("msgport-ipc: a listener panicked");
    }
}

/// The timer thread: fails invokes whose deadline passed with [`InvokeError::Timeout`]. Ends
/// with the connection.
fn expire(inner: &std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut pending = lock(&inner.pending);
        if pending.gone {
            return;
        }
        let now = Instant::now();
        let expired: Vec<u64> = pending
            .replies
            .iter()
            .filter(|(_, (_, d))| d.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((reply, _)) = pending.replies.remove(&id) {
                let result = Err(InvokeError::Timeout);
                let _ = reply.post_message(Envelope::Reply { id, result }.into_value(), []);
            }
        }
        let next = pending.replies.values().filter_map(|(_, d)| *d).min();
        let wait = next
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1));
        let (guard, _) = inner
            .deadlines
            .wait_timeout(pending, wait)
            .unwrap_or_else(|p| p.into_inner());
        drop(guard);
    }
}

/// Runs the listeners of `channel` for one message from main (or queues it until someone
/// listens).
fn deliver(inner: &Inner, channel: String, data: Value, ports: Vec<MessagePort>) {
    let mut event = Some(IpcChildEvent {
        sender: inner.main,
        channel: channel.clone(),
        data,
        ports,
    });
    let picked: Option<Vec<ChildListener>> = {
        let mut ch = lock(&inner.channels);
        match ch.listeners.get_mut(&channel) {
            Some(list) if !list.is_empty() => {
                let picked = list.iter().map(|r| r.f.clone()).collect();
                list.retain(|r| !r.once);
                Some(picked)
            }
            _ => {
                let queue = ch.queued.entry(channel).or_default();
                queue.extend(event.take());
                None
            }
        }
    };
    if let (Some(picked), Some(event)) = (picked, event) {
        // The first listener gets the ports; the others a copy of the data.
        let copies: Vec<IpcChildEvent> = (1..picked.len())
            .map(|_| IpcChildEvent {
                sender: event.sender,
                channel: event.channel.clone(),
                data: event.data.clone(),
                ports: Vec::new(),
            })
            .collect();
        for (f, event) in picked.iter().zip(std::iter::once(event).chain(copies)) {
            call(f, event);
        }
    }
}

fn serve(inner: &Arc<Inner>, exit_when_main_goes: bool) {
    let (listeners, queue) = std::sync::mpsc::channel::<(String, Value, Vec<MessagePort>)>();
    let runner = {
        let inner = inner.clone();
        std::thread::Builder::new()
            .name("msgport-ipc-listeners".into())
            .spawn(move || {
                for (channel, data, ports) in queue {
                    deliver(&inner, channel, data, ports);
                }
            })
    };
    let runner = match runner {
        Ok(runner) => Some(runner),
        Err(e) => {
            tracing::error!("msgport-ipc: no listener thread: {e}");
            None
        }
    };
    // This thread only ever pulls from the connection: let it read the socket itself.
    inner.port.set_low_latency(true);
    while let Some(mut message) = inner.port.blocking_recv() {
        let ports = std::mem::take(&mut message.ports);
        match message.value().ok().and_then(Envelope::from_value) {
            Some(Envelope::Send { channel, data }) => {
                // Listeners run on their own thread, in order: one that blocks (say, in
                // `invoke_blocking`, whose reply this thread routes) stops nothing here.
                if let Err(back) = listeners.send((channel, data, ports)) {
                    // No listener thread could start: run them here.
                    let (channel, data, ports) = back.0;
                    deliver(inner, channel, data, ports);
                }
            }
            Some(Envelope::Reply { id, result }) => {
                let reply = lock(&inner.pending).replies.remove(&id);
                if let Some((reply, _)) = reply {
                    let _ = reply.post_message(Envelope::Reply { id, result }.into_value(), []);
                }
            }
            Some(Envelope::Bye) => lock(&inner.life).bye = true,
            Some(Envelope::Invoke { .. }) | None => {
                tracing::warn!("msgport-ipc: ignoring an unexpected message from main");
            }
        }
    }
    let replies = {
        let mut pending = lock(&inner.pending);
        pending.gone = true;
        std::mem::take(&mut pending.replies)
    };
    inner.deadlines.notify_all();
    // Dropping the reply ports fails every pending invoke with `MainGone`.
    drop(replies);
    // Listeners finish the messages main sent before it went (a listener waiting on an invoke
    // was just released with `MainGone`).
    drop(listeners);
    if let Some(runner) = runner {
        let _ = runner.join();
    }
    let (how, hooks) = {
        let mut life = lock(&inner.life);
        let how = if life.bye {
            MainGone::Shutdown
        } else {
            MainGone::Lost
        };
        life.gone = Some(how);
        (how, std::mem::take(&mut life.hooks))
    };
    inner.gone.notify_all();
    for hook in hooks {
        if catch_unwind(AssertUnwindSafe(|| hook(how))).is_err() {
            tracing::error!("msgport-ipc: an on_main_gone hook panicked");
        }
    }
    if exit_when_main_goes {
        // Best effort: main is gone, what it would have read is lost anyway.
        let _ = process::flush(Duration::from_secs(1));
        std::process::exit(match how {
            MainGone::Shutdown => 0,
            MainGone::Lost => EXIT_MAIN_LOST,
        });
    }
}
