//! The cross-process transport under stress: real child processes, signals, leaks, chaos.

use std::process::Child;
use std::time::Duration;

use msgport::{process, value, Binary, BinaryKind, MessageChannel, MessagePort, Value};
use msgport_testkit::child::{self, wait_ok};
use msgport_testkit::fds::open_fds;
use msgport_testkit::{topology, watchdog};
use rustix::process::{kill_process, Pid, Signal};

const LIMIT: Duration = Duration::from_secs(60);

fn pid(child: &Child) -> Pid {
    Pid::from_child(child)
}

fn signal(child: &Child, sig: Signal) {
    kill_process(pid(child), sig).expect("kill");
}

/// Not a test: the entry point of the child roles (returns at once in the test process).
#[test]
fn child_entry() {
    let Some(role) = child::role() else {
        return;
    };
    if role == "garbage" {
        garbage();
    }
    let boot = child::bootstrap();
    match role.as_str() {
        "echo" => topology::echo(&boot),
        "serve-ports" => topology::serve_ports(&boot),
        "main" => main_role(&boot),
        "talker" => talker(&boot),
        "ring" => {
            ring(boot);
            child::finish(None)
        }
        "idle" => while boot.blocking_recv().is_some() {},
        "leak-check" => leak_check(&boot),
        "fd-starved" => fd_starved(&boot),
        other => panic!("unknown role {other}"),
    }
    child::finish(Some(boot));
}

/// Writes bytes that are not frames into the inherited socket, without using msgport.
#[allow(unsafe_code)]
fn garbage() -> ! {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let named = std::env::var(process::BOOTSTRAP_ENV).unwrap();
    let raw: i32 = named.split(':').next().unwrap().parse().unwrap();
    // SAFETY: the descriptor was inherited for this process and nothing else owns it.
    let mut socket = unsafe { std::os::unix::net::UnixStream::from_raw_fd(raw) };
    socket.set_nonblocking(false).unwrap();
    // A header announcing a 1 GiB frame, then noise.
    socket
        .write_all(&[0xff, 0xff, 0xff, 0x3f, 0, 0, 0, 0, 1, 2, 3])
        .unwrap();
    // Stay until the parent closes its end (it should, at once).
    use std::io::Read;
    let _ = socket.read_to_end(&mut Vec::new());
    std::process::exit(0);
}

/// A "main" process: spawns two talkers, gives them the two ends of one channel, and a report
/// port each to the test process; then it only waits (the test stops it meanwhile).
fn main_role(boot: &MessagePort) {
    let (a, a_boot) = child::spawn("talker");
    let (b, b_boot) = child::spawn("talker");
    let (pa, pb) = MessageChannel::new().into_ports();
    let (ra_test, ra) = MessageChannel::new().into_ports();
    let (rb_test, rb) = MessageChannel::new().into_ports();
    a_boot.post_message("you are A", [pa, ra]).unwrap();
    b_boot.post_message("you are B", [pb, rb]).unwrap();
    boot.post_message("reports", [ra_test, rb_test]).unwrap();
    // Serve until the test process hangs up, then let the talkers go.
    while boot.blocking_recv().is_some() {}
    drop((a_boot, b_boot));
    wait_ok(a);
    wait_ok(b);
}

/// Exchanges 10,000 messages each way with its peer once told to go, then reports.
fn talker(boot: &MessagePort) {
    let event = boot.blocking_recv().unwrap();
    let [peer, report]: [MessagePort; 2] = event.ports.try_into().unwrap();
    assert_eq!(
        report.blocking_recv().unwrap().data::<String>().unwrap(),
        "go"
    );
    let peer = std::sync::Arc::new(peer);
    let sender = {
        let peer = peer.clone();
        std::thread::spawn(move || {
            for i in 0..10_000u32 {
                peer.post_message(i, []).unwrap();
            }
        })
    };
    for i in 0..10_000u32 {
        assert_eq!(peer.blocking_recv().unwrap().data::<u32>().unwrap(), i);
    }
    sender.join().unwrap();
    assert!(process::flush(Duration::from_secs(30)));
    report.post_message(10_000u32, []).unwrap();
    // Wait for the test to hang up.
    while report.blocking_recv().is_some() {}
}

#[test]
fn running_out_of_descriptors_is_a_typed_error_on_the_post_that_needed_one() {
    watchdog(LIMIT, || {
        let (starved, boot) = child::spawn("fd-starved");
        let mut ports = 0;
        let report = loop {
            let event = boot.blocking_recv().expect("the report");
            ports += event.ports.len();
            if let Ok(text) = event.data::<String>() {
                break text;
            }
        };
        assert!(report.starts_with("refused after"), "{report}");
        assert!(ports > 0, "some ports made it before the limit");
        drop(boot);
        wait_ok(starved);
    });
}

#[test]
fn main_is_not_on_the_path_between_two_children() {
    watchdog(LIMIT, || {
        let (main, main_boot) = child::spawn("main");
        let [ra, rb]: [MessagePort; 2] =
            main_boot.blocking_recv().unwrap().ports.try_into().unwrap();
        signal(&main, Signal::STOP);
        ra.post_message("go", []).unwrap();
        rb.post_message("go", []).unwrap();
        assert_eq!(ra.blocking_recv().unwrap().data::<u32>().unwrap(), 10_000);
        assert_eq!(rb.blocking_recv().unwrap().data::<u32>().unwrap(), 10_000);
        signal(&main, Signal::CONT);
        drop((ra, rb, main_boot));
        wait_ok(main);
    });
}

#[test]
fn sigkill_closes_and_ten_thousand_cycles_leak_no_descriptor() {
    // Counted in a child of its own: other tests of this binary open descriptors concurrently.
    // 10,000 cross-process round trips take seconds, but minutes on a loaded debug build.
    watchdog(Duration::from_secs(300), || {
        let (checker, boot) = child::spawn("leak-check");
        assert_eq!(
            boot.blocking_recv().unwrap().data::<String>().unwrap(),
            "no leak"
        );
        drop(boot);
        wait_ok(checker);
    });
}

fn leak_check(boot: &MessagePort) {
    let (mut server, server_boot) = child::spawn("serve-ports");
    // Warm up (the reactor's own descriptors), then count.
    let (warm, warm_far) = MessageChannel::new().into_ports();
    server_boot.post_message((), [warm_far]).unwrap();
    warm.post_message(0u32, []).unwrap();
    warm.blocking_recv().unwrap();
    drop(warm);
    let before = open_fds();
    for i in 0..10_000u32 {
        let (mine, theirs) = MessageChannel::new().into_ports();
        server_boot.post_message((), [theirs]).unwrap();
        mine.post_message(i, []).unwrap();
        assert_eq!(mine.blocking_recv().unwrap().data::<u32>().unwrap(), i);
    }
    let (held, held_far) = MessageChannel::new().into_ports();
    server_boot.post_message((), [held_far]).unwrap();
    held.post_message(1u32, []).unwrap();
    held.blocking_recv().unwrap();
    signal(&server, Signal::KILL);
    server.wait().unwrap();
    assert!(held.blocking_recv().is_none(), "close after SIGKILL");
    assert!(server_boot.blocking_recv().is_none());
    drop((held, server_boot));
    // Closed links are released by the reactor thread: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // The only descriptor gone for good is the link to the killed server.
    let expected = before - 1;
    while open_fds() > expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open_fds(), expected, "descriptors leaked");
    boot.post_message("no leak", []).unwrap();
}

/// In a process out of descriptors, the post that needs one fails with a typed error; the ports
/// that exist keep working.
fn fd_starved(boot: &MessagePort) {
    // The reactor (and its raised limit) exists already: lower the limit under our feet.
    let now = open_fds() as u64;
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(now + 16),
            maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
        },
    )
    .unwrap();
    let mut kept = Vec::new();
    let mut error = None;
    for _ in 0..100 {
        let (here, there) = MessageChannel::new().into_ports();
        match boot.post_message((), [there]) {
            Ok(()) => kept.push(here),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let error = error.expect("the limit was hit");
    assert!(matches!(error, msgport::PostError::Resources(_)), "{error}");
    boot.post_message(format!("refused after {}: {error}", kept.len()), [])
        .unwrap();
}

const STREAM: u64 = 200_000;
const PER_HOLDER: u64 = 7_919;

/// One process of the ring: takes the reading end from its predecessor, reads a slice of the
/// stream checking every number, passes it on with the next expected number.
fn ring(boot: MessagePort) {
    let event = boot.blocking_recv().unwrap();
    let [from_prev, to_next, report]: [MessagePort; 3] = event.ports.try_into().unwrap();
    // The ring never closes by itself: leave when the test process hangs up.
    std::thread::spawn(move || {
        while boot.blocking_recv().is_some() {}
        assert!(process::flush(Duration::from_secs(30)));
        std::process::exit(0);
    });
    while let Some(mut event) = from_prev.blocking_recv() {
        let mut next: u64 = event.data::<u64>().unwrap();
        let reader = event.ports.pop().unwrap();
        let stop = (next + PER_HOLDER).min(STREAM);
        while next < stop {
            let got: u64 = reader.blocking_recv().unwrap().data().unwrap();
            assert_eq!(got, next, "lost, duplicated or reordered");
            next += 1;
        }
        if next == STREAM {
            report.post_message(next, []).unwrap();
        } else {
            to_next.post_message(next, [reader]).unwrap();
        }
    }
}

#[test]
fn chaos_a_stream_survives_its_reader_circling_four_processes() {
    watchdog(LIMIT, || {
        // The ring: this process → P0 → P1 → P2 → P3 → this process → P0 ... This process only
        // relays the reader; each Pi reads the next 7,919 numbers, checking each.
        let procs: Vec<(Child, MessagePort)> = (0..4).map(|_| child::spawn("ring")).collect();
        let mut links: Vec<(Option<MessagePort>, Option<MessagePort>)> = (0..5)
            .map(|_| {
                let (a, b) = MessageChannel::new().into_ports();
                (Some(a), Some(b))
            })
            .collect();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut reports = Vec::new();
        for (i, (_, boot)) in procs.iter().enumerate() {
            let from_prev = links[i].1.take().unwrap();
            let to_next = links[i + 1].0.take().unwrap();
            let (report_here, report_there) = MessageChannel::new().into_ports();
            let done = done_tx.clone();
            report_here.on_message(move |e| done.send(e.data::<u64>().unwrap()).unwrap());
            report_here.start();
            reports.push(report_here);
            boot.post_message("ring", [from_prev, to_next, report_there])
                .unwrap();
        }
        let to_p0 = links[0].0.take().unwrap();
        let from_p3 = links[4].1.take().unwrap();
        let (writer, reader) = MessageChannel::new().into_ports();
        let stream = std::thread::spawn(move || {
            for i in 0..STREAM {
                writer.post_message(i, []).unwrap();
            }
            writer
        });
        to_p0.post_message(0u64, [reader]).unwrap();
        let relay = std::thread::spawn(move || {
            let mut hops = 0;
            while let Some(mut event) = from_p3.blocking_recv() {
                let next: u64 = event.data().unwrap();
                to_p0.post_message(next, event.ports.pop()).unwrap();
                hops += 1;
            }
            hops
        });
        assert_eq!(done_rx.recv_timeout(LIMIT).unwrap(), STREAM);
        let _writer = stream.join().unwrap();
        drop(reports);
        for (child, boot) in procs {
            drop(boot);
            wait_ok(child);
        }
        let hops = relay.join().unwrap();
        assert!(hops >= 5, "the reader went round the ring {hops} times");
    });
}

#[test]
fn a_64_mib_message_and_200_ports_arrive_intact() {
    watchdog(LIMIT, || {
        let (echo, boot) = child::spawn("echo");
        let bytes: Vec<u8> = (0..64u32 << 20)
            .map(|i| (i * 7 + (i >> 13)) as u8)
            .collect();
        let big = Value::Binary(Binary {
            kind: BinaryKind::Uint8,
            bytes,
        });
        boot.post_message(big.clone(), []).unwrap();
        assert_eq!(boot.blocking_recv().unwrap().value().unwrap(), big);
        drop(boot);
        wait_ok(echo);

        let (server, boot) = child::spawn("serve-ports");
        let (near, far): (Vec<_>, Vec<_>) =
            (0..200).map(|_| MessageChannel::new().into_ports()).unzip();
        boot.post_message("200 ports", far).unwrap();
        for (i, p) in near.iter().enumerate() {
            p.post_message(i as u32, []).unwrap();
        }
        for (i, p) in near.iter().enumerate() {
            assert_eq!(p.blocking_recv().unwrap().data::<u32>().unwrap(), i as u32);
        }
        drop((near, boot));
        wait_ok(server);
    });
}

#[test]
fn a_port_in_flight_to_a_process_that_dies_closes_for_its_peer() {
    watchdog(LIMIT, || {
        let (mut victim, boot) = child::spawn("idle");
        let (writer, reader) = MessageChannel::new().into_ports();
        // Stopped, the victim cannot read the frame that carries the port.
        signal(&victim, Signal::STOP);
        boot.post_message("in flight", [reader]).unwrap();
        writer.post_message("to a port in flight", []).unwrap();
        assert!(process::flush(Duration::from_secs(10)));
        signal(&victim, Signal::KILL);
        victim.wait().unwrap();
        assert!(
            writer.blocking_recv().is_none(),
            "the writer observes close"
        );
    });
}

#[test]
fn garbage_on_a_port_socket_closes_that_port_only() {
    watchdog(LIMIT, || {
        let (bad, bad_boot) = child::spawn("garbage");
        let (good, good_boot) = child::spawn("echo");
        assert!(bad_boot.blocking_recv().is_none(), "the bad port closes");
        good_boot
            .post_message(value!({ "still": "working" }), [])
            .unwrap();
        assert_eq!(
            good_boot.blocking_recv().unwrap().value().unwrap(),
            value!({ "still": "working" })
        );
        drop((bad_boot, good_boot));
        wait_ok(bad);
        wait_ok(good);
    });
}

/// Low-latency mode: the pulling thread looks at the socket again and again before it sleeps.
/// Its pulls still get every answer in order, keep their deadlines (also one shorter than
/// the looking), and end with the peer.
#[test]
fn a_low_latency_port_answers_in_order_keeps_deadlines_and_sees_close() {
    watchdog(LIMIT, || {
        let (a, b) = msgport_testkit::hostile::socket_pair();
        a.set_low_latency(true);
        let echo = std::thread::spawn(move || {
            // Numbers come back; anything else gets no answer.
            while let Some(mut event) = b.blocking_recv() {
                if let Ok(n) = event.take_data::<u64>() {
                    b.post_message(n, []).unwrap();
                }
            }
        });
        for i in 0..2_000u64 {
            a.post_message(i, []).unwrap();
            assert_eq!(a.blocking_recv().unwrap().data::<u64>().unwrap(), i);
        }
        for timeout in [Duration::from_micros(10), Duration::from_millis(20)] {
            a.post_message("no answer", []).ok();
            let start = std::time::Instant::now();
            assert!(matches!(
                a.recv_timeout(timeout),
                Err(msgport::RecvTimeoutError::Timeout)
            ));
            assert!(start.elapsed() >= timeout);
        }
        a.close();
        echo.join().unwrap();
    });
}

/// One thread awaits `recv()` on a cross-process port while another posts on it and pulls its
/// answer (the pulling thread then reads the socket itself, asleep in `recvmsg` after a few
/// rounds, and the reactor stops watching it). Each gets one of the two messages that come
/// back: the awaiting one is not left unfed once the pulling thread has its answer.
#[test]
fn an_answer_pull_does_not_starve_a_task_awaiting_the_same_port() {
    watchdog(LIMIT, || {
        let (a, b) = msgport_testkit::hostile::socket_pair();
        let a = std::sync::Arc::new(a);
        let peer = std::thread::spawn(move || {
            for _ in 0..3 {
                let mut ping = b.blocking_recv().unwrap();
                b.post_message(ping.take_data::<u64>().unwrap(), [])
                    .unwrap();
            }
            let _question = b.blocking_recv().unwrap();
            b.post_message("answer", []).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            b.post_message("late", []).unwrap();
            b
        });
        for round in 0..3u64 {
            a.post_message(round, []).unwrap();
            assert_eq!(a.blocking_recv().unwrap().data::<u64>().unwrap(), round);
        }
        let waiting = a.clone();
        let task = std::thread::spawn(move || {
            futures::executor::block_on(waiting.recv())
                .unwrap()
                .data::<String>()
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(100));
        a.post_message("question", []).unwrap();
        let pulled: String = a.blocking_recv().unwrap().data().unwrap();
        let awaited = task.join().unwrap();
        let mut got = [pulled, awaited];
        got.sort();
        assert_eq!(got, ["answer", "late"]);
        drop(peer.join().unwrap());
    });
}
