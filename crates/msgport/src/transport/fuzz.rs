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
///       | 0 0 count[6]        /dev/null
/// ```
///
/// A piece is one `sendmsg` of its bytes with `count` descriptors attached: `/dev/null`, ends of
/// fresh socket pairs (so that records carrying sockets take the import path), or `memfd`
/// regions holding the piece's last bytes at the body offset, sealed against shrinking or not
/// (so that region frames take the shared-memory path with fuzzer-made bodies).
/// Checks that whatever the input, no descriptor is left behind once the port is closed and
/// drained (the fuzzer runs one thread; other threads opening descriptors would confuse the
/// count). Returns how many messages arrived.
pub(crate) fn link_reads(input: &[u8]) -> usize {
    let mut baseline = 0;
    let messages = play(input, &mut || baseline = open_fds());
    let now = open_fds();
    assert!(
        now <= baseline,
        "descriptors left behind: {baseline} before, {now} after"
    );
    messages
}

/// Plays `input`; `started` runs once the port exists (and with it the reactor).
fn play(mut input: &[u8], started: &mut dyn FnMut()) -> usize {
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
    let mut messages = 0;
    while let [len, kind, rest @ ..] = input {
        let len = usize::from(*len).min(rest.len());
        let (bytes, next) = rest.split_at(len);
        input = next;
        let mut bytes = bytes;
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
        } else {
            fds.extend(std::iter::repeat_n(null.as_fd(), usize::from(kind & 0x3f)));
        }
        if !bytes.is_empty() {
            let _ = sys::send(raw.as_fd(), &[IoSlice::new(bytes)], &fds);
        }
        drop(fds);
        drop(pairs);
        drop(regions);
        messages += drain(&port);
    }
    drop(raw);
    messages += drain(&port);
    drop(port);
    drop(null);
    messages
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
    while let Ok(mut event) = port.try_recv() {
        n += 1;
        let _ = event.value();
        let _ = event.take_data::<crate::Value>();
        drop(event);
    }
    n
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
        // [null, []] in a frame, split in two writes.
        let frame = [3, 0, 0, 0, 0, 0, 0, 0, 0x82, 0xf6, 0x80];
        let input = [piece(&frame[..5], 0), piece(&frame[5..], 0)].concat();
        assert_eq!(play(&input, &mut || ()), 1);
        // A frame announcing no descriptors, sent with 60 of them: the frame is whole in that
        // read and may be delivered (the stray descriptors could belong to a later frame of the
        // same read), then the port closes instead of reading the second copy.
        let input = [piece(&frame, 60), piece(&frame, 0)].concat();
        assert_eq!(play(&input, &mut || ()), 1);
        // A socket record with a real socket.
        let body = [0x82, 0xf6, 0x81, 0x85, 0x01, 0x80, 0x40, 0x00, 0x80];
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend(1u32.to_le_bytes());
        frame.extend(body);
        assert_eq!(play(&piece(&frame, 0x81), &mut || ()), 1);
        // A region frame with its body in a sealed region, then one whose region is not sealed
        // (the port closes: one message).
        let body = [0x82, 0xf6, 0x80];
        let mut region_frame = 8u32.to_le_bytes().to_vec();
        region_frame.extend((1u32 | 1 << 31).to_le_bytes());
        region_frame.extend((body.len() as u64).to_le_bytes());
        let split = [&[region_frame.len() as u8][..], &region_frame, &body].concat();
        let input = [piece(&split, 0x61), piece(&split, 0x61)].concat();
        assert_eq!(play(&input, &mut || ()), 2);
        let input = [
            piece(&split, 0x61),
            piece(&split, 0x41),
            piece(&split, 0x61),
        ]
        .concat();
        assert_eq!(play(&input, &mut || ()), 1);
    }
}
