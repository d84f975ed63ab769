//! What a message costs in allocations, counted on the thread that posts and takes it (this
//! test binary's allocator counts per thread; the reactor's thread is not counted).

// A global allocator is an `unsafe` trait: this counting one only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use serde::{Deserialize, Serialize};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to `System` unchanged; counting touches only a thread-local
// `Cell` without a destructor (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Copy)]
struct Small {
    seq: u64,
    rest: [u64; 7],
}

/// Posting a small struct to a port whose peer is in another process, and taking the answer,
/// allocates nothing once the link is warm: the post is encoded into a buffer the thread keeps,
/// its frame queued in another the thread keeps once written, and the answer read into the
/// link's buffer and kept in place in its event. (Before: one allocation per post, the buffer
/// it was encoded into, which its frame then became.)
#[test]
fn a_round_trip_of_a_small_struct_allocates_nothing() {
    let (a, b, _dir) = msgport_testkit::linked_pair("allocations");
    let round_trip = |seq: u64| {
        let sent = Small {
            seq,
            rest: [seq; 7],
        };
        a.post_message(sent, []).unwrap();
        let got: Small = b.blocking_recv().unwrap().take_data().unwrap();
        b.post_message(got, []).unwrap();
        let back: Small = a.blocking_recv().unwrap().take_data().unwrap();
        assert_eq!(back, sent);
    };
    for seq in 0..1_000 {
        round_trip(seq);
    }
    let before = allocations();
    for seq in 0..1_000 {
        round_trip(seq);
    }
    let made = allocations() - before;
    assert_eq!(made, 0, "{made} allocations in 1,000 round trips");
}

/// A post made by a thread-local's destructor as its thread ends, after this crate's kept
/// buffers are gone (a thread's locals are destroyed in the reverse order of their first use),
/// still leaves: it used to panic reaching the kept buffer, which aborts the process.
#[test]
fn a_post_from_a_thread_local_destructor_still_leaves() {
    struct PostOnDrop(Option<msgport::MessagePort>);
    impl Drop for PostOnDrop {
        fn drop(&mut self) {
            if let Some(port) = self.0.take() {
                let last = Small {
                    seq: 7,
                    rest: [7; 7],
                };
                port.post_message(last, []).unwrap();
            }
        }
    }
    thread_local! {
        static LAST: std::cell::RefCell<PostOnDrop> =
            const { std::cell::RefCell::new(PostOnDrop(None)) };
    }
    let (a, b, _dir) = msgport_testkit::linked_pair("thread-end");
    std::thread::spawn(move || {
        // First used before the kept buffers (the post below), so destroyed after them.
        LAST.with(|last| drop(last.borrow()));
        a.post_message(
            Small {
                seq: 1,
                rest: [1; 7],
            },
            [],
        )
        .unwrap();
        LAST.with(|last| last.borrow_mut().0 = Some(a));
    })
    .join()
    .unwrap();
    for seq in [1, 7] {
        let got: Small = b.blocking_recv().unwrap().take_data().unwrap();
        assert_eq!(got.seq, seq);
    }
}
