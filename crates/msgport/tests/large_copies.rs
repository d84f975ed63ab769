//! What receiving a large message costs the receiver: the bytes it allocates to take one, once
//! the process's kept buffers are warm, are about the message's own size (the value it takes),
//! not twice that. Large data stays where it was read (the socket's read buffer, or a kept
//! buffer it was copied into from a shared-memory region) until the receiver asks for it, and
//! is then decoded straight into the receiver's type.
//!
//! Its own test binary: the allocator below counts every allocation of the process (the one
//! `unsafe` here: forwarding to the system allocator).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use msgport_testkit::hostile::socket_pair;
use serde::{Deserialize, Serialize};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the sending thread: what the sender allocates is not the receiver's cost.
    static UNCOUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count(bytes: usize) {
    if !UNCOUNTED.with(Cell::get) {
        ALLOCATED.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator, counting the bytes it hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The count is the process's: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Blob {
    seq: u64,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

/// Sizes through the socket (a few KiB: the data is copied out of the read buffer into a kept
/// buffer of its size class; 64 KiB and more: the data leaves the read buffer uncopied) and
/// through shared memory (256 KiB and more). Counted: what the receiving side allocates (the
/// I/O thread's reads and the taking thread), from the post to the taken value; the posts are
/// made by a thread of their own, not counted.
#[test]
fn taking_a_large_message_allocates_about_its_size_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (a, b) = socket_pair();
    let (to_sender, posts) = std::sync::mpsc::channel::<Blob>();
    let sender = std::thread::spawn(move || {
        UNCOUNTED.with(|u| u.set(true));
        for blob in posts {
            a.post_message(blob, []).unwrap();
        }
    });
    for size in [4 << 10, 20 << 10, 100 << 10, 200 << 10, 1 << 20, 6 << 20] {
        const ROUNDS: usize = 12;
        let mut spent_each = Vec::new();
        for round in 0..ROUNDS {
            let blob = Blob {
                seq: round as u64,
                bytes: vec![round as u8; size],
            };
            let before = ALLOCATED.load(Ordering::Relaxed);
            to_sender.send(blob).unwrap();
            let got: Blob = b.blocking_recv().unwrap().take_data().unwrap();
            let spent = ALLOCATED.load(Ordering::Relaxed) - before;
            assert_eq!(got.seq, round as u64);
            assert_eq!(got.bytes.len(), size);
            assert!(got.bytes.iter().all(|&x| x == round as u8));
            drop(got);
            // The first rounds warm the kept buffers up.
            if round >= 4 {
                spent_each.push(spent);
            }
        }
        // The median: a frame read in two pieces (the reader caught up with the writer) may
        // cost one more buffer now and then.
        spent_each.sort_unstable();
        let median = spent_each[spent_each.len() / 2];
        assert!(
            median < size + size / 2,
            "taking a {size}-byte message allocated {median} bytes (median; twice the message: \
             copied twice?)"
        );
    }
    drop(to_sender);
    sender.join().unwrap();
}

/// A small message (here four integers below 2^53, about 30 bytes of data) costs the receiving
/// side no allocation at all once warm: its data is kept in place in the event until taken.
#[test]
fn taking_a_small_message_allocates_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (a, b) = socket_pair();
    let (to_sender, posts) = std::sync::mpsc::channel::<[u64; 4]>();
    let sender = std::thread::spawn(move || {
        UNCOUNTED.with(|u| u.set(true));
        for m in posts {
            a.post_message(m, []).unwrap();
        }
    });
    let mut spent_each = Vec::new();
    for round in 0..40u64 {
        let m = [round, round << 20, round << 40, 1 << 52];
        let before = ALLOCATED.load(Ordering::Relaxed);
        to_sender.send(m).unwrap();
        let got: [u64; 4] = b.blocking_recv().unwrap().take_data().unwrap();
        let spent = ALLOCATED.load(Ordering::Relaxed) - before;
        assert_eq!(got, m);
        if round >= 8 {
            spent_each.push(spent);
        }
    }
    spent_each.sort_unstable();
    let median = spent_each[spent_each.len() / 2];
    assert_eq!(
        median, 0,
        "bytes allocated to take a small message: {spent_each:?}"
    );
    drop(to_sender);
    sender.join().unwrap();
}
