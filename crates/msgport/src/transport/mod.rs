//! The cross-process backing of ports: one `AF_UNIX` stream socket pair per channel that crossed
//! a process boundary, its descriptors passed with `SCM_RIGHTS` inside the message that transfers
//! the port.
//!
//! - [`Link`]: one socket end in this process: what is written to it, and where what is read
//!   from it goes (the port's endpoint).
//! - `wire`: the frames on a link and the records that describe a port in flight.
//! - `reactor`: the thread that reads every link of the process (edge-triggered epoll); a
//!   thread blocked in a pull reads its own port's socket instead (pull mode).
//! - `shm`: large frames through shared-memory regions; `ring`: a link's small frames through
//!   a shared-memory ring per direction while its reader pulls (a `futex` wake-up instead of a
//!   socket round trip).
//!
//! Hand-off without loss (DESIGN §3): when a port that is already socket-backed leaves again,
//! the reactor stops reading its socket first; the messages it had read but not delivered, the
//! bytes of a partly read frame and the unsent bytes of the write queue travel in the port's
//! record, and everything newer is still in the kernel buffer, which travels with the
//! descriptor. When a port whose peer is in this process leaves, its endpoint becomes a proxy:
//! what the peer posts to it from then on is written to a new socket whose other end travels.

#[doc(hidden)]
pub(crate) mod fuzz;
pub(crate) mod handoff;
mod link;
mod reactor;
pub(crate) mod ring;
pub(crate) mod shm;
pub(crate) mod wire;

pub(crate) use link::Link;
pub(crate) use reactor::{PANIC_SERVE, PANIC_THREAD};

/// Waits until every message posted to another process has been handed to the kernel, or
/// `timeout` passes; returns whether everything was written.
pub(crate) fn flush(timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let Some(r) = reactor::running() else {
        return true;
    };
    loop {
        if r.all_flushed() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}
