//! Rings (docs/wire-format.md, "Rings"): a link that has posted enough answers writes its
//! small frames into shared memory while its reader pulls. What an exchange looks like to both
//! ends (every message, in order, with ports and large messages in between, the ring used), a
//! peer killed while a pull sleeps on its ring, and what a hostile ring writer can do (each
//! case closes only the port it wrote to).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use msgport::{MessageChannel, MessagePort, RecvTimeoutError, Value};
use msgport_testkit::child::{self, isolated};
use msgport_testkit::hostile::{hostile_pair, socket_pair, RawPeer};
use msgport_testkit::watchdog;
use rustix::fs::{MemfdFlags, SealFlags};

const LIMIT: Duration = Duration::from_secs(60);
/// The header flag of a control frame, and the kinds.
const CONTROL: u32 = 1 << 30;
const OFFER: u8 = 1;
const TO_RING: u8 = 2;
const TO_SOCKET: u8 = 3;
const POKE: u8 = 4;
/// A ring's layout: its words, then its frames.
const WRITE: usize = 0;
const DATA: usize = 320;
const RING: usize = 32 << 10;
const FILE: usize = DATA + RING;

/// Not a test: the entry point of the child roles (returns at once in the parent).
#[test]
fn child_entry() {
    let Some(role) = child::role() else {
        return;
    };
    let boot = child::bootstrap();
    match role.as_str() {
        // Answers every message with its data until told to stop, then sleeps for good.
        "echo-until-hang" => {
            while let Some(e) = boot.blocking_recv() {
                let v = e.value().unwrap();
                if v == Value::from("hang") {
                    std::thread::sleep(Duration::from_secs(3600));
                }
                boot.post_message(v, []).unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
    child::finish(Some(boot));
}

/// Echoes every message on `port` (its data and its ports) until the port closes.
fn echo(port: MessagePort) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Some(mut e) = port.blocking_recv() {
            let ports = std::mem::take(&mut e.ports);
            if port.post_message(e.value().unwrap(), ports).is_err() {
                return;
            }
        }
    })
}

/// A request and its answer, 300 times over: after 16 answers each side offers the other a
/// ring, and from then on both directions use them (counted in this process, alone in it).
#[test]
fn an_exchange_of_requests_and_answers_moves_to_rings() {
    isolated(
        "an_exchange_of_requests_and_answers_moves_to_rings",
        &[("MSGPORT_RING_AFTER", "16")],
        LIMIT,
        || {
            let (a, b) = socket_pair();
            let echoing = echo(b);
            for i in 0..300u32 {
                a.post_message(i, []).unwrap();
                assert_eq!(a.blocking_recv().unwrap().data::<u32>().unwrap(), i);
            }
            assert_eq!(
                msgport::__testing::rings_in_use(),
                (2, 2),
                "each end writes a ring, and reads the other's"
            );
            drop(a);
            echoing.join().unwrap();
            assert_eq!(
                msgport::__testing::rings_in_use(),
                (0, 0),
                "released with the link"
            );
        },
    );
}

/// Messages that cannot go into a ring (with a port, or large) come in their place among
/// those that do: the reader follows the writer from ring to socket and back.
#[test]
fn ports_and_large_messages_keep_their_place_among_ring_frames() {
    watchdog(LIMIT, || {
        let (a, b) = socket_pair();
        let echoing = echo(b);
        for i in 0..400u32 {
            let big = i % 11 == 5;
            let carries_port = i % 7 == 3;
            let data = if big {
                Value::Binary(msgport::Binary {
                    kind: msgport::BinaryKind::ArrayBuffer,
                    bytes: vec![i as u8; 300 << 10],
                })
            } else {
                Value::from(f64::from(i))
            };
            let mut kept = None;
            let ports = if carries_port {
                let (here, there) = MessageChannel::new().into_ports();
                kept = Some(here);
                vec![there]
            } else {
                Vec::new()
            };
            a.post_message(data.clone(), ports).unwrap();
            let mut answer = a.recv_timeout(LIMIT).unwrap();
            assert_eq!(answer.value().unwrap(), data, "answer {i}");
            if let Some(here) = kept {
                // The port went there and back: its far end still talks to it.
                let there = answer.ports.pop().expect("the port came back");
                there.post_message(i, []).unwrap();
                assert_eq!(here.recv_timeout(LIMIT).unwrap().data::<u32>().unwrap(), i);
            }
        }
        drop(a);
        echoing.join().unwrap();
    });
}

/// A peer killed while a pull sleeps on its ring: the pull ends at once (the reactor watches a
/// ringed link's socket for the hang-up and wakes the sleeper), not after a sleeper's slice.
#[test]
fn a_pull_asleep_on_a_ring_sees_its_peer_killed_at_once() {
    watchdog(LIMIT, || {
        let (mut child, port) = child::spawn("echo-until-hang");
        for i in 0..64u32 {
            port.post_message(i, []).unwrap();
            assert_eq!(port.blocking_recv().unwrap().data::<u32>().unwrap(), i);
        }
        port.post_message("hang", []).unwrap();
        let pid = child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let killed_at = Instant::now();
            let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
            killed_at
        });
        assert!(port.blocking_recv().is_none(), "the port closes");
        let seen = Instant::now();
        let killed_at = killer.join().unwrap();
        child.wait().unwrap();
        let after = seen.saturating_duration_since(killed_at);
        assert!(
            after < Duration::from_millis(500),
            "the close was seen {after:?} after the kill"
        );
    });
}

/// A ring as a hostile peer makes it: a sealed memfd of the ring's size, mapped here.
struct HostileRing {
    fd: OwnedFd,
    map: std::fs::File,
}

impl HostileRing {
    fn new(size: usize, seal: bool) -> HostileRing {
        let fd = rustix::fs::memfd_create(
            "hostile-ring",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, size as u64).unwrap();
        if seal {
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        }
        let map = std::fs::File::from(rustix::io::dup(&fd).unwrap());
        HostileRing { fd, map }
    }

    /// Writes `bytes` at `at` of the ring's file.
    fn write(&self, at: usize, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        self.map.write_all_at(bytes, at as u64).unwrap();
    }
}

fn control(peer: &RawPeer, kind: u8, fds: &[std::os::fd::BorrowedFd<'_>]) {
    peer.frame(&[kind], CONTROL | fds.len() as u32, fds)
        .unwrap();
}

/// A frame of a message without ports whose data is one small integer.
fn small_frame(n: u8) -> Vec<u8> {
    msgport_testkit::hostile::frame(&[0x82, n & 0x17, 0x80], 0)
}

/// Offers `ring` and switches to it, then has `write` do its worst to it; the port must close,
/// and a port of the same process over another socket must not notice.
fn hostile_ring_case(
    name: &str,
    size: usize,
    seal: bool,
    write: impl FnOnce(&HostileRing, &RawPeer),
) {
    let (port, peer) = hostile_pair();
    let (other, other_peer) = socket_pair();
    let ring = HostileRing::new(size, seal);
    control(&peer, OFFER, &[ring.fd.as_fd()]);
    control(&peer, TO_RING, &[]);
    write(&ring, &peer);
    // The port is read by the reactor, which looks at a ring when poked.
    control(&peer, POKE, &[]);
    let got = port.recv_timeout(Duration::from_secs(10));
    assert!(
        matches!(got, Err(RecvTimeoutError::Closed)),
        "{name}: the port closes ({:?})",
        got.map(|e| e.value())
    );
    assert!(peer.sees_close_within(Duration::from_secs(10)), "{name}");
    other_peer.post_message(1u8, []).unwrap();
    assert_eq!(
        other.recv_timeout(LIMIT).unwrap().data::<u8>().unwrap(),
        1,
        "{name}"
    );
}

/// What a ring writer can get wrong, each closing only the port it wrote to: claiming more
/// than the ring holds, a partial frame, a frame announcing descriptors, a control frame other
/// than the marker, a ring of the wrong size or unsealed, a TO_RING with no ring, a marker on
/// the socket.
#[test]
fn a_hostile_ring_writer_closes_only_its_own_port() {
    isolated(
        "a_hostile_ring_writer_closes_only_its_own_port",
        &[],
        LIMIT,
        || {
            hostile_ring_case("overrun", FILE, true, |ring, _| {
                ring.write(WRITE, &((RING as u32) + 1).to_ne_bytes());
            });
            hostile_ring_case("partial frame", FILE, true, |ring, _| {
                let frame = small_frame(1);
                ring.write(DATA, &frame[..5]);
                ring.write(WRITE, &5u32.to_ne_bytes());
            });
            hostile_ring_case("descriptors in a ring", FILE, true, |ring, _| {
                let frame = msgport_testkit::hostile::frame(&[0x82, 1, 0x80], 1);
                ring.write(DATA, &frame);
                ring.write(WRITE, &(frame.len() as u32).to_ne_bytes());
            });
            hostile_ring_case("a TO_RING in the ring", FILE, true, |ring, _| {
                let frame = msgport_testkit::hostile::frame(&[TO_RING], CONTROL);
                ring.write(DATA, &frame);
                ring.write(WRITE, &(frame.len() as u32).to_ne_bytes());
            });
            hostile_ring_case("too small", FILE - 4096, true, |_, _| {});
            hostile_ring_case("unsealed", FILE, false, |_, _| {});
            // Two messages, then garbage after a good frame: the good one arrives first.
            let (port, peer) = hostile_pair();
            let ring = HostileRing::new(FILE, true);
            control(&peer, OFFER, &[ring.fd.as_fd()]);
            control(&peer, TO_RING, &[]);
            let mut bytes = small_frame(7);
            bytes.extend_from_slice(&[0xff; 12]);
            ring.write(DATA, &bytes);
            ring.write(WRITE, &(bytes.len() as u32).to_ne_bytes());
            // A pull takes the ring only once it is read: the reactor reads this port, its writer
            // pokes it (any socket byte does).
            peer.frame(&[0x82, 2, 0x80], 0, &[]).unwrap();
            let first = port.recv_timeout(Duration::from_secs(10));
            assert!(
                first.is_ok_and(|e| e.data::<u8>().unwrap() == 7),
                "the good frame first"
            );
            assert!(matches!(
                port.recv_timeout(Duration::from_secs(10)),
                Err(RecvTimeoutError::Closed)
            ));
            // No ring at all, or the marker on the socket.
            for kind in [TO_RING, TO_SOCKET] {
                let (port, peer) = hostile_pair();
                control(&peer, kind, &[]);
                assert!(matches!(
                    port.recv_timeout(Duration::from_secs(10)),
                    Err(RecvTimeoutError::Closed)
                ));
            }
        },
    );
}
