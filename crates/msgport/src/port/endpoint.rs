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
//! Lock order: a thread holds the locks of at most one endpoint at a time, `taken` before
//! `state`. Messages (which may own ports,
//! whose drop locks other endpoints), wakers and user callbacks are always dropped or run after
//! the lock is released.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::Waker;
use std::time::Instant;

use super::outbound::Outbound;
use crate::event::MessageEvent;
use crate::sync::{lock, Arc, AtomicBool, Condvar, Mutex, MutexGuard, Ordering};
use std::sync::Weak;

/// A message callback, as registered with [`MessagePort::on_message`](crate::MessagePort::on_message).
pub(crate) type MessageHandler = Box<dyn FnMut(MessageEvent) + Send>;
/// A close callback, as registered with [`MessagePort::on_close`](crate::MessagePort::on_close).
pub(crate) type CloseHandler = Box<dyn FnOnce() + Send>;

/// One end's receiving side, shared by the end's handle and its peer's handle.
pub(crate) struct Endpoint {
    /// Messages a puller moved out of `state.queue` in one batch, so that it takes the shared
    /// lock once per batch rather than once per message. They come before everything in
    /// `state.queue`. Lock order: `taken` before `state`; never sleep holding `taken`.
    taken: Mutex<VecDeque<MessageEvent>>,
    state: Mutex<State>,
    ready: Condvar,
    /// A hint, readable without the lock: `state.queue` may be non-empty. Set by `push`, cleared
    /// when a puller takes the queue. A waiting puller watches it before it takes the lock, so
    /// it takes the lock once per batch rather than contending for it message by message.
    pending: AtomicBool,
    /// A copy of `state.paused`, for the reader to check without the lock (a stale answer only
    /// costs one more bounded read, or a wake-up that finds the copy updated).
    paused: std::sync::atomic::AtomicBool,
    /// A message was delivered here (pulled, or handed to a callback) since the link posting
    /// for this end last looked: its next post answers something (see `Link::send_frame`).
    delivered: std::sync::atomic::AtomicBool,
    /// This end's last wait was a blocking pull (cleared by a task's poll, and when the end is
    /// transferred): a poster that piles messages up for it gives way more often (see `push`).
    blocking: std::sync::atomic::AtomicBool,
}

/// Every this many messages queued and not yet taken, a poster whose end is pulled with
/// blocking pulls yields its CPU (see [`Endpoint::push`]).
const CROWDED: usize = 4096;
/// The same for an end polled by tasks (or not pulled yet): further apart (see
/// [`Endpoint::push`]).
const CROWDED_POLLED: usize = 32 * 1024;
const _: () = assert!(CROWDED_POLLED % CROWDED == 0);

#[derive(Default)]
struct State {
    /// Messages posted by the peer, not yet delivered (after those in `taken`).
    queue: VecDeque<MessageEvent>,
    /// The peer closed, was dropped, or the channel was killed: nothing more will be queued.
    peer_gone: bool,
    /// This end was closed by its owner: its queues are discarded and posts to it are dropped.
    closed: bool,
    /// Delivery has begun (`start`, or a pull). Reset when the port is transferred.
    started: bool,
    /// The close was handed to this end's owner (a pull returned "closed", or `on_close` ran).
    close_seen: bool,
    /// Tasks waiting in `poll_recv`.
    wakers: Vec<Waker>,
    /// Threads blocked in `blocking_recv` / `recv_timeout`.
    sleepers: usize,
    /// The sleepers were signalled and have not run yet: do not signal them again.
    notified: bool,
    on_message: Option<MessageHandler>,
    on_close: Option<CloseHandler>,
    /// A thread is running one of this end's callbacks; others only queue.
    dispatching: bool,
    /// Bumped on every transfer and every change of the message callback, so that a callback
    /// that was running meanwhile is not reinstalled afterwards.
    epoch: u64,
    /// This end left the process: its handle is gone, and what the peer posts here is written
    /// to this link (the port's new home reads it from the other end).
    forward: Option<Arc<dyn Outbound>>,
    /// This end left the process (with or without `forward`): closing its old handle must not
    /// close the channel.
    exported: bool,
    /// The link that reads this end's messages from another process, if any.
    reader: Option<Weak<dyn Outbound>>,
    /// That link, while nobody has asked it to read: an end whose peer left the process is fed
    /// only once someone waits on it (a sleeping or polling pull, started callbacks), so a
    /// channel whose staying end is never waited on costs no registration with the reactor.
    /// Taken (and the link armed) by the first wait.
    unarmed: Option<Weak<dyn Outbound>>,
    /// What the messages from another process in `queue` cost (see `Limits::receive_high_water`).
    remote_cost: usize,
    /// `remote_cost` went over the high-water mark: the reader stopped reading until the
    /// application drains the queue.
    paused: bool,
}

/// What an end carried when it was detached to leave the process.
pub(crate) struct Detached {
    /// Messages posted to it and not yet delivered, in order.
    pub queued: Vec<MessageEvent>,
    /// Its peer had closed.
    pub peer_gone: bool,
    /// It had been closed locally.
    pub closed: bool,
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
            taken: Mutex::new(VecDeque::new()),
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            pending: AtomicBool::new(false),
            paused: std::sync::atomic::AtomicBool::new(false),
            delivered: std::sync::atomic::AtomicBool::new(false),
            blocking: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Queues a message from the peer. Returns it when this end is closed (the caller drops it,
    /// outside any lock) or when the peer has already closed: such posts are silently dropped.
    ///
    /// A poster that has queued [`CROWDED`] messages more than the puller took yields its CPU
    /// once, when the end is pulled with blocking pulls. When both share a CPU, the puller
    /// waits for that CPU, not for messages: without the yield the poster keeps it for its whole
    /// time slice and queues hundreds of thousands of messages (tens of MB of fresh memory, a
    /// page fault every 36 of them, none of it in cache when read). Taking a message costs
    /// more than posting one (measured, one thread: 37 against 21 ns), so a puller that gets
    /// an equal share of the CPU only falls further behind. When the puller runs elsewhere the
    /// yield returns at once: one system call per [`CROWDED`] messages.
    ///
    /// For an end polled by a task the yield comes every [`CROWDED_POLLED`] messages: its
    /// executor parks the thread once the queue is drained, the next post wakes it, and after
    /// a yield the woken thread preempts the poster. Every 4,096 that made a context switch
    /// every few dozen messages (measured, one CPU: 7.4 M msg/s against 11.8 M without any
    /// yield); every 32,768 the backlog stays under about 100,000 messages (15–16 M msg/s).
    pub(crate) fn push(&self, message: MessageEvent) -> Result<(), MessageEvent> {
        let mut st = lock(&self.state);
        if let Some(link) = &st.forward {
            let link = link.clone();
            drop(st);
            link.forward(message);
            return Ok(());
        }
        if st.closed || st.peer_gone {
            return Err(message);
        }
        st.queue.push_back(message);
        let queued = st.queue.len();
        // The blocking mark is read only every [`CROWDED`] messages.
        let crowded = queued % CROWDED == 0
            && (queued % CROWDED_POLLED == 0
                || self.blocking.load(std::sync::atomic::Ordering::Relaxed));
        if !self.pending.load(Ordering::Relaxed) {
            self.pending.store(true, Ordering::Release);
        }
        self.after_change(st);
        if crowded {
            give_way();
        }
        Ok(())
    }

    /// Records that the peer is gone, then wakes and dispatches so the close is observed.
    pub(crate) fn peer_closed(&self) {
        let mut st = lock(&self.state);
        if let Some(link) = st.forward.take() {
            drop(st);
            link.close();
            return;
        }
        if st.peer_gone {
            return;
        }
        st.peer_gone = true;
        self.after_change(st);
    }

    /// Closes this end: discards its queues and callbacks and wakes its waiters (who then see
    /// "closed"). Returns false if it was already closed.
    pub(crate) fn close(&self) -> bool {
        let mut taken = lock(&self.taken);
        let mut st = lock(&self.state);
        if st.closed || st.exported {
            return false;
        }
        st.closed = true;
        st.remote_cost = 0;
        self.set_paused(&mut st, false);
        let queues = (std::mem::take(&mut *taken), std::mem::take(&mut st.queue));
        let handlers = (st.on_message.take(), st.on_close.take());
        let wakers = std::mem::take(&mut st.wakers);
        let sleepers = st.sleepers;
        drop(st);
        drop(taken);
        if sleepers > 0 {
            self.ready.notify_all();
        }
        wakers.into_iter().for_each(Waker::wake);
        // Queued messages may own ports: closing those locks other endpoints, so it happens here,
        // with this end's locks released.
        drop(queues);
        drop(handlers);
        true
    }

    /// Detaches this end so it can leave the process: takes what is queued here and marks it
    /// exported. With `forward`, whatever the peer posts from now on is written to that link.
    pub(crate) fn detach(&self, forward: Option<Arc<dyn Outbound>>) -> Detached {
        let mut taken = lock(&self.taken);
        let mut st = lock(&self.state);
        let mut queued: Vec<MessageEvent> = taken.drain(..).collect();
        queued.extend(st.queue.drain(..));
        self.pending.store(false, Ordering::Relaxed);
        let detached = Detached {
            queued,
            peer_gone: st.peer_gone,
            closed: st.closed,
        };
        st.exported = true;
        st.remote_cost = 0;
        st.unarmed = None;
        self.set_paused(&mut st, false);
        if !st.closed && !st.peer_gone {
            st.forward = forward;
        }
        let handlers = (st.on_message.take(), st.on_close.take());
        drop(st);
        drop(taken);
        drop(handlers);
        detached
    }

    /// If this end is a proxy (it left the process, its peer did not), retires it and returns its
    /// link: the peer is leaving too, and takes the link over, so the two new homes talk
    /// directly and this process is no longer on the path.
    pub(crate) fn take_forward(&self) -> Option<Arc<dyn Outbound>> {
        let mut st = lock(&self.state);
        let link = st.forward.take()?;
        st.closed = true;
        Some(link)
    }

    /// Queues messages read from another process, in order, under one lock, without running
    /// callbacks (the caller may hold a lock a callback could need); it must call
    /// [`dispatch`](Self::dispatch) once that lock is released. Each message's cost counts
    /// toward the receive high-water mark: returns true when the reader must stop reading (it
    /// is resumed once the application drains the queue). Messages this end cannot take (it is
    /// closed, or its peer is gone) are moved to `rejected`, for the caller to drop outside.
    pub(crate) fn push_remote(
        &self,
        batch: &mut Vec<(MessageEvent, usize)>,
        rejected: &mut Vec<MessageEvent>,
    ) -> bool {
        let mut st = lock(&self.state);
        if st.closed || st.peer_gone || st.exported {
            rejected.extend(batch.drain(..).map(|(m, _)| m));
            return false;
        }
        for (mut message, cost) in batch.drain(..) {
            message.cost = cost;
            st.remote_cost += cost;
            st.queue.push_back(message);
        }
        if !st.paused && st.remote_cost >= crate::limits::receive_high_water() {
            self.set_paused(&mut st, true);
        }
        let paused = st.paused;
        if !self.pending.load(Ordering::Relaxed) {
            self.pending.store(true, Ordering::Release);
        }
        let signal = st.sleepers > 0 && !st.notified;
        st.notified |= signal;
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        if signal {
            self.ready.notify_all();
        }
        wakers.into_iter().for_each(Waker::wake);
        paused
    }

    /// Names the link that reads this end's messages from another process.
    /// With `on_wait`, the link reads only once someone waits here: returns true when someone
    /// already does (the caller arms it at once), else keeps it for the first wait to arm.
    pub(crate) fn set_reader(&self, reader: Weak<dyn Outbound>, on_wait: bool) -> bool {
        let mut st = lock(&self.state);
        st.reader = Some(reader.clone());
        self.set_paused(&mut st, false);
        if !on_wait {
            return false;
        }
        let callbacks = st.on_message.is_some() || st.on_close.is_some();
        if st.sleepers > 0 || !st.wakers.is_empty() || (st.started && callbacks) {
            return true;
        }
        st.unarmed = Some(reader);
        false
    }

    /// The link to poll when a non-blocking pull finds nothing: the one nobody reads yet (a
    /// link that is armed is read by the reactor, or by the pulls of the port it backs).
    pub(crate) fn unarmed_reader(&self) -> Option<Arc<dyn Outbound>> {
        lock(&self.state).unarmed.as_ref().and_then(Weak::upgrade)
    }

    /// Records that a message left this end for its owner.
    pub(crate) fn note_delivered(&self) {
        if !self.delivered.load(std::sync::atomic::Ordering::Relaxed) {
            self.delivered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether a message left this end since the last call.
    pub(crate) fn take_delivered(&self) -> bool {
        let delivered = self.delivered.load(std::sync::atomic::Ordering::Relaxed);
        if delivered {
            self.delivered
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        delivered
    }

    /// Whether the reader must not read now (the queue is over its high-water mark).
    pub(crate) fn reading_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_paused(&self, st: &mut State, paused: bool) {
        if st.paused != paused {
            st.paused = paused;
            self.paused
                .store(paused, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Takes `cost` off the queue's cost; returns the reader to resume if that brought a
    /// paused queue down to half its mark. Call [`resume_reader`] on it with the locks released.
    fn drained(&self, st: &mut State, cost: usize) -> Option<Weak<dyn Outbound>> {
        st.remote_cost = st.remote_cost.saturating_sub(cost);
        if st.paused && st.remote_cost <= crate::limits::receive_high_water() / 2 {
            self.set_paused(st, false);
            return st.reader.clone();
        }
        None
    }

    /// An endpoint that is already closed: the peer of a port whose peer is gone for good.
    pub(crate) fn new_closed() -> Self {
        let ep = Endpoint::new();
        lock(&ep.state).closed = true;
        ep
    }

    /// Builds the receiving side of a port arriving from another process.
    pub(crate) fn arriving(queued: Vec<MessageEvent>, peer_gone: bool, closed: bool) -> Self {
        let ep = Endpoint::new();
        {
            let mut st = lock(&ep.state);
            st.queue = queued.into();
            st.peer_gone = peer_gone;
            st.closed = closed;
            if !st.queue.is_empty() {
                ep.pending.store(true, Ordering::Relaxed);
            }
        }
        ep
    }

    /// Whether callbacks would run now (registered, and the port started).
    pub(crate) fn has_callbacks(&self) -> bool {
        let st = lock(&self.state);
        st.started && !st.closed && (st.on_message.is_some() || st.on_close.is_some())
    }

    /// Whether messages may be waiting (a hint, read without the lock).
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// What waits in this process to be written to the link this end's messages are
    /// forwarded through, once it left the process (0 while it is here).
    pub(crate) fn forwarded_unsent(&self) -> usize {
        // The link's lock is never taken under an endpoint's.
        let forward = lock(&self.state).forward.clone();
        forward.map_or(0, |link| link.unsent())
    }

    /// How many messages are queued here, not yet delivered.
    pub(crate) fn backlog(&self) -> usize {
        let taken = lock(&self.taken);
        let st = lock(&self.state);
        taken.len() + st.queue.len()
    }

    /// Prepares this end to be moved into a message: the receiver of the message gets an
    /// unstarted port with no callbacks, as on the web. Queued messages stay and travel with it.
    pub(crate) fn detach_for_transfer(&self) {
        let mut st = lock(&self.state);
        st.started = false;
        st.epoch = st.epoch.wrapping_add(1);
        self.blocking
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let handlers = (st.on_message.take(), st.on_close.take());
        drop(st);
        drop(handlers);
    }

    pub(crate) fn start(&self) {
        let unarmed = {
            let mut st = lock(&self.state);
            if st.started {
                return;
            }
            st.started = true;
            st.unarmed.take()
        };
        arm_reader(unarmed);
        self.dispatch();
    }

    pub(crate) fn set_on_message(&self, handler: Option<MessageHandler>) {
        let (old, unarmed) = {
            let mut st = lock(&self.state);
            if st.closed {
                return;
            }
            // A callback running now must not be put back when it returns: this call decides.
            st.epoch = st.epoch.wrapping_add(1);
            let unarmed = if st.started { st.unarmed.take() } else { None };
            (std::mem::replace(&mut st.on_message, handler), unarmed)
        };
        arm_reader(unarmed);
        drop(old);
        self.dispatch();
    }

    pub(crate) fn set_on_close(&self, handler: Option<CloseHandler>) {
        let (old, unarmed) = {
            let mut st = lock(&self.state);
            if st.closed {
                return;
            }
            let unarmed = if st.started { st.unarmed.take() } else { None };
            (std::mem::replace(&mut st.on_close, handler), unarmed)
        };
        arm_reader(unarmed);
        drop(old);
        self.dispatch();
    }

    /// Takes the next event, starting the port. `waker` is registered when nothing is ready.
    pub(crate) fn pull(&self, waker: Option<&Waker>) -> Pulled {
        if waker.is_some() && self.blocking.load(std::sync::atomic::Ordering::Relaxed) {
            // Polled by a task now: posters give way as to a task.
            self.blocking
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let mut taken = lock(&self.taken);
        if let Some(message) = taken.pop_front() {
            return Pulled::Message(message);
        }
        let mut st = lock(&self.state);
        let mut resume = None;
        match self.refill(&mut taken, &mut st, &mut resume) {
            Pulled::Empty => {
                let mut unarmed = None;
                if let Some(w) = waker {
                    if !st.wakers.iter().any(|old| old.will_wake(w)) {
                        st.wakers.push(w.clone());
                    }
                    unarmed = st.unarmed.take();
                }
                drop(st);
                drop(taken);
                arm_reader(unarmed);
                Pulled::Empty
            }
            Pulled::Closed => {
                let on_close = Self::observe_close(&mut st);
                drop(st);
                drop(taken);
                run_close_handler(on_close);
                Pulled::Closed
            }
            message => {
                drop(st);
                drop(taken);
                resume_reader(resume);
                message
            }
        }
    }

    /// Blocks until an event is ready or `deadline` passes (then `Empty`).
    pub(crate) fn pull_blocking(&self, deadline: Option<Instant>) -> Pulled {
        if !self.blocking.load(std::sync::atomic::Ordering::Relaxed) {
            self.blocking
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut spin = 0;
        loop {
            let mut taken = lock(&self.taken);
            if let Some(message) = taken.pop_front() {
                return Pulled::Message(message);
            }
            let mut st = lock(&self.state);
            let mut resume = None;
            match self.refill(&mut taken, &mut st, &mut resume) {
                Pulled::Empty => {}
                Pulled::Closed => {
                    let on_close = Self::observe_close(&mut st);
                    drop(st);
                    drop(taken);
                    run_close_handler(on_close);
                    return Pulled::Closed;
                }
                message => {
                    drop(st);
                    drop(taken);
                    resume_reader(resume);
                    return message;
                }
            }
            drop(taken);
            if spin < SPIN_STEPS {
                // A busy peer usually posts again within microseconds: watch for it a while
                // before paying for a sleep and a wake-up (two system calls).
                drop(st);
                self.spin_wait(spin);
                spin += 1;
                continue;
            }
            if let Some(unarmed) = st.unarmed.take() {
                // The first wait here: have the link read, then look again.
                drop(st);
                arm_reader(Some(unarmed));
                continue;
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
            st.notified = false;
        }
    }

    /// With `taken` empty: starts the port and moves the whole shared queue into `taken`,
    /// returning its first message, or says why there is none.
    /// A paused reader to resume (after the locks are released) is left in `resume`.
    fn refill(
        &self,
        taken: &mut VecDeque<MessageEvent>,
        st: &mut State,
        resume: &mut Option<Weak<dyn Outbound>>,
    ) -> Pulled {
        if st.closed {
            return Pulled::Closed;
        }
        st.started = true;
        if !st.queue.is_empty() {
            std::mem::swap(taken, &mut st.queue);
            self.pending.store(false, Ordering::Relaxed);
            if st.remote_cost > 0 {
                let cost = st.remote_cost;
                *resume = self.drained(st, cost);
            }
            return Pulled::Message(taken.pop_front().expect("swapped a non-empty queue"));
        }
        if st.peer_gone {
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

    /// Wakes pullers and runs callbacks after a change to `st`, with the lock released (a woken
    /// thread must not find the lock still held). Consumes the guard.
    #[inline]
    fn after_change(&self, st: MutexGuard<'_, State>) {
        // The common case of a stream: nobody waits and no callback is set.
        if st.sleepers == 0
            && st.wakers.is_empty()
            && st.on_message.is_none()
            && st.on_close.is_none()
        {
            return;
        }
        self.wake_after_change(st);
    }

    /// [`after_change`](Self::after_change) when someone may have to be woken or called.
    #[inline(never)]
    fn wake_after_change(&self, mut st: MutexGuard<'_, State>) {
        let signal = st.sleepers > 0 && !st.notified;
        st.notified |= signal;
        let waker = match st.wakers.len() {
            0 => None,
            1 => st.wakers.pop(),
            _ => {
                // Several tasks pull the same port: wake them all; one gets the message and the
                // others register again.
                st.wakers.drain(..).for_each(Waker::wake);
                None
            }
        };
        let callbacks = st.on_message.is_some() || st.on_close.is_some();
        drop(st);
        if signal {
            self.ready.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        if callbacks {
            self.dispatch();
        }
    }

    /// Delivers queued events to the callbacks, one at a time, on this thread. Only one thread
    /// dispatches an endpoint at a time (`dispatching`); a post made meanwhile (even from inside
    /// a callback) only queues, and the running dispatcher delivers it next, so callbacks see
    /// events in order and never re-enter.
    pub(crate) fn dispatch(&self) {
        // Never on the I/O thread: the transport hands the endpoint to the callback pool.
        if crate::dispatch::on_io_thread() {
            return;
        }
        loop {
            let mut taken = lock(&self.taken);
            let mut st = lock(&self.state);
            if st.dispatching || !st.started || st.closed {
                return;
            }
            if st.on_message.is_some() {
                let message = match taken.pop_front() {
                    Some(message) => Some(message),
                    None => st.queue.pop_front(),
                };
                if let Some(message) = message {
                    let Some(mut handler) = st.on_message.take() else {
                        return;
                    };
                    let resume = if message.cost > 0 {
                        self.drained(&mut st, message.cost)
                    } else {
                        None
                    };
                    let epoch = st.epoch;
                    st.dispatching = true;
                    drop(st);
                    drop(taken);
                    resume_reader(resume);
                    self.note_delivered();
                    let result = catch_unwind(AssertUnwindSafe(|| handler(message)));
                    if result.is_err() {
                        tracing::error!(
                            "a MessagePort message callback panicked; the port keeps its callback"
                        );
                    }
                    let mut st = lock(&self.state);
                    st.dispatching = false;
                    if st.epoch == epoch && !st.closed && st.on_message.is_none() {
                        st.on_message = Some(handler);
                    }
                    continue;
                }
            }
            if taken.is_empty() && st.queue.is_empty() && st.peer_gone && st.on_close.is_some() {
                let on_close = Self::observe_close(&mut st);
                st.dispatching = true;
                drop(st);
                drop(taken);
                run_close_handler(on_close);
                lock(&self.state).dispatching = false;
                continue;
            }
            return;
        }
    }
}

/// The steps a blocking pull takes before it sleeps (see [`Endpoint::spin_wait`]).
#[cfg(not(msgport_loom))]
const SPIN_STEPS: u32 = 9;
/// Under loom, spinning would only multiply the interleavings to explore.
#[cfg(msgport_loom)]
const SPIN_STEPS: u32 = 0;

impl Endpoint {
    /// One step of waiting for `pending` without the lock. Step 0 yields the CPU: when the peer
    /// shares this CPU, that lets it run at once (spinning would only delay it); when it does
    /// not, the yield returns at once. Steps 1 to 6 spin for up to 2^k hints each, watching
    /// `pending`; the last steps yield again.
    fn spin_wait(&self, step: u32) {
        if step == 0 || step > 6 {
            std::thread::yield_now();
            return;
        }
        for _ in 0..1u32 << step {
            if self.pending.load(Ordering::Acquire) {
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// Lets the thread this poster shares its CPU with run (see [`Endpoint::push`]).
fn give_way() {
    #[cfg(not(msgport_loom))]
    std::thread::yield_now();
}

/// Lets a paused reader read again (called with no endpoint lock held: the link's lock comes
/// first in the lock order).
fn resume_reader(reader: Option<Weak<dyn Outbound>>) {
    if let Some(link) = reader.and_then(|r| r.upgrade()) {
        link.resume();
    }
}

/// Has a link that nobody reads yet read for this end (called with no endpoint lock held).
fn arm_reader(reader: Option<Weak<dyn Outbound>>) {
    if let Some(link) = reader.and_then(|r| r.upgrade()) {
        link.arm();
    }
}

fn run_close_handler(handler: Option<CloseHandler>) {
    if let Some(handler) = handler {
        if catch_unwind(AssertUnwindSafe(handler)).is_err() {
            tracing::error!("a MessagePort close callback panicked");
        }
    }
}

#[cfg(all(test, not(msgport_loom)))]
mod tests {
    use super::*;

    /// The yield a poster makes for a blocking puller (every 4,096 messages) is wrong for a task
    /// (it makes a context switch every few dozen messages): a port read once with a blocking
    /// pull and then by a task is treated as a task's.
    #[test]
    fn a_task_polling_an_end_clears_its_blocking_mark() {
        let ep = Endpoint::new();
        assert!(matches!(
            ep.pull_blocking(Some(Instant::now())),
            Pulled::Empty
        ));
        assert!(ep.blocking.load(std::sync::atomic::Ordering::Relaxed));
        assert!(matches!(ep.pull(Some(Waker::noop())), Pulled::Empty));
        assert!(!ep.blocking.load(std::sync::atomic::Ordering::Relaxed));
        // A pull that does not wait (`try_recv`) leaves the mark as it is.
        assert!(matches!(
            ep.pull_blocking(Some(Instant::now())),
            Pulled::Empty
        ));
        assert!(matches!(ep.pull(None), Pulled::Empty));
        assert!(ep.blocking.load(std::sync::atomic::Ordering::Relaxed));
    }
}
