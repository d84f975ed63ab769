//! Large frames through shared memory (docs/wire-format.md, "Large frames").
//!
//! A frame whose body is at least [`MIN`] bytes is written into a `memfd` region of the link
//! that sends it, and the socket carries only a 16-byte *region frame*: a header flagged
//! [`wire::SHARED`], the body's length, and the region's descriptor as the frame's first
//! descriptor (the message's own descriptors follow). The receiver maps the region, decodes the
//! body from it as it would from the socket and marks the region free again through its state
//! word (a message's large data stays in the region until it is taken: [`Lease`]); it may keep
//! the mapping for the region's next frames ([`Mapped`], bounded). The sender reuses a region
//! once its state says free. A typed message's large byte strings are written into the region
//! by the serializer itself ([`Placer`]): the sender copies them once, the receiver once.
//!
//! ```text
//! region = state: u32 (native endian) | unused[60] | body
//! state  = 0 free (written by the receiver when done) | 1 in flight (written by the sender)
//!        | 2 retired (written by the sender when it drops the region: a receiver unmaps it)
//! ```
//!
//! Each link keeps its own regions and reuses them only on that link: a process that received
//! a region (and may keep a mapping of it) never sees another peer's messages in it. What this
//! costs is bounded per link ([`KEEP_IDLE`], [`PER_LINK`], [`LINK_BYTES`]) and per process
//! ([`MAX_REGIONS`], [`MAX_BYTES`]); when a region cannot be had, the frame goes through the
//! socket as any other. A receiver that never frees its regions keeps at most that much of the
//! sender's memory. A link that leases no region for [`IDLE`] drops its free ones, and a
//! receiver unmaps retired regions every [`IDLE`] while it keeps any (`Link::trim_regions`, on
//! the reactor's timer): a quiet link gives a burst's memory back.
//!
//! Proven by: the unit tests below, `tests/shared_memory.rs`
//! (`large_messages_travel_in_shared_memory`, `typed_large_messages_written_in_place_arrive_whole`,
//! `regions_are_reused_and_bounded`, `a_quiet_link_gives_its_regions_back`,
//! `a_port_moved_with_region_frames_unread_loses_nothing`,
//! `hostile_region_frames_close_only_their_port`), and the `link` fuzz target, which sends
//! fuzzer-made regions.

use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire::{self, Frame};
use crate::sys::shm::{self, Mapping};
use crate::value::cbor::Spill;

/// Frame bodies at least this large travel in a region.
pub(crate) const MIN: usize = 256 << 10;
/// Where a region's body starts: its first bytes are the state word.
pub(crate) const BODY_AT: usize = 64;
/// Regions are sized in steps of at least this many bytes, and at least an eighth of their size
/// (one region serves messages of similar sizes, and wastes at most an eighth).
const GRAIN: usize = 64 << 10;
/// The most regions, in flight or free, one link holds, and their most bytes: a sender that
/// posts faster than its peer reads keeps that much in regions before it uses the socket.
const PER_LINK: usize = 64;
const LINK_BYTES: usize = 512 << 20;
/// The most bytes of free regions one link keeps for later frames.
const KEEP_IDLE: usize = 256 << 20;
/// The most regions, and bytes of regions, a process holds over all its links.
const MAX_REGIONS: usize = 256;
const MAX_BYTES: usize = 2 << 30;

const FREE: u32 = 0;
const IN_FLIGHT: u32 = 1;
/// Written by the sender when it drops a region: a receiver that kept it mapped unmaps it.
const RETIRED: u32 = 2;

static REGIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

/// A region this process made for one link.
pub(crate) struct Region {
    fd: OwnedFd,
    map: Mapping,
    /// The bytes of the frame body it carries (what was asked for while it is being filled):
    /// what it counts for while in flight, rather than its size (a region may be far larger
    /// than the message reusing it).
    carries: AtomicUsize,
}

impl Region {
    /// Makes a region of at least `need` bytes, if the process's budget allows it.
    fn create(need: usize) -> Option<Region> {
        let size = size_for(need)?;
        if REGIONS.fetch_add(1, Ordering::Relaxed) >= MAX_REGIONS
            || BYTES.fetch_add(size, Ordering::Relaxed) + size > MAX_BYTES
        {
            // Undone by the drop of a region that never existed: count it as one.
            REGIONS.fetch_sub(1, Ordering::Relaxed);
            BYTES.fetch_sub(size, Ordering::Relaxed);
            return None;
        }
        match shm::create(size) {
            Ok((fd, map)) => Some(Region {
                fd,
                map,
                carries: AtomicUsize::new(0),
            }),
            Err(e) => {
                tracing::debug!("msgport: no shared-memory region ({e}); using the socket");
                REGIONS.fetch_sub(1, Ordering::Relaxed);
                BYTES.fetch_sub(size, Ordering::Relaxed);
                None
            }
        }
    }

    fn size(&self) -> usize {
        self.map.len()
    }

    fn is_free(&self) -> bool {
        // Acquire: the receiver's reads of the last body happen before our next write.
        self.map.state().load(Ordering::Acquire) == FREE
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // A receiver keeping it mapped lets go at its next region frame (its pages live as
        // long as any mapping does).
        self.map.state().store(RETIRED, Ordering::Release);
        REGIONS.fetch_sub(1, Ordering::Relaxed);
        BYTES.fetch_sub(self.size(), Ordering::Relaxed);
    }
}

/// The size of a region made for a body of `need` bytes (offset included).
fn size_for(need: usize) -> Option<usize> {
    let eighth = need.checked_next_power_of_two()? / 16;
    need.checked_next_multiple_of(eighth.max(GRAIN))
}

/// A link's regions.
#[derive(Default)]
pub(crate) struct Regions {
    all: Vec<Arc<Region>>,
    /// When the link last leased one (see [`trim`](Self::trim)).
    last_lease: Option<Instant>,
}

/// How long a link's regions stay once nothing leases them: then the free ones are dropped
/// (and the receiver unmaps them), so that a link gone quiet after a burst of large messages
/// does not keep their memory.
pub(crate) const IDLE: Duration = Duration::from_secs(5);

impl Regions {
    /// A free region of at least `need` bytes, now marked in flight: the smallest free one that
    /// fits, else a new one (dropping free ones to stay within the link's bounds). Free regions
    /// past [`KEEP_IDLE`] bytes are dropped. The regions are kept in the order they were last
    /// leased: a lease takes the one leased longest ago of the smallest that fit, and the
    /// regions dropped are the free ones leased longest ago (a burst of messages of a new size
    /// keeps the regions it uses, not those of an earlier size). `need` counts the offset
    /// [`BODY_AT`].
    pub(crate) fn lease(&mut self, need: usize) -> Option<Arc<Region>> {
        // Of equally small ones, the one leased longest ago: measured faster across CPUs than
        // the one leased last (whose lines the receiver's CPU may still hold).
        let fits = self
            .all
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_free() && r.size() >= need)
            .min_by_key(|(_, r)| r.size())
            .map(|(i, _)| i);
        let region = match fits {
            Some(i) => {
                let region = self.all.remove(i);
                self.all.push(region.clone());
                region
            }
            None => {
                let size = size_for(need)?;
                let total = |all: &[Arc<Region>]| all.iter().map(|r| r.size()).sum::<usize>();
                while self.all.len() >= PER_LINK || total(&self.all) + size > LINK_BYTES {
                    let i = self.all.iter().position(|r| r.is_free())?;
                    self.all.remove(i);
                }
                let region = Arc::new(Region::create(need)?);
                self.all.push(region.clone());
                region
            }
        };
        region.map.state().store(IN_FLIGHT, Ordering::Relaxed);
        region.carries.store(need, Ordering::Relaxed);
        self.last_lease = Some(Instant::now());
        let mut idle: usize = self
            .all
            .iter()
            .filter(|r| r.is_free())
            .map(|r| r.size())
            .sum();
        while idle > KEEP_IDLE {
            let Some(i) = self.all.iter().position(|r| r.is_free()) else {
                break;
            };
            idle -= self.all.remove(i).size();
        }
        Some(region)
    }

    /// Whether the link holds regions and every one is in flight (its reader is behind).
    pub(crate) fn all_in_flight(&self) -> bool {
        !self.all.is_empty() && self.all.iter().all(|r| !r.is_free())
    }

    /// Bytes of the messages in regions in flight: sent, and not yet freed by the receiver (a
    /// message's region is freed once its data is taken).
    pub(crate) fn in_flight(&self) -> usize {
        self.all
            .iter()
            .filter(|r| !r.is_free())
            .map(|r| r.carries.load(Ordering::Relaxed))
            .sum()
    }

    /// Drops every region (the link is closed: a receiver still holding one keeps its pages
    /// alive until it is done with them).
    pub(crate) fn clear(&mut self) {
        self.all.clear();
    }

    /// Drops the free regions once the link has leased none for [`IDLE`]. Returns when to look
    /// again: at the end of that time when a lease came within it, after another [`IDLE`]
    /// while a region is still in flight; `None` once the link holds none.
    pub(crate) fn trim(&mut self, now: Instant) -> Option<Instant> {
        if let Some(quiet) = self.last_lease.map(|at| at + IDLE) {
            if now < quiet {
                return Some(quiet);
            }
        }
        self.all.retain(|r| !r.is_free());
        (!self.all.is_empty()).then(|| now + IDLE)
    }
}

/// Whether a frame of this body size goes through a region.
pub(crate) fn wants(frame: &Frame) -> bool {
    large(frame.body_len()) && carries_descriptors(frame)
}

/// Whether a frame body of `len` bytes is large enough to go through a region.
pub(crate) fn large(len: usize) -> bool {
    len >= MIN
}

/// Whether a region frame's 16 bytes can carry the frame's descriptors (at most 253 a byte)
/// besides the region's own.
fn carries_descriptors(frame: &Frame) -> bool {
    frame.fds.len() < wire::SHARED_FRAME * crate::sys::MAX_FDS_PER_SEND
}

/// How many bytes a region needs for `frame`'s body.
pub(crate) fn need(frame: &Frame) -> Option<usize> {
    BODY_AT.checked_add(frame.body_len())
}

/// Gives a region back unused: the frame it was leased for went another way.
pub(crate) fn release(region: &Region) {
    region.map.state().store(FREE, Ordering::Release);
}

/// Room kept after a placed byte string for what follows it in the message (more data, its
/// port records), so that one region takes the whole body.
const SLACK: usize = 64 << 10;

/// What a link offers the serializer ([`Spill`]): the first large byte string of a message
/// leases a region (through `lease`, under the link's lock), and it and the later ones are
/// written straight where the frame body will hold them: the message's bytes are copied once,
/// from the caller's data into the region.
pub(crate) struct Placer<'a> {
    lease: &'a dyn Fn(usize) -> Option<Arc<Region>>,
    region: Option<Arc<Region>>,
    tried: bool,
}

impl<'a> Placer<'a> {
    pub(crate) fn new(lease: &'a dyn Fn(usize) -> Option<Arc<Region>>) -> Self {
        Placer {
            lease,
            region: None,
            tried: false,
        }
    }

    /// The region leased, if any (in flight: [`stage`] or [`release`] it).
    pub(crate) fn into_region(self) -> Option<Arc<Region>> {
        self.region
    }
}

impl Spill for Placer<'_> {
    fn place(&mut self, at: usize, bytes: &[u8]) -> bool {
        let Some(offset) = BODY_AT.checked_add(at) else {
            return false;
        };
        if self.region.is_none() {
            if std::mem::replace(&mut self.tried, true) {
                return false;
            }
            self.region = (self.lease)(offset.saturating_add(bytes.len()).saturating_add(SLACK));
        }
        self.region
            .as_ref()
            .is_some_and(|r| r.map.write(offset, bytes))
    }
}

/// Writes `frame`'s body into `region` (outside the link's lock) and returns the region frame
/// that stands for it, with the region's descriptor first. Stretches the serializer already
/// placed in this region ([`Frame::gaps`]) stay where they are. The frame comes back, its placed
/// stretches copied out and the region free again, when it cannot go this way: the body does
/// not fit, a placed stretch is not where the body needs it (a container's head grew in front
/// of it), or the descriptor cannot be duplicated. It then goes on as any frame.
pub(crate) fn stage(region: &Region, frame: Frame) -> Result<Frame, Frame> {
    let size = frame.body_len();
    let fits = BODY_AT
        .checked_add(size)
        .is_some_and(|end| end <= region.size())
        && carries_descriptors(&frame);
    if !fits || !gaps_in_place(&frame) {
        return Err(materialize(region, frame));
    }
    let fd = match crate::sys::dup(region.fd.as_fd()) {
        Ok(fd) => fd,
        Err(_) => return Err(materialize(region, frame)),
    };
    region.carries.store(size, Ordering::Relaxed);
    let Frame { parts, fds, gaps } = frame;
    let mut at = 0;
    let mut gaps = gaps.iter().peekable();
    for (i, part) in parts.iter().enumerate() {
        while let Some(gap) = gaps.next_if(|g| g.before == i) {
            at += gap.len;
        }
        let bytes = if i == 0 {
            &part[wire::HEADER..]
        } else {
            &part[..]
        };
        let written = region.map.write(BODY_AT + at, bytes);
        debug_assert!(written, "the body fits the region");
        at += bytes.len();
    }
    // The parts are spent: large ones (serialized byte strings) are kept for the next message.
    parts.into_iter().for_each(crate::buffers::give);
    let mut all = Vec::with_capacity(fds.len() + 1);
    all.push(fd);
    all.extend(fds);
    Ok(Frame {
        parts: vec![wire::shared_frame(size, all.len())],
        fds: all,
        gaps: Vec::new(),
    })
}

/// Whether every placed stretch is at the body offset the frame's layout gives it.
fn gaps_in_place(frame: &Frame) -> bool {
    let mut at = 0;
    let mut gaps = frame.gaps.iter().peekable();
    for (i, part) in frame.parts.iter().enumerate() {
        while let Some(gap) = gaps.next_if(|g| g.before == i) {
            if gap.at != at {
                return false;
            }
            at += gap.len;
        }
        at += if i == 0 {
            part.len() - wire::HEADER
        } else {
            part.len()
        };
    }
    gaps.all(|gap| {
        let ok = gap.at == at;
        at += gap.len;
        ok
    })
}

/// `frame` with its placed stretches copied out of `region` into parts of their own; the
/// region is free again.
fn materialize(region: &Region, mut frame: Frame) -> Frame {
    for gap in std::mem::take(&mut frame.gaps).into_iter().rev() {
        let mut bytes = crate::buffers::take(gap.len);
        bytes.clear();
        let placed = BODY_AT
            .checked_add(gap.at)
            .and_then(|at| region.map.bytes(at, gap.len));
        debug_assert!(placed.is_some(), "a placed stretch lies within its region");
        bytes.extend_from_slice(placed.unwrap_or_default());
        frame.parts.insert(gap.before, bytes);
    }
    release(region);
    frame
}

/// The regions a link's peer sent, still mapped: a region comes back with every frame it
/// carries, and mapping it again each time (page tables and all) cost as much as copying its
/// body. Bounded, since what this process reads of a kept mapping stays in its resident set:
/// at most [`PER_LINK`] mappings and [`LINK_BYTES`] per link (the most an honest sender uses),
/// the oldest unmapped first, and [`MAPPED_MAX`] over the process; past that, a region is
/// mapped for its frame only.
#[derive(Default)]
pub(crate) struct Mapped {
    maps: std::collections::VecDeque<((u64, u64), Arc<Mapping>)>,
}

/// The most bytes of kept mappings, over all links of the process.
const MAPPED_MAX: usize = 1 << 30;
static MAPPED: AtomicUsize = AtomicUsize::new(0);

impl Mapped {
    pub(crate) fn clear(&mut self) {
        while self.pop_front() {}
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Unmaps the regions their sender has dropped; whether any mapping is left.
    pub(crate) fn drop_retired(&mut self) -> bool {
        self.maps.retain(|(_, map)| {
            let retired = map.state().load(Ordering::Acquire) == RETIRED;
            if retired {
                forget(map.len());
            }
            !retired
        });
        !self.maps.is_empty()
    }

    fn pop_front(&mut self) -> bool {
        match self.maps.pop_front() {
            Some((_, map)) => {
                forget(map.len());
                true
            }
            None => false,
        }
    }

    /// Bytes of the mappings kept.
    fn bytes(&self) -> usize {
        self.maps.iter().map(|(_, map)| map.len()).sum()
    }

    /// Keeps `map` if the bounds allow (dropping the oldest of this link first); gives it back
    /// otherwise.
    fn keep(&mut self, key: (u64, u64), map: Arc<Mapping>) -> Result<&Arc<Mapping>, Arc<Mapping>> {
        let len = map.len();
        if len > LINK_BYTES {
            return Err(map);
        }
        while self.maps.len() >= PER_LINK || self.bytes() + len > LINK_BYTES {
            self.pop_front();
        }
        if MAPPED.fetch_add(len, Ordering::Relaxed) + len > MAPPED_MAX {
            MAPPED.fetch_sub(len, Ordering::Relaxed);
            return Err(map);
        }
        self.maps.push_back((key, map));
        match self.maps.back() {
            Some((_, map)) => Ok(map),
            None => unreachable!("just pushed"),
        }
    }
}

/// Takes `len` bytes of kept mappings off the process's count.
fn forget(len: usize) {
    MAPPED.fetch_sub(len, Ordering::Relaxed);
}

impl Drop for Mapped {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Reads a region frame's body: maps `region` (checked: sealed, large enough), or finds it
/// mapped from an earlier frame, decodes the body with `decode`, then frees the region for its
/// sender.
#[cfg(test)]
pub(crate) fn receive<T>(
    mapped: &mut Mapped,
    region: BorrowedFd<'_>,
    size: usize,
    decode: impl FnOnce(&[u8]) -> T,
) -> Result<T, std::io::Error> {
    receive_keeping(mapped, region, size, |body| (decode(body), None)).map(|(out, _)| out)
}

/// Reads a region frame's body: maps `region` (checked: sealed, large enough), or finds it
/// mapped from an earlier frame, and decodes the body with `decode`, which may keep a stretch
/// of it where it is (a message's large data, decoded only when the receiver asks for it). The
/// region is freed for its sender at once, or, when a stretch is kept, once the [`Lease`] on
/// it is dropped.
pub(crate) fn receive_keeping<T>(
    mapped: &mut Mapped,
    region: BorrowedFd<'_>,
    size: usize,
    decode: impl FnOnce(&[u8]) -> (T, Option<Range<usize>>),
) -> Result<(T, Option<Lease>), std::io::Error> {
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidData);
    let need = BODY_AT.checked_add(size).ok_or_else(invalid)?;
    let (dev, ino, file_size) = shm::identify(region)?;
    let key = (dev, ino);
    mapped.drop_retired();
    let found = mapped.maps.iter().position(|(k, _)| *k == key);
    let map = match found {
        Some(i) if mapped.maps[i].1.len() >= need => mapped.maps[i].1.clone(),
        _ => {
            if let Some((_, old)) = found.and_then(|i| mapped.maps.remove(i)) {
                forget(old.len());
            }
            // The whole region (up to what a frame may use), so that later frames fit.
            let limit = BODY_AT.saturating_add(wire::max_frame());
            let len = usize::try_from(file_size).unwrap_or(usize::MAX).min(limit);
            let map = Arc::new(shm::open(region, len.max(need))?);
            match mapped.keep(key, map) {
                Ok(map) => map.clone(),
                Err(map) => map,
            }
        }
    };
    let body = map.bytes(BODY_AT, size).ok_or_else(invalid)?;
    let (out, keep) = decode(body);
    let lease = keep
        .filter(|r| r.start <= r.end && r.end <= size)
        .map(|r| Lease {
            at: BODY_AT + r.start,
            len: r.len(),
            map: map.clone(),
        });
    if lease.is_none() {
        // Release: our reads of the body happen before the sender's next write.
        map.state().store(FREE, Ordering::Release);
    }
    Ok((out, lease))
}

/// A stretch of a region's body kept where it lies (a received message's large data, not yet
/// taken): the region stays in flight, so its sender does not reuse it, until this is dropped.
/// Its bytes are the sender's memory: an honest sender leaves them alone until then; what a
/// hostile one writes meanwhile only changes (or breaks) the decoding of its own message.
pub(crate) struct Lease {
    map: Arc<Mapping>,
    at: usize,
    len: usize,
}

impl std::ops::Deref for Lease {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // Checked when the lease was made: the stretch lies within the mapping.
        self.map.bytes(self.at, self.len).unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Release: our reads happen before the sender's next write. A region its sender
        // retired meanwhile stays retired (so that a receiver keeping it mapped lets go).
        let _ = self.map.state().compare_exchange(
            IN_FLIGHT,
            FREE,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(size: usize) -> Frame {
        let mut head = vec![0u8; wire::HEADER];
        head.extend(std::iter::repeat_n(7u8, size));
        Frame {
            parts: vec![head],
            fds: Vec::new(),
            gaps: Vec::new(),
        }
    }

    #[test]
    fn a_region_is_reused_once_the_receiver_frees_it() {
        let mut regions = Regions::default();
        let f = frame(MIN);
        assert!(wants(&f));
        assert!(!wants(&frame(MIN - 1)));
        let first = regions.lease(need(&f).unwrap()).unwrap();
        // In flight: a second frame gets a second region.
        let second = regions.lease(need(&f).unwrap()).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        let sent = stage(&first, f).unwrap();
        assert_eq!(sent.fds.len(), 1);
        let mut mapped = Mapped::default();
        let body = receive(&mut mapped, sent.fds[0].as_fd(), MIN, |b| b.to_vec()).unwrap();
        assert_eq!(body, vec![7u8; MIN]);
        // Freed by the receiver: reused.
        let third = regions.lease(need(&frame(MIN)).unwrap()).unwrap();
        assert!(Arc::ptr_eq(&first, &third));
        assert_eq!(regions.all.len(), 2);
    }

    #[test]
    fn a_receiver_unmaps_the_regions_its_sender_dropped() {
        let mut regions = Regions::default();
        let mut mapped = Mapped::default();
        let first = regions.lease(need(&frame(MIN)).unwrap()).unwrap();
        let sent = stage(&first, frame(MIN)).unwrap();
        receive(&mut mapped, sent.fds[0].as_fd(), MIN, |_| ()).unwrap();
        assert_eq!(mapped.maps.len(), 1);
        drop(first);
        regions.clear();
        let mut others = Regions::default();
        let second = others.lease(need(&frame(MIN)).unwrap()).unwrap();
        let sent = stage(&second, frame(MIN)).unwrap();
        receive(&mut mapped, sent.fds[0].as_fd(), MIN, |_| ()).unwrap();
        assert_eq!(mapped.maps.len(), 1, "the retired region was unmapped");
    }

    #[test]
    fn a_receiver_keeps_no_mapping_past_its_bounds() {
        use rustix::fs::{MemfdFlags, SealFlags};
        let sparse = |size: usize| {
            let fd =
                rustix::fs::memfd_create("big", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                    .unwrap();
            rustix::fs::ftruncate(&fd, size as u64).unwrap();
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
            fd
        };
        // Sparse regions that together pass a link's bound: each is read, the oldest mappings
        // are dropped to keep the link within it (what is read of a kept mapping stays
        // resident).
        let mut mapped = Mapped::default();
        let third = LINK_BYTES / 3 + (1 << 20);
        let fds: Vec<_> = (0..3).map(|_| sparse(third)).collect();
        for fd in &fds {
            let got = receive(&mut mapped, fd.as_fd(), 3, |b| b.to_vec()).unwrap();
            assert_eq!(got, vec![0, 0, 0]);
        }
        assert_eq!(mapped.maps.len(), 2);
        assert!(mapped.bytes() <= LINK_BYTES);
        mapped.clear();
        assert_eq!(mapped.bytes(), 0);
        // One mapping larger than the bound is not kept at all.
        let huge =
            Arc::new(shm::open(sparse(LINK_BYTES + (1 << 20)).as_fd(), LINK_BYTES + 1).unwrap());
        assert!(mapped.keep((0, 0), huge).is_err());
        assert_eq!(mapped.bytes(), 0);
        // A region within bounds is kept, and counted until dropped.
        let mut regions = Regions::default();
        let region = regions.lease(need(&frame(MIN)).unwrap()).unwrap();
        let sent = stage(&region, frame(MIN)).unwrap();
        receive(&mut mapped, sent.fds[0].as_fd(), MIN, |_| ()).unwrap();
        assert_eq!(mapped.maps.len(), 1);
        assert!(mapped.bytes() >= MIN);
        mapped.clear();
        assert_eq!(mapped.bytes(), 0);
    }

    #[test]
    fn a_link_keeps_the_regions_it_used_last() {
        // Free regions left by messages of one size, then bursts of larger ones (the bench's
        // sweep going from 16 to 64 MiB): past the idle bound, the regions dropped are those
        // leased longest ago, so each burst reuses the regions of the one before.
        let mut regions = Regions::default();
        let small: Vec<_> = (0..14).map(|_| regions.lease(16 << 20).unwrap()).collect();
        small.iter().for_each(|r| release(r));
        drop(small);
        let mut burst = || -> Vec<u64> {
            let held: Vec<_> = (0..4).map(|_| regions.lease(64 << 20).unwrap()).collect();
            held.iter().for_each(|r| release(r));
            held.iter()
                .map(|r| shm::identify(r.fd.as_fd()).unwrap().1)
                .collect()
        };
        let first = burst();
        let second = burst();
        assert_eq!(first.len(), 4);
        for inode in &second {
            assert!(
                first.contains(inode),
                "a burst made a new region: {first:?} then {second:?}"
            );
        }
        regions.clear();
    }

    #[test]
    fn a_link_holds_a_bounded_number_of_regions() {
        let mut regions = Regions::default();
        let held: Vec<_> = (0..PER_LINK)
            .map(|_| regions.lease(need(&frame(MIN)).unwrap()).unwrap())
            .collect();
        // Every region in flight: the frame goes through the socket.
        assert!(regions.all_in_flight());
        assert!(regions.lease(need(&frame(MIN)).unwrap()).is_none());
        held[3].map.state().store(FREE, Ordering::Release);
        assert!(!regions.all_in_flight());
        assert!(regions.lease(need(&frame(MIN)).unwrap()).is_some());
        regions.clear();
    }

    #[test]
    fn a_receiver_refuses_a_region_smaller_than_the_frame() {
        let mut regions = Regions::default();
        let region = regions.lease(need(&frame(MIN)).unwrap()).unwrap();
        let sent = stage(&region, frame(MIN)).unwrap();
        let mut mapped = Mapped::default();
        assert!(receive(&mut mapped, sent.fds[0].as_fd(), 64 << 20, |_| ()).is_err());
    }
}
