//! # msgport-bridge: web pages and Node.js programs as peers of a Rust main process
//!
//! A WebSocket gateway (on [axum]) through which code in a web page, or in a Node.js program,
//! holds real `MessagePort`s entangled with msgport ports, and talks to a
//! [`msgport_ipc::IpcMain`] as a child process does: `send`, `invoke`, `postMessage` with
//! ports. The page side is the `msgport-client` TypeScript package of this repository.
//!
//! ```no_run
//! use msgport::MessageChannel;
//! use msgport_bridge::Bridge;
//! use msgport_ipc::IpcMain;
//!
//! # async fn run() -> std::io::Result<()> {
//! let main = IpcMain::new();
//! let bridge = Bridge::new(&main);
//! bridge.on_connect(|page| {
//!     // Give every page that connects one end of a channel; serve the other.
//!     let (mine, theirs) = MessageChannel::new().into_ports();
//!     page.post_message("port", (), [theirs]).expect("the page is connected");
//!     std::thread::spawn(move || {
//!         while let Some(event) = mine.blocking_recv() {
//!             println!("the page says {:?}", event.value());
//!         }
//!         println!("the page closed its port (or left)");
//!     });
//! });
//! let serving = bridge.bind_loopback(0).await?;
//! println!("pages connect to {}", serving.url());
//! # Ok(()) }
//! ```
//!
//! A page is one more peer of main: its messages reach the same listeners and handlers as a
//! child's, with a [`ChildRef`] as `event.sender` whose [`remote`](ChildRef::remote) says where
//! it connected from (its `Origin`, its address). Compare senders as for children.
//!
//! **Two ways to run it.** [`Bridge::bind`] serves the gateway alone (and
//! [`Bridge::bind_with`] next to routes of your own); [`Bridge::router`] is an
//! [`axum::Router`] to merge into an existing axum or tower application (serve it with
//! `into_make_service_with_connect_info::<SocketAddr>()` for the peers' addresses).
//!
//! **Security.** Any web site a user visits can try to open a WebSocket to a loopback port. The
//! gateway refuses, before the upgrade:
//! - a connection without the per-launch token ([`Bridge::token`], random unless set; the
//!   client passes it as the `token` query parameter), compared in constant time;
//! - a browser connection whose `Origin` is neither the gateway's own (same scheme-less host
//!   and port as the `Host` header) nor on the allow-list ([`Bridge::allow_origin`]);
//!   connections without `Origin` (not browsers) are allowed unless
//!   [`Bridge::require_origin`] is set;
//! - a `Host` that is not an IP literal or `localhost` (DNS rebinding), unless
//!   [`Bridge::allow_any_host`];
//! - connections past [`Limits::max_connections`].
//!
//! A connected client can only name ports it was given or gave (any other number ends its
//! connection); frames larger than [`Limits::max_frame_bytes`], more than
//! [`Limits::max_ports`] ports, or a client that leaves more than [`Limits::max_queued_bytes`]
//! unread end that one connection, with the reason logged and sent as the WebSocket close
//! reason. Every port of an ended connection closes: their Rust peers see close. A client whose
//! messages wait unread on the Rust side past [`Limits::max_unread_bytes`] is not read from
//! until they drain.
//!
//! The protocol (one CBOR item per binary WebSocket message) is in [`frame`].

#![warn(missing_debug_implementations)]

mod conn;
pub mod frame;
mod serve;

use std::fmt;
use std::sync::Arc;

pub use msgport_ipc::{ChildRef, RemoteInfo};
pub use serve::Serving;

/// What one connection may cost main.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest WebSocket message a client may send (default 16 MiB).
    pub max_frame_bytes: usize,
    /// Ports open on one connection at a time, both directions together (default 4,096).
    pub max_ports: usize,
    /// Bytes written for a client and not yet taken by its socket (default 64 MiB). A client
    /// that reads nothing while main keeps sending has its connection closed (policy
    /// violation), not main's memory grown: back-pressure would stall every Rust port that
    /// sends to it.
    pub max_queued_bytes: usize,
    /// Bytes of the client's messages held in this process, not yet taken by the Rust side
    /// (queued at ports of this process, or waiting to be written to a child whose port it
    /// posts to and who does not read) (default 64 MiB). Past it the gateway stops reading
    /// that connection until they are down to half: a page posting faster than Rust reads
    /// fills its own WebSocket buffers (`bufferedAmount`), not main's memory.
    pub max_unread_bytes: usize,
    /// Connections at a time (default 256); later ones are refused (503).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 << 20,
            max_ports: 4096,
            max_queued_bytes: 64 << 20,
            max_unread_bytes: 64 << 20,
            max_connections: 256,
        }
    }
}

type ConnectListener = Arc<dyn Fn(&ChildRef) + Send + Sync>;

/// Listeners of a connection event (connect, disconnect).
#[derive(Default)]
pub(crate) struct Listeners(std::sync::Mutex<Vec<ConnectListener>>);

impl Listeners {
    fn add(&self, f: ConnectListener) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    /// Calls every listener (outside the lock: one may add another).
    pub(crate) fn call(&self, peer: &ChildRef) {
        let listeners = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for f in listeners {
            f(peer);
        }
    }
}

pub(crate) struct Config {
    pub(crate) main: msgport_ipc::IpcMain,
    pub(crate) token: String,
    pub(crate) path: String,
    pub(crate) origins: Vec<String>,
    pub(crate) require_origin: bool,
    pub(crate) any_host: bool,
    pub(crate) limits: Limits,
    pub(crate) on_connect: Listeners,
    pub(crate) on_disconnect: Listeners,
    pub(crate) connections: std::sync::atomic::AtomicUsize,
}

/// The gateway. Configure it, then [`bind`](Self::bind) it or mount its
/// [`router`](Self::router). Cloning shares it.
#[derive(Clone)]
pub struct Bridge {
    config: Arc<Config>,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("path", &self.config.path)
            .field("origins", &self.config.origins)
            .field("limits", &self.config.limits)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// A gateway whose clients are peers of `main`, at path `/msgport`, with a random token.
    pub fn new(main: &msgport_ipc::IpcMain) -> Bridge {
        Bridge {
            config: Arc::new(Config {
                main: main.clone(),
                token: random_token(),
                path: "/msgport".into(),
                origins: Vec::new(),
                require_origin: false,
                any_host: false,
                limits: Limits::default(),
                on_connect: Default::default(),
                on_disconnect: Default::default(),
                connections: Default::default(),
            }),
        }
    }

    fn configure(mut self, f: impl FnOnce(&mut Config)) -> Bridge {
        match Arc::get_mut(&mut self.config) {
            Some(config) => f(config),
            None => {
                tracing::error!("msgport-bridge: configure a bridge before cloning or serving it");
            }
        }
        self
    }

    /// Uses `token` instead of a random one (say, one the launcher passed to the page).
    pub fn with_token(self, token: impl Into<String>) -> Bridge {
        let token = token.into();
        self.configure(|c| c.token = token)
    }

    /// Serves the gateway at `path` (default `/msgport`).
    pub fn at(self, path: impl Into<String>) -> Bridge {
        let path = path.into();
        self.configure(|c| c.path = path)
    }

    /// Admits pages of `origin` (`scheme://host[:port]`, as browsers send it) besides the
    /// gateway's own.
    pub fn allow_origin(self, origin: impl Into<String>) -> Bridge {
        let origin = origin.into();
        self.configure(|c| c.origins.push(origin))
    }

    /// Refuses connections that send no `Origin` (only browsers are admitted).
    pub fn require_origin(self) -> Bridge {
        self.configure(|c| c.require_origin = true)
    }

    /// Admits any `Host` header (for a gateway reached by a DNS name, behind TLS say).
    pub fn allow_any_host(self) -> Bridge {
        self.configure(|c| c.any_host = true)
    }

    /// Sets the limits of each connection.
    pub fn with_limits(self, limits: Limits) -> Bridge {
        self.configure(|c| c.limits = limits)
    }

    /// The token clients must present.
    pub fn token(&self) -> &str {
        &self.config.token
    }

    /// The path the gateway is served at.
    pub fn path(&self) -> &str {
        &self.config.path
    }

    /// Calls `f` for each client that connects, with the peer its messages will come from,
    /// before any of them is read. It runs on a thread of tokio's blocking pool: it may take
    /// its time (that connection waits for it; no other does).
    pub fn on_connect<F>(&self, f: F)
    where
        F: Fn(&ChildRef) + Send + Sync + 'static,
    {
        self.config.on_connect.add(Arc::new(f));
    }

    /// Calls `f` when a client's connection has ended (and every port it held is closed), on a
    /// thread of tokio's blocking pool.
    pub fn on_disconnect<F>(&self, f: F)
    where
        F: Fn(&ChildRef) + Send + Sync + 'static,
    {
        self.config.on_disconnect.add(Arc::new(f));
    }

    /// The gateway as an axum router (one route, at [`path`](Self::path)), to merge into an
    /// application.
    pub fn router(&self) -> axum::Router {
        serve::router(self.config.clone())
    }

    /// Serves the gateway alone on `addr` (a loopback address, normally) on the current tokio
    /// runtime, until the returned [`Serving`] is dropped.
    pub async fn bind(&self, addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<Serving> {
        self.bind_with(addr, axum::Router::new()).await
    }

    /// Serves the gateway alone on the loopback interface, `127.0.0.1:port` (0: any free
    /// port), where only programs of this machine can reach it: the default to reach for.
    pub async fn bind_loopback(&self, port: u16) -> std::io::Result<Serving> {
        self.bind((std::net::Ipv4Addr::LOCALHOST, port)).await
    }

    /// Serves the gateway and `routes` (a page, its scripts) on `addr`.
    pub async fn bind_with(
        &self,
        addr: impl tokio::net::ToSocketAddrs,
        routes: axum::Router,
    ) -> std::io::Result<Serving> {
        serve::bind(self.config.clone(), addr, routes).await
    }
}

/// 128 random bits, as hex, from the kernel.
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if let Err(e) = read {
        // Without randomness no token can be trusted: refuse everyone rather than guess.
        tracing::error!("msgport-bridge: no random token ({e}); set one with with_token");
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Entry points for the fuzz targets (`fuzz/`); not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use crate::conn::Conn;
    use crate::frame::Frame;

    /// Feeds the frames in `data` (each preceded by its length, one byte) to one connection
    /// whose port 0 leads to a plain port here, as the gateway's reader would, until one ends
    /// the connection. Every frame the connection writes for the client must be a frame.
    pub fn gateway(data: &[u8]) {
        let (out, mut written) = tokio::sync::mpsc::unbounded_channel();
        let (shut, _watch) = tokio::sync::watch::channel(None);
        let limits = crate::Limits {
            max_ports: 64,
            ..crate::Limits::default()
        };
        let conn = Conn::new(limits, out, Arc::new(AtomicUsize::new(0)), shut);
        let (ours, theirs) = msgport::MessageChannel::new().into_ports();
        conn.attach(0, ours);
        let mut rest = data;
        while let Some((&len, tail)) = rest.split_first() {
            let len = usize::from(len).min(tail.len());
            let (frame, tail) = tail.split_at(len);
            rest = tail;
            if conn.incoming(frame).is_err() {
                break;
            }
            // Answer what reached Rust, so frames flow back to the client too.
            while let Ok(mut event) = theirs.try_recv() {
                let ports = std::mem::take(&mut event.ports);
                let _ = theirs.post_message(event.value().unwrap_or_default(), ports);
            }
            while let Ok(bytes) = written.try_recv() {
                assert!(
                    Frame::decode(&bytes).is_ok(),
                    "the gateway wrote a non-frame"
                );
            }
        }
        conn.end();
    }
}
