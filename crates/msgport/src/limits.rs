//! The process-wide limits that bound what a peer in another process can make this one spend.
//! `docs/architecture.md` ("What a hostile peer can and cannot do") lists every limit, fixed or
//! configurable, with the test that proves it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Limits on what crosses a process boundary, set for the whole process with [`set_limits`].
///
/// ```
/// use std::time::Duration;
///
/// msgport::set_limits(msgport::Limits {
///     receive_high_water: 4 << 20,
///     ..msgport::Limits::default()
/// });
/// assert_eq!(msgport::limits().receive_high_water, 4 << 20);
/// # msgport::set_limits(msgport::Limits::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest encoded message (bytes) that may leave or enter this process: 256 MiB by
    /// default. A larger post fails with [`PostError::TooLarge`](crate::PostError::TooLarge); a
    /// larger incoming frame closes the port it arrived on.
    pub max_message_size: usize,
    /// Back-pressure: a port whose peer is in another process stops reading its socket while
    /// the messages queued at it and not yet taken by the application cost more than this many
    /// bytes (32 MiB by default), and reads again once they cost half as much. The sender's
    /// posts then wait in the kernel buffer and in the sender's own queue (posting never
    /// blocks). A message costs its encoded size, plus 512 bytes per port record and 16 KiB per
    /// descriptor it carries, so that a port cannot hoard the process's descriptors either.
    /// One message larger than the mark is still read whole.
    pub receive_high_water: usize,
    /// How long a closed port keeps trying to write what its peer has not read yet: 30 s by
    /// default. A peer that reads nothing for that long loses those messages and sees the
    /// close; the socket and its queue are released.
    pub close_linger: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 256 << 20,
            receive_high_water: 32 << 20,
            close_linger: Duration::from_secs(30),
        }
    }
}

static MAX_MESSAGE: AtomicUsize = AtomicUsize::new(256 << 20);
static HIGH_WATER: AtomicUsize = AtomicUsize::new(32 << 20);
static LINGER_MS: AtomicU64 = AtomicU64::new(30_000);

/// Sets the process's [`Limits`] (for every port, existing ones included).
pub fn set_limits(limits: Limits) {
    MAX_MESSAGE.store(
        limits.max_message_size.min(u32::MAX as usize),
        Ordering::Relaxed,
    );
    HIGH_WATER.store(limits.receive_high_water.max(1), Ordering::Relaxed);
    LINGER_MS.store(
        u64::try_from(limits.close_linger.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// The process's current [`Limits`].
pub fn limits() -> Limits {
    Limits {
        max_message_size: max_message_size(),
        receive_high_water: receive_high_water(),
        close_linger: close_linger(),
    }
}

/// Sets only [`Limits::max_message_size`].
pub fn set_max_message_size(bytes: usize) {
    MAX_MESSAGE.store(bytes.min(u32::MAX as usize), Ordering::Relaxed);
}

pub(crate) fn max_message_size() -> usize {
    MAX_MESSAGE.load(Ordering::Relaxed)
}

pub(crate) fn receive_high_water() -> usize {
    HIGH_WATER.load(Ordering::Relaxed)
}

pub(crate) fn close_linger() -> Duration {
    Duration::from_millis(LINGER_MS.load(Ordering::Relaxed))
}
