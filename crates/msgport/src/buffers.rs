//! Large byte buffers kept for the next large message: a fresh buffer of many megabytes costs a
//! page fault per page (each zero-filled by the kernel) every time, a kept one costs nothing. A
//! link's receive buffer, and the buffer a large byte string is serialized into, come from here
//! and go back here once their bytes are written or decoded.
//!
//! Bounded: at most [`KEPT`] buffers of at most [`KEEP_MAX`] bytes each, for the whole process,
//! whatever the number of links.
//!
//! Smaller buffers (a received message's data, from [`SMALL_MIN`] bytes up to [`KEEP_MIN`])
//! are kept too, by size class ([`take_small`], [`give_small`]): they are made by the I/O
//! thread and freed by whichever thread takes the message, and the allocator, seeing the I/O
//! thread's heap emptied by another thread, gives its pages back to the kernel (`madvise`)
//! only to fault them in again for the next messages: nearly a page fault per message in a
//! stream of 4 KiB ones. At most [`SMALL_KEPT`] per class.

use std::sync::Mutex;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Buffers below this size are not worth keeping (the allocator serves them from its heap).
const KEEP_MIN: usize = 64 * 1024;
const KEEP_MAX: usize = 32 << 20;
const KEPT: usize = 4;

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A buffer with room for at least `capacity` bytes; its length and contents are whatever it
/// held before (callers `clear` or overwrite it).
pub(crate) fn take(capacity: usize) -> Vec<u8> {
    take_kept(capacity, Vec::capacity).unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// A kept buffer already at least `len` bytes long (its bytes initialized: no need to fill it
/// in before reading into it), if there is one.
pub(crate) fn take_filled(len: usize) -> Option<Vec<u8>> {
    take_kept(len, Vec::len)
}

fn take_kept(size: usize, measure: fn(&Vec<u8>) -> usize) -> Option<Vec<u8>> {
    if size < KEEP_MIN {
        return None;
    }
    let mut pool = pool();
    let fits = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| measure(b) >= size)
        .min_by_key(|(_, b)| measure(b))
        .map(|(i, _)| i)?;
    Some(pool.swap_remove(fits))
}

/// Gives a buffer back for later use (kept only if it is large, and not too large; the smallest
/// kept one makes way for a larger one).
pub(crate) fn give(buf: Vec<u8>) {
    let size = buf.capacity();
    if !(KEEP_MIN..=KEEP_MAX).contains(&size) {
        return;
    }
    let mut pool = pool();
    if pool.len() < KEPT {
        pool.push(buf);
    } else if let Some(smallest) = pool.iter_mut().min_by_key(|b| b.capacity()) {
        if smallest.capacity() < size {
            let old = std::mem::replace(smallest, buf);
            drop(pool);
            drop(old);
        }
    }
}

/// Data shorter than this gets a plain allocation (the allocator's per-thread caches serve
/// it well).
pub(crate) const SMALL_MIN: usize = 512;
/// Small buffers kept per size class.
const SMALL_KEPT: usize = 32;
/// Size classes: powers of two from `SMALL_MIN` up to half of `KEEP_MIN`.
const CLASSES: usize = (KEEP_MIN / SMALL_MIN).trailing_zeros() as usize;

static SMALL: [Mutex<Vec<Vec<u8>>>; CLASSES] = [const { Mutex::new(Vec::new()) }; CLASSES];

/// The size class of a buffer of `capacity` bytes (exactly a class's size), if any.
fn class_of(capacity: usize) -> Option<usize> {
    (capacity.is_power_of_two() && (SMALL_MIN..KEEP_MIN).contains(&capacity))
        .then(|| (capacity / SMALL_MIN).trailing_zeros() as usize)
}

/// An empty buffer with room for `len` bytes: a kept one of its size class when `len` is from
/// [`SMALL_MIN`] up to [`KEEP_MIN`], else a new one.
pub(crate) fn take_small(len: usize) -> Vec<u8> {
    if !(SMALL_MIN..KEEP_MIN).contains(&len) {
        return Vec::with_capacity(len);
    }
    let size = len.next_power_of_two();
    let Some(class) = class_of(size) else {
        return Vec::with_capacity(len);
    };
    let kept = SMALL[class].lock().unwrap_or_else(|p| p.into_inner()).pop();
    match kept {
        Some(mut buf) => {
            buf.clear();
            buf
        }
        None => Vec::with_capacity(size),
    }
}

/// Keeps a buffer made by [`take_small`] for later (others are dropped).
pub(crate) fn give_small(buf: Vec<u8>) {
    let Some(class) = class_of(buf.capacity()) else {
        return;
    };
    let mut kept = SMALL[class].lock().unwrap_or_else(|p| p.into_inner());
    if kept.len() < SMALL_KEPT {
        kept.push(buf);
    }
}

/// A received message's encoded data, left where it was read instead of copied into a buffer
/// of its own: a large frame's read buffer (the data from `start` on), a kept buffer it was
/// copied into, or the shared-memory region it came in. A large buffer goes back to the pool
/// when dropped, so that the next large frame is read into memory already touched; a region
/// goes back to its sender.
pub(crate) enum Held {
    /// Data of at most [`HELD_INLINE`] bytes, in place: no allocation for a small message.
    Small {
        len: u8,
        buf: [u8; HELD_INLINE],
    },
    /// `buf[start..end]`. The buffer keeps its whole length (what was read into it): back in
    /// the pool, it is a read buffer as long as the frame that filled it, so that the next
    /// frame of that size is read in one call (cut at its data's end, it came back short of
    /// the frame's last byte and every such frame took a second, one-byte `recvmsg`).
    Buffer {
        buf: Vec<u8>,
        start: usize,
        end: usize,
    },
    Region(crate::transport::shm::Lease),
}

/// The most bytes a [`Held`] keeps in place (a received message's event stays as large as an
/// in-process one's, whose value is kept in place up to 64 bytes).
pub(crate) const HELD_INLINE: usize = 56;

impl Held {
    /// `buf[start..end]`; both are clamped to the buffer's length.
    pub(crate) fn new(buf: Vec<u8>, start: usize, end: usize) -> Self {
        let end = end.min(buf.len());
        let start = start.min(end);
        Held::Buffer { buf, start, end }
    }

    /// Copies `bytes` in place when they are few, else into a kept buffer (or a new one).
    pub(crate) fn copy_of(bytes: &[u8]) -> Self {
        if bytes.len() <= HELD_INLINE {
            let mut buf = [0; HELD_INLINE];
            buf[..bytes.len()].copy_from_slice(bytes);
            return Held::Small {
                len: bytes.len() as u8,
                buf,
            };
        }
        let mut buf = if bytes.len() < KEEP_MIN {
            take_small(bytes.len())
        } else {
            take(bytes.len())
        };
        buf.clear();
        buf.extend_from_slice(bytes);
        let end = buf.len();
        Held::Buffer { buf, start: 0, end }
    }

    /// [`copy_of`](Self::copy_of) `bytes[range]`. A short range is copied as a whole in-place
    /// buffer's worth of `bytes` when they reach that far (the bytes past the range are kept
    /// but never read): a copy of a fixed length is a few moves, one of the range's own length
    /// a call to `memcpy`.
    pub(crate) fn copy_from(bytes: &[u8], range: std::ops::Range<usize>) -> Self {
        if range.len() <= HELD_INLINE {
            let window = range
                .start
                .checked_add(HELD_INLINE)
                .and_then(|end| bytes.get(range.start..end));
            if let Some(Ok(buf)) = window.map(<[u8; HELD_INLINE]>::try_from) {
                return Held::Small {
                    len: range.len() as u8,
                    buf,
                };
            }
        }
        Held::copy_of(&bytes[range])
    }

    /// The bytes, in a vector of their own (moved when they start a buffer).
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        match &mut self {
            Held::Buffer { buf, start, end } => {
                let mut buf = std::mem::take(buf);
                buf.truncate(*end);
                buf.drain(..*start);
                buf
            }
            Held::Region(lease) => lease.to_vec(),
            Held::Small { len, buf } => buf[..usize::from(*len)].to_vec(),
        }
    }
}

impl From<Vec<u8>> for Held {
    fn from(buf: Vec<u8>) -> Self {
        let end = buf.len();
        Held::Buffer { buf, start: 0, end }
    }
}

impl std::ops::Deref for Held {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Held::Buffer { buf, start, end } => &buf[*start..*end],
            Held::Region(lease) => lease,
            Held::Small { len, buf } => &buf[..usize::from(*len)],
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Buffer { buf, .. } = self {
            let buf = std::mem::take(buf);
            if buf.capacity() < KEEP_MIN {
                give_small(buf);
            } else {
                give(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_kept_by_size_class() {
        assert_eq!(class_of(SMALL_MIN), Some(0));
        assert_eq!(class_of(KEEP_MIN / 2), Some(CLASSES - 1));
        assert_eq!(class_of(KEEP_MIN), None);
        assert_eq!(class_of(3000), None);
        let small = take_small(100);
        assert!(small.capacity() >= 100 && class_of(small.capacity()).is_none());
        let mut buf = take_small(3000);
        assert_eq!(buf.capacity(), 4096);
        buf.extend_from_slice(&[1; 3000]);
        give_small(buf);
        let again = take_small(2049);
        assert!(again.is_empty() && again.capacity() == 4096);
        // Bounded: what is given past the bound is dropped.
        for _ in 0..SMALL_KEPT * 2 {
            give_small(Vec::with_capacity(1024));
        }
        assert!(SMALL[class_of(1024).unwrap()].lock().unwrap().len() <= SMALL_KEPT);
    }

    #[test]
    fn held_bytes_are_a_stretch_of_their_buffer() {
        let held = Held::new(b"headbody".to_vec(), 4, 8);
        assert_eq!(&*held, b"body");
        assert_eq!(held.into_vec(), b"body");
        let held = Held::new(b"headbody!".to_vec(), 4, 8);
        assert_eq!(&*held, b"body");
        assert_eq!(held.into_vec(), b"body");
        assert_eq!(&*Held::new(vec![1, 2], 9, 12), b"");
        assert_eq!(&*Held::new(vec![1, 2, 3], 2, 1), b"");
        assert_eq!(&*Held::new(vec![1, 2, 3], 1, 9), [2, 3]);
        assert_eq!(&*Held::copy_of(b"abc"), b"abc");
        assert!(matches!(Held::copy_of(b"abc"), Held::Small { len: 3, .. }));
        // From a longer buffer, in a window reaching past the range or not, the same bytes.
        let long: Vec<u8> = (0..200u8).collect();
        for range in [0..3, 10..10, 100..156, 150..200, 190..200, 0..57, 20..120] {
            let held = Held::copy_from(&long, range.clone());
            assert_eq!(&*held, &long[range.clone()], "{range:?}");
            assert_eq!(held.into_vec(), long[range].to_vec());
        }
        let most = [7u8; HELD_INLINE];
        assert!(matches!(Held::copy_of(&most), Held::Small { .. }));
        assert_eq!(&*Held::copy_of(&most), &most[..]);
        assert_eq!(Held::copy_of(&most).into_vec(), most.to_vec());
        let more = [8u8; HELD_INLINE + 1];
        assert!(matches!(Held::copy_of(&more), Held::Buffer { .. }));
        assert_eq!(&*Held::copy_of(&more), &more[..]);
        assert_eq!(Held::from(vec![5]).into_vec(), vec![5]);
    }
}
