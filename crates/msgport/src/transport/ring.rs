//! A link's small frames through shared memory: a byte ring per direction, written by one
//! process and read by the other, with a `futex` to sleep on (docs/wire-format.md, "Rings").
//!
//! A round trip through a socket pair costs each side a `sendmsg` and a `recvmsg` (buffers
//! allocated and freed in the kernel, a control buffer copied both ways); through a ring it
//! costs a copy into shared memory and, when the reader sleeps, one `FUTEX_WAKE` and one
//! `FUTEX_WAIT`. A writer puts frames in its ring only while its reader *pulls* (a thread
//! reads the port itself, waiting for an answer: the ring's `mode` word says so); frames for a
//! reader fed by the reactor, frames with descriptors and large ones go through the socket.
//! Which of the two carries the next frame is said in-band, so that the reader keeps one order:
//! a `TO_RING` control frame on the socket, a `TO_SOCKET` one in the ring.
//!
//! ```text
//! ring = write: u32 @0 | sleep: u32 @64 | read: u32 @128 | mode: u32 @192 | cpu: u32 @256
//!        | data[RING] @320
//! write: bytes written in all (mod 2^32), stored by the writer once whole frames are in
//! read:  bytes consumed in all, stored by the reader once it copied them out
//! sleep: 0 | FUTEX (a thread of the reader sleeps on `write`) | POKE (the reader's reactor
//!        waits on the socket: send it a POKE frame); set by the reader, taken by the writer
//! mode:  0 | PULLING (the reader takes ring frames now), set by the reader
//! cpu:   the CPU a sleeping thread of the reader sleeps on, plus one, set by the reader
//! ```
//!
//! Everything in the ring is the peer's memory, written whenever it likes: the reader copies
//! bytes out before it decodes them, checks every index against the ring's size (a writer that
//! claims more than the ring holds closes the link), and keeps its own position rather than
//! trusting the shared `read` word; the writer likewise never trusts `read` beyond the ring's
//! size. A peer can garble only its own messages.
//!
//! Proven by: the unit tests below, `tests/rings.rs` (order across the two media, ports and
//! large messages in between, a port moved mid-stream, a peer killed while its reader sleeps,
//! hostile indices), and the test suites run again with rings from the first frame.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use crate::sys::futex;
use crate::sys::shm::{self, Mapping};

/// Bytes of frames a ring holds (a power of two).
pub(crate) const RING: usize = 32 << 10;
/// Where the frames start, after the five words (each on a cache line of its own).
const DATA: usize = 320;
/// A ring's `memfd` size, which its reader checks.
pub(crate) const FILE: usize = DATA + RING;
/// The largest frame a writer puts in a ring; larger ones go through the socket.
pub(crate) const FRAME_MAX: usize = RING / 4;
/// Room a writer always keeps free for the marker that sends its reader back to the socket.
const MARKER: usize = super::wire::CONTROL_FRAME;

const WRITE: usize = 0;
const SLEEP: usize = 64;
const READ: usize = 128;
const MODE: usize = 192;
/// The CPU a thread of the reader went to sleep on, plus one (0: not known), set by the
/// reader: a writer on another CPU wakes it early (see [`RingOut::nudge`]).
const CPU: usize = 256;

/// `sleep`: a thread of the reader sleeps on the `write` word.
const FUTEX: u32 = 1;
/// `sleep`: the reader's reactor waits on the socket.
const POKE: u32 = 2;
/// `mode`: the reader takes ring frames now.
const PULLING: u32 = 1;

/// The most rings this process writes (each costs both processes 33 KiB of shared memory, a
/// mapping and a descriptor, kept to hand the ring over with its port), and the most new ones
/// it reads (a ring offered past that is declined: its writer keeps to the socket). Rings that
/// arrive with a moved port are not counted against the second bound: their reader must read
/// what is in them.
const MAX_WRITTEN: usize = 64;
const MAX_READ: usize = 256;
static WRITTEN: AtomicUsize = AtomicUsize::new(0);
static READING: AtomicUsize = AtomicUsize::new(0);

/// One ring counted against a bound, given back when dropped.
struct Counted(&'static AtomicUsize);

impl Counted {
    fn take(count: &'static AtomicUsize, max: usize) -> Option<Counted> {
        if count.fetch_add(1, Ordering::Relaxed) >= max {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Counted(count))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a ring was given up: its peer broke the protocol.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RingError {
    #[error("a ring's writer claims {0} unread bytes, more than the ring holds")]
    Overrun(u32),
}

/// What the writer must do for its reader after publishing frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Nothing: the reader is awake, or will look before it sleeps.
    None,
    /// Send a POKE frame on the socket (its reactor waits there).
    Poke,
}

fn word(map: &Mapping, at: usize) -> &AtomicU32 {
    match map.word(at) {
        Some(w) => w,
        // Every ring mapping is FILE bytes long (checked when made or opened).
        None => unreachable!("a ring mapping holds its four words"),
    }
}

/// The ring this process writes for one link.
pub(crate) struct RingOut {
    fd: OwnedFd,
    map: Mapping,
    /// Bytes written in all (the `write` word, kept here: the peer may scribble on the shared
    /// one).
    written: u32,
    /// Counted against [`MAX_WRITTEN`] (a ring taken over with a moved port is not).
    _counted: Option<Counted>,
}

impl RingOut {
    /// A new ring, if this process writes fewer than [`MAX_WRITTEN`].
    pub(crate) fn create() -> Option<RingOut> {
        let counted = Counted::take(&WRITTEN, MAX_WRITTEN)?;
        // Not populated: a ring its reader never switches to costs the page of its words only.
        match shm::create_named("msgport-ring", FILE, false) {
            Ok((fd, map)) => Some(RingOut {
                fd,
                map,
                written: 0,
                _counted: Some(counted),
            }),
            Err(e) => {
                tracing::debug!("msgport: no ring ({e}); the link keeps to its socket");
                None
            }
        }
    }

    /// Takes over a ring an earlier owner of the port wrote, at its position `written`.
    pub(crate) fn adopt(fd: OwnedFd, written: u32) -> io::Result<RingOut> {
        let map = shm::open_exact(fd.as_fd(), FILE)?;
        Ok(RingOut {
            fd,
            map,
            written,
            _counted: None,
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The ring's descriptor and position, for the port's next owner.
    pub(crate) fn hand_over(self) -> (OwnedFd, u32) {
        (self.fd, self.written)
    }

    /// Whether the reader takes ring frames now (it pulls).
    pub(crate) fn reader_pulls(&self) -> bool {
        word(&self.map, MODE).load(Ordering::Relaxed) == PULLING
    }

    /// Bytes written that the reader has not consumed (`None`: its `read` word is beyond
    /// anything written, a broken reader).
    pub(crate) fn unread(&self) -> Option<usize> {
        let read = word(&self.map, READ).load(Ordering::Acquire);
        let used = self.written.wrapping_sub(read) as usize;
        (used <= RING).then_some(used)
    }

    /// Whether a frame of `len` bytes fits now, with room left for the marker.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.unread()
            .is_some_and(|used| used + len + MARKER <= RING)
    }

    /// Copies a frame (its pieces one after another) into the ring, keeping room for the
    /// marker; false (nothing written) when it does not fit now. Not visible to the reader
    /// until [`publish`](Self::publish).
    pub(crate) fn put<P: AsRef<[u8]>>(&mut self, pieces: &[P]) -> bool {
        let len: usize = pieces.iter().map(|p| p.as_ref().len()).sum();
        if !self.fits(len) {
            return false;
        }
        for piece in pieces {
            self.copy_in(piece.as_ref());
        }
        true
    }

    /// Puts the marker that sends the reader back to the socket (room for it is always kept);
    /// false only when the reader broke the ring.
    pub(crate) fn put_marker(&mut self, marker: &[u8]) -> bool {
        match self.unread() {
            Some(used) if used + marker.len() <= RING => {
                self.copy_in(marker);
                true
            }
            _ => false,
        }
    }

    fn copy_in(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let at = self.written as usize % RING;
            let n = bytes.len().min(RING - at);
            let ok = self.map.write(DATA + at, &bytes[..n]);
            debug_assert!(ok, "within the ring");
            self.written = self.written.wrapping_add(n as u32);
            bytes = &bytes[n..];
        }
    }

    /// Wakes a thread of the reader asleep on another CPU before there is anything for it:
    /// called when a request of that reader arrived, its answer is on the way. Waking an idle
    /// CPU takes tens of microseconds; started now, it overlaps with the work on the answer
    /// (a stream socket does the same by accident: its sleeping writer is woken when the peer
    /// reads). The sleeper finds nothing, and sleeps again until the answer's publish.
    pub(crate) fn nudge(&self) {
        let sleep = word(&self.map, SLEEP);
        if sleep.load(Ordering::Relaxed) == FUTEX
            && word(&self.map, CPU).load(Ordering::Relaxed) != this_cpu()
        {
            futex::wake(sleep);
        }
    }

    /// Makes what was put visible to the reader, and wakes it if it sleeps: a thread asleep
    /// on the ring is woken here; a reactor is to be poked (the caller sends the frame).
    pub(crate) fn publish(&self) -> Wake {
        let write = word(&self.map, WRITE);
        // SeqCst with the reader's store of `sleep` and load of `write`: either it sees these
        // frames before it sleeps, or this sees that it sleeps.
        write.store(self.written, Ordering::SeqCst);
        let sleep = word(&self.map, SLEEP);
        if sleep.load(Ordering::SeqCst) == 0 {
            return Wake::None;
        }
        match sleep.swap(0, Ordering::SeqCst) {
            FUTEX => {
                futex::wake(sleep);
                Wake::None
            }
            POKE => Wake::Poke,
            _ => Wake::None,
        }
    }
}

/// The ring this process reads for one link (its peer writes it). Shared with a thread asleep
/// on it; only the link's reader (holding the link's lock) moves its position.
pub(crate) struct RingIn {
    fd: OwnedFd,
    map: Mapping,
    /// Bytes consumed in all (the `read` word, kept here).
    read: AtomicU32,
    /// Counted against [`MAX_READ`] (a ring taken over with a moved port is not).
    _counted: Option<Counted>,
}

impl RingIn {
    /// Accepts a ring the peer offered, if this process reads fewer than [`MAX_READ`]: `None`
    /// declines it (the writer then never switches to it). A descriptor that is not a sealed
    /// `memfd` of the ring's size is an error (the link closes).
    pub(crate) fn accept(fd: OwnedFd) -> io::Result<Option<RingIn>> {
        let Some(counted) = Counted::take(&READING, MAX_READ) else {
            return Ok(None);
        };
        let map = shm::open_exact(fd.as_fd(), FILE)?;
        // An offered ring is a fresh one: its frames start at 0 (a writer uses it only once
        // its reader says it pulls, after this).
        Ok(Some(RingIn {
            fd,
            map,
            read: AtomicU32::new(0),
            _counted: Some(counted),
        }))
    }

    /// Takes over a ring an earlier owner of the port read, at its position `read`.
    pub(crate) fn adopt(fd: OwnedFd, read: u32) -> io::Result<RingIn> {
        let map = shm::open_exact(fd.as_fd(), FILE)?;
        Ok(RingIn {
            fd,
            map,
            read: AtomicU32::new(read),
            _counted: None,
        })
    }

    /// The ring's descriptor and position, for the port's next owner. The writer is told that
    /// nobody pulls until then.
    pub(crate) fn hand_over(&self) -> io::Result<(OwnedFd, u32)> {
        self.set_pulling(false);
        Ok((crate::sys::dup(self.fd.as_fd())?, self.position()))
    }

    fn position(&self) -> u32 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes published and not yet consumed.
    pub(crate) fn available(&self) -> Result<usize, RingError> {
        let write = word(&self.map, WRITE).load(Ordering::Acquire);
        let n = write.wrapping_sub(self.position());
        if n as usize > RING {
            return Err(RingError::Overrun(n));
        }
        Ok(n as usize)
    }

    /// Appends the `n` available bytes to `out` (copied: the writer's memory may change).
    pub(crate) fn copy_out(&self, n: usize, out: &mut Vec<u8>) {
        let mut pos = self.position();
        let mut left = n.min(RING);
        while left > 0 {
            let at = pos as usize % RING;
            let k = left.min(RING - at);
            match self.map.bytes(DATA + at, k) {
                Some(bytes) => out.extend_from_slice(bytes),
                None => unreachable!("within the ring"),
            }
            pos = pos.wrapping_add(k as u32);
            left -= k;
        }
    }

    /// Gives `n` copied bytes back to the writer.
    pub(crate) fn consume(&self, n: usize) {
        let read = self.position().wrapping_add(n as u32);
        self.read.store(read, Ordering::Relaxed);
        word(&self.map, READ).store(read, Ordering::Release);
    }

    /// Tells the writer whether a thread of ours pulls (so it may use the ring).
    pub(crate) fn set_pulling(&self, pulling: bool) {
        word(&self.map, MODE).store(if pulling { PULLING } else { 0 }, Ordering::SeqCst);
    }

    /// Asks the writer for a wake-up when it publishes next (a POKE on the socket for a
    /// reactor, `futex` for a thread: see [`sleep`](Self::sleep)); then looks once more.
    /// Returns whether anything is available (the caller need not sleep).
    pub(crate) fn want_poke(&self) -> Result<bool, RingError> {
        word(&self.map, SLEEP).store(POKE, Ordering::SeqCst);
        let ready = self.available()? > 0;
        if ready {
            word(&self.map, SLEEP).store(0, Ordering::Relaxed);
        }
        Ok(ready)
    }

    /// Announces that a thread is about to sleep on the ring ([`sleep`](Self::sleep)), then
    /// looks once more: whether it may sleep (nothing is available). Called under the link's
    /// lock, so that a [`wake_local`](Self::wake_local) made under it later is not lost.
    pub(crate) fn prepare_sleep(&self) -> bool {
        word(&self.map, CPU).store(this_cpu(), Ordering::Relaxed);
        word(&self.map, SLEEP).store(FUTEX, Ordering::SeqCst);
        let empty = word(&self.map, WRITE).load(Ordering::SeqCst) == self.position();
        if !empty {
            word(&self.map, SLEEP).store(0, Ordering::Relaxed);
        }
        empty
    }

    /// Sleeps until the writer publishes, [`wake_local`](Self::wake_local) is called, or
    /// `timeout` passes, after [`prepare_sleep`](Self::prepare_sleep) said it may. The thread
    /// sleeps on the `sleep` word, which either waker clears first: a wake-up that comes
    /// between the preparation and the sleep is not lost. (A writer that sets the word again
    /// can only delay its own messages: a sleeper's timeout bounds that.)
    pub(crate) fn sleep(&self, timeout: Option<Duration>) {
        let sleep = word(&self.map, SLEEP);
        futex::wait(sleep, FUTEX, timeout);
        sleep.store(0, Ordering::Relaxed);
    }

    /// Wakes a thread of this process asleep on the ring (the socket needs a look: the peer
    /// hung up, or the port was closed here).
    pub(crate) fn wake_local(&self) {
        let sleep = word(&self.map, SLEEP);
        sleep.store(0, Ordering::SeqCst);
        futex::wake(sleep);
    }
}

/// A ring holding `frames` (at most a ring's worth), published, as a peer would make it: for
/// the fuzz targets.
pub(crate) fn fuzz_ring(frames: &[u8]) -> io::Result<(OwnedFd, Mapping)> {
    let (fd, map) = shm::create_named("fuzz-ring", FILE, false)?;
    let frames = &frames[..frames.len().min(RING)];
    map.write(DATA, frames);
    word(&map, WRITE).store(frames.len() as u32, Ordering::Release);
    Ok((fd, map))
}

/// The CPU this thread runs on, plus one (0 when not known).
fn this_cpu() -> u32 {
    u32::try_from(rustix::thread::sched_getcpu()).map_or(0, |cpu| cpu.saturating_add(1))
}

/// Rings in use by this process (written, read), for tests.
pub(crate) fn in_use() -> (usize, usize) {
    (
        WRITTEN.load(Ordering::Relaxed),
        READING.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (RingOut, RingIn) {
        let out = RingOut::create().unwrap();
        let dup = crate::sys::dup(out.fd()).unwrap();
        let inp = RingIn::accept(dup).unwrap().unwrap();
        (out, inp)
    }

    fn drain(inp: &RingIn) -> Vec<u8> {
        let n = inp.available().unwrap();
        let mut got = Vec::new();
        inp.copy_out(n, &mut got);
        inp.consume(n);
        got
    }

    #[test]
    fn frames_cross_the_ring_in_order_and_wrap_around_its_end() {
        let (mut out, inp) = pair();
        let mut sent = Vec::new();
        let mut got = Vec::new();
        // 300 frames of 1,000 bytes: the ring's 32 KiB wraps nine times.
        for i in 0..300u32 {
            let frame = vec![i as u8; 1000];
            if !out.put(&[&frame[..500], &frame[500..]]) {
                assert_eq!(out.publish(), Wake::None);
                got.extend(drain(&inp));
                assert!(out.put(&[&frame]), "fits once the reader consumed");
            }
            sent.extend_from_slice(&frame);
        }
        assert_eq!(
            inp.available().unwrap(),
            0,
            "nothing visible before publish"
        );
        out.publish();
        got.extend(drain(&inp));
        assert_eq!(got, sent);
    }

    #[test]
    fn a_full_ring_keeps_room_for_its_marker() {
        let (mut out, inp) = pair();
        let frame = vec![7u8; FRAME_MAX];
        let mut put = 0;
        while out.put(&[&frame]) {
            put += 1;
        }
        assert_eq!(put, 3, "the fourth would leave no room for the marker");
        assert!(out.put_marker(&[0u8; MARKER]));
        out.publish();
        assert_eq!(inp.available().unwrap(), 3 * FRAME_MAX + MARKER);
    }

    #[test]
    fn a_writer_that_claims_more_than_the_ring_holds_is_refused() {
        let (out, inp) = pair();
        word(&out.map, WRITE).store(RING as u32 + 1, Ordering::SeqCst);
        assert!(matches!(inp.available(), Err(RingError::Overrun(_))));
        // Wrapping backwards is as large.
        word(&out.map, WRITE).store(u32::MAX, Ordering::SeqCst);
        assert!(inp.available().is_err());
        word(&out.map, WRITE).store(0, Ordering::SeqCst);
        assert_eq!(inp.available().unwrap(), 0);
    }

    #[test]
    fn a_reader_that_claims_to_have_read_ahead_stops_the_writer() {
        let (mut out, inp) = pair();
        word(&inp.map, READ).store(12345, Ordering::SeqCst);
        assert_eq!(out.unread(), None);
        assert!(!out.put(&[&b"x"[..]]));
        assert!(!out.put_marker(&[0u8; MARKER]));
    }

    #[test]
    fn a_sleeping_reader_is_woken_by_a_publish_and_a_reactor_is_poked() {
        let (mut out, inp) = pair();
        std::thread::scope(|s| {
            let writer = s.spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                assert!(out.put(&[&b"hello"[..]]));
                out.publish();
                out
            });
            let t = std::time::Instant::now();
            while inp.prepare_sleep() {
                inp.sleep(Some(Duration::from_secs(10)));
            }
            assert!(t.elapsed() < Duration::from_secs(5));
            assert_eq!(drain(&inp), b"hello");
            // A local wake-up ends a sleep prepared before it.
            assert!(inp.prepare_sleep());
            inp.wake_local();
            let t = std::time::Instant::now();
            inp.sleep(Some(Duration::from_secs(10)));
            assert!(t.elapsed() < Duration::from_secs(5));
            let mut out = writer.join().unwrap();
            // A reactor asks for a poke: the next publish says so, once.
            assert!(!inp.want_poke().unwrap());
            assert!(out.put(&[&b"again"[..]]));
            assert_eq!(out.publish(), Wake::Poke);
            assert!(out.put(&[&b"more"[..]]));
            assert_eq!(out.publish(), Wake::None);
        });
    }

    #[test]
    fn the_mode_word_tells_the_writer_whether_its_reader_pulls() {
        let (out, inp) = pair();
        assert!(!out.reader_pulls());
        inp.set_pulling(true);
        assert!(out.reader_pulls());
        let (fd, read) = inp.hand_over().unwrap();
        drop(inp);
        assert!(
            !out.reader_pulls(),
            "a ring handed over is not pulled until taken up"
        );
        let taken = RingIn::adopt(fd, read).unwrap();
        taken.set_pulling(true);
        assert!(out.reader_pulls());
    }

    #[test]
    fn only_sealed_memfds_of_the_ring_size_are_accepted() {
        let (a, _b) = crate::sys::socketpair().unwrap();
        assert!(RingIn::accept(a).is_err());
        let (fd, _map) = shm::create(FILE + 4096).unwrap();
        assert!(RingIn::accept(fd).is_err());
        let unsealed = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, FILE as u64).unwrap();
        assert!(RingIn::accept(unsealed).is_err());
    }
}
