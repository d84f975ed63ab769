//! The fuzz targets' way into the code a link really runs: bytes and descriptors written into a
//! port's socket in fuzzer-chosen pieces, read and decoded by the link's own read path.

use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::port::MessagePort;
use crate::sys;

/// Plays `input` into a port's socket and drains the port after each piece:
///
/// ```text
/// input = piece*
/// piece = len: u8 | fds: u8 | bytes[len]
/// fds   = 1 count[7]          ends of fresh socket pairs (at most 8)
///       | 0 1 sealed count[5] shared-memory regions (at most 4): bytes = split: u8 | sent[split] | region
///       | 0 0 111111          a ring holding frames: bytes = split: u8 | sent[split] | frames
///       | 0 0 count[6]        /dev/null (at most 62)
/// ```
///
/// A ring is a sealed `memfd` of a ring's size whose `write` word says how many bytes of
/// frames it holds (what the piece gives them, at most a ring's worth): offered by an OFFER
/// frame and switched to by a TO_RING one that the fuzzer writes, its frames are read with the
/// socket's, in the order the control frames say.
///
/// A piece is one `sendmsg` of its bytes with `count` descriptors attached: `/dev/null`, ends of
/// fresh socket pairs (so that records carrying sockets take the import path), or `memfd`
/// regions holding the piece's last bytes at the body offset, sealed against shrinking or not
/// (so that region frames take the shared-memory path with fuzzer-made bodies).
/// Checks that whatever the input, no descriptor is left behind once the port is closed and
/// drained (the fuzzer runs one thread; other threads opening descriptors would confuse the
/// count). Returns how many messages arrived.
pub(crate) fn link_reads(input: &[u8]) -> usize {
    checked(input, Reader::Fed)
}

/// [`link_reads`], the port read by a thread that waits for an answer (a pull after a post on
/// the same port) while another writes the pieces: the pull reads the socket itself, asleep in
/// `recvmsg` (the link's waiting read, `Link::take_received`) or after `poll` while a partial
/// frame is held, instead of the I/O thread.
pub(crate) fn link_pulls(input: &[u8]) -> usize {
    checked(input, Reader::Pulling)
}

#[derive(Clone, Copy)]
enum Reader {
    /// The I/O thread reads; the port is drained after each piece.
    Fed,
    /// A thread waiting for answers reads, while another writes every piece and then closes.
    Pulling,
}

fn checked(input: &[u8], reader: Reader) -> usize {
    let mut baseline = 0;
    let messages = play(input, reader, &mut || baseline = open_fds());
    let now = open_fds();
    assert!(
        now <= baseline,
        "descriptors left behind: {baseline} before, {now} after"
    );
    messages
}

/// Plays `input`; `started` runs once the port exists (and with it the reactor).
fn play(input: &[u8], reader: Reader, started: &mut dyn FnMut()) -> usize {
    let Ok((raw, theirs)) = sys::socketpair() else {
        return 0;
    };
    let Ok(port) = super::handoff::from_socket(theirs) else {
        return 0;
    };
    started();
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return 0;
    };
    let null = OwnedFd::from(null);
    let messages = match reader {
        Reader::Fed => {
            let mut messages = 0;
            for (kind, bytes) in pieces(input) {
                send_piece(&raw, &null, kind, bytes);
                messages += drain(&port);
            }
            drop(raw);
            messages + drain(&port)
        }
        Reader::Pulling => std::thread::scope(|s| {
            let null = &null;
            let writer = s.spawn(move || {
                for (kind, bytes) in pieces(input) {
                    send_piece(&raw, null, kind, bytes);
                }
                drop(raw);
            });
            let messages = pull_all(&port);
            // Joined by hand: the scope's own wait ends before the thread has run its
            // thread-locals' destructors, which the leak checker then takes for leaks.
            let _ = writer.join();
            messages
        }),
    };
    drop(port);
    drop(null);
    messages
}

/// The pieces of `input`: each one's descriptor byte and bytes.
fn pieces(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let [len, kind, rest @ ..] = input else {
            return None;
        };
        let len = usize::from(*len).min(rest.len());
        let (bytes, next) = rest.split_at(len);
        input = next;
        Some((*kind, bytes))
    })
}

/// Writes one piece into `raw`, with the descriptors its `kind` asks for.
fn send_piece(raw: &OwnedFd, null: &OwnedFd, kind: u8, mut bytes: &[u8]) {
    let mut pairs = Vec::new();
    let mut regions = Vec::new();
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    if kind & 0x80 != 0 {
        for _ in 0..usize::from(kind & 0x7f).min(8) {
            if let Ok((a, b)) = sys::socketpair() {
                pairs.push((a, b));
            }
        }
        fds.extend(pairs.iter().map(|(a, _)| a.as_fd()));
    } else if kind & 0x40 != 0 {
        let (sent, region) = match bytes.split_first() {
            Some((&split, rest)) => rest.split_at(usize::from(split).min(rest.len())),
            None => (bytes, &[][..]),
        };
        bytes = sent;
        for _ in 0..usize::from(kind & 0x1f).min(4) {
            regions.extend(region_with(region, kind & 0x20 != 0));
        }
        fds.extend(regions.iter().map(|r| r.as_fd()));
    } else if kind & 0x3f == 0x3f {
        let (sent, frames) = match bytes.split_first() {
            Some((&split, rest)) => rest.split_at(usize::from(split).min(rest.len())),
            None => (bytes, &[][..]),
        };
        bytes = sent;
        regions.extend(ring_with(frames));
        fds.extend(regions.iter().map(|r| r.as_fd()));
    } else {
        fds.extend(std::iter::repeat_n(null.as_fd(), usize::from(kind & 0x3f)));
    }
    if !bytes.is_empty() {
        let _ = sys::send(raw.as_fd(), &[IoSlice::new(bytes)], &fds);
    }
}

/// A ring (see `ring`) holding `frames`, published.
fn ring_with(frames: &[u8]) -> Option<OwnedFd> {
    let (fd, map) = super::ring::fuzz_ring(frames).ok()?;
    drop(map);
    Some(fd)
}

/// A `memfd` holding `body` at the body offset (after a state word saying "in flight"), sealed
/// against shrinking and growing when `sealed`.
fn region_with(body: &[u8], sealed: bool) -> Option<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "fuzz-region",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .ok()?;
    let mut content = vec![0u8; super::shm::BODY_AT];
    content[..4].copy_from_slice(&1u32.to_ne_bytes());
    content.extend_from_slice(body);
    let file = std::fs::File::from(fd);
    std::os::unix::fs::FileExt::write_all_at(&file, &content, 0).ok()?;
    let fd = OwnedFd::from(file);
    if sealed {
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).ok()?;
    }
    Some(fd)
}

/// Takes every message the port has now, with its ports (which are closed at once), and
/// decodes its data (a large one from where it was left: a read buffer or a region).
fn drain(port: &MessagePort) -> usize {
    let mut n = 0;
    while let Ok(event) = port.try_recv() {
        n += 1;
        consume(event);
    }
    n
}

/// Pulls every message until the port closes (its peer's end was dropped once every piece was
/// written, or a frame closed it), each pull after a post, as a request waiting for its answer
/// (the writer never reads what is posted: a few bytes a pull).
fn pull_all(port: &MessagePort) -> usize {
    let mut n = 0;
    loop {
        let _ = port.post_message((), []);
        match port.recv_timeout(PULL_WAIT) {
            Ok(event) => {
                n += 1;
                consume(event);
            }
            Err(crate::RecvTimeoutError::Timeout) => {}
            Err(crate::RecvTimeoutError::Closed) => return n,
        }
    }
}

/// Long enough that a pull sleeps in `recvmsg` (at least the link's slice).
const PULL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn consume(mut event: crate::MessageEvent) {
    let _ = event.value();
    let _ = event.take_data::<crate::Value>();
    drop(event);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(bytes: &[u8], kind: u8) -> Vec<u8> {
        let mut out = vec![bytes.len() as u8, kind];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_valid_frame_in_pieces_arrives_and_garbage_leaks_nothing() {
        for reader in [Reader::Fed, Reader::Pulling] {
            let play = |input: &[u8]| checked(input, reader);
            // [null, []] in a frame, split in two writes.
            let frame = [3, 0, 0, 0, 0, 0, 0, 0, 0x82, 0xf6, 0x80];
            let input = [piece(&frame[..5], 0), piece(&frame[5..], 0)].concat();
            assert_eq!(play(&input), 1);
            // A socket record with a real socket.
            let body = [0x82, 0xf6, 0x81, 0x85, 0x01, 0x80, 0x40, 0x00, 0x80];
            let mut frame = (body.len() as u32).to_le_bytes().to_vec();
            frame.extend(1u32.to_le_bytes());
            frame.extend(body);
            assert_eq!(play(&piece(&frame, 0x81)), 1);
            // A region frame with its body in a sealed region, then one whose region is not
            // sealed (the port closes: one message).
            let body = [0x82, 0xf6, 0x80];
            let mut region_frame = 8u32.to_le_bytes().to_vec();
            region_frame.extend((1u32 | 1 << 31).to_le_bytes());
            region_frame.extend((body.len() as u64).to_le_bytes());
            let split = [&[region_frame.len() as u8][..], &region_frame, &body].concat();
            let input = [piece(&split, 0x61), piece(&split, 0x61)].concat();
            assert_eq!(play(&input), 2);
            let input = [
                piece(&split, 0x61),
                piece(&split, 0x41),
                piece(&split, 0x61),
            ]
            .concat();
            assert_eq!(play(&input), 1);
        }
        // A frame announcing no descriptors, sent with 60 of them: the frame is whole in that
        // read and may be delivered (the stray descriptors could belong to a later frame of the
        // same read), then the port closes instead of reading the second copy. (Read by the I/O
        // thread after each write: a pulling reader may read both writes at once.)
        let frame = [3, 0, 0, 0, 0, 0, 0, 0, 0x82, 0xf6, 0x80];
        let input = [piece(&frame, 60), piece(&frame, 0)].concat();
        assert_eq!(checked(&input, Reader::Fed), 1);
    }

    #[test]
    fn a_pulling_reader_reads_many_pieces_in_order() {
        // 200 frames of [i, []] (data i, no port records) written one by one while the port is
        // pulled: all arrive.
        let input: Vec<u8> = (0u8..200)
            .flat_map(|i| {
                let body = [0x82, 0x18, i, 0x80];
                let mut frame = (body.len() as u32).to_le_bytes().to_vec();
                frame.extend(0u32.to_le_bytes());
                frame.extend(body);
                piece(&frame, 0)
            })
            .collect();
        assert_eq!(checked(&input, Reader::Pulling), 200);
    }
}
