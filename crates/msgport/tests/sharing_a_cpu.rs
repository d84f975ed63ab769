//! A poster and a puller that share one CPU. The puller waits for the CPU, not for messages:
//! the poster lets it run every few thousand messages instead of queueing a whole time slice's
//! worth (hundreds of thousands of messages, tens of MB of fresh memory).
//!
//! Its own test binary: both threads are pinned to one CPU, and other tests running beside
//! them would make the figures meaningless.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use msgport::MessageChannel;

/// Pins this thread to `cpu`.
fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("pin to one CPU");
}

/// A CPU this process may run on.
fn some_cpu() -> usize {
    let set = rustix::thread::sched_getaffinity(None).expect("read the CPU set");
    (0..rustix::thread::CpuSet::MAX_CPU)
        .find(|&cpu| set.is_set(cpu))
        .expect("at least one CPU")
}

#[test]
fn a_poster_sharing_its_pullers_cpu_lets_it_run_before_a_large_backlog() {
    const N: u64 = 1_000_000;
    let cpu = some_cpu();
    let (tx, rx) = MessageChannel::new().into_ports();
    let posted = Arc::new(AtomicU64::new(0));
    let puller = {
        let posted = posted.clone();
        std::thread::spawn(move || {
            pin(cpu);
            let mut worst = 0;
            for i in 0..N {
                let seq: u64 = rx.blocking_recv().unwrap().take_data().unwrap();
                assert_eq!(seq, i);
                worst = worst.max(posted.load(Ordering::Relaxed).saturating_sub(i + 1));
            }
            worst
        })
    };
    pin(cpu);
    tx.post_message(0u64, []).unwrap();
    posted.store(1, Ordering::Relaxed);
    // The puller takes the first message and waits for the next.
    std::thread::sleep(Duration::from_millis(50));
    for i in 1..N {
        tx.post_message(i, []).unwrap();
        posted.store(i + 1, Ordering::Relaxed);
    }
    let worst = puller.join().unwrap();
    eprintln!("largest backlog the puller saw: {worst} messages");
    // The poster yields every 4,096 messages the puller has not taken; a yield may find the
    // puller not yet due to run, so two may pass before it does. Without the yields, one time
    // slice of posts piles up: 16,000 to 24,000 messages in a debug build, over 130,000 in a
    // release build.
    assert!(
        worst < 3 * 4096,
        "{worst} messages piled up before the puller ran"
    );
}
