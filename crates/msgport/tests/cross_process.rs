//! Ports between real processes: the test binary re-runs itself in a child role.

use std::time::Duration;

use msgport::{process, value, MessageChannel, Value};
use msgport_testkit::child::{self, wait_ok};
use msgport_testkit::{topology, watchdog};

const LIMIT: Duration = Duration::from_secs(30);

/// Not a test: the entry point of the child roles (returns at once in the parent).
#[test]
fn child_entry() {
    let Some(role) = child::role() else {
        return;
    };
    let boot = child::bootstrap();
    match role.as_str() {
        "echo" => topology::echo(&boot),
        "serve-ports" => topology::serve_ports(&boot),
        "burst-then-exit" => {
            // Posts the numbers it is asked for as fast as it can, then exits at once: no
            // flush, no port dropped.
            let n: u32 = boot.blocking_recv().unwrap().data().unwrap();
            for i in 0..n {
                boot.post_message(i, []).unwrap();
            }
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    }
    child::finish(Some(boot));
}

#[test]
fn messages_cross_and_come_back_in_order() {
    watchdog(LIMIT, || {
        let (child, port) = child::spawn("echo");
        for i in 0..1000u32 {
            port.post_message(value!({ "i": i, "s": "x" }), []).unwrap();
        }
        for i in 0..1000u32 {
            let v = port.blocking_recv().unwrap().value().unwrap();
            assert_eq!(v["i"], Value::from(i));
        }
        drop(port);
        wait_ok(child);
    });
}

/// Posts in a burst are written in batches (`Link::send_frame`): the last ones of a burst go
/// out on a timer when nothing else writes them, and at exit when the process ends first.
#[test]
fn the_end_of_a_burst_is_written_without_another_post_and_at_exit() {
    watchdog(LIMIT, || {
        let (child, port) = child::spawn("echo");
        for round in 0..20u32 {
            // A short burst, then nothing but waiting for the answers; small messages, then
            // ones of 10 KB (a burst holds frames of up to 16 KiB).
            let pad = if round % 2 == 0 { 0 } else { 10_000 };
            for i in 0..5 {
                port.post_message((round * 5 + i, "x".repeat(pad)), [])
                    .unwrap();
            }
            for i in 0..5 {
                let got = port.recv_timeout(Duration::from_secs(10)).unwrap();
                let (n, s) = got.data::<(u32, String)>().unwrap();
                assert_eq!((n, s.len()), (round * 5 + i, pad));
            }
        }
        drop(port);
        wait_ok(child);

        for n in [3u32, 50, 1000] {
            let (mut child, port) = child::spawn("burst-then-exit");
            port.post_message(n, []).unwrap();
            for i in 0..n {
                let got = port.recv_timeout(Duration::from_secs(10));
                assert_eq!(got.map(|mut e| e.take_data::<u32>().unwrap()).ok(), Some(i));
            }
            assert!(port.blocking_recv().is_none());
            assert!(child.wait().unwrap().success());
        }
    });
}

#[test]
fn a_port_sent_to_a_child_talks_directly() {
    watchdog(LIMIT, || {
        let (child, boot) = child::spawn("serve-ports");
        let (mine, theirs) = MessageChannel::new().into_ports();
        // Queued before the transfer: travels with the port.
        mine.post_message("early", []).unwrap();
        boot.post_message("take this", [theirs]).unwrap();
        assert_eq!(
            mine.blocking_recv().unwrap().data::<String>().unwrap(),
            "early"
        );
        for i in 0..100u32 {
            mine.post_message(i, []).unwrap();
            assert_eq!(mine.blocking_recv().unwrap().data::<u32>().unwrap(), i);
        }
        drop(boot);
        drop(mine);
        wait_ok(child);
    });
}

#[test]
fn the_death_of_a_child_closes_its_ports() {
    watchdog(LIMIT, || {
        let (mut child, boot) = child::spawn("serve-ports");
        let (mine, theirs) = MessageChannel::new().into_ports();
        boot.post_message((), [theirs]).unwrap();
        mine.post_message(1u8, []).unwrap();
        assert!(mine.blocking_recv().is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(mine.blocking_recv().is_none());
        assert!(boot.blocking_recv().is_none());
    });
}

/// The end that stays when its peer leaves for another process is fed by a link that nothing
/// reads until someone waits on that end. Every way of waiting must get it read, a wait that
/// began before the peer left included, and so must a close nobody was waiting for.
#[test]
fn an_end_whose_peer_left_is_fed_however_it_waits() {
    use std::sync::mpsc;
    use std::thread::{scope, sleep};
    const ASLEEP: Duration = Duration::from_millis(50);
    watchdog(LIMIT, || {
        let (mut child, boot) = child::spawn("serve-ports");
        // A thread asleep in `blocking_recv` before the peer leaves.
        let (mine, theirs) = MessageChannel::new().into_ports();
        scope(|s| {
            let waiter = s.spawn(|| mine.blocking_recv().unwrap().data::<u32>().unwrap());
            sleep(ASLEEP);
            boot.post_message((), [theirs]).unwrap();
            mine.post_message(1u32, []).unwrap();
            assert_eq!(waiter.join().unwrap(), 1);
        });
        // A task awaiting `recv` before the peer leaves.
        let (mine, theirs) = MessageChannel::new().into_ports();
        scope(|s| {
            let task = s.spawn(|| futures::executor::block_on(mine.recv()).unwrap());
            sleep(ASLEEP);
            boot.post_message((), [theirs]).unwrap();
            mine.post_message(2u32, []).unwrap();
            assert_eq!(task.join().unwrap().data::<u32>().unwrap(), 2);
        });
        // Callbacks started before the peer leaves, and nothing else.
        let (mine, theirs) = MessageChannel::new().into_ports();
        let (tx, rx) = mpsc::channel();
        mine.on_message(move |e| tx.send(e.data::<u32>().unwrap()).unwrap());
        mine.start();
        boot.post_message((), [theirs]).unwrap();
        mine.post_message(3u32, []).unwrap();
        assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 3);
        drop(mine);
        // Only `try_recv`, never a wait.
        let (mine, theirs) = MessageChannel::new().into_ports();
        boot.post_message((), [theirs]).unwrap();
        mine.post_message(4u32, []).unwrap();
        let answer = loop {
            match mine.try_recv() {
                Ok(e) => break e.data::<u32>().unwrap(),
                Err(msgport::TryRecvError::Empty) => sleep(Duration::from_millis(1)),
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(answer, 4);
        // A close callback alone, started before the peer leaves; and an end nobody waits on
        // until the process holding its peer is dead.
        let (watched, theirs) = MessageChannel::new().into_ports();
        let (closed_tx, closed) = mpsc::channel();
        watched.on_close(move || closed_tx.send(()).unwrap());
        watched.start();
        boot.post_message((), [theirs]).unwrap();
        let (unwatched, theirs) = MessageChannel::new().into_ports();
        boot.post_message((), [theirs]).unwrap();
        // Both ports reached the child once it answers on a third.
        let (probe, theirs) = MessageChannel::new().into_ports();
        boot.post_message((), [theirs]).unwrap();
        probe.post_message(5u32, []).unwrap();
        assert!(probe.blocking_recv().is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        closed.recv_timeout(LIMIT).unwrap();
        assert!(unwatched.blocking_recv().is_none());
    });
}

#[test]
fn a_port_that_went_to_a_child_and_back_still_works() {
    watchdog(LIMIT, || {
        let (child, boot) = child::spawn("echo");
        let (mine, theirs) = MessageChannel::new().into_ports();
        mine.post_message("before", []).unwrap();
        boot.post_message("there and back", [theirs]).unwrap();
        let back = boot.blocking_recv().unwrap().ports.pop().unwrap();
        assert_eq!(
            back.blocking_recv().unwrap().data::<String>().unwrap(),
            "before"
        );
        mine.post_message("after", []).unwrap();
        assert_eq!(
            back.blocking_recv().unwrap().data::<String>().unwrap(),
            "after"
        );
        back.post_message("reply", []).unwrap();
        assert_eq!(
            mine.blocking_recv().unwrap().data::<String>().unwrap(),
            "reply"
        );
        drop(back);
        assert!(mine.blocking_recv().is_none());
        drop(boot);
        wait_ok(child);
    });
}

#[test]
fn a_port_relayed_through_a_child_to_another_child() {
    watchdog(LIMIT, || {
        let (a, a_boot) = child::spawn("echo");
        let (b, b_boot) = child::spawn("serve-ports");
        let (mine, theirs) = MessageChannel::new().into_ports();
        a_boot.post_message("there and back", [theirs]).unwrap();
        let back = a_boot.blocking_recv().unwrap().ports.pop().unwrap();
        eprintln!("got it back");
        b_boot.post_message("serve this", [back]).unwrap();
        eprintln!("sent to b");
        mine.post_message(7u32, []).unwrap();
        assert_eq!(mine.blocking_recv().unwrap().data::<u32>().unwrap(), 7);
        drop(mine);
        drop((a_boot, b_boot));
        wait_ok(a);
        wait_ok(b);
    });
}

#[test]
fn listen_and_connect_give_ports_with_kernel_credentials() {
    watchdog(LIMIT, || {
        let dir = std::env::temp_dir().join(format!("msgport-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rendezvous.sock");
        let _ = std::fs::remove_file(&path);
        let listener = process::listen(&path).unwrap();
        let p = path.clone();
        let client = std::thread::spawn(move || {
            let port = process::connect(&p).unwrap();
            port.post_message("hello", []).unwrap();
            port.blocking_recv().unwrap().data::<String>().unwrap()
        });
        let (port, creds) = listener.accept().unwrap();
        assert_eq!(creds.pid, std::process::id());
        assert_eq!(
            port.blocking_recv().unwrap().data::<String>().unwrap(),
            "hello"
        );
        port.post_message("welcome", []).unwrap();
        assert_eq!(client.join().unwrap(), "welcome");
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

#[test]
fn oversized_messages_are_refused_at_the_sender() {
    watchdog(LIMIT, || {
        let (child, port) = child::spawn("echo");
        msgport::set_max_message_size(1 << 20);
        let big = Value::from(&vec![7u8; 2 << 20][..]);
        let err = port.post_message(big, []).unwrap_err();
        assert!(
            matches!(err, msgport::PostError::TooLarge { max, .. } if max == 1 << 20),
            "{err}"
        );
        msgport::set_max_message_size(256 << 20);
        // The port still works.
        port.post_message("small", []).unwrap();
        assert_eq!(
            port.blocking_recv().unwrap().data::<String>().unwrap(),
            "small"
        );
        drop(port);
        wait_ok(child);
    });
}

#[test]
fn every_receive_form_works_on_a_remote_port_and_they_can_be_mixed() {
    watchdog(LIMIT, || {
        let (child, port) = child::spawn("echo");
        // Blocking (the pulling thread reads the socket itself)...
        port.post_message(1u32, []).unwrap();
        assert_eq!(port.blocking_recv().unwrap().data::<u32>().unwrap(), 1);
        // ...then try_recv (nobody else reads the socket in pull mode)...
        port.post_message(2u32, []).unwrap();
        let got = loop {
            match port.try_recv() {
                Ok(e) => break e.data::<u32>().unwrap(),
                Err(msgport::TryRecvError::Empty) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(got, 2);
        // ...then async (the reactor feeds it again)...
        port.post_message(3u32, []).unwrap();
        let e = futures::executor::block_on(port.recv()).unwrap();
        assert_eq!(e.data::<u32>().unwrap(), 3);
        // ...then a callback...
        let (tx, rx) = std::sync::mpsc::channel();
        port.on_message(move |e| tx.send(e.data::<u32>().unwrap()).unwrap());
        port.start();
        port.post_message(4u32, []).unwrap();
        assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 4);
        port.remove_listeners();
        // ...and blocking again, with a timeout.
        port.post_message(5u32, []).unwrap();
        assert_eq!(port.recv_timeout(LIMIT).unwrap().data::<u32>().unwrap(), 5);
        assert!(matches!(
            port.recv_timeout(Duration::from_millis(20)),
            Err(msgport::RecvTimeoutError::Timeout)
        ));
        drop(port);
        wait_ok(child);
    });
}

/// Callbacks of ports whose peer is in another process used to run on the one reactor thread:
/// a slow callback delayed every other such port, and a callback waiting for another port's
/// message (which only the reactor could deliver) could never get it. Now they run on a pool.
#[test]
fn a_slow_callback_does_not_delay_another_port() {
    watchdog(Duration::from_secs(60), || {
        let (a_out, a_in) = msgport_testkit::hostile::socket_pair();
        let (b_out, b_in) = msgport_testkit::hostile::socket_pair();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = tx.clone();
        a_in.on_message(move |_| {
            std::thread::sleep(Duration::from_secs(2));
            t.send("a").unwrap();
        });
        a_in.start();
        b_in.on_message(move |_| tx.send("b").unwrap());
        b_in.start();
        a_out.post_message("slow", []).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        b_out.post_message("quick", []).unwrap();
        assert_eq!(
            rx.recv().unwrap(),
            "b",
            "b is served while a's callback sleeps"
        );
        assert_eq!(rx.recv().unwrap(), "a");
    });
}

#[test]
fn a_callback_can_wait_for_another_ports_message() {
    watchdog(Duration::from_secs(60), || {
        let (a_out, a_in) = msgport_testkit::hostile::socket_pair();
        let (c_out, c_in) = msgport_testkit::hostile::socket_pair();
        let (tx, rx) = std::sync::mpsc::channel();
        a_in.on_message(move |_| {
            // Blocks this callback until c's message arrives: the reactor must still deliver.
            let got = c_in.recv_timeout(Duration::from_secs(20));
            tx.send(got.map(|e| e.data::<String>().unwrap())).unwrap();
        });
        a_in.start();
        a_out.post_message("wait for c", []).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        c_out.post_message("from c".to_string(), []).unwrap();
        assert_eq!(rx.recv().unwrap().unwrap(), "from c");
    });
}

#[test]
fn a_thousand_ports_with_callbacks_in_one_process() {
    watchdog(Duration::from_secs(120), || {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut outs = Vec::new();
        let mut ins = Vec::new();
        for i in 0..1_000u32 {
            let (out, inp) = msgport_testkit::hostile::socket_pair();
            let tx = tx.clone();
            inp.on_message(move |e| tx.send((i, e.data::<u32>().unwrap())).unwrap());
            inp.start();
            outs.push(out);
            ins.push(inp);
        }
        for (i, out) in outs.iter().enumerate() {
            out.post_message(i as u32, []).unwrap();
        }
        let mut seen = vec![false; 1_000];
        for _ in 0..1_000 {
            let (i, v) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(i, v);
            seen[i as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    });
}

/// Errors name the path they concern (they used to read "Address already in use").
#[test]
fn listen_and_connect_errors_name_the_path() {
    let path = std::env::temp_dir().join(format!("msgport-err-{}.sock", std::process::id()));
    let _first = process::listen(&path).unwrap();
    let taken = process::listen(&path).unwrap_err();
    assert!(
        taken.to_string().contains(&*path.to_string_lossy()),
        "{taken}"
    );
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    let missing = path.with_extension("missing");
    let refused = process::connect(&missing).unwrap_err();
    assert!(
        refused.to_string().contains(&*missing.to_string_lossy()),
        "{refused}"
    );
    assert_eq!(refused.kind(), std::io::ErrorKind::NotFound);
}

/// What is posted toward a process that does not read waits in the poster's process once the
/// socket is full, and `unsent_bytes` says how much: on a port whose peer lives elsewhere, and
/// on a port whose peer end left this process. Nothing is lost: once read, all of it arrives,
/// in order, and nothing is left waiting.
#[test]
fn unsent_bytes_count_what_waits_for_a_reader_that_does_not_read() {
    const CHUNK: usize = 32 << 10;
    const COUNT: usize = 384; // 12 MiB, three times what a port's socket holds at most
    watchdog(LIMIT, || {
        let (near, far, _rendezvous) = msgport_testkit::linked_pair("unsent");
        // `stay` keeps its peer in this process until it is sent over the socket: from then
        // on its posts are forwarded through a link, and `arrived` (its new peer, whose own
        // peer is now elsewhere) posts through one. Nobody waits on either: nothing reads.
        let (stay, leave) = MessageChannel::new().into_ports();
        assert_eq!(stay.unsent_bytes(), 0);
        near.post_message("take", [leave]).unwrap();
        let arrived = far.blocking_recv().unwrap().ports.pop().unwrap();
        let chunk = |i: usize| Value::from(&vec![i as u8; CHUNK][..]);
        for (port, name) in [(&stay, "forwarded"), (&arrived, "remote")] {
            assert_eq!(port.unsent_bytes(), 0, "{name}");
            for i in 0..COUNT {
                port.post_message(chunk(i), []).unwrap();
            }
            let unsent = port.unsent_bytes();
            assert!(
                (4 << 20..=COUNT * (CHUNK + 64)).contains(&unsent),
                "{name}: {unsent} bytes unsent of {}",
                COUNT * CHUNK
            );
        }
        for (from, to, name) in [(&stay, &arrived, "forwarded"), (&arrived, &stay, "remote")] {
            for i in 0..COUNT {
                let got = to.recv_timeout(Duration::from_secs(30)).unwrap();
                assert_eq!(got.value().unwrap(), chunk(i), "{name} #{i}");
            }
            // Everything was read, so the last write is done or about to be.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while from.unsent_bytes() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(from.unsent_bytes(), 0, "{name}");
        }
    });
}
