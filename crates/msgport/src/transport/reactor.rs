//! The process's I/O thread: waits on every link's socket (edge-triggered epoll) and hands
//! readiness to the link, which reads and delivers on this thread. A thread blocked in a pull on
//! a socket-backed port reads that socket itself instead: the link then turns its read interest
//! off here, so a message wakes one thread, not two.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::event::epoll::{self, EventData, EventFlags};

use super::Link;

pub(crate) struct Reactor {
    epoll: OwnedFd,
    links: Mutex<HashMap<usize, Arc<Link>>>,
    next: AtomicUsize,
}

static REACTOR: OnceLock<Reactor> = OnceLock::new();

/// The reactor, started on first use (which also raises the descriptor limit).
pub(crate) fn reactor() -> &'static Reactor {
    REACTOR.get_or_init(|| {
        if let Err(e) = crate::sys::raise_fd_limit() {
            tracing::warn!("cannot raise RLIMIT_NOFILE: {e}");
        }
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .expect("epoll_create1 fails only when out of descriptors");
        std::thread::Builder::new()
            .name("msgport-reactor".into())
            .spawn(run)
            .expect("spawn the msgport reactor thread");
        Reactor {
            epoll,
            links: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(1),
        }
    })
}

fn run() {
    let r = loop {
        if let Some(r) = REACTOR.get() {
            break r;
        }
        std::thread::yield_now();
    };
    let mut events = Vec::with_capacity(1024);
    loop {
        events.clear();
        match epoll::wait(&r.epoll, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!("msgport reactor: epoll_wait failed: {e}");
                continue;
            }
        }
        for event in &events {
            let flags = event.flags;
            let token = event.data.u64() as usize;
            let link = r
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&token)
                .cloned();
            let Some(link) = link else { continue };
            if flags.contains(EventFlags::OUT) {
                link.on_writable();
            }
            if flags
                .intersects(EventFlags::IN | EventFlags::HUP | EventFlags::RDHUP | EventFlags::ERR)
            {
                link.on_readable();
            }
        }
    }
}

fn flags(read: bool, write: bool) -> EventFlags {
    let mut f = EventFlags::ET | EventFlags::RDHUP;
    if read {
        f |= EventFlags::IN;
    }
    if write {
        f |= EventFlags::OUT;
    }
    f
}

impl Reactor {
    pub(crate) fn token(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn register(
        &self,
        token: usize,
        fd: BorrowedFd<'_>,
        link: &Arc<Link>,
        read: bool,
        write: bool,
    ) -> std::io::Result<()> {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, link.clone());
        if let Err(e) = epoll::add(
            &self.epoll,
            fd,
            EventData::new_u64(token as u64),
            flags(read, write),
        ) {
            self.links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
            return Err(e.into());
        }
        Ok(())
    }

    /// Sets what the reactor watches a link's socket for.
    pub(crate) fn interest(&self, token: usize, fd: BorrowedFd<'_>, read: bool, write: bool) {
        if let Err(e) = epoll::modify(
            &self.epoll,
            fd,
            EventData::new_u64(token as u64),
            flags(read, write),
        ) {
            tracing::warn!("msgport reactor: epoll_ctl MOD failed: {e}");
        }
    }

    /// Whether every link has written all it queued.
    pub(crate) fn all_flushed(&self) -> bool {
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
        let _ = epoll::delete(&self.epoll, fd);
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
    }
}

/// Keeps a descriptor usable by a thread that polls it without the link's lock.
pub(crate) type SharedFd = Arc<OwnedFd>;

/// Waits until `fd` is readable (or hung up), for at most `timeout`.
pub(crate) fn wait_readable(fd: &SharedFd, timeout: std::time::Duration) {
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [rustix::event::PollFd::new(
        &**fd,
        rustix::event::PollFlags::IN,
    )];
    let _ = rustix::event::poll(&mut fds, Some(&ts));
}
