//! Model tests of the port state machine under every interleaving loom explores.
//!
//! Run with: `RUSTFLAGS="--cfg msgport_loom" cargo test -p msgport --test loom --release`
//! `.ci/run` runs them too: with no preemption bound the exploration is exhaustive and takes
//! seconds.

#![cfg(msgport_loom)]

use loom::thread;
use msgport::{MessageChannel, TryRecvError};

/// Explores `f` under loom and checks that more than one interleaving was explored (a model
/// that ran once would prove nothing).
fn model(f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = None;
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    let runs = runs.load(Ordering::Relaxed);
    println!("explored {runs} interleavings");
    assert!(runs > 1, "loom explored a single interleaving");
}

/// Posts racing the poster's drop: the receiver gets both messages, then "closed", exactly once.
#[test]
fn post_racing_drop() {
    model(|| {
        let (a, b) = MessageChannel::new().into_ports();
        let t = thread::spawn(move || {
            a.post_message(1u8, []).unwrap();
            a.post_message(2u8, []).unwrap();
            drop(a);
        });
        assert_eq!(b.blocking_recv().unwrap().data::<u8>().unwrap(), 1);
        assert_eq!(b.blocking_recv().unwrap().data::<u8>().unwrap(), 2);
        assert!(b.blocking_recv().is_none());
        assert!(matches!(b.try_recv(), Err(TryRecvError::Closed)));
        t.join().unwrap();
    });
}

/// A post racing the receiver's own close: either delivered before the close or dropped; the
/// message's carried port is closed either way (nothing leaks).
#[test]
fn post_racing_receiver_close() {
    model(|| {
        let (a, b) = MessageChannel::new().into_ports();
        let (keep, carried) = MessageChannel::new().into_ports();
        let t = thread::spawn(move || {
            a.post_message((), [carried]).unwrap();
        });
        b.close();
        t.join().unwrap();
        assert!(matches!(b.try_recv(), Err(TryRecvError::Closed)));
        assert!(matches!(keep.try_recv(), Err(TryRecvError::Closed)));
    });
}

/// A port transferred while its peer posts to it: every message reaches the new owner, in order.
#[test]
fn transfer_racing_post() {
    model(|| {
        let (sender, receiving) = MessageChannel::new().into_ports();
        let (c_in, c_out) = MessageChannel::new().into_ports();
        let t = thread::spawn(move || {
            sender.post_message(1u8, []).unwrap();
            sender.post_message(2u8, []).unwrap();
        });
        c_in.post_message((), [receiving]).unwrap();
        let receiving = c_out.blocking_recv().unwrap().ports.pop().unwrap();
        assert_eq!(receiving.blocking_recv().unwrap().data::<u8>().unwrap(), 1);
        assert_eq!(receiving.blocking_recv().unwrap().data::<u8>().unwrap(), 2);
        assert!(receiving.blocking_recv().is_none());
        t.join().unwrap();
    });
}

/// Both ends closed at once from two threads: no deadlock, both end closed.
#[test]
fn close_racing_close() {
    model(|| {
        let (a, b) = MessageChannel::new().into_ports();
        let t = thread::spawn(move || {
            b.post_message(0u8, []).unwrap();
            b.close();
            b
        });
        a.close();
        let b = t.join().unwrap();
        assert!(matches!(a.try_recv(), Err(TryRecvError::Closed)));
        assert!(matches!(b.try_recv(), Err(TryRecvError::Closed)));
    });
}

/// The close callback races the last message's delivery: it runs once, after the message.
#[test]
fn callbacks_racing_close() {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Arc;
    model(|| {
        let (a, b) = MessageChannel::new().into_ports();
        let seen = Arc::new(AtomicUsize::new(0));
        let (s1, s2) = (seen.clone(), seen.clone());
        b.on_message(move |_| {
            assert_eq!(s1.fetch_add(1, Ordering::SeqCst), 0, "message after close");
        });
        b.on_close(move || {
            assert_eq!(
                s2.fetch_add(10, Ordering::SeqCst),
                1,
                "close before message or twice"
            );
        });
        let t = thread::spawn(move || {
            a.post_message(0u8, []).unwrap();
        });
        b.start();
        t.join().unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 11);
    });
}
