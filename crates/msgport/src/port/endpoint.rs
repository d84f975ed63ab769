//! The state of one end of a channel and the algorithm that moves messages into and out of it.
//!
//! ```text
//!   port A (handle)                               port B (handle)
//!   ├── ep ──────► Endpoint A ◄─────────── peer ──┤
//!   └── peer ────► Endpoint B ◄──────────── ep ───┘
//! ```
//!
//! An [`Endpoint`] is the *receiving* side of one end: its queue holds the messages the peer
//! posted. Posting locks the peer's endpoint once, pushes, and wakes whoever waits there; the
//! posting end's own state is never touched, so a post costs one uncontended lock. Closing an end
//! marks its own endpoint `closed` (discarding its queue) and the peer's endpoint `peer_gone`,
//! which the peer observes after it has drained every message queued before it.
//!
//! Lock order: a thread holds at most one endpoint lock at a time. Messages (which may own ports,
//! whose drop locks other endpoints), wakers and user callbacks are always dropped or run after
//! the lock is released.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::Waker;
use std::time::Instant;

use crate::event::MessageEvent;
use crate::sync::{lock, Condvar, Mutex, MutexGuard};

/// A message callback, as registered with [`MessagePort::on_message`](crate::MessagePort::on_message).
pub(crate) type MessageHandler = Box<dyn FnMut(MessageEvent) + Send>;
/// A close callback, as registered with [`MessagePort::on_close`](crate::MessagePort::on_close).
pub(crate) type CloseHandler = Box<dyn FnOnce() + Send>;

/// One end's receiving side, shared by the end's handle and its peer's handle.
pub(crate) struct Endpoint {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    /// Messages posted by the peer, not yet delivered.
    queue: VecDeque<MessageEvent>,
    /// The peer closed, was dropped, or the channel was killed: nothing more will be queued.
    peer_gone: bool,
    /// This end was closed by its owner: its queue is discarded and posts to it are dropped.
    closed: bool,
    /// Delivery has begun (`start`, or a pull). Reset when the port is transferred.
    started: bool,
    /// The close was handed to this end's owner (a pull returned "closed", or `on_close` ran).
    close_seen: bool,
    /// Tasks waiting in `poll_recv`.
    wakers: Vec<Waker>,
    /// Threads blocked in `blocking_recv` / `recv_timeout`.
    sleepers: usize,
    on_message: Option<MessageHandler>,
    on_close: Option<CloseHandler>,
    /// A thread is running one of this end's callbacks; others only queue.
    dispatching: bool,
    /// Bumped on every transfer, so that a callback that was running when its port was
    /// transferred is not reinstalled afterwards.
    epoch: u64,
}

/// What a pull found.
pub(crate) enum Pulled {
    Message(MessageEvent),
    Empty,
    Closed,
}

impl Endpoint {
    pub(crate) fn new() -> Self {
        Endpoint {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        }
    }

    /// Queues a message from the peer. Returns it when this end is closed (the caller drops it,
    /// outside any lock) or when the peer has already closed: such posts are silently dropped.
    pub(crate) fn push(&self, message: MessageEvent) -> Result<(), MessageEvent> {
        let mut st = lock(&self.state);
        if st.closed || st.peer_gone {
            return Err(message);
        }
        st.queue.push_back(message);
        self.notify(st);
        Ok(())
    }

    /// Records that the peer is gone, then wakes and dispatches so the close is observed.
    pub(crate) fn peer_closed(&self) {
        let mut st = lock(&self.state);
        if st.peer_gone {
            return;
        }
        st.peer_gone = true;
        self.notify(st);
    }

    /// Closes this end: discards its queue and callbacks and wakes its waiters (who then see
    /// "closed"). Returns false if it was already closed.
    pub(crate) fn close(&self) -> bool {
        let mut st = lock(&self.state);
        if st.closed {
            return false;
        }
        st.closed = true;
        let queue = std::mem::take(&mut st.queue);
        let handlers = (st.on_message.take(), st.on_close.take());
        let wakers = std::mem::take(&mut st.wakers);
        let sleepers = st.sleepers;
        drop(st);
        if sleepers > 0 {
            self.ready.notify_all();
        }
        wakers.into_iter().for_each(Waker::wake);
        // Queued messages may own ports: closing those locks other endpoints, so it happens here,
        // with this lock released.
        drop(queue);
        drop(handlers);
        true
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Prepares this end to be moved into a message: the receiver of the message gets an
    /// unstarted port with no callbacks, as on the web. Queued messages stay and travel with it.
    pub(crate) fn detach_for_transfer(&self) {
        let mut st = lock(&self.state);
        st.started = false;
        st.epoch = st.epoch.wrapping_add(1);
        let handlers = (st.on_message.take(), st.on_close.take());
        drop(st);
        drop(handlers);
    }

    pub(crate) fn start(&self) {
        let mut st = lock(&self.state);
        if st.started {
            return;
        }
        st.started = true;
        self.dispatch(st);
    }

    pub(crate) fn set_on_message(&self, handler: Option<MessageHandler>) {
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        let old = std::mem::replace(&mut st.on_message, handler);
        self.dispatch(st);
        drop(old);
    }

    pub(crate) fn set_on_close(&self, handler: Option<CloseHandler>) {
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        let old = std::mem::replace(&mut st.on_close, handler);
        self.dispatch(st);
        drop(old);
    }

    /// Takes the next event, starting the port. `waker` is registered when nothing is ready.
    pub(crate) fn pull(&self, waker: Option<&Waker>) -> Pulled {
        let mut st = lock(&self.state);
        let pulled = Self::take_next(&mut st);
        match pulled {
            Pulled::Empty => {
                if let Some(w) = waker {
                    if !st.wakers.iter().any(|old| old.will_wake(w)) {
                        st.wakers.push(w.clone());
                    }
                }
                Pulled::Empty
            }
            Pulled::Closed => {
                let on_close = Self::observe_close(&mut st);
                drop(st);
                run_close_handler(on_close);
                Pulled::Closed
            }
            message => message,
        }
    }

    /// Blocks until an event is ready or `deadline` passes (then `Empty`).
    pub(crate) fn pull_blocking(&self, deadline: Option<Instant>) -> Pulled {
        let mut st = lock(&self.state);
        loop {
            match Self::take_next(&mut st) {
                Pulled::Empty => {}
                Pulled::Closed => {
                    let on_close = Self::observe_close(&mut st);
                    drop(st);
                    run_close_handler(on_close);
                    return Pulled::Closed;
                }
                message => return message,
            }
            st.sleepers += 1;
            st = match deadline {
                None => self.ready.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        st.sleepers -= 1;
                        return Pulled::Empty;
                    }
                    self.ready
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            st.sleepers -= 1;
        }
    }

    fn take_next(st: &mut State) -> Pulled {
        if st.closed {
            return Pulled::Closed;
        }
        st.started = true;
        if let Some(message) = st.queue.pop_front() {
            Pulled::Message(message)
        } else if st.peer_gone {
            Pulled::Closed
        } else {
            Pulled::Empty
        }
    }

    /// Marks the close as observed; returns the close callback the first time only.
    fn observe_close(st: &mut State) -> Option<CloseHandler> {
        if st.close_seen || st.closed {
            return None;
        }
        st.close_seen = true;
        st.on_close.take()
    }

    /// Wakes pullers and runs callbacks after a change to `st`. Consumes the guard.
    fn notify<'a>(&'a self, st: MutexGuard<'a, State>) {
        let sleepers = st.sleepers;
        let (st, waker) = Self::take_waker(st);
        if sleepers > 0 {
            self.ready.notify_all();
        }
        if st.on_message.is_some() || st.on_close.is_some() {
            self.dispatch(st);
        } else {
            drop(st);
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn take_waker(mut st: MutexGuard<'_, State>) -> (MutexGuard<'_, State>, Option<Waker>) {
        match st.wakers.len() {
            0 => (st, None),
            1 => {
                let w = st.wakers.pop();
                (st, w)
            }
            _ => {
                // Several tasks pull the same port: wake them all; one gets the message and the
                // others register again.
                st.wakers.drain(..).for_each(Waker::wake);
                (st, None)
            }
        }
    }

    /// Delivers queued events to the callbacks, one at a time, on this thread. Only one thread
    /// dispatches an endpoint at a time (`dispatching`); a post made meanwhile (even from inside
    /// a callback) only queues, and the running dispatcher delivers it next, so callbacks see
    /// events in order and never re-enter.
    fn dispatch<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        loop {
            if st.dispatching || !st.started || st.closed {
                return;
            }
            if st.on_message.is_some() {
                if let Some(message) = st.queue.pop_front() {
                    let mut handler = st.on_message.take().expect("checked above");
                    let epoch = st.epoch;
                    st.dispatching = true;
                    drop(st);
                    let result = catch_unwind(AssertUnwindSafe(|| handler(message)));
                    if result.is_err() {
                        tracing::error!("a MessagePort message callback panicked; the port keeps its callback");
                    }
                    st = lock(&self.state);
                    st.dispatching = false;
                    if st.epoch == epoch && !st.closed && st.on_message.is_none() {
                        st.on_message = Some(handler);
                    }
                    continue;
                }
            }
            if st.queue.is_empty() && st.peer_gone && st.on_close.is_some() {
                let on_close = Self::observe_close(&mut st);
                st.dispatching = true;
                drop(st);
                run_close_handler(on_close);
                st = lock(&self.state);
                st.dispatching = false;
                continue;
            }
            return;
        }
    }
}

fn run_close_handler(handler: Option<CloseHandler>) {
    if let Some(handler) = handler {
        if catch_unwind(AssertUnwindSafe(handler)).is_err() {
            tracing::error!("a MessagePort close callback panicked");
        }
    }
}
