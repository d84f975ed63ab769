//! The process's I/O thread: waits on every link's socket (epoll through mio, edge-triggered)
//! and hands readiness to the link, which reads and delivers on this thread.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use super::Link;

pub(crate) struct Reactor {
    registry: Registry,
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
        let poll = Poll::new().expect("epoll_create1 fails only when out of descriptors");
        let registry = poll
            .registry()
            .try_clone()
            .expect("dup of the epoll descriptor");
        std::thread::Builder::new()
            .name("msgport-reactor".into())
            .spawn(move || run(poll))
            .expect("spawn the msgport reactor thread");
        Reactor {
            registry,
            links: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(1),
        }
    })
}

fn run(mut poll: Poll) {
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("msgport reactor: poll failed: {e}");
            continue;
        }
        let Some(r) = REACTOR.get() else { continue };
        for event in events.iter() {
            let link = r
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&event.token().0)
                .cloned();
            let Some(link) = link else { continue };
            if event.is_writable() {
                link.on_writable();
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                link.on_readable();
            }
        }
    }
}

impl Reactor {
    pub(crate) fn token(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn register(
        &self,
        token: usize,
        fd: RawFd,
        link: &Arc<Link>,
    ) -> std::io::Result<()> {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, link.clone());
        self.registry
            .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
    }

    pub(crate) fn want_writable(&self, token: usize, fd: RawFd, on: bool) {
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Err(e) = self
            .registry
            .reregister(&mut SourceFd(&fd), Token(token), interest)
        {
            tracing::warn!("msgport reactor: reregister failed: {e}");
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

    pub(crate) fn deregister(&self, token: usize, fd: RawFd) {
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
    }
}
