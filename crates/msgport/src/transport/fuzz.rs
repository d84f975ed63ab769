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
/// piece = len: u8 | fds: u8 | bytes[len]    fds: low 7 bits = count (mod 254), top bit = sockets
/// ```
///
/// A piece is one `sendmsg` of its bytes with `count` descriptors attached: `/dev/null`, or
/// (top bit) ends of fresh socket pairs, so that records carrying sockets take the import path.
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
        let count = usize::from(kind & 0x7f) % (sys::MAX_FDS_PER_SEND + 1);
        let mut pairs = Vec::new();
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        if kind & 0x80 != 0 {
            for _ in 0..count.min(8) {
                if let Ok((a, b)) = sys::socketpair() {
                    pairs.push((a, b));
                }
            }
            fds.extend(pairs.iter().map(|(a, _)| a.as_fd()));
        } else {
            fds.extend(std::iter::repeat_n(null.as_fd(), count));
        }
        if !bytes.is_empty() {
            let _ = sys::send(raw.as_fd(), &[IoSlice::new(bytes)], &fds);
        }
        drop(fds);
        drop(pairs);
        messages += drain(&port);
    }
    drop(raw);
    messages += drain(&port);
    drop(port);
    drop(null);
    messages
}

/// Takes every message the port has now, with its ports (which are closed at once).
fn drain(port: &MessagePort) -> usize {
    let mut n = 0;
    while let Ok(event) = port.try_recv() {
        n += 1;
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
        // A frame announcing no descriptors, sent with 100 of them: the frame is whole in that
        // read and may be delivered (the stray descriptors could belong to a later frame of the
        // same read), then the port closes instead of reading the second copy.
        let input = [piece(&frame, 100), piece(&frame, 0)].concat();
        assert_eq!(play(&input, &mut || ()), 1);
        // A socket record with a real socket.
        let body = [0x82, 0xf6, 0x81, 0x85, 0x01, 0x80, 0x40, 0x00, 0x80];
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend(1u32.to_le_bytes());
        frame.extend(body);
        assert_eq!(play(&piece(&frame, 0x81), &mut || ()), 1);
    }
}
