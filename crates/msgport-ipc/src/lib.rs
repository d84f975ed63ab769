//! # msgport-ipc: main and child processes over msgport
//!
//! Electron's `ipcMain` / `ipcRenderer` / `webContents.postMessage` / `utilityProcess` layer for
//! Rust programs. The main process spawns children ([`IpcMain::spawn`]); each child gets its
//! connection with [`IpcChild::connect`]. Named channels carry, in both directions,
//! fire-and-forget messages (`send`), request/response (`invoke` / [`IpcMain::handle`]) and
//! messages that transfer ports (`post_message`).
//!
//! ```no_run
//! use msgport_ipc::{IpcChild, IpcMain};
//!
//! fn main() -> std::io::Result<()> {
//!     if std::env::args().nth(1).as_deref() == Some("child") {
//!         // The child: ask main to double a number, then tell it the answer.
//!         let ipc = IpcChild::connect()?;
//!         let doubled: u32 = ipc.invoke_blocking_as("double", 21).expect("main answers");
//!         ipc.send("result", doubled).expect("sent");
//!         ipc.wait_main_gone();
//!         return Ok(());
//!     }
//!     // Main: answer `double`, and take `result` from this one child only.
//!     let main = IpcMain::new();
//!     main.handle_typed("double", |e| e.data::<u32>().map(|n| n * 2));
//!     let mut cmd = std::process::Command::new(std::env::current_exe()?);
//!     cmd.arg("child");
//!     let child = main.spawn(&mut cmd)?;
//!     let (tx, rx) = std::sync::mpsc::channel();
//!     let expected = child.clone();
//!     main.on("result", move |e| {
//!         if e.sender == expected {
//!             tx.send(e.data::<u32>().expect("a number")).expect("main waits");
//!         }
//!     });
//!     println!("the child says {}", rx.recv().expect("a result"));
//!     main.shutdown();
//!     child.wait()?;
//!     Ok(())
//! }
//! ```
//!
//! Every event in main says which child sent it ([`IpcMainEvent::sender`]): an id that main
//! assigned, and the OS pid, taken from the connection the message arrived on, so a child
//! cannot claim to be another. The seed's security check is one comparison:
//! `if event.sender == app { ... }`.
//!
//! | Electron | msgport-ipc |
//! |---|---|
//! | `ipcMain.on(ch, (e, ...args))` / `once` / `off` (`removeListener`) / `removeAllListeners` | [`IpcMain::on`] (adds; returns a [`ListenerId`]) / [`IpcMain::once`] / [`IpcMain::off`] ([`IpcMain::remove_listener`]) / [`IpcMain::remove_all_listeners`] (all work from inside a listener; messages sent before main listens on a channel wait for its first listener: 1,024 per channel, 16,384 and 64 MiB of data in all, a port counting 16 KiB) |
//! | `ipcMain.handle(ch, fn)` / `handleOnce` / `removeHandler` | [`IpcMain::handle`] (or [`IpcMain::handle_typed`]: any `Serialize` answer, any `Display` error) / [`IpcMain::handle_once`] / [`IpcMain::remove_handler`] |
//! | `ipcMain.handle(ch, async fn)` | [`IpcMain::handle_async`] (on the caller's tokio runtime, or msgport-ipc's own task thread; the connection keeps serving meanwhile) |
//! | `event.senderFrame` / `event.sender` | [`IpcEvent::sender`]: a [`ChildRef`] in main, a [`MainRef`] in a child (one event shape, [`IpcEvent`], on both sides: `sender`, `channel`, [`data::<T>()`](IpcEvent::data), `ports`) |
//! | `webContents.send` / `webContents.postMessage` | [`ChildRef::send`] / [`ChildRef::post_message`] |
//! | `ipcRenderer.send` / `invoke` / `postMessage` | [`IpcChild::send`] / [`IpcChild::invoke`] (typed: [`IpcChild::invoke_as`]; also [`IpcChild::invoke_timeout`], [`IpcChild::set_invoke_timeout`]: no timeout by default, as in Electron) / [`IpcChild::post_message`] |
//! | `ipcRenderer.on` / `once` / `off` (`removeListener`) / `removeAllListeners` | [`IpcChild::on`] / [`IpcChild::once`] / [`IpcChild::off`] / [`IpcChild::remove_all_listeners`] (all work from inside a listener) |
//! | `utilityProcess.fork` (its `stdout`/`stderr`, `pid`, `kill()`, `exit` event) | [`IpcMain::spawn`] ([`ChildRef::take_stdout`] / [`ChildRef::take_stderr`], [`ChildRef::pid`], [`ChildRef::kill`] through a pidfd, [`ChildRef::wait`] and [`IpcMain::on_exit`]) |
//! | main going away, seen from a child | [`IpcChild::on_main_gone`], [`IpcChild::wait_main_gone`]; main says goodbye with [`IpcMain::shutdown`]; whether the child exits then: [`ConnectOptions::exit_when_main_goes`] |
//!
//! Decoding is one vocabulary too: [`IpcEvent::data`] fails with msgport's [`DecodeError`],
//! whose text names the path to the value that did not fit (`jobs[2].owner.id: invalid type:
//! string "x", expected u32`); [`IpcChild::invoke_as`] reports the same text as
//! [`InvokeError::Data`]. Data that is only borrowed is fine everywhere: `send` and
//! `post_message` take any `Serialize` (`&str`, `&MyStruct`), and msgport's
//! [`MessagePort::post_message_ref`] does the same on a bare port.

#![warn(missing_debug_implementations)]

mod child_side;
mod envelope;
mod event;
mod main_side;
mod tasks;

pub use child_side::{ConnectOptions, IpcChild, IpcChildEvent, MainGone, EXIT_MAIN_LOST};
pub use event::{IpcEvent, MainRef};

pub use main_side::{ChildExit, ChildRef, IpcMain, IpcMainEvent, RemoteInfo};
/// msgport itself, and what the seed's flows use of it, so that one dependency suffices.
pub use msgport;
pub use msgport::{
    from_value, to_value, value, DecodeError, MessageChannel, MessageEvent, MessagePort, PostError,
    Value,
};

/// The crate README's example, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// Identifies a listener, for [`IpcMain::remove_listener`] and [`IpcChild::off`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) u64);

/// Why an `invoke` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// Main has no handler for the channel.
    #[error("no handler registered for channel {0:?}")]
    NoHandler(String),
    /// The handler returned an error.
    #[error("handler failed: {0}")]
    HandlerFailed(String),
    /// The handler panicked; main keeps serving.
    #[error("handler panicked: {0}")]
    HandlerPanicked(String),
    /// The connection to main closed before the reply came (main exited or crashed).
    #[error("main process went away")]
    MainGone,
    /// The request could not be sent.
    #[error("request refused: {0}")]
    Post(#[from] msgport::PostError),
    /// The data could not be converted.
    #[error("data conversion failed: {0}")]
    Data(String),
    /// No answer came within the invoke's timeout.
    #[error("no answer within the invoke timeout")]
    Timeout,
    /// Main refused the invoke: [`MAX_PENDING_INVOKES`] of this child's invokes already wait
    /// for async handlers. Try again once some are answered.
    #[error("main is busy: too many of this child's invokes are waiting for async handlers")]
    Busy,
}

/// At most this many invokes of one child wait for async handlers
/// ([`IpcMain::handle_async`]) at once; main refuses more at once with [`InvokeError::Busy`].
/// Each one waiting holds its message and its handler's future in main: without a limit, a
/// child invoking faster than the handlers finish (hostile, or looping) would grow main's
/// memory without bound. Handlers registered with [`IpcMain::handle`] run one at a time on the
/// child's connection and need no limit.
pub const MAX_PENDING_INVOKES: usize = 4096;

impl InvokeError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            InvokeError::NoHandler(_) => "no-handler",
            InvokeError::HandlerFailed(_) => "handler-failed",
            InvokeError::HandlerPanicked(_) => "handler-panicked",
            InvokeError::MainGone => "main-gone",
            InvokeError::Post(_) => "post",
            InvokeError::Data(_) => "data",
            InvokeError::Timeout => "timeout",
            InvokeError::Busy => "busy",
        }
    }

    /// What the variant carries (a channel, a message), as it crosses the wire: the
    /// receiving side rebuilds the same variant from `kind` and this, never from the text.
    pub(crate) fn detail(&self) -> Option<String> {
        match self {
            InvokeError::NoHandler(s)
            | InvokeError::HandlerFailed(s)
            | InvokeError::HandlerPanicked(s)
            | InvokeError::Data(s) => Some(s.clone()),
            InvokeError::Post(e) => Some(e.to_string()),
            InvokeError::MainGone | InvokeError::Timeout | InvokeError::Busy => None,
        }
    }

    /// The variant named by `kind`, carrying `detail`. Main only ever sends `no-handler`,
    /// `handler-failed`, `handler-panicked` and `busy`; any other kind reads as a failed
    /// handler (a `PostError` does not cross processes).
    pub(crate) fn from_wire(kind: &str, detail: String) -> InvokeError {
        match kind {
            "timeout" => InvokeError::Timeout,
            "main-gone" => InvokeError::MainGone,
            "no-handler" => InvokeError::NoHandler(detail),
            "handler-panicked" => InvokeError::HandlerPanicked(detail),
            "data" => InvokeError::Data(detail),
            "busy" => InvokeError::Busy,
            _ => InvokeError::HandlerFailed(detail),
        }
    }
}
