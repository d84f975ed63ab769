//! Waiting on a word of shared memory (`futex`), for a reader of a link's ring
//! (`transport::ring`): it sleeps on the word its writer changes, and the writer wakes it.
//!
//! The futexes are shared (not `FUTEX_PRIVATE_FLAG`): the word lies in a `memfd` mapping that
//! two processes see, and the kernel finds both processes' waiters by the file and offset.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;

/// Sleeps while `word` holds `expected`, for at most `timeout` (`None`: until woken). Returns
/// at once when the word already differs; may return early (a signal, a spurious wake-up):
/// callers look again.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| rustix::time::Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // EAGAIN (the word changed), EINTR and ETIMEDOUT all mean: look again.
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes every thread (of any process) asleep on `word`.
pub(crate) fn wake(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_waiter_sleeps_until_woken_or_its_timeout() {
        let word = Arc::new(AtomicU32::new(0));
        // The word differs: no sleep.
        let t = Instant::now();
        wait(&word, 1, None);
        assert!(t.elapsed() < Duration::from_secs(1));
        // Nobody wakes it: the timeout ends the wait.
        let t = Instant::now();
        wait(&word, 0, Some(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(25));
        // Woken by another thread that changed the word.
        let w = word.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            w.store(1, Ordering::SeqCst);
            wake(&w);
        });
        let t = Instant::now();
        while word.load(Ordering::SeqCst) == 0 {
            wait(&word, 0, Some(Duration::from_secs(10)));
        }
        assert!(t.elapsed() < Duration::from_secs(5));
        waker.join().unwrap();
    }
}
