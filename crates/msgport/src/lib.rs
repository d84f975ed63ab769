//! # msgport: Electron-style MessagePorts for Rust
//!
//! A [`MessageChannel`] is a pair of entangled [`MessagePort`]s: a message posted on one arrives
//! on the other, in order. A message carries structured data (any `serde` type, or the dynamic
//! [`Value`] of the structured-clone model) and a transfer list of ports, which move to the
//! receiver and can be transferred again, any number of hops. Messages posted before the other
//! side listens wait in its queue. When one end is closed or dropped, the other observes a close
//! event after every message posted before it (Electron's extension to the web's ports).
//!
//! ```
//! use msgport::MessageChannel;
//!
//! let (port1, port2) = MessageChannel::new().into_ports();
//! // A reply stream: one request, several replies, ended by close.
//! let worker = std::thread::spawn(move || {
//!     let request = port2.blocking_recv().unwrap();
//!     let (count, [reply]): (u32, [msgport::MessagePort; 1]) = {
//!         let (count, ports) = request.into_parts::<u32>().unwrap();
//!         (count, ports.try_into().unwrap())
//!     };
//!     for i in 0..count {
//!         reply.post_message(i, []).unwrap();
//!     }
//!     // Dropping `reply` closes it: the requester sees the end of the stream.
//! });
//! let (reply_here, reply_there) = MessageChannel::new().into_ports();
//! port1.post_message(3u32, [reply_there]).unwrap();
//! let mut got = Vec::new();
//! while let Some(event) = reply_here.blocking_recv() {
//!     got.push(event.data::<u32>().unwrap());
//! }
//! assert_eq!(got, [0, 1, 2]);
//! worker.join().unwrap();
//! ```
//!
//! ## Where Electron's pieces are
//!
//! | Electron | msgport |
//! |---|---|
//! | `new MessageChannelMain()` → `{ port1, port2 }` | [`MessageChannel::new`] → [`MessageChannel::port1`], [`MessageChannel::port2`] |
//! | `port.postMessage(data, [ports])` | [`MessagePort::post_message`]`(data, [ports])` |
//! | `port.on('message', (e) => …)` | [`MessagePort::on_message`], then [`MessagePort::start`] |
//! | `port.on('close', …)` | [`MessagePort::on_close`]; or a pull returning `None` / `Closed` |
//! | `port.start()` / `port.close()` | [`MessagePort::start`] / [`MessagePort::close`] (and `Drop`) |
//! | `event.data` / `event.ports` | [`MessageEvent::data`] (typed) or [`MessageEvent::value`], and [`MessageEvent::ports`] |
//! | `messageerror` | the [`DecodeError`] of that one message's decode |
//! | `await` on a message (web-style) | [`MessagePort::recv`], also [`blocking_recv`](MessagePort::blocking_recv), [`try_recv`](MessagePort::try_recv), a `Stream` |
//!
//! ## What is in this crate
//! - ports: [`MessageChannel`], [`MessagePort`], [`MessageEvent`];
//! - the data model and its serde bridge: [`Value`], [`to_value`], [`from_value`], [`value!`];
//! - [`codec`]: the CBOR encoding (RFC 8949) a message takes when it leaves the process
//!   (specified for other languages in the repository's wire-format document), and
//!   [`codec::to_vec`] / [`codec::from_slice`], which write and read any serde type in it
//!   directly;
//! - a port whose peer is in another process is backed by a Unix socket pair per channel, its
//!   descriptors passed in the messages that transfer it, and read by one I/O thread per
//!   process; large messages travel in shared memory, and a port that exchanges requests and
//!   answers moves its small messages into a shared-memory ring per direction while a thread
//!   waits on it (a `futex` wake-up instead of a socket write and read). Nothing changes in the
//!   API: the same [`MessagePort`] either way, plus [`MessagePort::set_low_latency`];
//! - [`process`]: a process's first port to another ([`process::spawn`] /
//!   [`process::bootstrap`], [`process::listen`] / [`process::connect`]), and
//!   [`process::flush`] before exiting;
//! - [`set_limits`]: what a peer process can make this one spend (message size, queued bytes,
//!   how long a closed port waits for a peer that does not read).
//!
//! ## Across processes
//!
//! ```no_run
//! use msgport::process;
//!
//! if std::env::args().nth(1).as_deref() == Some("child") {
//!     // The child: answer every number with its double.
//!     let port = process::bootstrap().expect("started by process::spawn");
//!     while let Some(event) = port.blocking_recv() {
//!         let n: u32 = event.data().expect("a number");
//!         port.post_message(n * 2, []).expect("posted");
//!     }
//! } else {
//!     let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
//!     cmd.arg("child");
//!     let (mut child, port) = process::spawn(&mut cmd).expect("spawned");
//!     port.post_message(21u32, []).unwrap();
//!     assert_eq!(port.blocking_recv().unwrap().data::<u32>().unwrap(), 42);
//!     drop(port); // the child sees the close and ends
//!     child.wait().unwrap();
//! }
//! ```
//!
//! ## Seeing what msgport does on a peer's behalf
//!
//! When a peer process breaks the rules (a malformed frame, too many descriptors), msgport closes
//! that one port and says why through [`tracing`](https://docs.rs/tracing) at `warn` or `debug`
//! level; raising the descriptor limit and dropping a message a closed port could not send are
//! logged the same way. Install a subscriber to see them, for example
//! `tracing_subscriber::fmt().with_env_filter("msgport=debug").init()`; a program that uses the
//! `log` crate instead (`env_logger` and the like) gets them as `log` records when no `tracing`
//! subscriber is installed.
//!
//! ## Platform
//!
//! Linux only for now: the transport uses epoll, `SCM_RIGHTS` descriptor passing,
//! `SO_PEERCRED` credentials, `accept4`/`SOCK_CLOEXEC` and pidfds; other targets get a
//! compile error naming this. Another Unix would take kqueue in place of epoll and its own
//! peer-credential call (`getpeereid`, `LOCAL_PEERCRED`); Windows would take named pipes or
//! `AF_UNIX` sockets with `DuplicateHandle` in place of descriptor passing.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "msgport supports Linux only for now (epoll, SCM_RIGHTS, SO_PEERCRED, pidfds): see the \
     crate documentation, section Platform"
);

mod buffers;
pub mod codec;
mod dispatch;
mod error;
mod event;
mod inline;
mod limits;
mod native;
mod port;
pub mod process;
mod sync;
mod sys;
mod transport;
mod value;

pub use error::{DecodeError, PostError, RecvTimeoutError, Refused, TryRecvError, ValueError};
pub use event::MessageEvent;
pub use port::{MessageChannel, MessagePort, Recv};

pub use limits::{limits, set_limits, set_max_message_size, Limits};
pub use value::{from_value, to_value, BigInt, Binary, BinaryKind, ErrorValue, Value};

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    /// Decodes a byte stream as a link would (frames, then bodies and port records).
    pub fn decode_frames(bytes: &[u8]) -> usize {
        crate::transport::wire::decode_stream(bytes)
    }

    /// Writes `input` into a port's socket in pieces with descriptors attached, as a peer
    /// would, and drains the port (see `transport/fuzz.rs` for the format).
    pub fn link_reads(input: &[u8]) -> usize {
        crate::transport::fuzz::link_reads(input)
    }

    /// [`link_reads`], the port read by a thread waiting for answers (it reads the socket
    /// itself, asleep in `recvmsg`) while another thread writes.
    pub fn link_pulls(input: &[u8]) -> usize {
        crate::transport::fuzz::link_pulls(input)
    }
}

/// Test hooks for the hostile-peer suite; not part of the API.
#[doc(hidden)]
pub mod __testing {
    /// The reactor panics while serving its next event (inside its per-event guard).
    pub fn panic_reactor_while_serving() {
        crate::transport::PANIC_SERVE.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The reactor thread panics after its next wake-up (outside the per-event guard).
    pub fn panic_reactor_thread() {
        crate::transport::PANIC_THREAD.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many rings this process writes and reads now (a link's small frames in shared
    /// memory, `transport::ring`).
    pub fn rings_in_use() -> (usize, usize) {
        crate::transport::ring::in_use()
    }
}

/// The crate README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
