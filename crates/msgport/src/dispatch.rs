//! Where callbacks run when a message comes from another process: never on the I/O thread.
//!
//! The reactor thread reads every link of the process; a callback that ran there and took a
//! second (or blocked waiting for another port's message, which only the reactor could deliver)
//! would stall every cross-process port of the process, or deadlock. So the reactor only queues
//! messages, and hands the endpoint to this pool, whose threads run its callbacks. A port's
//! callbacks still run one at a time and in order (the endpoint's `dispatching` flag), whichever
//! pool thread runs them. A pool thread that blocks in a callback is replaced: a new thread is
//! started whenever work waits and no thread is idle (up to [`MAX_THREADS`]); idle threads end
//! after [`IDLE`].

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::port::Endpoint;

/// The most pool threads at once (each blocked in a callback, say).
const MAX_THREADS: usize = 512;
/// How long an idle pool thread waits for work before it ends.
const IDLE: Duration = Duration::from_secs(10);

thread_local! {
    static IO_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as one whose blocking would stop delivery (the reactor): callbacks are
/// not run on it.
pub(crate) fn mark_io_thread() {
    IO_THREAD.with(|t| t.set(true));
}

/// Whether callbacks must not run on this thread.
pub(crate) fn on_io_thread() -> bool {
    IO_THREAD.with(Cell::get)
}

#[derive(Default)]
struct Pool {
    queue: VecDeque<Arc<Endpoint>>,
    threads: usize,
    idle: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    queue: VecDeque::new(),
    threads: 0,
    idle: 0,
});
static WORK: Condvar = Condvar::new();

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `ep`'s callbacks on a pool thread.
pub(crate) fn defer(ep: Arc<Endpoint>) {
    let mut pool = lock();
    pool.queue.push_back(ep);
    if pool.idle > 0 {
        drop(pool);
        WORK.notify_one();
        return;
    }
    if pool.threads >= MAX_THREADS {
        // Every thread is busy: the work waits for one.
        return;
    }
    pool.threads += 1;
    drop(pool);
    let started = std::thread::Builder::new()
        .name("msgport-callbacks".into())
        .spawn(worker);
    if let Err(e) = started {
        tracing::error!("msgport: cannot start a callback thread: {e}");
        lock().threads -= 1;
    }
}

fn worker() {
    let mut pool = lock();
    loop {
        if let Some(ep) = pool.queue.pop_front() {
            drop(pool);
            if catch_unwind(AssertUnwindSafe(|| ep.dispatch())).is_err() {
                tracing::error!("msgport: a callback dispatch panicked");
            }
            drop(ep);
            pool = lock();
            continue;
        }
        pool.idle += 1;
        let (guard, timeout) = WORK
            .wait_timeout(pool, IDLE)
            .unwrap_or_else(|p| p.into_inner());
        pool = guard;
        pool.idle -= 1;
        if timeout.timed_out() && pool.queue.is_empty() {
            pool.threads -= 1;
            return;
        }
    }
}
