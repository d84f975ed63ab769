//! Large frames through shared memory (docs/wire-format.md, "Large frames"): what an honest
//! sender's large messages look like to the receiver (whole, in order, with their ports, in
//! regions that are reused and bounded), and what a hostile sender's region frames do (each
//! closes only the port that carried it: an unsealed, foreign, too small or unmappable region,
//! a missing one, a lying length, garbage in the region).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use msgport::{MessageChannel, RecvTimeoutError, Value};
use msgport_testkit::child::isolated;
use msgport_testkit::fds::open_fds;
use msgport_testkit::hostile::{cbor, hostile_pair, socket_pair, RawPeer};
use rustix::fs::{MemfdFlags, SealFlags};

const LIMIT: Duration = Duration::from_secs(60);
/// Where a region's body starts.
const BODY_AT: usize = 64;
/// The header flag of a region frame.
const SHARED: u32 = 1 << 31;

fn bytes(n: usize, seed: u8) -> Value {
    let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    Value::Binary(msgport::Binary {
        kind: msgport::BinaryKind::ArrayBuffer,
        bytes: data,
    })
}

/// Messages of 256 KiB to 32 MiB (each over the threshold), interleaved with small ones and
/// with ports, arrive whole and in order; the receiving port's messages are equal to what was
/// sent.
#[test]
fn large_messages_travel_in_shared_memory() {
    let (a, b) = socket_pair();
    let sizes = [256 << 10, 1 << 20, 3 << 20, 32 << 20, 300 << 10, 5 << 20];
    let sender = std::thread::spawn(move || {
        for round in 0..3u8 {
            for (i, &n) in sizes.iter().enumerate() {
                let seed = round * 16 + i as u8;
                a.post_message(bytes(n, seed), []).unwrap();
                a.post_message(Value::from(f64::from(seed)), []).unwrap();
                let (here, there) = MessageChannel::new().into_ports();
                let msg = Value::Array(vec![bytes(n, !seed), Value::Port(0)]);
                a.post_message(msg, [there]).unwrap();
                here.post_message(Value::from("through the port"), [])
                    .unwrap();
            }
        }
        a
    });
    for round in 0..3u8 {
        for (i, &n) in sizes.iter().enumerate() {
            let seed = round * 16 + i as u8;
            let got = b.recv_timeout(LIMIT).unwrap();
            assert_eq!(got.value().unwrap(), bytes(n, seed), "message {round}/{i}");
            let got = b.recv_timeout(LIMIT).unwrap();
            assert_eq!(got.value().unwrap(), Value::from(f64::from(seed)));
            let mut got = b.recv_timeout(LIMIT).unwrap();
            let ports = std::mem::take(&mut got.ports);
            let Value::Array(items) = got.value().unwrap() else {
                panic!("an array")
            };
            assert_eq!(items[0], bytes(n, !seed));
            let port = ports.into_iter().next().expect("the port");
            let said = port.recv_timeout(LIMIT).unwrap();
            assert_eq!(said.value().unwrap().as_str(), Some("through the port"));
        }
    }
    drop(sender.join().unwrap());
}

/// A byte string (serde's `serialize_bytes`), as `serde_bytes` writes one.
struct Bytes(Vec<u8>);

impl serde::Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

/// A sequence of unknown length: its head is put in front once it is written, which moves
/// whatever the serializer wrote in place inside it.
struct Unsized(Vec<Bytes>);

impl serde::Serialize for Unsized {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(None)?;
        for b in &self.0 {
            seq.serialize_element(b)?;
        }
        seq.end()
    }
}

#[derive(serde::Serialize)]
struct Typed {
    seq: u64,
    name: String,
    big: Bytes,
    more: Unsized,
    tail: Bytes,
}

fn raw(n: usize, seed: u8) -> Vec<u8> {
    let Value::Binary(b) = bytes(n, seed) else {
        unreachable!()
    };
    b.bytes
}

/// Typed messages whose large byte strings the serializer writes straight into the link's
/// region, in every layout: one string; two that together outgrow the region leased for the
/// first; strings inside a sequence of unknown length (moved by its head); with a port; posted
/// by value and by reference. Each arrives equal to its `to_value`.
#[test]
fn typed_large_messages_written_in_place_arrive_whole() {
    let (a, b) = socket_pair();
    let shapes: Vec<Typed> = vec![
        Typed {
            seq: 1,
            name: "one".into(),
            big: Bytes(raw(1 << 20, 1)),
            more: Unsized(vec![]),
            tail: Bytes(vec![1, 2, 3]),
        },
        Typed {
            seq: 2,
            name: "two that outgrow the region".into(),
            big: Bytes(raw(600 << 10, 2)),
            more: Unsized(vec![]),
            tail: Bytes(raw(900 << 10, 3)),
        },
        Typed {
            seq: 3,
            name: "moved by a head".into(),
            big: Bytes(raw(300 << 10, 4)),
            more: Unsized((0..30).map(|i| Bytes(raw(300 << 10, i))).collect()),
            tail: Bytes(raw(70 << 10, 5)),
        },
        Typed {
            seq: 4,
            name: "small".into(),
            big: Bytes(vec![9; 10]),
            more: Unsized(vec![Bytes(raw(1 << 20, 6))]),
            tail: Bytes(vec![]),
        },
    ];
    let expected: Vec<Value> = shapes
        .iter()
        .map(|t| msgport::to_value(t).unwrap())
        .collect();
    for round in 0..3 {
        for t in &shapes {
            a.post_message_ref(t, []).unwrap();
        }
        let (here, there) = MessageChannel::new().into_ports();
        a.post_message_ref(&(Value::Port(0), Bytes(raw(2 << 20, 7))), [there])
            .unwrap();
        here.post_message("hello", []).unwrap();
        for (i, want) in expected.iter().enumerate() {
            let got = b.recv_timeout(LIMIT).unwrap();
            assert_eq!(&got.value().unwrap(), want, "round {round}, shape {i}");
        }
        let mut got = b.recv_timeout(LIMIT).unwrap();
        let port = got.ports.pop().expect("the port");
        let Value::Array(items) = got.value().unwrap() else {
            panic!("an array")
        };
        assert_eq!(items[1], bytes(2 << 20, 7));
        let said = port.recv_timeout(LIMIT).unwrap();
        assert_eq!(said.value().unwrap().as_str(), Some("hello"));
    }
    // By value too (the same path, the data moved in).
    for t in shapes {
        a.post_message(t, []).unwrap();
    }
    for want in &expected {
        assert_eq!(&b.recv_timeout(LIMIT).unwrap().value().unwrap(), want);
    }
}

/// Five hundred 1 MiB messages use a bounded set of regions: the descriptors the two ports hold
/// at the end are at most the regions one link may keep (64), however many messages went.
#[test]
fn regions_are_reused_and_bounded() {
    isolated("regions_are_reused_and_bounded", &[], LIMIT, || {
        let (a, b) = socket_pair();
        let base = open_fds();
        for i in 0..500u32 {
            a.post_message(bytes(1 << 20, i as u8), []).unwrap();
            if i % 50 == 49 {
                for _ in 0..50 {
                    b.recv_timeout(LIMIT).unwrap();
                }
            }
        }
        let held = open_fds().saturating_sub(base);
        assert!(held >= 1, "large messages went through regions");
        assert!(held <= 64, "{held} descriptors held for regions");
        // A burst the receiver does not read: 64 in flight, the rest by socket.
        for i in 0..100u32 {
            a.post_message(bytes(1 << 20, i as u8), []).unwrap();
        }
        for i in 0..100u32 {
            let got = b.recv_timeout(LIMIT).unwrap();
            assert_eq!(got.value().unwrap(), bytes(1 << 20, i as u8));
        }
        drop(a);
        drop(b);
        std::thread::sleep(Duration::from_millis(300));
        let now = open_fds();
        assert!(
            now <= base - 2,
            "closed ports release their regions: {base} -> {now}"
        );
    });
}

/// `unsent_bytes` counts a message waiting in a region by the message's size, not the
/// region's: a 1 MiB message reusing the region a 16 MiB one left counts about 1 MiB (it
/// counted the whole 18 MiB region).
#[test]
fn unsent_bytes_count_a_message_in_a_region_by_its_size() {
    isolated(
        "unsent_bytes_count_a_message_in_a_region_by_its_size",
        &[],
        LIMIT,
        || {
            let (a, b) = socket_pair();
            let settled = |port: &msgport::MessagePort| {
                let deadline = std::time::Instant::now() + LIMIT;
                while port.unsent_bytes() > 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                port.unsent_bytes()
            };
            a.post_message(bytes(16 << 20, 1), []).unwrap();
            drop(b.recv_timeout(LIMIT).unwrap());
            assert_eq!(settled(&a), 0);
            // Nobody takes this one: it waits in the region the first one left free.
            a.post_message(bytes(1 << 20, 2), []).unwrap();
            let unsent = a.unsent_bytes();
            assert!(
                ((1 << 20)..(1 << 20) + (64 << 10)).contains(&unsent),
                "{unsent} bytes unsent for a message of {}",
                1 << 20
            );
            assert_eq!(
                b.recv_timeout(LIMIT).unwrap().value().unwrap(),
                bytes(1 << 20, 2)
            );
            assert_eq!(settled(&a), 0);
        },
    );
}

/// How many shared-memory regions this process has mapped.
fn region_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("msgport-region"))
        .count()
}

/// A link that goes quiet after a burst of large messages gives their memory back: once it has
/// leased no region for five seconds the sender drops its free regions (their descriptors
/// close), and the receiver unmaps them at its next look (five seconds apart at most); the link
/// then still carries large messages.
#[test]
fn a_quiet_link_gives_its_regions_back() {
    isolated("a_quiet_link_gives_its_regions_back", &[], LIMIT, || {
        let (a, b) = socket_pair();
        let (base_fds, base_maps) = (open_fds(), region_mappings());
        for i in 0..8u32 {
            a.post_message(bytes(1 << 20, i as u8), []).unwrap();
        }
        for i in 0..8u32 {
            let got = b.recv_timeout(LIMIT).unwrap();
            assert_eq!(got.value().unwrap(), bytes(1 << 20, i as u8));
        }
        assert!(
            open_fds() > base_fds && region_mappings() > base_maps,
            "the burst went through regions"
        );
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while (open_fds() > base_fds || region_mappings() > base_maps)
            && std::time::Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(open_fds(), base_fds, "the sender dropped its regions");
        assert_eq!(region_mappings(), base_maps, "both ends unmapped them");
        a.post_message(bytes(1 << 20, 9), []).unwrap();
        assert_eq!(
            b.recv_timeout(LIMIT).unwrap().value().unwrap(),
            bytes(1 << 20, 9)
        );
        assert!(
            region_mappings() > base_maps,
            "a new burst maps a region again"
        );
    });
}

/// A port whose socket holds unread region frames, moved to another port's message and read
/// there: every frame arrives (the regions travel with the frames that name them).
#[test]
fn a_port_moved_with_region_frames_unread_loses_nothing() {
    let (a, b) = socket_pair();
    for i in 0..12u8 {
        a.post_message(bytes(512 << 10, i), []).unwrap();
    }
    // `b` has read some of them, or none: either way they travel with it.
    std::thread::sleep(Duration::from_millis(50));
    let (c, d) = socket_pair();
    c.post_message(Value::Port(0), [b]).unwrap();
    let mut got = d.recv_timeout(LIMIT).unwrap();
    let b = got.ports.pop().expect("the port");
    for i in 0..12u8 {
        let got = b.recv_timeout(LIMIT).unwrap();
        assert_eq!(got.value().unwrap(), bytes(512 << 10, i), "message {i}");
    }
    a.post_message(bytes(1 << 20, 99), []).unwrap();
    assert_eq!(
        b.recv_timeout(LIMIT).unwrap().value().unwrap(),
        bytes(1 << 20, 99)
    );
}

// ---- hostile region frames ------------------------------------------------------------------

/// A memfd of `size` bytes holding `body` at [`BODY_AT`], state word 1 ("in flight"), sealed
/// with `seals`.
fn region(size: usize, body: &[u8], seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        "test-region",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    let mut content = vec![0u8; BODY_AT];
    content[..4].copy_from_slice(&1u32.to_ne_bytes());
    content.extend_from_slice(body);
    content.resize(size.max(content.len()), 0);
    content.truncate(size);
    let file = std::fs::File::from(fd);
    std::os::unix::fs::FileExt::write_all_at(&file, &content, 0).unwrap();
    file.set_len(size as u64).unwrap();
    let fd = OwnedFd::from(file);
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

/// Reads a region's state word.
fn state_of(file: &std::fs::File) -> u32 {
    let mut state = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut state, 0).unwrap();
    u32::from_ne_bytes(state)
}

/// A message's large data stays in its region until the message is taken: the region is in
/// flight (state 1) while the message waits, and free (0) once it was taken or dropped; a
/// region its sender retired (2) meanwhile stays retired.
#[test]
fn a_region_stays_in_flight_until_its_message_is_taken() {
    let (port, peer) = hostile_pair();
    let sealed = SealFlags::SHRINK | SealFlags::GROW;
    let data = [9u8; 100_000];
    let body = cbor::body(&cbor::bytes(&data), &[]);
    for retire in [false, true] {
        let file = std::fs::File::from(region(1 << 20, &body, sealed));
        let fd = OwnedFd::from(file.try_clone().unwrap());
        region_frame(&peer, body.len() as u64, 1, std::slice::from_ref(&fd));
        let mut got = port.recv_timeout(LIMIT).unwrap();
        assert_eq!(state_of(&file), 1, "in flight while the message waits");
        // Read again and again (the data stays where it is), then taken.
        assert_eq!(got.value().unwrap(), Value::from(&data[..]));
        assert_eq!(state_of(&file), 1);
        if retire {
            std::os::unix::fs::FileExt::write_all_at(&file, &2u32.to_ne_bytes(), 0).unwrap();
        }
        let taken: Value = got.take_data().unwrap();
        assert_eq!(taken, Value::from(&data[..]));
        drop(got);
        assert_eq!(state_of(&file), if retire { 2 } else { 0 });
    }
    // Dropped untaken: freed as well.
    let file = std::fs::File::from(region(1 << 20, &body, sealed));
    let fd = OwnedFd::from(file.try_clone().unwrap());
    region_frame(&peer, body.len() as u64, 1, std::slice::from_ref(&fd));
    let got = port.recv_timeout(LIMIT).unwrap();
    assert_eq!(state_of(&file), 1);
    drop(got);
    assert_eq!(state_of(&file), 0);
}

/// Writes a region frame announcing `size` body bytes and `nfds` descriptors, with `fds`.
fn region_frame(peer: &RawPeer, size: u64, nfds: u32, fds: &[OwnedFd]) {
    let mut bytes = 8u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&(nfds | SHARED).to_le_bytes());
    bytes.extend_from_slice(&size.to_le_bytes());
    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let sent = peer.send(&bytes, &fds).unwrap();
    peer.write_all(&bytes[sent..]).unwrap();
}

/// A way to break the protocol, written by the peer.
type Case<'a> = Box<dyn Fn(&RawPeer) + 'a>;

fn closes(port: &msgport::MessagePort) -> bool {
    match port.recv_timeout(Duration::from_secs(10)) {
        Err(RecvTimeoutError::Closed) => true,
        Err(RecvTimeoutError::Timeout) => false,
        Ok(_) => matches!(
            port.recv_timeout(Duration::from_secs(10)),
            Err(RecvTimeoutError::Closed)
        ),
    }
}

/// An honest hand-made region frame is read, and the region is marked free again; every
/// dishonest one closes that port, with no crash and no descriptor left behind.
#[test]
fn hostile_region_frames_close_only_their_port() {
    isolated(
        "hostile_region_frames_close_only_their_port",
        &[],
        LIMIT,
        || {
            let sealed = SealFlags::SHRINK | SealFlags::GROW;
            let body = cbor::body(&cbor::bytes(&[7u8; 1000]), &[]);

            // Honest: delivered, and freed for the sender through the state word.
            let (port, peer) = hostile_pair();
            let fd = region(1 << 16, &body, sealed);
            region_frame(&peer, body.len() as u64, 1, std::slice::from_ref(&fd));
            let got = port.recv_timeout(LIMIT).unwrap();
            assert_eq!(got.value().unwrap(), Value::from(&[7u8; 1000][..]));
            let file = std::fs::File::from(fd);
            let mut state = [0u8; 4];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut state, 0).unwrap();
            assert_eq!(u32::from_ne_bytes(state), 0, "the region is free again");
            drop(file);
            let bystander = port;
            // Counted once the reactor runs (its own descriptors stay).
            let base = open_fds();

            let cases: Vec<(&str, Case)> = vec![
                (
                    "unsealed",
                    Box::new(|p: &RawPeer| {
                        let fd = region(1 << 16, &body, SealFlags::empty());
                        region_frame(p, body.len() as u64, 1, &[fd]);
                    }),
                ),
                (
                    "sealed against growing only",
                    Box::new(|p: &RawPeer| {
                        let fd = region(1 << 16, &body, SealFlags::GROW);
                        region_frame(p, body.len() as u64, 1, &[fd]);
                    }),
                ),
                (
                    "smaller than its length",
                    Box::new(|p: &RawPeer| {
                        let fd = region(BODY_AT + 100, &body[..36], sealed);
                        region_frame(p, 4096, 1, &[fd]);
                    }),
                ),
                (
                    "sealed against writing (cannot be mapped to free it)",
                    Box::new(|p: &RawPeer| {
                        let fd = region(1 << 16, &body, sealed | SealFlags::WRITE);
                        region_frame(p, body.len() as u64, 1, &[fd]);
                    }),
                ),
                (
                    "not a memfd",
                    Box::new(|p: &RawPeer| {
                        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
                        region_frame(p, body.len() as u64, 1, &[null]);
                    }),
                ),
                (
                    "a socket",
                    Box::new(|p: &RawPeer| {
                        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
                        region_frame(p, body.len() as u64, 1, &[OwnedFd::from(x)]);
                    }),
                ),
                (
                    "no region",
                    Box::new(|p: &RawPeer| region_frame(p, body.len() as u64, 0, &[])),
                ),
                (
                    "a length past the frame limit",
                    Box::new(|p: &RawPeer| {
                        let fd = region(1 << 16, &body, sealed);
                        region_frame(p, u64::MAX, 1, &[fd]);
                    }),
                ),
                (
                    "garbage in the region",
                    Box::new(|p: &RawPeer| {
                        let fd = region(1 << 16, &[0xff; 500], sealed);
                        region_frame(p, 500, 1, &[fd]);
                    }),
                ),
                (
                    "a region frame of 9 bytes",
                    Box::new(|p: &RawPeer| {
                        let fd = region(1 << 16, &body, sealed);
                        let mut bytes = 9u32.to_le_bytes().to_vec();
                        bytes.extend_from_slice(&(1 | SHARED).to_le_bytes());
                        bytes.extend_from_slice(&[0; 9]);
                        let sent = p.send(&bytes, &[fd.as_fd()]).unwrap();
                        p.write_all(&bytes[sent..]).unwrap();
                    }),
                ),
                (
                    "a port record's descriptor missing",
                    Box::new(|p: &RawPeer| {
                        let body = cbor::body(&cbor::uint(1), &[cbor::socket_record()]);
                        let fd = region(1 << 16, &body, sealed);
                        region_frame(p, body.len() as u64, 1, &[fd]);
                    }),
                ),
            ];
            for (what, send) in &cases {
                let (port, peer) = hostile_pair();
                send(&peer);
                assert!(closes(&port), "{what}: the port closes");
                assert!(peer.sees_close_within(Duration::from_secs(10)), "{what}");
            }
            // The first port still works: only the ports that carried the frames closed.
            let (here, there) = MessageChannel::new().into_ports();
            drop(here);
            drop(there);
            assert!(!bystander.is_closed());
            drop(bystander);
            std::thread::sleep(Duration::from_millis(200));
            let now = open_fds();
            assert!(now < base, "descriptors held: {base} before, {now} after");
        },
    );
}

/// A typed message with a large byte string (written in place into a region) and more ports
/// than a region frame's 16 bytes can carry descriptors for: it goes through the socket, whole.
#[test]
fn a_large_typed_message_with_four_thousand_ports_arrives() {
    let (a, b) = socket_pair();
    let (kept, sent): (Vec<_>, Vec<_>) = (0..4_050)
        .map(|_| MessageChannel::new().into_ports())
        .unzip();
    a.post_message_ref(&(Bytes(raw(1 << 20, 9)), Value::Port(4_049)), sent)
        .unwrap();
    let mut got = b.recv_timeout(LIMIT).unwrap();
    assert_eq!(got.ports.len(), 4_050);
    let Value::Array(items) = got.value().unwrap() else {
        panic!("an array")
    };
    assert_eq!(items[0], bytes(1 << 20, 9));
    kept[4_049].post_message("last", []).unwrap();
    let port = got.ports.pop().unwrap();
    let said = port.recv_timeout(LIMIT).unwrap();
    assert_eq!(said.value().unwrap().as_str(), Some("last"));
}
