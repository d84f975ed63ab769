//! A child process's side: its connection to main, named channels, `invoke`.
//!
//! A thread of the child's reads the connection: it runs the channel listeners (one at a time,
//! in order), queues messages for channels nobody listens to yet, and routes `invoke` replies to
//! their callers. When the connection closes (main exited or crashed), pending invokes fail
//! with [`InvokeError::MainGone`] and, unless told otherwise, the child exits.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use msgport::{process, MessageChannel, MessagePort, PostError, Value};
use serde::Serialize;

use crate::envelope::Envelope;
use crate::InvokeError;

type ChildListener = Box<dyn FnMut(IpcChildEvent) + Send>;

/// A message from main, as a child's listener gets it.
#[derive(Debug)]
pub struct IpcChildEvent {
    /// The channel.
    pub channel: String,
    /// The data.
    pub data: Value,
    /// The ports it transferred (`post_message`).
    pub ports: Vec<MessagePort>,
}

impl IpcChildEvent {
    /// The data decoded as `T`.
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T, msgport::ValueError> {
        msgport::from_value(self.data.clone())
    }
}

#[derive(Default)]
struct Pending {
    /// Reply ports of invokes in flight, by request id.
    replies: HashMap<u64, MessagePort>,
    /// The connection closed: no reply will ever come.
    gone: bool,
}

#[derive(Default)]
struct Channels {
    listeners: HashMap<String, ChildListener>,
    queued: HashMap<String, VecDeque<IpcChildEvent>>,
}

struct Inner {
    port: MessagePort,
    pending: Mutex<Pending>,
    channels: Mutex<Channels>,
    next: AtomicU64,
}

/// A child's connection to main (Electron's `ipcRenderer`). Cheap to clone.
#[derive(Clone)]
pub struct IpcChild {
    inner: Arc<Inner>,
}

impl IpcChild {
    /// Connects to the main process that spawned this one with
    /// [`IpcMain::spawn`](crate::IpcMain::spawn). When main goes away, this process exits
    /// (status 0) after failing pending invokes; see [`connect_with`](Self::connect_with).
    pub fn connect() -> std::io::Result<IpcChild> {
        Self::connect_with(true)
    }

    /// Like [`connect`](Self::connect); `exit_when_main_goes` chooses whether this process
    /// exits when the connection to main closes.
    pub fn connect_with(exit_when_main_goes: bool) -> std::io::Result<IpcChild> {
        Ok(Self::over(process::bootstrap()?, exit_when_main_goes))
    }

    /// Connects to a main process that [`listen`](crate::IpcMain::listen)s on `path` (for
    /// processes main did not spawn). This process does not exit when main goes away.
    pub fn connect_to(path: impl AsRef<std::path::Path>) -> std::io::Result<IpcChild> {
        Ok(Self::over(process::connect(path)?, false))
    }

    /// Serves the IPC protocol over an existing port to main (for example one from
    /// `msgport::process::connect`).
    pub fn over(port: MessagePort, exit_when_main_goes: bool) -> IpcChild {
        let inner = Arc::new(Inner {
            port,
            pending: Mutex::default(),
            channels: Mutex::default(),
            next: AtomicU64::new(1),
        });
        let served = inner.clone();
        std::thread::Builder::new()
            .name("msgport-ipc-main".into())
            .spawn(move || serve(&served, exit_when_main_goes))
            .expect("spawn the msgport-ipc thread");
        IpcChild { inner }
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

    /// Asks main's handler for `channel` and waits for its answer (any executor).
    pub async fn invoke<T: Serialize>(&self, channel: &str, data: T) -> Result<Value, InvokeError> {
        let reply = self.request(channel, data)?;
        Self::answer(reply.recv().await)
    }

    /// [`invoke`](Self::invoke), blocking this thread.
    pub fn invoke_blocking<T: Serialize>(
        &self,
        channel: &str,
        data: T,
    ) -> Result<Value, InvokeError> {
        let reply = self.request(channel, data)?;
        Self::answer(reply.blocking_recv())
    }

    fn request<T: Serialize>(&self, channel: &str, data: T) -> Result<MessagePort, InvokeError> {
        let data = msgport::to_value(&data).map_err(|e| InvokeError::Data(e.to_string()))?;
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (reply, reply_in) = MessageChannel::new().into_ports();
        {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.gone {
                return Err(InvokeError::MainGone);
            }
            pending.replies.insert(id, reply_in);
        }
        let envelope = Envelope::Invoke {
            channel: channel.to_owned(),
            id,
            data,
        }
        .into_value();
        if let Err(e) = self.inner.port.post_message(envelope, []) {
            self.inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .replies
                .remove(&id);
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
    /// before anyone listened (in order). Replaces an earlier listener of the channel. `f` runs
    /// on the connection's thread, one message at a time.
    pub fn on<F>(&self, channel: &str, f: F)
    where
        F: FnMut(IpcChildEvent) + Send + 'static,
    {
        let mut f: ChildListener = Box::new(f);
        loop {
            let next = {
                let mut ch = self
                    .inner
                    .channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match ch.queued.get_mut(channel).and_then(VecDeque::pop_front) {
                    Some(event) => event,
                    None => {
                        ch.listeners.insert(channel.to_owned(), f);
                        return;
                    }
                }
            };
            f(next);
        }
    }

    /// Stops listening on `channel`; later messages are queued again.
    pub fn remove_listener(&self, channel: &str) {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .listeners
            .remove(channel);
    }
}

fn serve(inner: &Inner, exit_when_main_goes: bool) {
    // This thread only ever pulls from the connection: let it read the socket itself.
    inner.port.set_low_latency(true);
    while let Some(mut message) = inner.port.blocking_recv() {
        let ports = std::mem::take(&mut message.ports);
        match message.value().ok().and_then(Envelope::from_value) {
            Some(Envelope::Send { channel, data }) => {
                let event = IpcChildEvent {
                    channel: channel.clone(),
                    data,
                    ports,
                };
                let ready = {
                    let mut ch = inner.channels.lock().unwrap_or_else(|p| p.into_inner());
                    match ch.listeners.remove(&channel) {
                        Some(l) => Some((l, event)),
                        None => {
                            ch.queued
                                .entry(channel.clone())
                                .or_default()
                                .push_back(event);
                            None
                        }
                    }
                };
                if let Some((mut l, event)) = ready {
                    l(event);
                    // Put it back unless `on` replaced it meanwhile.
                    inner
                        .channels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .listeners
                        .entry(channel)
                        .or_insert(l);
                }
            }
            Some(Envelope::Reply { id, result }) => {
                let reply = inner
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replies
                    .remove(&id);
                if let Some(reply) = reply {
                    let _ = reply.post_message(Envelope::Reply { id, result }.into_value(), []);
                }
            }
            Some(Envelope::Invoke { .. }) | None => {
                tracing::warn!("msgport-ipc: ignoring an unexpected message from main");
            }
        }
    }
    let replies = {
        let mut pending = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.gone = true;
        std::mem::take(&mut pending.replies)
    };
    // Dropping the reply ports fails every pending invoke with `MainGone`.
    drop(replies);
    if exit_when_main_goes {
        std::process::exit(0);
    }
}
