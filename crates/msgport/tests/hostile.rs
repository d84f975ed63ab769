//! A hostile or broken peer, or a caller misusing the API, can at worst close its own port:
//! one test per hole the hardening audit found (issue "Hardening"), each failing on the code
//! before the fix. Tests that measure the process (memory, descriptors, CPU) or break part of
//! it run alone in a fresh process (`isolated`).

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgport::{MessageChannel, PostError, RecvTimeoutError, Value};
use msgport_testkit::child::{self, isolated};
use msgport_testkit::fds::open_fds;
use msgport_testkit::hostile::{self, borrow, cbor, dev_null, frame, hostile_pair};
use msgport_testkit::watchdog;

const LIMIT: Duration = Duration::from_secs(60);

fn bin(bytes: Vec<u8>) -> msgport::Binary {
    msgport::Binary {
        kind: msgport::BinaryKind::ArrayBuffer,
        bytes,
    }
}

/// Row 1: a message whose descriptors outnumber what its first part can carry (a 64 KiB byte
/// string is a part of its own) used to panic the writer; now every port arrives and works.
#[test]
fn thousands_of_ports_beside_a_large_byte_string_all_arrive() {
    isolated(
        "thousands_of_ports_beside_a_large_byte_string_all_arrive",
        &[],
        LIMIT,
        || {
            let (a, b) = hostile::socket_pair();
            let mut kept = Vec::new();
            let mut sent = Vec::new();
            for _ in 0..3_800 {
                let (here, there) = MessageChannel::new().into_ports();
                kept.push(here);
                sent.push(there);
            }
            // The byte string is a part of its own: the part before it (header and a few CBOR
            // heads) has fewer bytes than the 16 batches of descriptors need.
            let big = Value::Binary(bin(vec![7u8; 64 << 10]));
            a.post_message(big, sent).unwrap();
            let mut event = b
                .recv_timeout(Duration::from_secs(30))
                .expect("the message");
            assert_eq!(event.ports.len(), 3_800);
            // The first and the last port are entangled with their peers here.
            for i in [0, 3_799] {
                kept[i].post_message(i as u64, []).unwrap();
                let got = event.ports[i]
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap();
                assert_eq!(got.data::<u64>().unwrap(), i as u64);
            }
            event.ports.clear();
            // One more than the limit is a typed error, not a panic.
            let too_many: Vec<_> = (0..4_097)
                .map(|_| MessageChannel::new().into_ports().1)
                .collect();
            assert!(matches!(
                a.post_message((), too_many),
                Err(PostError::TooManyPorts {
                    count: 4_097,
                    max: 4_096
                })
            ));
        },
    );
}

/// Row 1, checked port by port: every port of a message with more descriptors than one
/// `sendmsg` carries reaches its peer.
#[test]
fn six_hundred_ports_in_one_message_each_reach_their_peer() {
    watchdog(LIMIT, || {
        let (a, b) = hostile::socket_pair();
        let (kept, sent): (Vec<_>, Vec<_>) =
            (0..600).map(|_| MessageChannel::new().into_ports()).unzip();
        let big = Value::Binary(bin(vec![1u8; 70_000]));
        a.post_message(big, sent).unwrap();
        let event = b
            .recv_timeout(Duration::from_secs(30))
            .expect("the message");
        assert_eq!(event.ports.len(), 600);
        for (i, (here, there)) in kept.iter().zip(&event.ports).enumerate() {
            here.post_message(i as u64, []).unwrap();
            let got = there.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got.data::<u64>().unwrap(), i as u64);
        }
    });
}

/// Row 2: a queued-message count as large as the frame is long used to reserve ~100 bytes per
/// claimed message (27 GB for a 256 MiB frame: an abort); now the frame is refused and that
/// port closes.
#[test]
fn a_huge_record_count_closes_the_port_without_allocating() {
    isolated(
        "a_huge_record_count_closes_the_port_without_allocating",
        &[],
        LIMIT,
        || {
            let (port, peer) = hostile_pair();
            let len: usize = (256 << 20) - 64;
            // One record whose queued-message count is as large as the frame.
            let mut body = vec![0x82, 0xf6, 0x81];
            body.extend([0x85, 0x00]);
            body.extend(cbor::head(4, (len - 16) as u64));
            body.resize(len, 0);
            let before = hostile::rss_kib();
            let writer = std::thread::spawn(move || {
                let _ = peer.frame(&body, 0, &[]);
                peer
            });
            assert!(port.blocking_recv().is_none(), "the port closes");
            let _peer = writer.join().unwrap();
            // The frame itself was read (256 MiB), nothing like 100 bytes per claimed record.
            let grown = hostile::rss_kib().saturating_sub(before);
            assert!(grown < 1 << 20, "grew by {grown} KiB");
        },
    );
}

/// Row 2, the same inside a record's queued messages and unsent segments: refused, port closed.
#[test]
fn lying_counts_inside_records_close_the_port() {
    watchdog(LIMIT, || {
        let bad_records = [
            // queued: claims 2^32 bodies
            [vec![0x85, 0x00], cbor::head(4, 1 << 32)].concat(),
            // unsent: claims 2^40 segments
            [
                vec![0x85, 0x00, 0x80],
                cbor::bytes(&[]),
                cbor::uint(0),
                cbor::head(4, 1 << 40),
            ]
            .concat(),
            // prefix descriptors with no prefix to carry them
            cbor::record(0, &[], &[], 5, &[]),
            // a prefix that is a whole frame
            cbor::record(0, &[], &frame(&[0xf6], 0), 0, &[]),
        ];
        for record in bad_records {
            let (port, peer) = hostile_pair();
            let fds = dev_null(5);
            peer.frame(&cbor::body(cbor::NULL, &[record]), 5, &borrow(&fds))
                .unwrap();
            assert!(port.blocking_recv().is_none(), "the port closes");
        }
        // More records than one message may carry.
        let (port, peer) = hostile_pair();
        let records: Vec<Vec<u8>> = (0..4_097)
            .map(|_| cbor::record(0, &[], &[], 0, &[]))
            .collect();
        peer.frame(&cbor::body(cbor::NULL, &records), 0, &[])
            .unwrap();
        assert!(port.blocking_recv().is_none(), "the port closes");
    });
}

/// Data that is well-formed CBOR but not a valid value (invalid UTF-8, an unknown tag, a
/// bigint that is not a byte string) is an error for that message only, the web's
/// `messageerror`: the port stays open and the next message arrives. Structurally broken data
/// (a truncated item, a stray break) still closes the port.
#[test]
fn invalid_data_is_an_error_for_that_message_only() {
    watchdog(LIMIT, || {
        let (port, peer) = hostile_pair();
        let invalid: [&[u8]; 3] = [
            &[0x62, 0xff, 0xfe],
            &[0xd9, 0x12, 0x34, 0xf6],
            &[0xc2, 0x01],
        ];
        for data in invalid {
            peer.frame(&cbor::body(data, &[]), 0, &[]).unwrap();
        }
        peer.frame(&cbor::body(&cbor::uint(7), &[]), 0, &[])
            .unwrap();
        for _ in 0..3 {
            let mut event = port.recv_timeout(LIMIT).expect("the message arrives");
            assert!(matches!(
                event.value(),
                Err(msgport::DecodeError::Malformed(_))
            ));
            assert!(event.take_data::<String>().is_err());
        }
        let good = port.recv_timeout(LIMIT).unwrap();
        assert_eq!(good.data::<u32>().unwrap(), 7);
        // A broken item closes the port, as any malformed frame does.
        peer.frame(&cbor::body(&[0x82, 0x01, 0xff], &[]), 0, &[])
            .unwrap();
        assert!(port.blocking_recv().is_none(), "the port closes");
    });
}

/// A bigint's length is the sender's to pick, and converting it to decimal takes time quadratic
/// in that length: a message with an 8 MiB bigint where the receiver expects a number or a
/// string, decoded, printed or read as a `Value`, used to hang the receiving thread for days
/// (in the error message naming the bigint, in `Debug`, in the `Value` → serde bridge). Now every
/// such conversion is linear (hexadecimal past 2,467 digits): each is an error or a value, at
/// once.
#[test]
fn a_bigint_of_megabytes_is_decoded_printed_and_refused_in_linear_time() {
    #[derive(serde::Deserialize, Debug)]
    struct Count {
        #[allow(dead_code)]
        n: u64,
    }
    #[derive(serde::Deserialize, Debug)]
    struct Named {
        #[allow(dead_code)]
        n: String,
    }
    #[derive(serde::Deserialize, Debug)]
    struct Any {
        n: Value,
    }
    watchdog(LIMIT, || {
        let (port, peer) = hostile_pair();
        let magnitude = vec![0x9e; 8 << 20];
        let mut data = cbor::head(5, 1);
        data.extend_from_slice(&cbor::head(3, 1));
        data.push(b'n');
        data.push(0xc3); // tag 3: a negative bignum
        data.extend_from_slice(&cbor::bytes(&magnitude));
        let body = cbor::body(&data, &[]);
        // Read while the frame is written; one at a time, as four would reach the receiver's
        // high-water mark (32 MiB).
        port.start();
        let next = || {
            peer.frame(&body, 0, &[]).unwrap();
            port.recv_timeout(LIMIT).expect("the message arrives")
        };
        let mut event = next();
        let refused = event.take_data::<Count>().unwrap_err().to_string();
        assert!(refused.contains("8388608 bytes"), "{refused:.200}");
        assert!(event.take_data::<Named>().is_err());
        let any: Any = event.take_data().unwrap();
        let Value::BigInt(big) = &any.n else {
            panic!("a bigint, not {:.100}", any.n)
        };
        assert!(big.is_negative() && big.magnitude().len() == magnitude.len());
        let printed = format!("{:?}", next());
        assert!(printed.contains("BigInt(-0x9e9e"), "{printed:.200}");
        let shown = next().value().unwrap().to_string();
        assert!(shown.starts_with(r#"{ "n": -0x9e9e"#), "{shown:.200}");
        peer.frame(&cbor::body(&cbor::uint(7), &[]), 0, &[])
            .unwrap();
        let good = port.recv_timeout(LIMIT).unwrap();
        assert_eq!(good.data::<u32>().unwrap(), 7);
    });
}

/// Row 3: a header announcing a 256 MiB frame, then nothing, used to grow the receive buffer to
/// 64 MiB and zero it (per connection); now the buffer grows only with what arrives.
#[test]
fn an_announced_frame_costs_only_what_arrived() {
    isolated(
        "an_announced_frame_costs_only_what_arrived",
        &[],
        LIMIT,
        || {
            let pairs: Vec<_> = (0..16).map(|_| hostile_pair()).collect();
            for (port, _) in &pairs {
                port.start();
            }
            std::thread::sleep(Duration::from_millis(100));
            let before = hostile::rss_kib();
            for (_, peer) in &pairs {
                let mut head = ((256u32 << 20) - 8).to_le_bytes().to_vec();
                head.extend_from_slice(&0u32.to_le_bytes());
                head.extend_from_slice(&[0x82, 0xf6]);
                peer.write_all(&head).unwrap();
            }
            std::thread::sleep(Duration::from_millis(500));
            let grown = hostile::rss_kib().saturating_sub(before);
            assert!(
                grown < 16 << 10,
                "16 announced frames grew memory by {grown} KiB"
            );
            for (port, _) in &pairs {
                assert!(matches!(port.try_recv(), Err(msgport::TryRecvError::Empty)));
            }
        },
    );
}

/// Row 4: descriptors sent with the bytes of a frame that announces none used to pile up
/// unclaimed (thousands, until the process ran out); now the port closes at the first batch.
#[test]
fn descriptors_a_frame_does_not_announce_close_the_port() {
    isolated(
        "descriptors_a_frame_does_not_announce_close_the_port",
        &[],
        LIMIT,
        || {
            let (port, peer) = hostile_pair();
            port.start();
            let fds = dev_null(253);
            let base = open_fds();
            let mut head = 1000u32.to_le_bytes().to_vec();
            head.extend_from_slice(&0u32.to_le_bytes());
            peer.write_all(&head).unwrap();
            for _ in 0..20 {
                if peer.send(&[0], &borrow(&fds)).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(
                port.recv_timeout(Duration::from_secs(10)).unwrap_err(),
                RecvTimeoutError::Closed,
                "the port closes"
            );
            let now = open_fds();
            assert!(now <= base, "descriptors held: {base} before, {now} after");
        },
    );
}

/// Row 4, the honest side: a frame's descriptors announced in its header and sent a batch per
/// byte (as msgport sends more than 253) are accepted.
#[test]
fn descriptors_sent_a_batch_per_byte_of_their_frame_are_accepted() {
    watchdog(LIMIT, || {
        let (port, peer) = hostile_pair();
        let mut sockets = Vec::new();
        let mut records = Vec::new();
        for _ in 0..300 {
            let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
            sockets.push(std::os::fd::OwnedFd::from(x));
            std::mem::forget(y);
            records.push(cbor::socket_record());
        }
        let bytes = frame(&cbor::body(cbor::NULL, &records), 300);
        let fds = borrow(&sockets);
        assert_eq!(peer.send(&bytes[..1], &fds[..253]).unwrap(), 1);
        assert_eq!(peer.send(&bytes[1..2], &fds[253..]).unwrap(), 1);
        peer.write_all(&bytes[2..]).unwrap();
        let event = port.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(event.ports.len(), 300);
    });
}

/// Row 5: a flood into a port nobody pulls from used to be read into memory without bound; now
/// reading stops at the high-water mark (the sender is throttled by the kernel), resumes as
/// the application drains, and nothing is lost or reordered.
#[test]
fn a_flooded_port_stops_reading_at_its_high_water_mark() {
    isolated(
        "a_flooded_port_stops_reading_at_its_high_water_mark",
        &[],
        LIMIT,
        || {
            msgport::set_limits(msgport::Limits {
                receive_high_water: 1 << 20,
                ..msgport::Limits::default()
            });
            let (port, peer) = hostile_pair();
            port.start();
            let written = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (w, s) = (written.clone(), stop.clone());
            const PAYLOAD: usize = 16 << 10;
            let writer = std::thread::spawn(move || {
                let mut seq = 0u64;
                while !s.load(Ordering::Relaxed) {
                    let mut data = seq.to_le_bytes().to_vec();
                    data.resize(PAYLOAD, 0);
                    let body = cbor::body(&cbor::bytes(&data), &[]);
                    if peer.frame(&body, 0, &[]).is_err() {
                        break;
                    }
                    w.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                }
                peer
            });
            std::thread::sleep(Duration::from_secs(1));
            let held = written.load(Ordering::Relaxed) * PAYLOAD as u64;
            // The mark, the kernel's buffers, one read budget: a few MiB, not the flood.
            assert!(
                held < 8 << 20,
                "{held} bytes taken from a port nobody reads"
            );
            stop.store(true, Ordering::Relaxed);
            let mut next = 0u64;
            let peer = loop {
                match port.recv_timeout(Duration::from_millis(200)) {
                    Ok(event) => {
                        let data = event.value().unwrap();
                        let Value::Binary(b) = data else {
                            panic!("binary")
                        };
                        let seq = u64::from_le_bytes(b.bytes[..8].try_into().unwrap());
                        assert_eq!(seq, next, "in order, none lost");
                        next += 1;
                    }
                    Err(_) if writer.is_finished() => break writer.join().unwrap(),
                    Err(_) => {}
                }
            };
            drop(peer);
            while let Ok(event) = port.recv_timeout(Duration::from_secs(5)) {
                let Value::Binary(b) = event.value().unwrap() else {
                    panic!("binary")
                };
                assert_eq!(u64::from_le_bytes(b.bytes[..8].try_into().unwrap()), next);
                next += 1;
            }
            assert_eq!(
                next,
                written.load(Ordering::Relaxed),
                "every message arrived"
            );
        },
    );
}

/// Row 5, fairness: a link whose sender outpaces the reactor used to be read until it ran dry,
/// starving every other port of the process; now each link gets a bounded turn.
#[test]
fn a_flood_on_one_port_does_not_starve_another() {
    watchdog(LIMIT, || {
        let (flooded, flooder) = hostile_pair();
        let (quiet, quiet_peer) = hostile_pair();
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        flooded.on_message(move |_| {
            s.fetch_add(1, Ordering::Relaxed);
        });
        flooded.start();
        // Thousands of tiny frames per write: far more work to decode than to write.
        let tiny = frame(&cbor::body(cbor::NULL, &[]), 0);
        let burst: Vec<u8> = tiny
            .iter()
            .copied()
            .cycle()
            .take(tiny.len() * 4096)
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let writer = std::thread::spawn(move || {
            let started = Instant::now();
            while !st.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                if flooder.write_all(&burst).is_err() {
                    break;
                }
            }
            started.elapsed()
        });
        while seen.load(Ordering::Relaxed) < 10_000 {
            std::thread::sleep(Duration::from_millis(1));
        }
        quiet.start();
        quiet_peer
            .frame(&cbor::body(&cbor::bytes(b"ping"), &[]), 0, &[])
            .unwrap();
        let got = quiet.recv_timeout(Duration::from_secs(30));
        let flooding = !writer.is_finished();
        stop.store(true, Ordering::Relaxed);
        let flood_ran = writer.join().unwrap();
        assert!(got.is_ok(), "the quiet port got its message");
        assert!(
            flooding,
            "the quiet port was served only after the flood ended ({flood_ran:?})"
        );
    });
}

/// Row 6: a descriptor that is not a Unix stream socket, sent as a port, used to make a port
/// that never observed close; now it arrives closed.
#[test]
fn a_port_that_is_not_a_socket_arrives_closed() {
    watchdog(LIMIT, || {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let null = dev_null(1);
        for fd in [null[0].as_fd(), udp.as_fd()] {
            let (port, peer) = hostile_pair();
            peer.frame(&cbor::body(cbor::NULL, &[cbor::socket_record()]), 1, &[fd])
                .unwrap();
            let mut event = port.recv_timeout(Duration::from_secs(10)).unwrap();
            let arrived = event.ports.pop().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            arrived.on_close(move || tx.send(()).unwrap());
            arrived.start();
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the close is observed");
            assert!(arrived.blocking_recv().is_none());
        }
    });
}

/// The reactor survives a panic while serving a port: that port closes, the others go on.
#[test]
fn a_panic_serving_one_port_closes_that_port_only() {
    isolated(
        "a_panic_serving_one_port_closes_that_port_only",
        &[],
        LIMIT,
        || {
            let (victim, victim_peer) = hostile_pair();
            let (other, other_peer) = hostile_pair();
            victim.start();
            other.start();
            msgport::__testing::panic_reactor_while_serving();
            victim_peer
                .frame(&cbor::body(cbor::NULL, &[]), 0, &[])
                .unwrap();
            assert!(
                victim.blocking_recv().is_none(),
                "the port it served closes"
            );
            other_peer
                .frame(&cbor::body(&cbor::bytes(b"still"), &[]), 0, &[])
                .unwrap();
            assert!(other.recv_timeout(Duration::from_secs(10)).is_ok());
        },
    );
}

/// Should the reactor thread itself die, its ports close (no hang) and new cross-process work
/// gets an error.
#[test]
fn if_the_reactor_thread_dies_its_ports_close() {
    isolated(
        "if_the_reactor_thread_dies_its_ports_close",
        &[],
        LIMIT,
        || {
            let (a, peer_a) = hostile_pair();
            let (b, _peer_b) = hostile_pair();
            a.start();
            b.start();
            msgport::__testing::panic_reactor_thread();
            peer_a.frame(&cbor::body(cbor::NULL, &[]), 0, &[]).unwrap();
            assert!(
                b.blocking_recv().is_none(),
                "a port the reactor watched closes"
            );
            // The frame that woke the reactor is delivered, then the close.
            let closed = (0..2).any(|_| a.blocking_recv().is_none());
            assert!(closed, "every watched port closes");
            // A port leaving the process needs a new link: refused with an error, no hang.
            let (_here, there) = MessageChannel::new().into_ports();
            assert!(matches!(
                a.post_message((), [there]),
                Err(PostError::Resources(_))
            ));
            let path = hostile::socket_path("dead");
            let listener = msgport::process::listen(&path).unwrap();
            let _raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
            assert!(listener.accept().is_err(), "no new link without a reactor");
        },
    );
}

/// A closed port whose peer never reads gives up after the linger time and releases its
/// socket (it used to stay registered for good).
#[test]
fn a_closed_port_whose_peer_never_reads_is_released() {
    isolated(
        "a_closed_port_whose_peer_never_reads_is_released",
        &[],
        LIMIT,
        || {
            msgport::set_limits(msgport::Limits {
                close_linger: Duration::from_millis(300),
                ..msgport::Limits::default()
            });
            let (port, peer) = hostile_pair();
            post_more_than_the_socket_takes(&port);
            let before = open_fds();
            drop(port);
            std::thread::sleep(Duration::from_secs(2));
            // (With its ring, when the link has one: see `MSGPORT_RING_AFTER`.)
            assert!(open_fds() < before, "the socket was released");
            assert!(peer.sees_close_within(Duration::from_secs(10)));
        },
    );
}

/// A closed port lingering to write what its peer has not read is released as soon as the
/// peer is gone, not when the linger runs out (it used to wait the whole linger when nobody
/// pulled on it).
#[test]
fn a_closed_port_whose_peer_goes_away_is_released_at_once() {
    isolated(
        "a_closed_port_whose_peer_goes_away_is_released_at_once",
        &[],
        LIMIT,
        || {
            let (port, peer) = hostile_pair();
            post_more_than_the_socket_takes(&port);
            let before = open_fds();
            drop(port);
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(open_fds(), before, "the closed port lingers");
            drop(peer);
            let deadline = Instant::now() + msgport::Limits::default().close_linger / 3;
            // Both sockets go (with their rings, when the links have some).
            while open_fds() > before - 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(open_fds() <= before - 2, "the socket was released");
        },
    );
}

/// Posts 16 MiB the socket cannot take, in messages small enough to travel in it (larger ones
/// go through shared memory, whose frames the socket takes at once): the rest waits in the port.
fn post_more_than_the_socket_takes(port: &msgport::MessagePort) {
    for _ in 0..80 {
        let chunk = Value::Binary(bin(vec![0u8; 200 << 10]));
        port.post_message(chunk, []).unwrap();
    }
}

fn role_cmd(role: &str) -> std::process::Command {
    let mut cmd = child::command(role);
    cmd.stdout(std::process::Stdio::inherit());
    cmd
}

/// Descriptors above stderr that are not close-on-exec: only inherited ones are.
fn inheritable_fds() -> Vec<i32> {
    let dir = std::fs::read_dir("/proc/self/fd").unwrap();
    let mut found = Vec::new();
    for entry in dir {
        let n: i32 = entry
            .unwrap()
            .file_name()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if n <= 2 {
            continue;
        }
        #[allow(unsafe_code)]
        // SAFETY: only fcntl(F_GETFD) on a number that may be closed meanwhile (EBADF then).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
        if let Ok(flags) = rustix::io::fcntl_getfd(fd) {
            if !flags.contains(rustix::io::FdFlags::CLOEXEC) {
                found.push(n);
            }
        }
    }
    found
}

/// Not a test: the child roles of this file (returns at once in the test process).
#[test]
fn child_entry() {
    let Some(role) = child::role() else {
        return;
    };
    match role.as_str() {
        "inherited" => {
            let boot = msgport::process::bootstrap().unwrap();
            boot.post_message(inheritable_fds(), []).unwrap();
            assert!(msgport::process::flush(Duration::from_secs(10)));
            while boot.blocking_recv().is_some() {}
        }
        "grandparent" => {
            // Starts a program that inherits the bootstrap variable, and, at the number it
            // names, a socket that is not the one the parent gave.
            let boot = msgport::process::bootstrap().unwrap();
            let named = std::env::var(msgport::process::BOOTSTRAP_ENV).unwrap();
            let number: i32 = named.split(':').next().unwrap().parse().unwrap();
            let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
            let x = std::os::fd::OwnedFd::from(x);
            let raw = std::os::fd::AsRawFd::as_raw_fd(&x);
            let mut cmd = role_cmd("grandchild");
            #[allow(unsafe_code)]
            // SAFETY: dup2 is async-signal-safe; both numbers are open in the forked child.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let from = std::os::fd::BorrowedFd::borrow_raw(raw);
                    let mut to = std::os::fd::OwnedFd::from_raw_fd_checked(number);
                    rustix::io::dup2(from, &mut to)?;
                    std::mem::forget(to);
                    Ok(())
                });
            }
            let status = cmd.status().unwrap();
            boot.post_message(status.code().unwrap_or(-1), []).unwrap();
            assert!(msgport::process::flush(Duration::from_secs(10)));
            while boot.blocking_recv().is_some() {}
        }
        "grandchild" => match msgport::process::bootstrap() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::process::exit(0),
            Err(e) => {
                eprintln!("unexpected error: {e}");
                std::process::exit(2)
            }
            Ok(_) => std::process::exit(3),
        },
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Builds an `OwnedFd` for a number without checking (test helper trait, for `dup2`'s target).
trait FromRawChecked {
    fn from_raw_fd_checked(raw: i32) -> std::os::fd::OwnedFd;
}

impl FromRawChecked for std::os::fd::OwnedFd {
    #[allow(unsafe_code)]
    fn from_raw_fd_checked(raw: i32) -> std::os::fd::OwnedFd {
        // SAFETY: used only as dup2's target and then forgotten, never closed.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) }
    }
}

/// Row 7: spawning the same `Command` twice used to pile up the inheritance hooks, so the second
/// child inherited whatever the parent then had at the first child's number (its own end of a
/// socket, or its epoll descriptor); now each child inherits its own socket only.
#[test]
fn a_command_spawned_twice_hands_each_child_its_socket_only() {
    isolated(
        "a_command_spawned_twice_hands_each_child_its_socket_only",
        &[],
        LIMIT,
        || {
            // What this process inherited itself (say, a jobserver's pipes) its children do too.
            let ours = inheritable_fds();
            let mut cmd = role_cmd("inherited");
            for _ in 0..3 {
                let (mut child, port) = msgport::process::spawn(&mut cmd).unwrap();
                let got = port.recv_timeout(Duration::from_secs(20)).unwrap();
                let got: Vec<i32> = got.data().unwrap();
                let leaked: Vec<i32> = got.into_iter().filter(|n| !ours.contains(n)).collect();
                assert!(leaked.is_empty(), "the child inherited {leaked:?}");
                drop(port);
                assert!(child.wait().unwrap().success());
            }
        },
    );
}

/// Row 8: a program started by a child inherits the bootstrap variable; it used to adopt
/// whatever descriptor had that number. Now the number must name the very socket the parent
/// made (its inode), and anything else is refused.
#[test]
fn a_grandchild_does_not_adopt_a_descriptor_named_for_its_parent() {
    watchdog(LIMIT, || {
        let (mut child, port) = msgport::process::spawn(&mut role_cmd("grandparent")).unwrap();
        let code: i32 = port
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .data()
            .unwrap();
        assert_eq!(
            code, 0,
            "the grandchild's bootstrap() refused the descriptor"
        );
        drop(port);
        assert!(child.wait().unwrap().success());
    });
}

/// Row 9: a negative descriptor in the bootstrap variable used to panic; now it is a typed
/// error, as is any malformed value.
#[test]
fn a_malformed_bootstrap_variable_is_an_error() {
    for (i, value) in ["-1", "-1:12345", "x", "3:", "", "99999:1"]
        .iter()
        .enumerate()
    {
        let name = "a_malformed_bootstrap_variable_is_an_error";
        if std::env::var("MSGPORT_TEST_ISOLATED").as_deref() == Ok(name)
            && std::env::var("CASE").as_deref() != Ok(&i.to_string())
        {
            continue;
        }
        isolated(
            name,
            &[
                (msgport::process::BOOTSTRAP_ENV, value),
                ("CASE", &i.to_string()),
            ],
            LIMIT,
            || {
                let err = msgport::process::bootstrap().unwrap_err();
                assert!(
                    matches!(
                        err.kind(),
                        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::NotFound
                    ),
                    "{err}"
                );
            },
        );
    }
}

/// Sets the descriptor limit (soft and hard) to what is open now plus `spare`, then fills the
/// table: returns the descriptors that fill it.
fn exhaust_descriptors(spare: u64) -> Vec<std::os::fd::OwnedFd> {
    let now = open_fds() as u64;
    let limit = rustix::process::Rlimit {
        current: Some(now + spare),
        maximum: Some(now + spare),
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f.into());
    }
    held
}

/// Row 10: the first cross-process use in a process out of descriptors used to panic (epoll
/// could not be created); now it is a typed error, and works once descriptors are free.
#[test]
fn the_first_cross_process_use_without_descriptors_is_an_error() {
    isolated(
        "the_first_cross_process_use_without_descriptors_is_an_error",
        &[],
        LIMIT,
        || {
            let path = hostile::socket_path("starved");
            let listener = msgport::process::listen(&path).unwrap();
            let _refused = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let mut held = exhaust_descriptors(64);
            // One descriptor free: accept takes it; no reactor can start.
            held.pop();
            let err = listener.accept().unwrap_err();
            assert!(err.raw_os_error().is_some() || err.kind() == std::io::ErrorKind::Other);
            held.clear();
            let (port, _) = listener
                .accept()
                .expect("accepts once descriptors are free");
            let peer = hostile::RawPeer { sock: raw };
            port.post_message("works", []).unwrap();
            let mut buf = [0u8; 64];
            use std::io::Read;
            assert!((&peer.sock).read(&mut buf).unwrap() > 8);
        },
    );
}

/// The listening socket is this user's only by default, and its path goes with it.
#[test]
fn a_listening_socket_is_private_and_removed_on_drop() {
    use std::os::unix::fs::PermissionsExt;
    let path = hostile::socket_path("mode");
    let listener = msgport::process::listen(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    drop(listener);
    assert!(!path.exists(), "the path is removed");
    let listener = msgport::process::listen_with_mode(&path, 0o660).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "mode {mode:o}");
    assert_eq!(mode & 0o600, 0o600, "mode {mode:o}");
    drop(listener);
}

/// Memory per port: a port that has read its messages keeps no receive buffer of its own (its
/// reads go through its thread's buffer while no frame is half read). It used to keep 64 KiB
/// per link for good after its first message: 500 socket pairs (1,000 links) grew the process
/// by ~64 MiB.
#[test]
fn a_port_that_read_its_messages_keeps_no_receive_buffer() {
    isolated(
        "a_port_that_read_its_messages_keeps_no_receive_buffer",
        &[],
        LIMIT,
        || {
            let pairs: Vec<_> = (0..500).map(|_| hostile::socket_pair()).collect();
            let before = hostile::rss_kib();
            for (a, b) in &pairs {
                a.post_message("ping", []).unwrap();
                b.post_message("pong", []).unwrap();
            }
            for (a, b) in &pairs {
                assert_eq!(b.blocking_recv().unwrap().data::<String>().unwrap(), "ping");
                assert_eq!(a.blocking_recv().unwrap().data::<String>().unwrap(), "pong");
            }
            let grown = hostile::rss_kib().saturating_sub(before);
            let per_link = grown as f64 / 1000.0;
            assert!(
                per_link < 8.0,
                "{per_link:.1} KiB per link after one message"
            );
        },
    );
}

/// A port whose socket came from a peer that kept a copy of it, and whose pulls have moved to
/// waiting in `recvmsg` (three answered rounds): the raw peer answers each post on `reply`.
fn waiting_port_with_shared_socket() -> (
    msgport::MessagePort,
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
) {
    let (port, peer) = hostile_pair();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let kept = ours.try_clone().unwrap();
    let sent = std::os::fd::OwnedFd::from(ours);
    peer.frame(
        &cbor::body(cbor::NULL, &[cbor::socket_record()]),
        1,
        &borrow(std::slice::from_ref(&sent)),
    )
    .unwrap();
    drop(sent);
    let mut event = port.recv_timeout(Duration::from_secs(10)).unwrap();
    let far = event.ports.pop().expect("the port arrived");
    std::mem::forget(peer);
    for round in 0..3u64 {
        far.post_message(round, []).unwrap();
        reply(&theirs, round);
        assert_eq!(far.blocking_recv().unwrap().data::<u64>().unwrap(), round);
    }
    (far, kept, theirs)
}

/// Writes one message holding `n` to a raw socket.
fn reply(mut to: &std::os::unix::net::UnixStream, n: u64) {
    use std::io::Write;
    to.write_all(&frame(&cbor::body(&cbor::uint(n), &[]), 0))
        .unwrap();
}

/// A pull waits for its answer asleep in `recvmsg` on the port's socket. A peer that kept a
/// copy of a socket it sent can make that socket non-blocking under us: the pull must go on
/// waiting (in `poll`), not turn into a loop of `recvmsg` calls answered "try again".
#[test]
fn a_socket_made_non_blocking_by_its_sender_does_not_spin_a_pull() {
    isolated(
        "a_socket_made_non_blocking_by_its_sender_does_not_spin_a_pull",
        &[],
        LIMIT,
        || {
            let (port, kept, theirs) = waiting_port_with_shared_socket();
            kept.set_nonblocking(true).unwrap();
            port.post_message(7u64, []).unwrap();
            let answer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(600));
                reply(&theirs, 7);
                theirs
            });
            let before = hostile::cpu_time();
            assert_eq!(port.blocking_recv().unwrap().data::<u64>().unwrap(), 7);
            let spent = hostile::cpu_time() - before;
            assert!(
                spent < Duration::from_millis(300),
                "waiting 600 ms for an answer cost {spent:?} of CPU"
            );
            drop(answer.join().unwrap());
        },
    );
}

/// Timed and untimed pulls on one port, one after the other: an untimed pull sleeps in
/// `recvmsg` with no receive timeout, a timed one with the socket's timeout set to a slice of
/// its wait, so a timed pull after untimed ones still ends at its deadline.
#[test]
fn timed_and_untimed_pulls_take_turns_on_one_socket() {
    watchdog(LIMIT, || {
        let (port, _kept, theirs) = waiting_port_with_shared_socket();
        for round in 10..14u64 {
            // Untimed: the answer comes 100 ms later.
            port.post_message(round, []).unwrap();
            let answer = std::thread::scope(|s| {
                s.spawn(|| {
                    std::thread::sleep(Duration::from_millis(100));
                    reply(&theirs, round);
                });
                port.blocking_recv().unwrap().data::<u64>().unwrap()
            });
            assert_eq!(answer, round);
            // Timed (after a post, so the pull reads the socket itself), long enough to
            // sleep in `recvmsg`: nothing comes.
            port.post_message(round, []).unwrap();
            let started = Instant::now();
            assert!(matches!(
                port.recv_timeout(Duration::from_millis(300)),
                Err(RecvTimeoutError::Timeout)
            ));
            let waited = started.elapsed();
            assert!(
                waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
                "a 300 ms pull took {waited:?}"
            );
            // Timed, answered.
            port.post_message(round, []).unwrap();
            reply(&theirs, round + 100);
            let got = port.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got.data::<u64>().unwrap(), round + 100);
        }
    });
}

/// A closed port whose peer has not read all it was sent keeps its socket open to write the
/// rest (it lingers): a pull asleep in `recvmsg` on that socket, which nothing will ever wake
/// by arriving, still ends with the close, at once rather than when the linger runs out. The
/// peer here kept a copy of the socket and took away its receive timeout, so only the close
/// itself can wake the pull.
#[test]
fn closing_a_port_with_unsent_messages_wakes_a_pull_asleep_on_its_socket() {
    watchdog(LIMIT, || {
        let (port, kept, _theirs) = waiting_port_with_shared_socket();
        kept.set_read_timeout(None).unwrap();
        // More than the socket holds: the rest waits in the port, unsent.
        for _ in 0..64 {
            port.post_message(Value::Binary(bin(vec![7; 16 << 10])), [])
                .unwrap();
        }
        let port = Arc::new(port);
        let puller = port.clone();
        let pull = std::thread::spawn(move || {
            let ended = puller.blocking_recv().is_none();
            (ended, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(200));
        let closed = Instant::now();
        port.close();
        let (ended, at) = pull.join().unwrap();
        assert!(ended, "the pull ends with the port's close");
        let waited = at.saturating_duration_since(closed);
        assert!(
            waited < msgport::Limits::default().close_linger / 3,
            "the pull ended {waited:?} after the close (the linger is {:?})",
            msgport::Limits::default().close_linger
        );
    });
}

/// A peer that kept a copy of a socket it sent can also take away its receive timeout, so that
/// a pull asleep in `recvmsg` would never wake by itself: closing the port from another thread
/// still ends that pull.
#[test]
fn closing_a_port_wakes_a_pull_whose_socket_lost_its_timeout() {
    watchdog(LIMIT, || {
        let (port, kept, _theirs) = waiting_port_with_shared_socket();
        kept.set_read_timeout(None).unwrap();
        let port = Arc::new(port);
        let puller = port.clone();
        port.post_message(9u64, []).unwrap();
        let pull = std::thread::spawn(move || puller.blocking_recv().is_none());
        std::thread::sleep(Duration::from_millis(200));
        port.close();
        assert!(pull.join().unwrap(), "the pull ends with the port's close");
    });
}
