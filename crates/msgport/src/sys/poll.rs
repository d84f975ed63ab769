//! Readiness: the reactor's epoll set (edge-triggered), its wake-up descriptor, and the `poll`
//! a pulling thread blocks in.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll::{self, EventData, EventFlags};

/// What a registration watches for. Always edge-triggered, always reporting hang-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    fn flags(self) -> EventFlags {
        let mut f = EventFlags::ET | EventFlags::RDHUP;
        if self.read {
            f |= EventFlags::IN;
        }
        if self.write {
            f |= EventFlags::OUT;
        }
        f
    }
}

/// One readiness report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub token: u64,
    /// Readable, or hung up, or in error: a read will tell which.
    pub readable: bool,
    pub writable: bool,
}

/// An epoll instance (close-on-exec). Registrations may come from any thread while one waits.
pub(crate) struct Epoll(OwnedFd);

/// Room for the readiness reports of one wait.
pub(crate) struct Events(Vec<epoll::Event>);

impl Events {
    pub(crate) fn with_capacity(n: usize) -> Events {
        Events(Vec::with_capacity(n))
    }
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        Ok(Epoll(epoll::create(epoll::CreateFlags::CLOEXEC)?))
    }

    /// Waits for readiness (at most `timeout`, or for ever), then reports it to `each`.
    /// An interrupted wait reports nothing.
    pub(crate) fn wait(
        &self,
        events: &mut Events,
        timeout: Option<Duration>,
        each: &mut dyn FnMut(Ready),
    ) -> io::Result<()> {
        events.0.clear();
        let ts = timeout.map(timespec);
        match epoll::wait(
            &self.0,
            rustix::buffer::spare_capacity(&mut events.0),
            ts.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for event in &events.0 {
            let flags = event.flags;
            each(Ready {
                token: event.data.u64(),
                readable: flags.intersects(
                    EventFlags::IN | EventFlags::HUP | EventFlags::RDHUP | EventFlags::ERR,
                ),
                writable: flags.contains(EventFlags::OUT),
            });
        }
        Ok(())
    }

    /// Adds `fd` under `token`.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        Ok(epoll::add(
            &self.0,
            fd,
            EventData::new_u64(token),
            interest.flags(),
        )?)
    }

    /// Changes what `fd` is watched for. Re-arming an edge-triggered registration reports
    /// readiness that is already there.
    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
    ) -> io::Result<()> {
        Ok(epoll::modify(
            &self.0,
            fd,
            EventData::new_u64(token),
            interest.flags(),
        )?)
    }

    /// Removes `fd` from the set.
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) {
        let _ = epoll::delete(&self.0, fd);
    }
}

/// A descriptor that becomes readable when woken (an eventfd: close-on-exec, non-blocking).
pub(crate) struct Waker(OwnedFd);

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        Ok(Waker(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?))
    }

    pub(crate) fn wake(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Consumes the wake-ups so far.
    pub(crate) fn reset(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut buf);
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A one-shot timer to wait on in the epoll set: a `timerfd`, whose deadlines are microseconds
/// (epoll's own timeout counts milliseconds).
pub(crate) struct Timer(OwnedFd);

impl Timer {
    pub(crate) fn new() -> io::Result<Timer> {
        Ok(Timer(rustix::time::timerfd_create(
            rustix::time::TimerfdClockId::Monotonic,
            rustix::time::TimerfdFlags::CLOEXEC | rustix::time::TimerfdFlags::NONBLOCK,
        )?))
    }

    /// Makes the timer readable `after` from now (replacing any earlier setting).
    pub(crate) fn arm(&self, after: Duration) -> io::Result<()> {
        let zero = timespec(Duration::ZERO);
        // A zero value would disarm it: the shortest wait is a nanosecond.
        let value = timespec(after.max(Duration::from_nanos(1)));
        let spec = rustix::time::Itimerspec {
            it_interval: zero,
            it_value: value,
        };
        rustix::time::timerfd_settime(&self.0, rustix::time::TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Consumes the expiry.
    pub(crate) fn reset(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut buf);
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Waits until `fd` is readable (or hung up), for at most `timeout`. False when it is not
/// (the time ran out); true also when the wait failed (the caller reads, and learns why).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let ts = timespec(timeout);
    let mut fds = [rustix::event::PollFd::from_borrowed_fd(
        fd,
        rustix::event::PollFlags::IN,
    )];
    !matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(0))
}

fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}
