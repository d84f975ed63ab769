//! A poster and a puller that share one CPU. The puller waits for the CPU, not for messages:
//! the poster lets it run every few thousand messages instead of queueing a whole time slice's
//! worth (hundreds of thousands of messages, tens of MB of fresh memory). Across processes
//! too: a poster whose socket is full gives way to a reader on its CPU.
//!
//! Its own test binary: both threads (both processes) are pinned to one CPU, and other tests
//! running beside them would make the figures meaningless.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use msgport::{MessageChannel, MessagePort};
use msgport_testkit::child;

/// The tests here run one at a time (each pins its threads to the same CPU).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

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

/// What a puller saw of the poster sharing its CPU: the most messages posted and not yet taken.
struct Backlog {
    posted: Arc<AtomicU64>,
    worst: u64,
}

impl Backlog {
    /// The puller took message `seq` (the poster numbers them from 0).
    fn took(&mut self, seq: u64) {
        let posted = self.posted.load(Ordering::Relaxed);
        self.worst = self.worst.max(posted.saturating_sub(seq + 1));
    }
}

/// Posts the numbers `0..n` from this thread to a puller running `pull` on a thread of its own,
/// both pinned to one CPU; returns the largest backlog the puller saw.
fn largest_backlog(
    n: u64,
    pull: impl FnOnce(MessagePort, Backlog) -> Backlog + Send + 'static,
) -> u64 {
    let cpu = some_cpu();
    let (tx, rx) = MessageChannel::new().into_ports();
    let posted = Arc::new(AtomicU64::new(0));
    let backlog = Backlog {
        posted: posted.clone(),
        worst: 0,
    };
    let puller = std::thread::spawn(move || {
        pin(cpu);
        pull(rx, backlog).worst
    });
    pin(cpu);
    tx.post_message(0u64, []).unwrap();
    posted.store(1, Ordering::Relaxed);
    // The puller takes the first message and waits for the next.
    std::thread::sleep(Duration::from_millis(50));
    for i in 1..n {
        tx.post_message(i, []).unwrap();
        posted.store(i + 1, Ordering::Relaxed);
    }
    puller.join().unwrap()
}

#[test]
fn a_poster_sharing_its_pullers_cpu_lets_it_run_before_a_large_backlog() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const N: u64 = 1_000_000;
    let worst = largest_backlog(N, |rx, mut backlog| {
        for i in 0..N {
            let seq: u64 = rx.blocking_recv().unwrap().take_data().unwrap();
            assert_eq!(seq, i);
            backlog.took(i);
        }
        backlog
    });
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

#[test]
fn a_poster_sharing_its_cpu_with_a_task_lets_it_run_before_a_large_backlog() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const N: u64 = 2_000_000;
    let worst = largest_backlog(N, |rx, mut backlog| {
        // A task on a current-thread runtime: its thread parks whenever the queue is empty.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async move {
            for i in 0..N {
                let seq: u64 = rx.recv().await.unwrap().take_data().unwrap();
                assert_eq!(seq, i);
                backlog.took(i);
            }
            backlog
        })
    });
    eprintln!("largest backlog the task saw: {worst} messages");
    // The poster yields every 32,768 messages the task has not taken; a yield may find the
    // task not yet due to run, so up to three passed before it did (release build: 66,000 to
    // 98,000 messages). Taking a message costs more than posting one, so without the yields the
    // backlog grows for as long as the poster runs: 380,000 to 600,000 in a release build
    // (`cargo test --release`). A debug build posts slowly enough that about one time slice
    // piles up either way (about 23,000 messages).
    assert!(
        worst < 4 * 32 * 1024,
        "{worst} messages piled up before the task ran"
    );
}

/// Not a test: the entry point of the child role (returns at once in the parent).
#[test]
fn child_entry() {
    let Some(role) = child::role() else {
        return;
    };
    assert_eq!(role, "take-blobs");
    pin(std::env::var("PIN_CPU").unwrap().parse().unwrap());
    let boot = child::bootstrap();
    let n: u32 = boot.blocking_recv().unwrap().take_data().unwrap();
    for i in 0..n {
        let blob: Blob = boot.blocking_recv().unwrap().take_data().unwrap();
        assert_eq!((blob.seq, blob.bytes.len()), (i, BLOB));
    }
    boot.post_message((), []).unwrap();
    child::finish(Some(boot));
}

const BLOB: usize = 64 << 10;

#[derive(serde::Serialize, serde::Deserialize)]
struct Blob {
    seq: u32,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

/// This process's peak resident memory (`VmHWM`), in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_poster_sharing_its_readers_cpu_across_processes_lets_it_read() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const N: u32 = 2_000;
    let cpu = some_cpu();
    pin(cpu);
    let mut cmd = child::command("take-blobs");
    cmd.env("PIN_CPU", cpu.to_string());
    let (child_process, port) = msgport::process::spawn(&mut cmd).unwrap();
    port.post_message(N, []).unwrap();
    let mut blob = Blob {
        seq: 0,
        bytes: vec![7; BLOB],
    };
    // The pages every post touches anyway (a frame's worth), before the peak is taken.
    port.post_message_ref(&blob, []).unwrap();
    let before = peak_kib();
    for seq in 1..N {
        blob.seq = seq;
        port.post_message_ref(&blob, []).unwrap();
    }
    let grown = peak_kib() - before;
    port.blocking_recv().unwrap();
    drop(port);
    child::wait_ok(child_process);
    eprintln!(
        "peak memory grew by {grown} KiB while posting {} MiB",
        (N as usize * BLOB) >> 20
    );
    // The poster gives way once 256 KiB wait behind the full socket; the reader then takes
    // what the socket holds. Without that, a time slice of posts piles up here.
    assert!(grown < 16 << 10, "{grown} KiB held by the poster");
}
