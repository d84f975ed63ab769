//! [`Link`]: one end of a port's socket in this process.
//!
//! Writes happen on the posting thread when the socket takes them; what it does not take waits
//! in the link's queue (never blocking the poster) and the reactor flushes it when the socket is
//! writable, coalescing queued frames into one `sendmsg`. Reads happen on the reactor thread:
//! frames are decoded and pushed to the target endpoint, under the link's lock, so that a port
//! leaving the process (`export`) sees every frame either delivered or still unread.
//!
//! What a peer sends is bounded before it costs anything (docs/architecture.md, "What a hostile
//! peer can and cannot do"): the receive buffer grows with the bytes that arrived (never with the
//! length a header announces), descriptors wait only for the frame being read, a reactor turn
//! reads at most [`READ_BUDGET`] bytes of one link before serving the others, and a port whose
//! queue is over the receive high-water mark is not read at all until the application drains it.
//!
//! Lock order: a link's `io` before any endpoint's locks; callbacks run after `io` is released.
//!
//! Proven by: `tests/hostile.rs` (a test per bound: `an_announced_frame_costs_only_what_arrived`,
//! `descriptors_a_frame_does_not_announce_close_the_port`,
//! `a_flooded_port_stops_reading_at_its_high_water_mark`,
//! `a_flood_on_one_port_does_not_starve_another`, ...), `tests/transport.rs`
//! (`a_64_mib_message_and_200_ports_arrive_intact`,
//! `sigkill_closes_and_ten_thousand_cycles_leak_no_descriptor`), and the `link` fuzz target,
//! which drives this read path with fuzzer-chosen writes and descriptors.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use super::handoff::{self, Backlog, Handover, Outgoing, RingState, Segment};
use super::reactor::{self, reactor, SharedFd};
use super::ring::{self, RingIn, RingOut, Wake};
use super::shm;
use super::wire::{self, Control, Frame, WireError};
use crate::buffers::Held;
use crate::error::{PostError, Refused};
use crate::event::{MessageEvent, Payload};
use crate::port::WireData;
use crate::port::{Encoder, Endpoint, MessagePort, Outbound, PullMode, Pulled};
use crate::sys;

/// One socket end: what we write to it, and the endpoint that gets what we read.
pub(crate) struct Link {
    /// This link, for registering itself with the reactor when first needed.
    me: std::sync::Weak<Link>,
    token: usize,
    target: Arc<Endpoint>,
    /// Held by a reader from reading frames until their messages are queued at the endpoint
    /// (decoding and importing happen outside `io`), so that two readers (the reactor and a
    /// pulling thread) cannot reorder messages, and a port leaving the process (`export`) sees
    /// every frame either delivered or unread. Lock order: `deliver`, then `io`.
    deliver: Mutex<Delivery>,
    io: Mutex<Io>,
    /// A copy of `io.pull_mode`, read without the lock by pulls that only need to know whether
    /// the reactor already feeds the endpoint (written under the lock).
    pulled: std::sync::atomic::AtomicBool,
    /// The reactor found `deliver` held (a pulling thread asleep in `recvmsg` holds it) and left
    /// the readiness it was told of: whoever releases `deliver` next re-arms the socket.
    missed: std::sync::atomic::AtomicBool,
}

/// A reader's buffers from frames to queued messages, kept between turns (no allocation per
/// turn once they have grown).
#[derive(Default)]
struct Delivery {
    /// Messages decoded, with what each costs; their ports are added once imported.
    events: Vec<(MessageEvent, usize)>,
    /// The ports of the messages in `events` that carry some (by index), still handovers.
    ports: Vec<(usize, Vec<Handover>)>,
    rejected: Vec<MessageEvent>,
}

#[derive(Default)]
struct Io {
    /// `None` once closed, dead or exported. Shared with a thread polling it (`read_here`).
    fd: Option<SharedFd>,
    /// A thread pulling on this port reads the socket itself (`read_here`): the reactor does
    /// not watch for readability until asynchronous or callback delivery needs it again
    /// (`arm`). A blocking pull then costs no reactor wake-up and no epoll_ctl per message.
    pull_mode: bool,
    /// The socket is in the reactor's epoll set. A link whose port nobody waits on
    /// asynchronously starts unregistered (in pull mode): a port that arrives and is dropped, or
    /// only pulled from, never costs an epoll_ctl.
    registered: bool,
    /// Received bytes: `inbuf[..filled]`.
    inbuf: Vec<u8>,
    filled: usize,
    /// Received descriptors not yet claimed by a frame.
    infds: VecDeque<OwnedFd>,
    /// Frames (or their unsent rest) waiting for the socket.
    out: VecDeque<Chunk>,
    /// The bytes in `out`.
    queued: usize,
    /// Bytes posted behind a full socket since the poster last gave way (see `send_frame`).
    since_yield: usize,
    /// Writable interest is registered.
    want_writable: bool,
    /// The link is on the reactor's cork list: frames a burst left in `out` are written when
    /// its timer fires, if nothing wrote them before.
    corked: bool,
    /// When the last frame that could be held was posted (the burst test of `send_frame`).
    last_post: Option<Instant>,
    /// Bytes of the frames a burst left in `out` since it was last written (`send_frame`'s
    /// [`CORK_BYTES`] test).
    held_bytes: usize,
    /// Frames a burst left in `out` since it was last written (the [`CORK_FRAMES`] test).
    held_frames: usize,
    /// The send buffer was enlarged (done before the first large frame, not for every socket:
    /// most ports never carry one).
    sized: bool,
    /// Close once `out` is flushed.
    closing: bool,
    /// How a pulling thread waits for this socket (see `read_here`).
    wait: Wait,
    /// The socket's receive timeout is [`SLICE`] (a timed pull's), not none (an untimed one's).
    timed_reads: bool,
    /// We shut our reading side (a closed port that lingers to write): reads end with nothing.
    read_shut: bool,
    /// The length of the last frame read when it was longer than [`READ_CHUNK`], else 0: the
    /// next read of a stream of large frames is that long (see [`read_buffer`]).
    frame_hint: usize,
    /// Shared-memory regions for this link's large frames.
    regions: shm::Regions,
    /// Regions the peer sent, kept mapped for its next large frames.
    mapped: shm::Mapped,
    /// When the reactor calls [`Link::trim_regions`], if it is to.
    trim_at: Option<Instant>,
    /// The ring this link writes for its peer (`ring`), once offered.
    ring_out: Option<RingOut>,
    /// Frames go into `ring_out` now (a TO_RING was queued, and no TO_SOCKET since).
    out_on_ring: bool,
    /// Answers posted (a message was delivered on the port since the post before): the link
    /// offers its peer a ring after [`ring_after`] of them (a request-and-answer exchange).
    answers: u32,
    /// This link offers no ring (none could be made, or its reader broke the last one).
    no_ring: bool,
    /// The ring the peer writes for us, once accepted. Shared with a pulling thread asleep on
    /// it.
    ring_in: Option<Arc<RingIn>>,
    /// Frames come from `ring_in` now (a TO_RING was read, and no TO_SOCKET since).
    in_on_ring: bool,
    /// While frames come from the ring, the socket has something too (the reactor saw it
    /// readable, or the ring said TO_SOCKET): read it.
    socket_due: bool,
    /// A frame read from the socket waits for the ring's TO_SOCKET (it was read while frames
    /// came from the ring; the writer left the marker before writing it).
    blocked: bool,
}

/// How a thread pulling on a link waits for its socket.
///
/// Asleep in `recvmsg` itself, a thread is woken straight into the read: one system call per
/// message instead of `poll` and then `recvmsg`. That needs the socket in blocking mode (two or
/// three system calls, once per link), so a link switches after its first wait: a port used
/// for one request never pays for it. An untimed pull's sleep has no timeout, so it arms no
/// kernel timer (a close from another thread wakes it by shutting the socket); a timed pull's
/// has [`SLICE`] (the socket's timeout follows the kind of pull, a `setsockopt` when it
/// changes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// In `poll`, then a read; the first wait has not happened yet.
    #[default]
    Poll,
    /// In `poll`; the next wait prepares the socket and receives.
    Prepare,
    /// In `recvmsg` (the socket is prepared).
    Receive,
    /// In `poll`, for good: preparing failed, or the socket stopped blocking (a process holding
    /// the same open socket set `O_NONBLOCK`, or shortened its receive timeout).
    PollOnly,
}

/// Who is reading a link, for [`Link::read`].
#[derive(Clone, Copy)]
enum Reader<'a> {
    /// The reactor, told the socket is readable.
    Reactor,
    /// A pulling thread, reading what is there now.
    Pulling,
    /// A pulling thread that sleeps in its first `recvmsg` until something arrives (or, for a
    /// timed pull, a [`SLICE`] passes), on this descriptor.
    Waiting(&'a SharedFd),
}

/// What a waiting read received, before it is taken in under `io`.
struct Received {
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    got: io::Result<usize>,
    /// It returned `WouldBlock`, and the socket no longer blocks as prepared.
    unprepared: bool,
}

/// A pulling thread waiting in `poll`, or in `recvmsg` for a timed pull, wakes at least this
/// often to look at its port again (its deadline, a close made by another thread, a message
/// another reader delivered). An untimed pull asleep in `recvmsg` has no timeout: whatever
/// must end its wait shuts the socket (see `close_writing`).
const SLICE: Duration = Duration::from_millis(50);

/// An untimed pull asleep on a ring wakes at least this often to look at its socket (its
/// reactor wakes it at once when the peer hangs up; this bounds what a writer that keeps
/// asking for futex wake-ups it never gives can delay that by).
const RING_SLICE: Duration = Duration::from_secs(1);

struct Chunk {
    bytes: Vec<u8>,
    pos: usize,
    /// Sent with the first `sendmsg` that includes any byte of this chunk, then dropped here.
    fds: Vec<OwnedFd>,
    /// The small frames of a burst, copied one after another (see [`queue`]).
    merged: bool,
}

/// Queues a frame's parts behind `out`. A small frame that a burst holds (`merge`) is copied
/// onto the end of the small frame before it instead, so that the burst leaves as one `iovec`
/// rather than one per frame: a `sendmsg` of 64 frames of 75 bytes took the kernel 8.8 µs as
/// 64 `iovec`s and 3.1 µs as one (reader on the same CPU; 4.0 and 2.1 µs across CPUs).
fn queue(out: &mut VecDeque<Chunk>, mut parts: Vec<Vec<u8>>, fds: Vec<OwnedFd>, merge: bool) {
    if parts.len() == 1 && fds.is_empty() {
        if let Some(frame) = parts.pop() {
            queue_bytes(out, frame, merge);
            return;
        }
    }
    // Descriptors go with the first parts, at most one `sendmsg` batch per byte, so that every
    // batch travels with bytes of its own frame (the receiver counts on it).
    let mut fds = fds.into_iter();
    let mut left = fds.len();
    let count = parts.len();
    for (i, bytes) in parts.into_iter().enumerate() {
        let n = if i + 1 == count {
            left
        } else {
            left.min(bytes.len().saturating_mul(sys::MAX_FDS_PER_SEND))
        };
        left -= n;
        out.push_back(Chunk {
            bytes,
            pos: 0,
            fds: fds.by_ref().take(n).collect(),
            merged: false,
        });
    }
}

/// Queues a control frame of the link's rings (never merged with a burst's frames).
fn queue_control(io: &mut Io, kind: Control) {
    queue_bytes(&mut io.out, kind.frame().to_vec(), false);
    io.queued += wire::CONTROL_FRAME;
}

/// [`queue`] for a frame in one buffer, without descriptors.
fn queue_bytes(out: &mut VecDeque<Chunk>, frame: Vec<u8>, merge: bool) {
    match burst_buffer(out, frame.len(), merge) {
        Some(bytes) => bytes.extend_from_slice(&frame),
        None => out.push_back(Chunk::of(frame)),
    }
}

/// [`queue_bytes`] for the frame of a message without ports whose data is `data`, `len` bytes
/// in all ([`wire::portless_len`]): written straight where it is queued.
fn queue_portless(out: &mut VecDeque<Chunk>, data: &[u8], len: usize, merge: bool) {
    match burst_buffer(out, len, merge) {
        Some(bytes) => wire::write_portless(bytes, data),
        None => {
            let mut frame = take_spare(&FRAMES, len);
            wire::write_portless(&mut frame, data);
            out.push_back(Chunk::of(frame));
        }
    }
}

/// Where a small frame of `len` bytes that a burst holds (`merge`) is copied, behind the small
/// frames before it (see [`queue`]), if it is.
fn burst_buffer(out: &mut VecDeque<Chunk>, len: usize, merge: bool) -> Option<&mut Vec<u8>> {
    let back = out.back_mut().filter(|_| merge)?;
    let fits = len <= MERGE_MAX && back.fds.is_empty();
    if fits && back.merged && back.bytes.len() + len <= MERGE_LIMIT {
        return Some(&mut back.bytes);
    }
    if fits && back.pos == 0 && back.bytes.len() <= MERGE_MAX {
        let mut bytes = Vec::with_capacity(MERGE_START);
        bytes.extend_from_slice(&back.bytes);
        back.bytes = bytes;
        back.merged = true;
        return Some(&mut back.bytes);
    }
    None
}

impl Chunk {
    /// A frame in a chunk of its own.
    fn of(bytes: Vec<u8>) -> Self {
        Chunk {
            bytes,
            pos: 0,
            fds: Vec::new(),
            merged: false,
        }
    }
}

// One small buffer of each kind per thread, kept from one message for the next, so that a
// small post allocates nothing.
thread_local! {
    /// The buffer this thread's last small post was encoded into (see [`Link::post_encoded`]).
    static ENCODED: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The buffer of a lone frame this thread saw written (see [`queue_portless`], `flush`).
    static FRAMES: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The most a kept buffer may hold.
const SPARE_MAX: usize = 16 << 10;

/// This thread's kept buffer of `kind`, emptied, with room for `len` bytes (or a new one; also
/// while the thread's locals are being destroyed, when a post may still be made).
fn take_spare(kind: &'static LocalKey<Cell<Vec<u8>>>, len: usize) -> Vec<u8> {
    let mut buf = kind.try_with(Cell::take).unwrap_or_default();
    buf.clear();
    buf.reserve(len);
    buf
}

/// Keeps `buf` as this thread's buffer of `kind`, unless it is large (or the thread's locals
/// are being destroyed: it is dropped).
fn keep_spare(kind: &'static LocalKey<Cell<Vec<u8>>>, buf: Vec<u8>) {
    if buf.capacity() <= SPARE_MAX {
        let _ = kind.try_with(|spare| spare.set(buf));
    }
}

/// The largest frame a burst copies into one buffer with the frames before it (see [`queue`]);
/// larger ones go as `iovec`s of their own. Raised from 1 KiB: a stream of 1 KiB structs
/// (1,043-byte frames) across CPUs measured 2.11 -> 2.35 GB/s, 4 KiB ones on one CPU 0.56 ->
/// 0.57 M msg/s (three alternating full runs each).
const MERGE_MAX: usize = 8 << 10;
/// What a burst's buffer has room for at first (it grows as needed, up to [`MERGE_LIMIT`]):
/// at least the two frames that start it.
const MERGE_START: usize = 16 << 10;
const _: () = assert!(MERGE_START >= 2 * MERGE_MAX);
/// The most a burst's buffer holds (frames queued behind a full socket fill one after another).
const MERGE_LIMIT: usize = CORK_BYTES;

/// What a link held when its port left the process.
pub(crate) struct Exported {
    pub socket: Option<OwnedFd>,
    pub backlog: Backlog,
}

const READ_CHUNK: usize = 64 * 1024;
/// Frames larger than this enlarge the socket's send buffer first.
const LARGE_FRAME: usize = 256 * 1024;
/// The most bytes one reactor turn reads from one link before it serves the others.
pub(crate) const READ_BUDGET: usize = 1 << 20;
const MAX_IOV: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who has a new link's socket read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// The port it backs (one that arrived from another process): its pulls read the socket
    /// or arm the link.
    ByPort,
    /// Whoever waits on its target endpoint: the link of the end that stayed when its peer
    /// left the process. That end's port posts and pulls locally, never through the link, so
    /// the endpoint arms the link on its first wait ([`Endpoint::set_reader`]). Until then
    /// nothing is read: a channel created only to send one end away, whose staying end is
    /// never waited on, costs no registration with the reactor.
    OnWait,
}

impl Link {
    /// Takes over `socket` (which must be a Unix stream socket), delivering what it reads to
    /// `target`. `backlog` is what an earlier owner had read of a frame not yet complete and
    /// what it had not yet written: both come first.
    /// Nobody reads it until someone needs it to ([`arm`](Self::arm), or a pull that reads the
    /// socket itself): see [`Reading`] for who that is.
    pub(crate) fn new(
        socket: OwnedFd,
        target: Arc<Endpoint>,
        backlog: Backlog,
        reading: Reading,
    ) -> io::Result<Arc<Link>> {
        // The reactor starts with the process's first link (raising the descriptor limit), so
        // that a process that cannot have one learns it here, as an error.
        reactor()?;
        // Every send and receive passes MSG_DONTWAIT, so the socket's own O_NONBLOCK flag (which
        // a peer controls for descriptors it sends us) does not matter: no fcntl here.
        let token = reactor::token();
        let Backlog {
            prefix,
            prefix_fds,
            unsent,
            ring_in,
            ring_out,
        } = backlog;
        // The rings an earlier owner used travel with the socket: what is in them comes in
        // order with what is in the socket.
        let ring_in = ring_in
            .map(|r| RingIn::adopt(r.fd, r.pos).map(|ring| (Arc::new(ring), r.active)))
            .transpose()?;
        let ring_out = ring_out
            .map(|r| RingOut::adopt(r.fd, r.pos).map(|ring| (ring, r.active)))
            .transpose()?;
        let filled = prefix.len();
        let queued = unsent.iter().map(|s| s.bytes.len()).sum();
        let out = unsent
            .into_iter()
            .map(|s| Chunk {
                bytes: s.bytes,
                pos: 0,
                fds: s.fds,
                merged: false,
            })
            .collect();
        let link = Arc::new_cyclic(|me| Link {
            me: me.clone(),
            token,
            target,
            deliver: Mutex::new(Delivery::default()),
            pulled: std::sync::atomic::AtomicBool::new(true),
            missed: std::sync::atomic::AtomicBool::new(false),
            io: Mutex::new(Io {
                fd: Some(Arc::new(socket)),
                inbuf: prefix,
                filled,
                infds: prefix_fds.into(),
                out,
                queued,
                pull_mode: true,
                in_on_ring: ring_in.as_ref().is_some_and(|r| r.1),
                ring_in: ring_in.map(|r| r.0),
                out_on_ring: ring_out.as_ref().is_some_and(|r| r.1),
                ring_out: ring_out.map(|r| r.0),
                ..Io::default()
            }),
        });
        let reader: std::sync::Weak<dyn Outbound> = Arc::downgrade(&link) as _;
        let waited_on = link.target.set_reader(reader, reading == Reading::OnWait);
        {
            let mut io = lock(&link.io);
            if let Some(ring) = &io.ring_in {
                // Pulling until told otherwise, as the link starts (see `Io::pull_mode`).
                ring.set_pulling(true);
            }
            if !io.out.is_empty() {
                link.flush(&mut io);
            }
        }
        if waited_on {
            link.arm_reading();
        }
        Ok(link)
    }

    /// Exports the ports, encodes and writes a message.
    fn send(&self, data: WireData, ports: Vec<MessagePort>) -> Result<(), PostError> {
        self.send_placed(data, ports, None)
    }

    /// [`send`](Self::send) for data whose large byte strings the serializer may have written
    /// into `region` already (see `shm::Placer`).
    fn send_placed(
        &self,
        data: WireData,
        ports: Vec<MessagePort>,
        region: Option<Arc<shm::Region>>,
    ) -> Result<(), PostError> {
        let frame = handoff::export_message(data, ports).and_then(wire::encode_frame);
        let frame = match (frame, region) {
            (Ok(frame), Some(region)) => shm::stage(&region, frame).unwrap_or_else(|f| f),
            (Ok(frame), None) => frame,
            (Err(e), region) => {
                if let Some(region) = region {
                    shm::release(&region);
                }
                return Err(e);
            }
        };
        let frame = if shm::wants(&frame) {
            self.through_region(frame)
        } else {
            frame
        };
        self.send_frame(frame);
        Ok(())
    }

    /// A large frame's body written into one of the link's shared-memory regions (outside the
    /// lock), and the region frame that stands for it; the frame itself when no region can be
    /// had (every one in flight, or the process's budget spent).
    fn through_region(&self, frame: Frame) -> Frame {
        match shm::need(&frame).and_then(|need| self.lease_region(need)) {
            Some(region) => shm::stage(&region, frame).unwrap_or_else(|frame| frame),
            None => frame,
        }
    }

    /// A free region of this link for `need` bytes, marked in flight; none once the link is
    /// closed or closing (its frames would be dropped).
    ///
    /// When every region of the link is in flight, its reader is behind: the poster gives way
    /// once and looks again before the frame goes the slower way, through the socket (a
    /// reader sharing this CPU runs then and frees some). Posting still never blocks.
    fn lease_region(&self, need: usize) -> Option<Arc<shm::Region>> {
        let mut gave_way = false;
        loop {
            let mut io = lock(&self.io);
            if io.fd.is_none() || io.closing {
                return None;
            }
            if let Some(region) = io.regions.lease(need) {
                self.trim_later(&mut io, Instant::now() + shm::IDLE);
                return Some(region);
            }
            if gave_way || !io.regions.all_in_flight() {
                return None;
            }
            drop(io);
            std::thread::yield_now();
            gave_way = true;
        }
    }

    /// Has the reactor call [`trim_regions`](Self::trim_regions) at `at`, unless a call is due
    /// already.
    fn trim_later(&self, io: &mut Io, at: Instant) {
        if io.trim_at.is_some() {
            return;
        }
        if let Some(r) = reactor::running() {
            io.trim_at = Some(at);
            r.trim_at(at, self.me.clone());
        }
    }

    /// Drops the regions this link no longer uses, and unmaps those its peer dropped; comes
    /// back while any is left. Without it a link that went quiet after a burst of large
    /// messages would keep their memory (a sender learns that a region was freed only when it
    /// next leases one, a receiver that one was dropped only at its next region frame).
    pub(crate) fn trim_regions(&self) {
        let mut io = lock(&self.io);
        io.trim_at = None;
        let now = Instant::now();
        let again = io.regions.trim(now);
        let mapped = io.mapped.drop_retired();
        let at = again.or(mapped.then(|| now + shm::IDLE));
        if let Some(at) = at {
            self.trim_later(&mut io, at);
        }
    }

    /// Writes a frame, or queues it behind earlier ones. Never blocks.
    ///
    /// A burst is written in batches: a frame of at most [`CORK_FRAME_BYTES`] without
    /// descriptors, posted within [`BURST_GAP`] of the last one with no message delivered on the
    /// port in between (so not an answer to anything: a stream's next message), is left queued
    /// until [`CORK_FRAMES`] are, or [`CORK_BYTES`], then they leave in one `sendmsg`; the
    /// reactor writes a shorter tail when its cork timer fires ([`reactor::CORK_DELAY`] after
    /// the first of them). One system call per message cost a stream most of its time, and
    /// across CPUs each write could wake the reader. Frames with descriptors, large ones,
    /// answers and lone messages are written at once (with whatever is queued before them, in
    /// order).
    pub(crate) fn send_frame(&self, frame: Frame) {
        let len: usize = frame.parts.iter().map(Vec::len).sum();
        let plain = frame.fds.is_empty() && frame.gaps.is_empty();
        let parts = &frame.parts;
        let ringed = plain && len <= ring::FRAME_MAX;
        let mut put = |ring: &mut RingOut| ring.put(parts);
        let put: Option<&mut dyn FnMut(&mut RingOut) -> bool> = ringed.then_some(&mut put);
        if let Some((io, answer)) = self.send_queued(len, plain, put) {
            self.enqueue_frame(io, answer, len, plain, |out, burst| {
                queue(out, frame.parts, frame.fds, burst);
            });
        }
    }

    /// [`send_frame`](Self::send_frame) for the frame of a message without ports whose data is
    /// `data` (the common post; see [`wire::portless_len`]), written where it is queued.
    fn send_portless(&self, data: &[u8]) -> Result<(), PostError> {
        let len = wire::portless_len(data.len())?;
        let mut put =
            |ring: &mut RingOut| ring.put(&[&wire::portless_head(data.len()), data, &[0x80]]);
        let put: Option<&mut dyn FnMut(&mut RingOut) -> bool> =
            (len <= ring::FRAME_MAX).then_some(&mut put);
        if let Some((io, answer)) = self.send_queued(len, true, put) {
            self.enqueue_frame(io, answer, len, true, |out, burst| {
                queue_portless(out, data, len, burst);
            });
        }
        Ok(())
    }

    /// What every frame goes through first: the link's ring takes it when its reader pulls and
    /// `put` (given for a frame the ring may carry) fits it in. Else, if frames were going into
    /// the ring, the marker that sends the reader back to the socket goes there first, and the
    /// link's lock comes back (with whether the frame answers a message) for the caller to
    /// queue the frame for the socket. Offers the peer a ring once the link has posted enough
    /// answers (`plain` ones: a frame with descriptors is no request's answer to count).
    fn send_queued(
        &self,
        len: usize,
        plain: bool,
        put: Option<&mut dyn FnMut(&mut RingOut) -> bool>,
    ) -> Option<(MutexGuard<'_, Io>, bool)> {
        let answer = self.target.take_delivered();
        let mut io = lock(&self.io);
        if io.fd.is_none() || io.closing {
            return None;
        }
        if io.ring_out.is_none() {
            let after = ring_after();
            if (answer || after == 0) && plain && !io.no_ring {
                io.answers = io.answers.saturating_add(1);
                if io.answers >= after {
                    self.offer_ring(&mut io);
                }
            }
            return Some((io, answer));
        }
        if self.through_ring(&mut io, len, put) {
            return None;
        }
        Some((io, answer))
    }

    /// [`send_queued`](Self::send_queued) once the link has a ring: whether the frame went into
    /// it.
    fn through_ring(
        &self,
        io: &mut Io,
        len: usize,
        put: Option<&mut dyn FnMut(&mut RingOut) -> bool>,
    ) -> bool {
        let pulls = io.ring_out.as_ref().is_some_and(RingOut::reader_pulls);
        // Frames go back to the ring only when this one fits in it: every switch there is
        // followed by a frame, so the room a frame leaves for the marker is always there.
        let back = io.out_on_ring || io.ring_out.as_ref().is_some_and(|r| r.fits(len));
        if let Some(put) = put.filter(|_| pulls && back) {
            let switched = !io.out_on_ring;
            if switched {
                queue_control(io, Control::ToRing);
                io.out_on_ring = true;
            }
            let Some(ring) = io.ring_out.as_mut() else {
                return false;
            };
            if put(ring) {
                let poke = ring.publish() == Wake::Poke;
                if poke {
                    queue_control(io, Control::Poke);
                }
                if (switched || poke) && !io.want_writable {
                    self.flush(io);
                }
                return true;
            }
            // The ring is full (its reader is behind): the frame goes through the socket,
            // behind the marker.
        }
        if io.out_on_ring {
            io.out_on_ring = false;
            let Some(ring) = io.ring_out.as_mut() else {
                return false;
            };
            if !ring.put_marker(&Control::ToSocket.frame()) {
                // The reader broke the ring (it claims to have read what was never written):
                // nothing more goes there. It will not find the marker: its own doing.
                tracing::warn!(
                    "msgport: a peer broke its link's ring; the link keeps to its socket"
                );
                io.ring_out = None;
                io.no_ring = true;
                return false;
            }
            // A thread asleep on the ring is woken here; a reactor that asked for a poke is
            // woken by the frame the caller writes next.
            let _ = ring.publish();
        }
        false
    }

    /// Makes this link's ring and queues the frame that offers it to the peer.
    fn offer_ring(&self, io: &mut Io) {
        let Some(ring) = RingOut::create() else {
            io.no_ring = true;
            return;
        };
        let fd = match crate::sys::dup(ring.fd()) {
            Ok(fd) => fd,
            Err(_) => {
                io.no_ring = true;
                return;
            }
        };
        queue(
            &mut io.out,
            vec![Control::Offer.frame().to_vec()],
            vec![fd],
            false,
        );
        io.queued += wire::CONTROL_FRAME;
        io.ring_out = Some(ring);
    }

    /// The socket part of [`send_frame`](Self::send_frame) for a frame of `len` bytes
    /// (`plain`: without descriptors) that `enqueue` puts behind `out` (merged with the one
    /// before it when told), under `io`.
    #[inline(always)]
    fn enqueue_frame(
        &self,
        mut io: MutexGuard<'_, Io>,
        answer: bool,
        len: usize,
        plain: bool,
        enqueue: impl FnOnce(&mut VecDeque<Chunk>, bool),
    ) {
        // Only a frame that could be held reads the clock (an answer, the round trip's post,
        // does not); the first such frame after others starts a burst, it is not part of one.
        // No clock either while the cork timer is armed (the burst is still on: the timer
        // writes the frames [`reactor::CORK_DELAY`] after the first, less than [`BURST_GAP`])
        // or while frames wait for the socket to take more (a burst only merges them then):
        // reading it cost a stream's poster 15% of its time (25 ns a post in this VM).
        let burst = !answer
            && len <= CORK_FRAME_BYTES
            && plain
            && (io.corked || io.want_writable || {
                let now = Instant::now();
                let last = io.last_post.replace(now);
                last.is_some_and(|last| now.saturating_duration_since(last) < BURST_GAP)
            });
        if !io.sized && len > LARGE_FRAME {
            io.sized = true;
            if let Some(fd) = &io.fd {
                sys::size_buffers(fd.as_fd());
            }
        }
        enqueue(&mut io.out, burst);
        io.queued += len;
        if io.want_writable {
            // The reactor writes when the socket takes more. A poster far ahead of its reader
            // gives way now and then: when the reader shares its CPU, it runs then, instead
            // of after a whole time slice of posts held here in fresh memory (measured, one
            // CPU, a stream of 64 KiB messages: 1.0-2.2 GB/s and 25-35 k page faults per 1,024
            // messages without, 3.0-3.6 GB/s and 1 k with). Posting still never blocks.
            let give_way = io.queued >= CROWDED && {
                io.since_yield += len;
                io.since_yield >= GIVE_WAY_EVERY
            };
            if give_way {
                io.since_yield = 0;
            }
            drop(io);
            if give_way {
                std::thread::yield_now();
            }
            return;
        }
        if burst {
            io.held_bytes += len;
            io.held_frames += 1;
        }
        if !burst || io.held_frames >= CORK_FRAMES || io.held_bytes >= CORK_BYTES {
            self.flush(&mut io);
            return;
        }
        if io.corked {
            return;
        }
        io.corked = true;
        drop(io);
        let timed = reactor::reactor().is_ok_and(|r| r.cork(self.me.clone()));
        if !timed {
            let mut io = lock(&self.io);
            io.corked = false;
            if !io.want_writable {
                self.flush(&mut io);
            }
        }
    }

    /// The reactor's cork timer fired: writes what a burst left queued.
    pub(crate) fn write_corked(&self) {
        let mut io = lock(&self.io);
        io.corked = false;
        if !io.want_writable && !io.out.is_empty() {
            self.flush(&mut io);
        }
    }

    /// Writes queued chunks until the socket refuses; then asks the reactor for writability.
    ///
    /// Descriptors are only ever sent with the first chunk of a `sendmsg`, so they travel with
    /// bytes of their own frame: the chunks after the first are added only while they carry
    /// none. A chunk with more descriptors than one `sendmsg` takes sends them a batch per byte.
    fn flush(&self, io: &mut Io) {
        // Whatever it leaves is written when the socket takes more, before any burst test.
        io.held_bytes = 0;
        io.held_frames = 0;
        while let Some(front) = io.out.front() {
            let Some(fd) = io.fd.as_ref() else { return };
            let sent = if front.fds.len() > sys::MAX_FDS_PER_SEND {
                let end = (front.pos + 1).min(front.bytes.len());
                let batch: Vec<BorrowedFd<'_>> = front.fds[..sys::MAX_FDS_PER_SEND]
                    .iter()
                    .map(|f| f.as_fd())
                    .collect();
                sys::send(
                    fd.as_fd(),
                    &[IoSlice::new(&front.bytes[front.pos..end])],
                    &batch,
                )
                .map(|n| (n, sys::MAX_FDS_PER_SEND))
            } else {
                // No allocation on this path when there are no descriptors (the common post).
                let fds: Vec<BorrowedFd<'_>> = front.fds.iter().map(|f| f.as_fd()).collect();
                let alone = io.out.get(1).is_none_or(|next| !next.fds.is_empty());
                let sent = if alone {
                    // One chunk (a lone post, a burst merged in one buffer): no iovec array.
                    sys::send(fd.as_fd(), &[IoSlice::new(&front.bytes[front.pos..])], &fds)
                } else {
                    let mut iov = [IoSlice::new(&[]); MAX_IOV];
                    let mut chunks = 0;
                    for chunk in io.out.iter() {
                        if chunks == MAX_IOV || (chunks > 0 && !chunk.fds.is_empty()) {
                            break;
                        }
                        iov[chunks] = IoSlice::new(&chunk.bytes[chunk.pos..]);
                        chunks += 1;
                    }
                    sys::send(fd.as_fd(), &iov[..chunks], &fds)
                };
                sent.map(|n| (n, fds.len()))
            };
            match sent {
                // A stream socket takes at least a byte or refuses: treat nothing as a refusal.
                Ok((0, _)) => {
                    if self.write_failed(io, io::ErrorKind::WouldBlock.into()) {
                        return;
                    }
                }
                Ok((mut n, nfds)) => {
                    io.queued = io.queued.saturating_sub(n);
                    if let Some(front) = io.out.front_mut() {
                        // The kernel holds its own references now.
                        front.fds.drain(..nfds);
                    }
                    while let Some(chunk) = io.out.front_mut() {
                        let left = chunk.bytes.len() - chunk.pos;
                        if n < left {
                            chunk.pos += n;
                            break;
                        }
                        n -= left;
                        if !chunk.fds.is_empty() {
                            // Cannot happen: a chunk never holds more descriptors than its
                            // bytes can carry. Should it, the receiver closes the port.
                            tracing::error!(
                                "msgport: descriptors left without bytes to carry them"
                            );
                        }
                        if let Some(done) = io.out.pop_front() {
                            if done.bytes.capacity() <= SPARE_MAX {
                                keep_spare(&FRAMES, done.bytes);
                            } else {
                                crate::buffers::give(done.bytes);
                            }
                        }
                        if n == 0 {
                            break;
                        }
                    }
                }
                Err(e) => {
                    if self.write_failed(io, e) {
                        return;
                    }
                }
            }
        }
        if io.want_writable {
            io.want_writable = false;
            let _ = self.update_interest(io);
        }
        if io.closing {
            self.shut(io);
        }
    }

    /// Handles a failed write; returns true when flushing must stop.
    fn write_failed(&self, io: &mut Io, e: io::Error) -> bool {
        match e.kind() {
            io::ErrorKind::WouldBlock => {
                if !io.want_writable {
                    io.want_writable = true;
                    if let Err(e) = self.update_interest(io) {
                        tracing::warn!("msgport: cannot watch a port's socket: {e}");
                    }
                }
                true
            }
            io::ErrorKind::Interrupted => false,
            _ => {
                // The peer is gone (EPIPE, ECONNRESET): what we queued can go nowhere. The
                // reader sees the end of the stream and reports the close; a closed port that
                // lingered to write it is done.
                io.out.clear();
                io.queued = 0;
                if io.closing {
                    self.release(io);
                }
                true
            }
        }
    }

    /// Tells the reactor what to watch for: readability unless pulling threads read the socket
    /// themselves, writability while frames wait. Registers the socket on first need.
    fn update_interest(&self, io: &mut Io) -> io::Result<()> {
        let Some(fd) = io.fd.clone() else {
            return Ok(());
        };
        let (read, write) = (!io.pull_mode, io.want_writable);
        // A thread asleep on the ring sees nothing of the socket: the reactor watches it for
        // a hang-up (a registration reports one whatever it asks for).
        let hangups = io.ring_in.is_some();
        if io.registered {
            reactor()?.interest(self.token, fd.as_fd(), read, write);
        } else if read || write || hangups {
            let Some(me) = self.me.upgrade() else {
                return Ok(());
            };
            reactor()?.register(self.token, fd.as_fd(), &me, read, write)?;
            io.registered = true;
        }
        Ok(())
    }

    /// Hands reading back to the reactor (for `poll_recv` and callbacks, which nobody else
    /// would feed). If the reactor cannot take the socket, the port closes rather than waiting
    /// for events that would never come.
    fn arm_reading(&self) {
        let mut io = lock(&self.io);
        if io.pull_mode {
            io.pull_mode = false;
            self.pulled
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if let Some(ring) = &io.ring_in {
                // The writer goes back to the socket; what is in the ring is read now.
                ring.set_pulling(false);
                self.read_soon();
            }
            if let Err(e) = self.update_interest(&mut io) {
                tracing::warn!("msgport: closing a port the reactor cannot watch: {e}");
                self.shut(&mut io);
                drop(io);
                self.target.peer_closed();
            }
        }
    }

    /// The application drained the port below its low-water mark: read again. The reactor is
    /// asked to look at the socket once more (re-arming an edge-triggered registration reports
    /// data that is already there); a pulling thread reads by itself.
    fn resume_reading(&self) {
        let mut io = lock(&self.io);
        if !io.pull_mode && io.registered {
            let _ = self.update_interest(&mut io);
            if io.ring_in.is_some() {
                self.read_soon();
            }
        }
    }

    /// Blocks this thread until the socket has data (or `timeout` passes; `None` for an untimed
    /// pull), then reads and delivers it here: a blocked pull on a socket-backed port wakes
    /// directly, without the reactor thread in between. Returns false when the socket is gone
    /// (the endpoint has been told, or soon will be).
    fn read_here(&self, timeout: Option<Duration>) -> bool {
        let (fd, receive) = {
            let mut io = lock(&self.io);
            let Some(fd) = io.fd.clone() else {
                return false;
            };
            if !io.pull_mode {
                io.pull_mode = true;
                self.pulled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(ring) = &io.ring_in {
                    ring.set_pulling(true);
                }
                let _ = self.update_interest(&mut io);
            }
            if io.in_on_ring {
                // Frames come from the ring: sleep on it (unless something is there already),
                // prepared under the lock so that a hang-up or a close seen meanwhile wakes it.
                if !io.registered {
                    // For the hang-up the reactor then watches for.
                    let _ = self.update_interest(&mut io);
                }
                let ring = io.ring_in.clone();
                let sleep = match &ring {
                    Some(ring) if !io.socket_due && !self.target.has_pending() => {
                        ring.prepare_sleep()
                    }
                    _ => false,
                };
                drop(io);
                if let Some(ring) = ring.filter(|_| sleep) {
                    ring.sleep(Some(timeout.unwrap_or(RING_SLICE)));
                    if ring.available().is_ok_and(|n| n == 0) {
                        // Woken with nothing in the ring (a timeout, a close, a hang-up): look
                        // at the socket too.
                        lock(&self.io).socket_due = true;
                    }
                }
                self.read(Reader::Pulling);
                return true;
            }
            // A pull sleeps in `recvmsg` untimed, or for a whole slice of a longer wait (the
            // socket's receive timeout is set to match), and not on a closed port (whose
            // close has already looked for sleepers to wake). A partial frame stays in the
            // link's buffer; a waiting read uses the thread's.
            let receive = timeout.is_none_or(|t| t >= SLICE)
                && !io.closing
                && io.filled == 0
                && Self::may_receive(&mut io, &fd, timeout.is_some());
            (fd, receive)
        };
        // The reactor may have delivered just before it stopped watching: then there is no
        // need to wait.
        if self.target.has_pending() {
            self.read(Reader::Pulling);
        } else if receive && self.read(Reader::Waiting(&fd)) {
            // Received (or timed out) in `recvmsg`.
        } else if sys::poll::wait_readable(fd.as_fd(), timeout.unwrap_or(SLICE)) {
            self.read(Reader::Pulling);
        }
        true
    }

    /// Whether a thread may wait for this socket in `recvmsg` (see [`Wait`]), for a slice
    /// (`timed`) or until something arrives, preparing the socket on its second wait.
    fn may_receive(io: &mut Io, fd: &SharedFd, timed: bool) -> bool {
        let timeout = timed.then_some(SLICE);
        let ready = match io.wait {
            Wait::Receive if io.timed_reads == timed => return true,
            Wait::Receive => sys::set_receive_timeout(fd.as_fd(), timeout),
            Wait::PollOnly => return false,
            Wait::Poll => {
                io.wait = Wait::Prepare;
                return false;
            }
            Wait::Prepare => sys::prepare_blocking_reads(fd.as_fd(), timeout),
        };
        match ready {
            Ok(()) => {
                io.wait = Wait::Receive;
                io.timed_reads = timed;
                true
            }
            Err(e) => {
                tracing::debug!("msgport: a link's socket cannot block: {e}");
                io.wait = Wait::PollOnly;
                false
            }
        }
    }

    /// Reads what is there now, without waiting, when pulling threads do the reading.
    fn read_now(&self) {
        if self.pulled.load(std::sync::atomic::Ordering::Relaxed) {
            self.read(Reader::Pulling);
        }
    }

    /// Nothing waits to be written.
    pub(crate) fn is_flushed(&self) -> bool {
        lock(&self.io).out.is_empty()
    }

    pub(crate) fn on_writable(&self) {
        let mut io = lock(&self.io);
        io.want_writable = false;
        self.flush(&mut io);
    }

    /// The reactor saw the socket readable (or hung up), or was asked to read the link.
    pub(crate) fn on_readable(&self) {
        {
            let mut io = lock(&self.io);
            if io.pull_mode {
                // Pulling threads read this link; one may sleep on the ring, blind to the
                // socket: have it look (the reactor watches a ringed link for hang-ups).
                if let Some(ring) = io.ring_in.clone() {
                    io.socket_due = true;
                    ring.wake_local();
                }
                return;
            }
        }
        self.read(Reader::Reactor);
    }

    /// Has the reactor read this link soon, though its socket may report nothing.
    fn read_soon(&self) {
        if let Some(r) = reactor::running() {
            r.read_soon(self.me.clone());
        }
    }

    /// Takes `deliver` without waiting for it: its holder may be a thread asleep in `recvmsg`,
    /// which delivers what it reads itself. `None` when it is held; the reactor then leaves a
    /// note (`missed`) for the holder to re-arm the socket when it lets go, so the readiness it
    /// was told of is not lost.
    fn enter_delivery(&self, how: Reader<'_>) -> Option<MutexGuard<'_, Delivery>> {
        use std::sync::atomic::{fence, Ordering::SeqCst};
        use std::sync::TryLockError;
        let try_enter = || match self.deliver.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if let Some(guard) = try_enter() {
            return Some(guard);
        }
        if !matches!(how, Reader::Reactor) {
            return None;
        }
        self.missed.store(true, SeqCst);
        // Either the holder's check after it lets go sees the note, or this sees it gone.
        fence(SeqCst);
        let guard = try_enter()?;
        self.missed.store(false, SeqCst);
        Some(guard)
    }

    /// Lets go of `deliver`, re-arming the socket if the reactor was turned away meanwhile.
    fn leave_delivery(&self, guard: MutexGuard<'_, Delivery>) {
        use std::sync::atomic::{fence, Ordering::SeqCst};
        drop(guard);
        fence(SeqCst);
        if self.missed.swap(false, SeqCst) {
            let mut io = lock(&self.io);
            if !io.pull_mode && io.registered {
                let _ = self.update_interest(&mut io);
            }
        }
    }

    /// Reads what is available, delivers complete frames, and reports the end of the stream.
    /// The reactor leaves a socket alone while a thread reads it itself (`read_here`), so that a
    /// readiness event it picked up just before would not take the data from under that thread.
    /// On the reactor, a turn stops after [`READ_BUDGET`] bytes (the link is re-armed, so the
    /// reactor comes back to it after the others) or when the port is over its high-water mark
    /// (the endpoint calls [`resume`](Outbound::resume) once drained).
    ///
    /// Only one reader at a time (`deliver`); a reader that finds another there leaves at once
    /// (returns false): the other delivers what it reads.
    fn read(&self, how: Reader<'_>) -> bool {
        let Some(mut delivering) = self.enter_delivery(how) else {
            return false;
        };
        let here = !matches!(how, Reader::Reactor);
        let mut waiting = match how {
            Reader::Waiting(fd) => Some(fd),
            _ => None,
        };
        let Delivery {
            events,
            ports,
            rejected,
        } = &mut *delivering;
        let mut read = 0;
        let mut ended = None;
        let mut more = false;
        loop {
            // A waiting read sleeps outside `io`: posting on this port goes on meanwhile.
            let received = waiting.take().map(|fd| (fd, Self::receive_waiting(fd)));
            // One read, its frames decoded, under `io`; then their messages queued, outside it
            // (importing a message's ports makes links and checks sockets).
            let step = {
                let mut io = lock(&self.io);
                if !here && (io.pull_mode || self.target.reading_paused()) {
                    break;
                }
                let step = match received {
                    Some((fd, received)) => {
                        Self::take_received(&mut io, fd, received, events, ports)
                    }
                    None => Self::read_once(&mut io, events, ports, !here),
                };
                if io.trim_at.is_none() && !io.mapped.is_empty() {
                    self.trim_later(&mut io, Instant::now() + shm::IDLE);
                }
                if let Step::Ended(why) = step {
                    ended = Some(why);
                    self.release(&mut io);
                }
                step
            };
            let got = events.len();
            let pause = self.hand_over_read(events, ports, rejected);
            match step {
                Step::Read(n) => read += n,
                Step::Dry | Step::Ended(_) => break,
            }
            // A pulling thread polls level-triggered: it need not drain the socket (which costs
            // one more recvmsg, answered EAGAIN) once it has a message.
            if here && got > 0 {
                break;
            }
            if !here && pause {
                break;
            }
            if !here && read >= READ_BUDGET {
                more = true;
                break;
            }
        }
        if ended.is_some() {
            self.target.peer_closed();
        } else if more {
            // Let the other links have a turn; the reactor comes back (re-arming reports the
            // data still there; a ring's frames are not reported: it is asked to come back).
            let mut io = lock(&self.io);
            let _ = self.update_interest(&mut io);
            if io.in_on_ring {
                self.read_soon();
            }
        } else if !here {
            // The reactor reads a ring only when told to: ask the writer for a poke before
            // going back to epoll, then look once more.
            let io = lock(&self.io);
            let poked = io.in_on_ring && !io.pull_mode && !self.target.reading_paused();
            if let Some(ring) = io.ring_in.as_ref().filter(|_| poked) {
                if !matches!(ring.want_poke(), Ok(false)) {
                    self.read_soon();
                }
            }
        }
        // Rejected messages own ports: closing them locks other endpoints, not under ours.
        let rejected = std::mem::take(rejected);
        self.leave_delivery(delivering);
        drop(rejected);
        self.run_callbacks();
        true
    }

    /// Queues what a read decoded at the endpoint, its ports imported first (outside `io`:
    /// importing makes links and checks sockets); whether the endpoint is now over its
    /// high-water mark.
    fn hand_over_read(
        &self,
        events: &mut Vec<(MessageEvent, usize)>,
        ports: &mut Vec<(usize, Vec<Handover>)>,
        rejected: &mut Vec<MessageEvent>,
    ) -> bool {
        for (i, handovers) in ports.drain(..) {
            events[i].0.ports = handovers.into_iter().map(handoff::import).collect();
        }
        !events.is_empty() && self.target.push_remote(events, rejected)
    }

    /// Sleeps in `recvmsg` on `fd` until something arrives (or the socket is shut, or a timed
    /// pull's slice passes), reading into this thread's buffer. Called holding `deliver`, not
    /// `io`.
    fn receive_waiting(fd: &SharedFd) -> Received {
        let mut buf = scratch();
        let mut fds = VecDeque::new();
        let got = sys::recv_waiting(fd.as_fd(), &mut buf, &mut fds);
        // Only a timed pull's slice passing, or a socket changed under us (made non-blocking,
        // or given a shorter timeout), answers "try again": ask the socket which, then,
        // rather than time every read.
        let unprepared = matches!(&got, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            && !sys::blocks_for(fd.as_fd(), SLICE / 2);
        Received {
            buf,
            fds,
            got,
            unprepared,
        }
    }

    /// Takes in what a waiting read received, as if `recv_and_decode` had read it.
    fn take_received(
        io: &mut Io,
        fd: &SharedFd,
        received: Received,
        events: &mut Vec<(MessageEvent, usize)>,
        ports: &mut Vec<(usize, Vec<Handover>)>,
    ) -> Step {
        let Received {
            buf,
            fds,
            got,
            unprepared,
        } = received;
        if !io.fd.as_ref().is_some_and(|now| Arc::ptr_eq(now, fd)) {
            // Closed meanwhile (by this port's owner, or it failed): nothing more is read.
            keep_scratch(buf);
            return Step::Dry;
        }
        if unprepared {
            io.wait = Wait::PollOnly;
        }
        if let Ok(n @ 1..) = got {
            io.infds.extend(fds);
            if io.filled == 0 {
                keep_scratch(std::mem::replace(&mut io.inbuf, buf));
            } else {
                // Not expected (a waiting read starts with no partial frame), but kept in order.
                io.inbuf.truncate(io.filled);
                io.inbuf.extend_from_slice(&buf[..n]);
                keep_scratch(buf);
            }
        } else {
            keep_scratch(buf);
        }
        let step = Self::received(io, got, events, ports).unwrap_or(Step::Dry);
        io.give_back_scratch();
        step
    }

    /// Runs the port's callbacks for what was just delivered: here, or, on the I/O thread, on
    /// the callback pool (a callback must never stall or deadlock the reactor).
    fn run_callbacks(&self) {
        if crate::dispatch::on_io_thread() {
            if self.target.has_callbacks() {
                crate::dispatch::defer(self.target.clone());
            }
        } else {
            self.target.dispatch();
        }
    }

    /// One `recvmsg`, and the frames it completed decoded into `events` (their ports, still
    /// to import, into `ports`).
    fn read_once(
        io: &mut Io,
        events: &mut Vec<(MessageEvent, usize)>,
        ports: &mut Vec<(usize, Vec<Handover>)>,
        socket: bool,
    ) -> Step {
        if io.in_on_ring && !socket && !std::mem::take(&mut io.socket_due) {
            // Frames come from the ring: a pulling thread reads no socket for them.
            return match Self::settle(io, events, ports) {
                Ok(0) => Step::Dry,
                Ok(n) => Step::Read(n),
                Err(e) => {
                    tracing::warn!("msgport: closing a port after a bad frame: {e}");
                    Step::Ended("bad frame")
                }
            };
        }
        io.socket_due = false;
        loop {
            // A link holding no partial frame reads into this thread's buffer and keeps none
            // of its own: an idle port costs no receive buffer.
            let borrowed = io.filled == 0;
            if borrowed {
                io.inbuf = read_buffer(io.frame_hint);
            } else {
                io.reserve_read();
            }
            let step = Self::recv_and_decode(io, events, ports);
            if borrowed || io.filled == 0 {
                io.give_back_scratch();
            }
            match step {
                None => continue,
                Some(step) => return step,
            }
        }
    }

    /// One `recvmsg` into `io.inbuf` and the frames it completed; `None` when interrupted.
    fn recv_and_decode(
        io: &mut Io,
        events: &mut Vec<(MessageEvent, usize)>,
        ports: &mut Vec<(usize, Vec<Handover>)>,
    ) -> Option<Step> {
        let Io {
            inbuf,
            filled,
            infds,
            fd: Some(sock),
            ..
        } = io
        else {
            return Some(Step::Dry);
        };
        let got = sys::recv(sock.as_fd(), &mut inbuf[*filled..], infds);
        Self::received(io, got, events, ports)
    }

    /// What a `recvmsg` that put `got` bytes at `io.inbuf[io.filled..]` amounts to, with the
    /// frames it completed decoded; `None` when it was interrupted.
    fn received(
        io: &mut Io,
        got: io::Result<usize>,
        events: &mut Vec<(MessageEvent, usize)>,
        ports: &mut Vec<(usize, Vec<Handover>)>,
    ) -> Option<Step> {
        let bad = |e: WireError| {
            tracing::warn!("msgport: closing a port after a bad frame: {e}");
            Step::Ended("bad frame")
        };
        Some(match got {
            // We shut our reading side to wake a pull (`close_writing`): not the peer's end.
            Ok(0) if io.read_shut => Step::Dry,
            // What the peer wrote in its ring before it closed comes first.
            Ok(0) => match Self::settle(io, events, ports) {
                Ok(_) => Step::Ended("end of stream"),
                Err(e) => bad(e),
            },
            Ok(n) => {
                io.filled += n;
                match Self::settle(io, events, ports) {
                    Ok(ringed) => Step::Read(n + ringed),
                    Err(e) => bad(e),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && io.in_on_ring => {
                match Self::settle(io, events, ports) {
                    Ok(0) => Step::Dry,
                    Ok(ringed) => Step::Read(ringed),
                    Err(e) => bad(e),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Dry,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return None,
            Err(e) => {
                tracing::debug!("msgport: link read error: {e}");
                Step::Ended("read error")
            }
        })
    }

    /// Decodes every complete frame in the buffer into `events` / `ports`, then checks that the
    /// descriptors still waiting belong to the frame being read.
    fn decode(
        io: &mut Io,
        events: &mut Vec<(MessageEvent, usize)>,
        ports: &mut Vec<(usize, Vec<Handover>)>,
    ) -> Result<(), WireError> {
        let mut start = 0;
        while let Some(head) = wire::next_frame(&io.inbuf[start..io.filled])? {
            let (len, nfds) = (head.len, head.nfds);
            io.frame_hint = Some(wire::HEADER + len)
                .filter(|&n| n > READ_CHUNK)
                .unwrap_or(0);
            if nfds > io.infds.len() {
                return Err(WireError::Descriptors);
            }
            let at = start + wire::HEADER;
            if head.control {
                Self::control(io, Control::of(&io.inbuf[at..at + len]), nfds)?;
                start += wire::HEADER + len;
                continue;
            }
            if io.in_on_ring {
                // Written after the marker now in the ring: the ring's frames come first.
                io.blocked = true;
                break;
            }
            if !head.shared && nfds == 0 {
                // The common message: no port. Its event is built here, without the general
                // path's intermediate values (measured: their moves were most of this
                // function's time for small messages).
                if let Some(data) = wire::portless_data(&io.inbuf[at..at + len]) {
                    // Fuzzing checks this reading against the general reader's (inside).
                    #[cfg(fuzzing)]
                    let _ = wire::decode_body_leaving(&io.inbuf[at..at + len], VecDeque::new());
                    let data = data?;
                    let payload = Payload::Cbor {
                        bytes: Self::hold(io, at, len, data.range),
                        plain: data.plain,
                    };
                    events.push((MessageEvent::new(payload, Vec::new()), wire::HEADER + len));
                    if io.inbuf.is_empty() {
                        // Its buffer went with the message: nothing else was in it.
                        io.filled = 0;
                        start = 0;
                        break;
                    }
                    start += wire::HEADER + len;
                    continue;
                }
            }
            let mut fds: VecDeque<OwnedFd> = io.infds.drain(..nfds).collect();
            let (frame, size, held) = if head.shared {
                let size = wire::shared_size(&io.inbuf[at..at + len])?;
                let region = fds.pop_front().ok_or(WireError::Descriptors)?;
                // Large data stays in the region (which its sender reuses only once we free
                // it), and is decoded from there when it is asked for.
                let (decoded, lease) =
                    shm::receive_keeping(&mut io.mapped, region.as_fd(), size, |body| {
                        match wire::decode_body_leaving(body, fds) {
                            Ok(frame) => match frame.left.clone() {
                                Some(r) if r.len() >= wire::ZERO_COPY_MIN => {
                                    (Ok((frame, None)), Some(r))
                                }
                                left => {
                                    let held = left.map(|r| Held::copy_of(&body[r]));
                                    (Ok((frame, held)), None)
                                }
                            },
                            Err(e) => (Err(e), None),
                        }
                    })
                    .map_err(WireError::Region)?;
                let (frame, copied) = decoded?;
                (frame, size, copied.or(lease.map(Held::Region)))
            } else {
                let frame = wire::decode_body_leaving(&io.inbuf[at..at + len], fds)?;
                let held = frame.left.clone().map(|r| Self::hold(io, at, len, r));
                (frame, len, held)
            };
            let cost =
                wire::HEADER + size + frame.records * wire::RECORD_COST + nfds * wire::FD_COST;
            push_event(events, ports, frame.message, held, cost);
            if io.inbuf.is_empty() {
                // Its buffer went with the message: nothing else was in it.
                io.filled = 0;
                start = 0;
                break;
            }
            start += wire::HEADER + len;
        }
        if start > 0 {
            io.inbuf.copy_within(start..io.filled, 0);
            io.filled -= start;
        }
        if !io.blocked && io.infds.len() > wire::unclaimed_limit(&io.inbuf[..io.filled])? {
            return Err(WireError::Descriptors);
        }
        Ok(())
    }

    /// A control frame read from the socket (`kind`, with `nfds` descriptors).
    fn control(io: &mut Io, kind: Option<Control>, nfds: usize) -> Result<(), WireError> {
        match kind {
            // A reactor reading the ring was to look at it: `settle` does.
            Some(Control::Poke) if nfds == 0 => Ok(()),
            Some(Control::Offer) if nfds == 1 && io.ring_in.is_none() => {
                let fd = io.infds.pop_front().ok_or(WireError::Descriptors)?;
                // Declined (this process reads too many): its writer never switches to it.
                if let Some(ring) = RingIn::accept(fd).map_err(WireError::Ring)? {
                    ring.set_pulling(io.pull_mode);
                    io.ring_in = Some(Arc::new(ring));
                }
                Ok(())
            }
            Some(Control::ToRing) if nfds == 0 && io.ring_in.is_some() && !io.in_on_ring => {
                io.in_on_ring = true;
                Ok(())
            }
            _ => Err(WireError::Codec(crate::codec::CodecError::Invalid(
                "a control frame out of place",
            ))),
        }
    }

    /// Decodes what the socket gave and what the ring holds, in the order the writer wrote
    /// them: socket frames up to a TO_RING, then the ring's frames up to a TO_SOCKET, then the
    /// socket's again... Returns the ring bytes consumed.
    fn settle(
        io: &mut Io,
        events: &mut Vec<(MessageEvent, usize)>,
        ports: &mut Vec<(usize, Vec<Handover>)>,
    ) -> Result<usize, WireError> {
        let mut consumed = 0;
        loop {
            Self::decode(io, events, ports)?;
            if !io.in_on_ring {
                return Ok(consumed);
            }
            consumed += Self::read_ring(io, events, ports)?;
            if io.in_on_ring {
                if io.blocked {
                    return Err(WireError::Codec(crate::codec::CodecError::Invalid(
                        "a frame on the socket while its ring is read",
                    )));
                }
                return Ok(consumed);
            }
            if !std::mem::take(&mut io.blocked) {
                return Ok(consumed);
            }
        }
    }

    /// Decodes the frames the ring holds, up to its TO_SOCKET marker if there is one (what
    /// follows the marker comes after a later TO_RING on the socket); returns the bytes
    /// consumed. The bytes are copied out of the peer's memory first, then checked.
    fn read_ring(
        io: &mut Io,
        events: &mut Vec<(MessageEvent, usize)>,
        ports: &mut Vec<(usize, Vec<Handover>)>,
    ) -> Result<usize, WireError> {
        let Some(ring) = io.ring_in.clone() else {
            return Ok(0);
        };
        let n = ring.available()?;
        if n == 0 {
            return Ok(0);
        }
        let mut buf = RING_SCRATCH.take();
        buf.clear();
        ring.copy_out(n, &mut buf);
        let before = events.len();
        let decoded = ring_frames(&buf, events, ports);
        RING_SCRATCH.set(buf);
        let (used, switched) = decoded?;
        ring.consume(used);
        if events.len() > before {
            if let Some(out) = &io.ring_out {
                // A request came: its answer will go to a reader that may sleep on another
                // CPU; start waking it now.
                out.nudge();
            }
        }
        if switched {
            io.in_on_ring = false;
            io.socket_due = true;
        }
        Ok(used)
    }

    /// Stops using the socket: deregisters it and closes it.
    fn shut(&self, io: &mut Io) {
        if let Some(fd) = io.fd.take() {
            if Arc::strong_count(&fd) > 1 {
                // A pulling thread is asleep on it: wake it now, not at the end of its slice.
                sys::shutdown(fd.as_fd());
            }
            if std::mem::take(&mut io.registered) {
                if let Some(r) = reactor::running() {
                    r.deregister(self.token, fd.as_fd());
                }
            }
        }
        io.out.clear();
        io.queued = 0;
        io.closing = false;
        io.regions.clear();
        io.ring_out = None;
        io.out_on_ring = false;
        if let Some(ring) = io.ring_in.take() {
            // A pulling thread may be asleep on it.
            ring.set_pulling(false);
            ring.wake_local();
        }
        io.in_on_ring = false;
    }

    /// The data at `range` of the frame body of `len` bytes at `at` in the read buffer, as a
    /// message keeps it: copied, or, for the last frame read when it is most of its buffer, in
    /// that buffer itself, uncopied (a queued message holds at most twice its size), cut at the
    /// frame's end (see `Held::Buffer`; the read buffer is then left empty).
    fn hold(io: &mut Io, at: usize, len: usize, range: std::ops::Range<usize>) -> Held {
        if range.len() >= wire::ZERO_COPY_MIN
            && at + len == io.filled
            && io.inbuf.capacity() <= 2 * range.len()
        {
            let mut buf = std::mem::take(&mut io.inbuf);
            buf.truncate(at + len);
            return Held::new(buf, at + range.start, at + range.end);
        }
        Held::copy_from(&io.inbuf, at + range.start..at + range.end)
    }

    /// Stops using the socket ([`shut`](Self::shut)) and drops what was read from it: the
    /// link is done (the peer's end, a failure, a lingering close given up).
    fn release(&self, io: &mut Io) {
        self.shut(io);
        io.release_input();
    }

    /// A bug of ours panicked while serving this link (caught by the reactor): close the port
    /// rather than leave it waiting for a thread that will not come back.
    pub(crate) fn fail(&self) {
        let mut io = lock(&self.io);
        self.release(&mut io);
        drop(io);
        self.target.peer_closed();
        self.run_callbacks();
    }

    /// Our port was closed or dropped: close the socket once what we wrote is flushed, so the
    /// peer reads every message and then the end of the stream. A peer that reads nothing for
    /// [`Limits::close_linger`](crate::Limits::close_linger) loses the rest.
    fn close_writing(&self) {
        let mut io = lock(&self.io);
        if !io.want_writable && !io.out.is_empty() {
            // What a burst left queued goes now, if the socket takes it.
            self.flush(&mut io);
        }
        if io.out.is_empty() {
            self.shut(&mut io);
        } else if !io.closing {
            io.closing = true;
            if let Some(fd) = io.fd.as_ref().filter(|fd| Arc::strong_count(fd) > 1) {
                // A pulling thread may be asleep reading it, and nothing else would wake it:
                // end our reading side (the peer can no longer write to us; we still write
                // the rest). Its read returns at once, and is not taken for the peer's end.
                sys::shutdown_reading(fd.as_fd());
                io.read_shut = true;
            }
            if let Some(ring) = &io.ring_in {
                ring.wake_local();
            }
            if let Some(r) = reactor::running() {
                r.linger(self.me.clone(), crate::limits::close_linger());
            }
        }
    }

    /// The linger time of a closed port ran out: give up on what the peer did not read.
    pub(crate) fn linger_expired(&self) {
        let mut io = lock(&self.io);
        if io.closing {
            tracing::warn!(
                "msgport: a closed port's peer read nothing for too long; unsent messages dropped"
            );
            self.release(&mut io);
        }
    }

    /// Our port leaves the process: stop reading, and hand over the socket with what was read
    /// of an incomplete frame and what was not yet written.
    pub(crate) fn export(&self) -> Exported {
        let mut delivering = lock(&self.deliver);
        let mut io = lock(&self.io);
        if io.ring_in.is_some() {
            // What the ring holds (and what the socket gave behind its marker) is delivered
            // here and travels queued: the next owner reads a partial frame at most, as always.
            let Delivery {
                events,
                ports,
                rejected,
            } = &mut *delivering;
            if let Err(e) = Self::settle(&mut io, events, ports) {
                tracing::warn!("msgport: a port leaves with a broken ring: {e}");
                self.release(&mut io);
            }
            drop(io);
            self.hand_over_read(events, ports, rejected);
            drop(std::mem::take(rejected));
            io = lock(&self.io);
        }
        let registered = std::mem::take(&mut io.registered);
        let socket = io.fd.take().map(|fd| {
            if registered {
                if let Some(r) = reactor::running() {
                    r.deregister(self.token, fd.as_fd());
                }
            }
            // No other thread polls a port that is being moved (it is owned, not borrowed);
            // should one still hold the descriptor, hand over a duplicate.
            Arc::try_unwrap(fd).or_else(|shared| sys::dup(shared.as_fd()))
        });
        let socket = match socket {
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                tracing::warn!("msgport: cannot hand over a port's socket: {e}");
                None
            }
            None => None,
        };
        io.queued = 0;
        let unsent = io
            .out
            .drain(..)
            .map(|chunk| Segment {
                bytes: chunk.bytes[chunk.pos..].to_vec(),
                fds: chunk.fds,
            })
            .collect();
        // Region frames not yet written travel with their regions' descriptors; this process
        // writes no more frames here, and reads none.
        io.regions.clear();
        io.mapped.clear();
        let filled = io.filled;
        let mut prefix = std::mem::take(&mut io.inbuf);
        prefix.truncate(filled);
        io.filled = 0;
        // The rings go with the socket (none without it: the channel is dead).
        let ring_in = io
            .ring_in
            .take()
            .filter(|_| socket.is_some())
            .and_then(|ring| {
                let handed = ring.hand_over();
                handed
                    .map_err(|e| tracing::warn!("msgport: cannot hand over a port's ring: {e}"))
                    .ok()
            });
        let ring_in = ring_in.map(|(fd, pos)| RingState {
            fd,
            pos,
            active: io.in_on_ring,
        });
        let ring_out = io.ring_out.take().filter(|_| socket.is_some()).map(|ring| {
            let (fd, pos) = ring.hand_over();
            RingState {
                fd,
                pos,
                active: io.out_on_ring,
            }
        });
        io.in_on_ring = false;
        io.out_on_ring = false;
        Exported {
            socket,
            backlog: Backlog {
                prefix,
                prefix_fds: io.infds.drain(..).collect(),
                unsent,
                ring_in,
                ring_out,
            },
        }
    }
}

thread_local! {
    /// The buffer a thread copies a ring's bytes into before decoding them.
    static RING_SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The frames in `bytes` (copied out of a ring) decoded into `events` / `ports`, up to a
/// TO_SOCKET marker: how many bytes they took, and whether the marker ended them. A ring holds
/// whole frames without descriptors, and no other control frame.
fn ring_frames(
    bytes: &[u8],
    events: &mut Vec<(MessageEvent, usize)>,
    ports: &mut Vec<(usize, Vec<Handover>)>,
) -> Result<(usize, bool), WireError> {
    let invalid = |what| WireError::Codec(crate::codec::CodecError::Invalid(what));
    let mut start = 0;
    while let Some(head) = wire::next_frame(&bytes[start..])? {
        let at = start + wire::HEADER;
        let len = head.len;
        start = at + len;
        if head.control {
            if head.nfds == 0 && Control::of(&bytes[at..start]) == Some(Control::ToSocket) {
                return Ok((start, true));
            }
            return Err(invalid("a control frame out of place in a ring"));
        }
        if head.nfds != 0 || head.shared {
            return Err(WireError::Descriptors);
        }
        let body = &bytes[at..start];
        if let Some(data) = wire::portless_data(body) {
            let data = data?;
            let payload = Payload::Cbor {
                bytes: Held::copy_from(bytes, at + data.range.start..at + data.range.end),
                plain: data.plain,
            };
            events.push((MessageEvent::new(payload, Vec::new()), wire::HEADER + len));
            continue;
        }
        let frame = wire::decode_body_leaving(body, VecDeque::new())?;
        let held = frame
            .left
            .clone()
            .map(|r| Held::copy_from(bytes, at + r.start..at + r.end));
        let cost = wire::HEADER + len + frame.records * wire::RECORD_COST;
        push_event(events, ports, frame.message, held, cost);
    }
    if start != bytes.len() {
        return Err(invalid("a partial frame in a ring"));
    }
    Ok((start, false))
}

/// Queues the event of a decoded frame's `message` (`held`: its data where the frame left it,
/// kept encoded), its ports still to import, counting `cost` against the port's budget.
fn push_event(
    events: &mut Vec<(MessageEvent, usize)>,
    ports: &mut Vec<(usize, Vec<Handover>)>,
    message: Outgoing,
    held: Option<Held>,
    cost: usize,
) {
    let Outgoing {
        data,
        ports: handovers,
    } = message;
    if !handovers.is_empty() {
        ports.push((events.len(), handovers));
    }
    let payload = match (held, data) {
        (Some(bytes), WireData::Cbor { plain, .. }) => Payload::Cbor { bytes, plain },
        (_, data) => handoff::payload(data),
    };
    events.push((MessageEvent::new(payload, Vec::new()), cost));
}

/// What one read did.
enum Step {
    /// Read this many bytes.
    Read(usize),
    /// Nothing more now (`EAGAIN`), or the socket is gone.
    Dry,
    /// The stream ended, or broke the protocol: the port closes.
    Ended(&'static str),
}

thread_local! {
    /// The buffer a thread reads links into while they hold no partial frame.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest buffer a thread keeps for reading.
const SCRATCH_MAX: usize = 1 << 20;
/// The start of a frame short enough to copy out of the thread's buffer.
const SHORT_PARTIAL: usize = 4096;

/// A buffer to read into for a link holding no partial frame: after a frame longer than
/// [`READ_CHUNK`] (`hint`), a kept buffer at least that long (the last such frame's own,
/// given back once its message was taken, which `Held` keeps as long as the frame), so that a
/// stream of large frames takes one `recvmsg` per frame and each frame's buffer goes with its
/// message uncopied; else this thread's buffer. (Read into the thread's 64 KiB buffer, a
/// 64 KiB message's frame took two calls, the buffer grown in between.)
fn read_buffer(hint: usize) -> Vec<u8> {
    if hint > READ_CHUNK {
        if let Some(buf) = crate::buffers::take_filled(hint) {
            if buf.len() <= 2 * hint {
                return buf;
            }
            // Far longer (a larger message's): it would read several frames, and the large
            // one among them would then be copied out of it.
            crate::buffers::give(buf);
        }
    }
    scratch()
}

/// This thread's read buffer, at least [`READ_CHUNK`] long: the one it kept, or else one the
/// process kept (a large message's buffer, given back once its data was taken), or a new one.
fn scratch() -> Vec<u8> {
    let mut buf = SCRATCH.take();
    if buf.len() < READ_CHUNK {
        match crate::buffers::take_filled(READ_CHUNK) {
            Some(kept) => buf = kept,
            None => buf.resize(READ_CHUNK, 0),
        }
    }
    buf
}

/// Keeps `buf` as the thread's read buffer if it is larger than the one kept (within
/// [`SCRATCH_MAX`]); what is not kept goes to the process's pool (or is freed).
fn keep_scratch(buf: Vec<u8>) {
    if buf.len() < READ_CHUNK {
        return;
    }
    if buf.len() > SCRATCH_MAX {
        crate::buffers::give(buf);
        return;
    }
    let kept = SCRATCH.take();
    let (keep, spare) = if kept.len() >= buf.len() {
        (kept, buf)
    } else {
        (buf, kept)
    };
    SCRATCH.set(keep);
    crate::buffers::give(spare);
}

impl Io {
    /// After a read into the thread's buffer, or once the link's own buffer is empty again.
    /// Empty: the buffer goes to the thread (the larger of the two is kept, up to
    /// [`SCRATCH_MAX`]; a larger one goes to the process's pool). A frame half read: a short
    /// start is copied into a buffer of the link's own and the thread keeps its buffer; a long
    /// one keeps the buffer it is in (no copy), and the thread makes another when it needs one.
    fn give_back_scratch(&mut self) {
        if self.filled > 0 {
            if self.filled <= SHORT_PARTIAL {
                let own = self.inbuf[..self.filled].to_vec();
                let used = std::mem::replace(&mut self.inbuf, own);
                keep_scratch(used);
            }
            return;
        }
        keep_scratch(std::mem::take(&mut self.inbuf));
    }

    /// Makes room to read into. The buffer grows with what has arrived (at most doubling what
    /// is held), never with what a header announces: a peer that announces a large frame and
    /// sends nothing costs one read chunk.
    fn reserve_read(&mut self) {
        let want = match wire::header(&self.inbuf[..self.filled]) {
            Some((len, _)) => (wire::HEADER.saturating_add(len))
                .min(self.filled.saturating_mul(2))
                .max(self.filled + 1),
            None => 0,
        }
        .max(READ_CHUNK);
        if self.inbuf.len() >= want {
            return;
        }
        if want > READ_CHUNK {
            // A kept buffer (a link holds a large one only while it holds a partial frame),
            // or else this one grown in place.
            if let Some(mut big) = crate::buffers::take_filled(want) {
                big[..self.filled].copy_from_slice(&self.inbuf[..self.filled]);
                let small = std::mem::replace(&mut self.inbuf, big);
                crate::buffers::give(small);
            }
        }
        if self.inbuf.len() < want {
            self.inbuf.resize(want, 0);
        }
    }

    /// Drops what was read: the socket is gone.
    fn release_input(&mut self) {
        self.mapped.clear();
        self.inbuf = Vec::new();
        self.filled = 0;
        self.infds.clear();
    }
}

impl Outbound for Link {
    fn post(&self, data: WireData, ports: Vec<MessagePort>) -> Result<(), PostError> {
        self.send(data, ports)
    }

    fn post_encoded(
        &self,
        encode: &mut Encoder<'_>,
        ports: Vec<MessagePort>,
    ) -> Result<(), Refused> {
        let lease = |need: usize| self.lease_region(need);
        let mut placer = shm::Placer::new(&lease);
        let encoded = encode(Some(&mut placer), take_spare(&ENCODED, 64));
        let region = placer.into_region();
        match encoded {
            // The common post: small data, no port, nothing placed in a region. Its frame is
            // written straight where it is queued (without the general path's intermediate
            // values), and the buffer it was encoded into is kept for the next post: no
            // allocation.
            Ok(encoded)
                if ports.is_empty()
                    && region.is_none()
                    && encoded.holes.is_empty()
                    && !shm::large(encoded.head.len() + 2) =>
            {
                let sent = self.send_portless(&encoded.head);
                keep_spare(&ENCODED, encoded.head);
                sent.map_err(|error| Refused {
                    error,
                    ports: Vec::new(),
                })
            }
            Ok(encoded) => self
                .send_placed(WireData::Encoded(encoded), ports, region)
                .map_err(|error| Refused {
                    error,
                    ports: Vec::new(),
                }),
            Err(error) => {
                if let Some(region) = region {
                    shm::release(&region);
                }
                Err(Refused { error, ports })
            }
        }
    }

    fn close(&self) {
        self.close_writing();
    }

    fn unsent(&self) -> usize {
        let io = lock(&self.io);
        let ringed = io.ring_out.as_ref().and_then(RingOut::unread).unwrap_or(0);
        io.queued + io.regions.in_flight() + ringed
    }

    fn arm(&self) {
        // Already fed by the reactor: nothing to do (no lock).
        if self.pulled.load(std::sync::atomic::Ordering::Relaxed) {
            self.arm_reading();
        }
    }

    fn resume(&self) {
        self.resume_reading();
    }

    /// The remote pull policy. By default the reactor delivers and this thread waits on the
    /// endpoint. In low-latency mode this thread reads the socket itself (one wake-up per
    /// message, not two) and looks again a few times before it sleeps in `poll`.
    fn pull_blocking(&self, ep: &Endpoint, deadline: Option<Instant>, how: PullMode) -> Pulled {
        if how == PullMode::Fed {
            // A message already queued needs nothing of the link.
            match ep.pull(None) {
                Pulled::Empty => {}
                event => return event,
            }
            self.arm();
            return ep.pull_blocking(deadline);
        }
        // Low-latency mode: look at the socket again and again for a while before sleeping.
        let spin_until = (how == PullMode::Spin).then(|| {
            let until = Instant::now() + LOW_LATENCY_SPIN;
            deadline.map_or(until, |deadline| deadline.min(until))
        });
        let mut looks = 0u32;
        loop {
            match ep.pull(None) {
                Pulled::Empty => {}
                event => return event,
            }
            if spin_until.is_some_and(|until| Instant::now() < until) {
                // Yielding now and then lets a sender that shares this CPU run (it would
                // otherwise wait for this thread's time slice to end); in between, the looks
                // follow each other as closely as a busy-polling reader's.
                if looks % YIELD_EVERY == 0 {
                    std::thread::yield_now();
                }
                looks += 1;
                self.read_now();
                continue;
            }
            let wait = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left.min(SLICE)),
                    _ => return Pulled::Empty,
                },
            };
            if !self.read_here(wait) {
                return ep.pull_blocking(deadline);
            }
        }
    }

    fn poll_now(&self) {
        self.read_now();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Answers a link posts before it offers its peer a ring (see [`ring`]): an exchange of
/// requests and answers, not a one-off message or a stream.
const RING_AFTER: u32 = 16;

/// [`RING_AFTER`], or what `MSGPORT_RING_AFTER` says (0: a ring with the first frame, answer
/// or not; the test suites run again that way, so that every scenario crosses rings).
fn ring_after() -> u32 {
    static AFTER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *AFTER.get_or_init(|| {
        std::env::var("MSGPORT_RING_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RING_AFTER)
    })
}

/// Bytes queued behind a full socket from which a poster gives way (see `send_frame`).
const CROWDED: usize = 256 << 10;
/// A crowded poster gives way once per this many bytes posted.
const GIVE_WAY_EVERY: usize = 64 << 10;

/// Posts closer together than this, with nothing delivered in between, are a burst.
const BURST_GAP: Duration = Duration::from_micros(50);
// A post while the cork timer is armed is taken as part of the burst without reading the clock.
const _: () = assert!(reactor::CORK_DELAY.as_nanos() < BURST_GAP.as_nanos());
/// A burst's queued frames are written once there are this many.
const CORK_FRAMES: usize = 64;
/// The largest frame a burst leaves queued.
const CORK_FRAME_BYTES: usize = 16 << 10;
/// A burst's queued frames are written once they hold this many bytes.
const CORK_BYTES: usize = 64 << 10;

/// How long a blocking pull in low-latency mode keeps looking at the socket before it sleeps:
/// about what waking a sleeping thread on another CPU costs here (33 µs) and its scheduling, so
/// that looking never costs much more than the sleep it saves.
const LOW_LATENCY_SPIN: Duration = Duration::from_micros(50);
/// A low-latency pull yields the CPU before its first look and every this many looks after.
const YIELD_EVERY: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(byte: u8, len: usize) -> Vec<Vec<u8>> {
        vec![vec![byte; len]]
    }

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn shape(out: &VecDeque<Chunk>) -> Vec<(usize, usize, bool)> {
        out.iter()
            .map(|c| (c.bytes.len(), c.fds.len(), c.merged))
            .collect()
    }

    /// A large frame that ends a read goes with its message in the read buffer, cut at the
    /// frame's end (not its data's, a byte short): back in the pool, that buffer reads the next
    /// frame of the stream whole, and the link remembers the length to ask the pool for it.
    #[test]
    fn a_large_frame_keeps_a_read_buffer_as_long_as_the_frame() {
        let data = crate::Value::Binary(crate::value::Binary {
            kind: crate::value::BinaryKind::Uint8,
            bytes: vec![7; 70_001],
        });
        let encode = |data: &crate::Value| {
            let frame = wire::encode_frame(Outgoing {
                data: WireData::Value(data.clone()),
                ports: Vec::new(),
            });
            frame.unwrap().parts.concat()
        };
        let bytes = encode(&data);
        let mut io = Io {
            inbuf: bytes.clone(),
            filled: bytes.len(),
            ..Io::default()
        };
        let (mut events, mut ports) = (Vec::new(), Vec::new());
        Link::decode(&mut io, &mut events, &mut ports).unwrap();
        assert_eq!(io.frame_hint, bytes.len());
        let (event, _) = events.pop().unwrap();
        match event.payload() {
            Payload::Cbor {
                bytes: Held::Buffer { buf, .. },
                ..
            } => assert_eq!(buf.len(), bytes.len(), "the whole frame's buffer"),
            _ => panic!("the read buffer went with the message"),
        }
        assert_eq!(event.value().unwrap(), data);

        // A small frame next: no hint.
        let small = encode(&crate::Value::from(5u32));
        io.inbuf = small.clone();
        io.filled = small.len();
        Link::decode(&mut io, &mut events, &mut ports).unwrap();
        assert_eq!((io.frame_hint, events.len()), (0, 1));
    }

    /// A burst's small frames share one buffer, in order; frames with descriptors, large
    /// frames, frames not held by a burst and a chunk already partly written keep their own.
    #[test]
    fn a_burst_of_small_frames_is_one_buffer() {
        let mut out = VecDeque::new();
        queue(&mut out, frame(1, 70), Vec::new(), true);
        queue(&mut out, frame(2, 70), Vec::new(), true);
        queue(&mut out, frame(3, 70), Vec::new(), true);
        assert_eq!(shape(&out), [(210, 0, true)]);
        let bytes = &out[0].bytes;
        assert!(bytes[..70].iter().all(|b| *b == 1) && bytes[70..140].iter().all(|b| *b == 2));
        assert!(bytes[140..].iter().all(|b| *b == 3));

        // Descriptors: a chunk of their own, and nothing is added to it afterwards.
        queue(&mut out, frame(4, 70), vec![fd()], true);
        queue(&mut out, frame(5, 70), Vec::new(), true);
        queue(&mut out, frame(6, 70), Vec::new(), true);
        assert_eq!(
            shape(&out),
            [(210, 0, true), (70, 1, false), (140, 0, true)]
        );

        // Large, or not held by a burst: their own chunk.
        queue(&mut out, frame(7, MERGE_MAX + 1), Vec::new(), true);
        queue(&mut out, frame(8, 70), Vec::new(), false);
        queue(&mut out, vec![vec![9; 40], vec![10; 40]], Vec::new(), true);
        assert_eq!(out.len(), 7, "a frame of two parts is two chunks");
        assert!(out.iter().skip(3).all(|c| !c.merged));

        // A chunk partly written already is left as it is.
        let mut out = VecDeque::new();
        queue(&mut out, frame(1, 70), Vec::new(), true);
        out[0].pos = 10;
        queue(&mut out, frame(2, 70), Vec::new(), true);
        assert_eq!(shape(&out), [(70, 0, false), (70, 0, false)]);
        // But a merged one that is written in part takes more behind what is left.
        out.pop_front();
        queue(&mut out, frame(3, 70), Vec::new(), true);
        out[0].pos = 100;
        queue(&mut out, frame(4, 70), Vec::new(), true);
        assert_eq!(shape(&out), [(210, 0, true)]);
    }
}
