//! The synchronisation primitives of the port state machine, behind one facade so that the
//! `loom` model tests (`RUSTFLAGS="--cfg msgport_loom" cargo test -p msgport --test loom --release`)
//! can swap them for loom's instrumented versions.

#[cfg(msgport_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(msgport_loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(msgport_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(msgport_loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

// Endpoints are shared with the transport's links, which are not modelled: a plain `Arc`.
pub(crate) use std::sync::Arc;

/// Locks `mutex`, ignoring poisoning: no code of ours panics while holding a port lock (user
/// callbacks always run with the lock released), so a poisoned lock still guards valid state.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
