//! The process's I/O thread: waits on every link's socket (edge-triggered epoll) and hands
//! readiness to the link, which reads and delivers on this thread. A thread blocked in a pull on
//! a socket-backed port reads that socket itself instead: the link then turns its read interest
//! off here, so a message wakes one thread, not two.
//!
//! The thread never dies of a link: each event is served under `catch_unwind`, and a link whose
//! service panicked is closed (its port observes close). Should the thread end anyway, every
//! link it watched is closed and no new one can register (a typed error instead of a hang).
//!
//! Proven by: `tests/hostile.rs` (`a_panic_serving_one_port_closes_that_port_only`,
//! `if_the_reactor_thread_dies_its_ports_close`, `a_closed_port_whose_peer_never_reads_is_released`,
//! `a_flood_on_one_port_does_not_starve_another`).

use std::collections::{BinaryHeap, HashMap};
use std::os::fd::BorrowedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::Link;
use crate::sys::poll::{Epoll, Events, Interest, Timer, Waker};

pub(crate) struct Reactor {
    epoll: Epoll,
    /// Wakes the thread when a new deadline is set.
    wake: Waker,
    links: Mutex<HashMap<usize, Arc<Link>>>,
    /// Links to call back at a deadline: closed links still writing what their peer has not
    /// read, links holding shared-memory regions (see [`Due`]). A heap, earliest first: the
    /// loop looks at the earliest only, however many links wait (one entry per lingering or
    /// region-holding link; that of a link gone meanwhile is dropped when its time comes).
    deadlines: Mutex<BinaryHeap<Deadline>>,
    /// `deadlines` is not empty (written under its lock): the loop takes no lock per wake-up
    /// for timers when there are none.
    any_deadline: AtomicBool,
    /// Links holding frames a posting thread left queued during a burst (`Link::send_frame`),
    /// to write when `cork_timer` fires.
    corked: Mutex<Corked>,
    cork_timer: Timer,
    /// The thread took `corked`'s links and is writing them (set under `corked`'s lock).
    writing_corked: AtomicBool,
    /// The thread ended: nothing may register any more.
    dead: AtomicBool,
}

static REACTOR: OnceLock<Reactor> = OnceLock::new();
static START: Mutex<()> = Mutex::new(());
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(1);
/// What a link is called back for at its deadline.
#[derive(Clone, Copy)]
enum Due {
    /// A closed link's time to finish writing ran out.
    Linger,
    /// Time to drop the shared-memory regions it no longer uses.
    Trim,
    /// Read it (its ring may hold frames: nothing on its socket would report them).
    Read,
}

/// A link to call back at `at`, for `due`; ordered so that the heap's top is the earliest.
struct Deadline {
    at: Instant,
    link: Weak<Link>,
    due: Due,
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Deadline {}

/// The links a burst left frames queued in, and whether the cork timer is armed for them.
#[derive(Default)]
struct Corked {
    links: Vec<Weak<Link>>,
    armed: bool,
}

/// The token of the wake-up descriptor.
const WAKE: u64 = u64::MAX;
/// The token of the cork timer.
const CORK: u64 = u64::MAX - 1;
/// How long frames a burst left queued wait before the reactor writes them.
pub(crate) const CORK_DELAY: Duration = Duration::from_micros(20);

/// A token naming a link in the reactor.
pub(crate) fn token() -> usize {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// The reactor if it was started (links that are registered know it was).
pub(crate) fn running() -> Option<&'static Reactor> {
    REACTOR.get()
}

/// The reactor, started on first use (which also raises the descriptor limit). Fails, rather
/// than panics, when the system refuses a descriptor or a thread; a later call tries again.
pub(crate) fn reactor() -> std::io::Result<&'static Reactor> {
    if let Some(r) = REACTOR.get() {
        return alive(r);
    }
    let _start = START.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = REACTOR.get() {
        return alive(r);
    }
    if let Err(e) = crate::sys::raise_fd_limit() {
        tracing::warn!("cannot raise RLIMIT_NOFILE: {e}");
    }
    let epoll = Epoll::new()?;
    let wake = Waker::new()?;
    let cork_timer = Timer::new()?;
    let read = Interest {
        read: true,
        write: false,
    };
    epoll.add(wake.fd(), WAKE, read)?;
    epoll.add(cork_timer.fd(), CORK, read)?;
    std::thread::Builder::new()
        .name("msgport-reactor".into())
        .spawn(run)?;
    if let Err(e) = crate::sys::at_exit(write_corked_at_exit) {
        tracing::warn!("msgport: the last messages of a burst may not be written at exit: {e}");
    }
    let r = REACTOR.get_or_init(|| Reactor {
        epoll,
        wake,
        links: Mutex::new(HashMap::new()),
        deadlines: Mutex::new(BinaryHeap::new()),
        any_deadline: AtomicBool::new(false),
        corked: Mutex::new(Corked::default()),
        cork_timer,
        writing_corked: AtomicBool::new(false),
        dead: AtomicBool::new(false),
    });
    Ok(r)
}

/// At exit, writes what bursts left queued for the cork timer (which would otherwise die with
/// the process, where an unbatched post would have been written): what the sockets take now,
/// without waiting for them. The locks it takes are only ever held for a non-blocking write or
/// read, never across a wait or a user callback, so exiting cannot hang on them.
extern "C" fn write_corked_at_exit() {
    let _ = catch_unwind(|| {
        if let Some(r) = REACTOR.get() {
            r.write_corked();
            // The reactor may be writing a batch it took just before: let it finish.
            let until = Instant::now() + EXIT_WAIT;
            while r.writing_corked.load(Ordering::Acquire) && Instant::now() < until {
                std::thread::yield_now();
            }
        }
    });
}

/// The longest an exiting process waits for the reactor to finish writing a burst's tail.
const EXIT_WAIT: Duration = Duration::from_millis(10);

fn alive(r: &'static Reactor) -> std::io::Result<&'static Reactor> {
    if r.dead.load(Ordering::Acquire) {
        return Err(std::io::Error::other(
            "the msgport reactor thread has ended",
        ));
    }
    Ok(r)
}

/// Test hooks: make the reactor panic while serving the next event, inside the per-event guard
/// (`SERVE`) or outside it, ending the thread (`THREAD`).
pub(crate) static PANIC_SERVE: AtomicBool = AtomicBool::new(false);
pub(crate) static PANIC_THREAD: AtomicBool = AtomicBool::new(false);

/// Closes every watched link if the thread ends (only a bug can end it).
struct OnExit(&'static Reactor);

impl Drop for OnExit {
    fn drop(&mut self) {
        self.0.dead.store(true, Ordering::Release);
        tracing::error!("msgport reactor thread ended; closing its ports");
        let links: Vec<Arc<Link>> = self
            .0
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, l)| l)
            .collect();
        for link in links {
            let _ = catch_unwind(AssertUnwindSafe(|| link.fail()));
        }
    }
}

/// How long the reactor keeps looking for more events after serving some.
const LOOK_AGAIN: Duration = Duration::from_micros(50);

fn run() {
    crate::dispatch::mark_io_thread();
    let r = loop {
        if let Some(r) = REACTOR.get() {
            break r;
        }
        std::thread::yield_now();
    };
    let _on_exit = OnExit(r);
    let mut events = Events::with_capacity(1024);
    // After serving events, look again without sleeping for a little while: a stream's next
    // bytes are usually microseconds away, and a reactor asleep in epoll makes every write of
    // the sender pay a wake-up (measured: a consumer that keeps up with a stream across CPUs
    // halved its throughput). Yielding in between leaves the CPU to the consumer.
    let mut look_until: Option<Instant> = None;
    loop {
        let mut timeout = r
            .next_deadline()
            .map(|at| at.saturating_duration_since(Instant::now()));
        let looking = look_until.is_some_and(|until| Instant::now() < until);
        if looking {
            timeout = Some(Duration::ZERO);
        }
        let mut served = false;
        if let Err(e) = r.epoll.wait(&mut events, timeout, &mut |ready| {
            served |= ready.token != WAKE && ready.token != CORK;
            r.serve(ready)
        }) {
            tracing::error!("msgport reactor: epoll_wait failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        if served {
            look_until = Some(Instant::now() + LOOK_AGAIN);
        } else if looking {
            std::thread::yield_now();
        }
        if PANIC_THREAD.load(Ordering::Relaxed) && PANIC_THREAD.swap(false, Ordering::Relaxed) {
            panic!("msgport reactor: injected panic (test hook)");
        }
        r.expire();
    }
}

impl Reactor {
    /// Hands one readiness report to its link, containing any panic to that link.
    fn serve(&self, ready: crate::sys::poll::Ready) {
        if ready.token == WAKE {
            self.wake.reset();
            return;
        }
        if ready.token == CORK {
            self.cork_timer.reset();
            self.write_corked();
            return;
        }
        let link = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(ready.token as usize))
            .cloned();
        let Some(link) = link else { return };
        let served = catch_unwind(AssertUnwindSafe(|| {
            if PANIC_SERVE.load(Ordering::Relaxed) && PANIC_SERVE.swap(false, Ordering::Relaxed) {
                panic!("msgport reactor: injected panic (test hook)");
            }
            if ready.writable {
                link.on_writable();
            }
            if ready.readable {
                link.on_readable();
            }
        }));
        if served.is_err() {
            tracing::error!("msgport reactor: serving a port panicked; closing that port");
            let _ = catch_unwind(AssertUnwindSafe(|| link.fail()));
        }
    }
}

impl Reactor {
    pub(crate) fn register(
        &self,
        token: usize,
        fd: BorrowedFd<'_>,
        link: &Arc<Link>,
        read: bool,
        write: bool,
    ) -> std::io::Result<()> {
        if self.dead.load(Ordering::Acquire) {
            return Err(std::io::Error::other(
                "the msgport reactor thread has ended",
            ));
        }
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, link.clone());
        if let Err(e) = self.epoll.add(fd, token as u64, Interest { read, write }) {
            self.links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
            return Err(e);
        }
        Ok(())
    }

    /// Sets what the reactor watches a link's socket for. Re-arming reports readiness that is
    /// already there (how a paused or budget-limited link gets its next turn).
    pub(crate) fn interest(&self, token: usize, fd: BorrowedFd<'_>, read: bool, write: bool) {
        if let Err(e) = self
            .epoll
            .modify(fd, token as u64, Interest { read, write })
        {
            tracing::warn!("msgport reactor: epoll_ctl MOD failed: {e}");
        }
    }

    /// Has `link`, whose posting thread left frames queued, written within [`CORK_DELAY`].
    /// False when the timer cannot be armed: the caller writes them itself.
    pub(crate) fn cork(&self, link: Weak<Link>) -> bool {
        let mut corked = self.corked.lock().unwrap_or_else(|p| p.into_inner());
        if !corked.armed {
            if let Err(e) = self.cork_timer.arm(CORK_DELAY) {
                tracing::warn!("msgport: cannot arm the reactor's timer: {e}");
                return false;
            }
            corked.armed = true;
        }
        corked.links.push(link);
        true
    }

    /// The cork timer fired (or the process is exiting): writes what the corked links queued.
    fn write_corked(&self) {
        let links = {
            let mut corked = self.corked.lock().unwrap_or_else(|p| p.into_inner());
            corked.armed = false;
            if corked.links.is_empty() {
                return;
            }
            self.writing_corked.store(true, Ordering::Release);
            std::mem::take(&mut corked.links)
        };
        for link in links.iter().filter_map(Weak::upgrade) {
            let written = catch_unwind(AssertUnwindSafe(|| link.write_corked()));
            if written.is_err() {
                tracing::error!("msgport reactor: writing a port panicked; closing that port");
                let _ = catch_unwind(AssertUnwindSafe(|| link.fail()));
            }
        }
        self.writing_corked.store(false, Ordering::Release);
    }

    /// Whether every link has written all it queued.
    pub(crate) fn all_flushed(&self) -> bool {
        let corked = !self
            .corked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .links
            .is_empty();
        if corked || self.writing_corked.load(Ordering::Acquire) {
            return false;
        }
        let links: Vec<Arc<Link>> = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        links.iter().all(|l| l.is_flushed())
    }

    pub(crate) fn deregister(&self, token: usize, fd: BorrowedFd<'_>) {
        self.epoll.delete(fd);
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
    }

    /// Gives a closed link `linger` to finish writing; then it is shut.
    pub(crate) fn linger(&self, link: Weak<Link>, linger: Duration) {
        self.call_at(Instant::now() + linger, link, Due::Linger);
    }

    /// Has `link` trim its shared-memory regions at `at` (see `Link::trim_regions`).
    pub(crate) fn trim_at(&self, at: Instant, link: Weak<Link>) {
        self.call_at(at, link, Due::Trim);
    }

    /// Has `link` read on this thread at once, as if its socket were readable: frames waiting
    /// in its ring are not reported by the socket (see `Link::arm_reading`).
    pub(crate) fn read_soon(&self, link: Weak<Link>) {
        self.call_at(Instant::now(), link, Due::Read);
    }

    fn call_at(&self, at: Instant, link: Weak<Link>, due: Due) {
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        deadlines.push(Deadline { at, link, due });
        self.any_deadline.store(true, Ordering::Release);
        drop(deadlines);
        self.wake.wake();
    }

    fn next_deadline(&self) -> Option<Instant> {
        if !self.any_deadline.load(Ordering::Acquire) {
            return None;
        }
        self.deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .peek()
            .map(|d| d.at)
    }

    fn expire(&self) {
        if !self.any_deadline.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let expired: Vec<(Weak<Link>, Due)> = {
            let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
            let mut expired = Vec::new();
            while deadlines.peek().is_some_and(|d| d.at <= now) {
                if let Some(Deadline { link, due, .. }) = deadlines.pop() {
                    expired.push((link, due));
                }
            }
            if deadlines.is_empty() {
                self.any_deadline.store(false, Ordering::Release);
            }
            expired
        };
        for (link, due) in expired {
            let Some(link) = link.upgrade() else { continue };
            let served = catch_unwind(AssertUnwindSafe(|| match due {
                Due::Linger => link.linger_expired(),
                Due::Trim => link.trim_regions(),
                Due::Read => link.on_readable(),
            }));
            if served.is_err() {
                tracing::error!("msgport reactor: serving a port panicked; closing that port");
                let _ = catch_unwind(AssertUnwindSafe(|| link.fail()));
            }
        }
    }
}

/// Keeps a descriptor usable by a thread that polls it without the link's lock.
pub(crate) type SharedFd = Arc<std::os::fd::OwnedFd>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_out_earliest_first() {
        let now = Instant::now();
        let mut heap = BinaryHeap::new();
        for secs in [30, 5, 10, 5, 1] {
            heap.push(Deadline {
                at: now + Duration::from_secs(secs),
                link: Weak::new(),
                due: Due::Trim,
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop())
            .map(|d| (d.at - now).as_secs())
            .collect();
        assert_eq!(order, [1, 5, 5, 10, 30]);
    }
}
