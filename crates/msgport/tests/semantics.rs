//! The semantics suite (DESIGN §2), written once and run over every topology.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use msgport::{value, MessageChannel, MessagePort, Value};
use msgport_testkit::topology::*;

const LIMIT: Duration = Duration::from_secs(60);

fn stream_100k(port: MessagePort) -> PeerFuture {
    Box::pin(async move {
        for i in 0..100_000u64 {
            port.post_message(i, []).unwrap();
        }
    })
}

/// 100,000 messages arrive in order, then the close.
fn order_100k(t: &dyn Topology) {
    let (local, remote) = t.channel();
    let mut peer = t.spawn(remote, stream_100k);
    peer.settle();
    for i in 0..100_000u64 {
        let event = local.blocking_recv().expect("message before close");
        assert_eq!(event.data::<u64>().unwrap(), i);
    }
    assert!(local.blocking_recv().is_none());
    peer.join();
}

fn post_50_then_close(port: MessagePort) -> PeerFuture {
    Box::pin(async move {
        for i in 0..50u32 {
            port.post_message(i, []).unwrap();
        }
        port.close();
        // Posts after close are dropped silently.
        port.post_message(999u32, []).unwrap();
    })
}

fn post_50_then_drop(port: MessagePort) -> PeerFuture {
    Box::pin(async move {
        for i in 0..50u32 {
            port.post_message(i, []).unwrap();
        }
    })
}

/// The peer posts N and closes (or is dropped) while this side reads: N messages, then exactly
/// one close, every time.
fn n_then_close_races(t: &dyn Topology) {
    for round in 0..t.race_rounds() {
        let (local, remote) = t.channel();
        let closes = Arc::new(AtomicUsize::new(0));
        let c = closes.clone();
        local.on_close(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        let script: Peer = if round % 2 == 0 {
            post_50_then_close
        } else {
            post_50_then_drop
        };
        let mut peer = t.spawn(remote, script);
        peer.settle();
        let mut got = Vec::new();
        while let Some(event) = local.blocking_recv() {
            got.push(event.data::<u32>().unwrap());
        }
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "round {round}");
        assert!(local.blocking_recv().is_none());
        // The close callback runs on whichever thread observes the close first: the closing
        // peer's (dispatching to a started port) or ours. Wait for it, then check it ran once.
        peer.join();
        let deadline = std::time::Instant::now() + LIMIT;
        while closes.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(closes.load(Ordering::SeqCst), 1, "round {round}");
    }
}

fn echo_doubled(port: MessagePort) -> PeerFuture {
    Box::pin(async move {
        for _ in 0..10 {
            let n: f64 = port.recv().await.unwrap().data().unwrap();
            port.post_message(n * 2.0, []).unwrap();
        }
        port.close();
    })
}

/// Requests posted before the peer listens are queued, answered in order, then the close.
fn queued_requests_are_answered(t: &dyn Topology) {
    let (local, remote) = t.channel();
    for i in 0..10 {
        local.post_message(f64::from(i), []).unwrap();
    }
    let mut peer = t.spawn(remote, echo_doubled);
    peer.settle();
    for i in 0..10 {
        assert_eq!(
            local.blocking_recv().unwrap().data::<f64>().unwrap(),
            f64::from(i) * 2.0
        );
    }
    assert!(local.blocking_recv().is_none());
    peer.join();
}

fn stream_replies(port: MessagePort) -> PeerFuture {
    Box::pin(async move {
        let event = port.recv().await.unwrap();
        let count = event.value().unwrap()["count"].as_f64().unwrap() as u32;
        let element = event.value().unwrap()["element"].clone();
        let (_, ports) = event.into_parts::<Value>().unwrap();
        let [reply]: [MessagePort; 1] = ports.try_into().unwrap();
        for _ in 0..count {
            reply.post_message(element.clone(), []).unwrap();
        }
        reply.close();
    })
}

/// The seed's reply stream: one request carrying a reply port, ten replies, then close.
fn reply_stream(t: &dyn Topology) {
    let (local, remote) = t.channel();
    let (replies, reply_end) = MessageChannel::new().into_ports();
    local
        .post_message(value!({ "element": 42, "count": 10 }), [reply_end])
        .unwrap();
    let mut peer = t.spawn(remote, stream_replies);
    peer.settle();
    let mut got = 0;
    while let Some(event) = replies.blocking_recv() {
        assert_eq!(event.data::<u32>().unwrap(), 42);
        got += 1;
    }
    assert_eq!(got, 10);
    peer.join();
}

fn answer_on_each_port(port: MessagePort) -> PeerFuture {
    Box::pin(async move {
        let event = port.recv().await.unwrap();
        assert_eq!(event.ports.len(), 100);
        for (i, p) in event.ports.iter().enumerate() {
            p.post_message(i as u32, []).unwrap();
        }
    })
}

/// 100 ports in one message each reach their own peer, in transfer-list order.
fn hundred_ports_in_one_message(t: &dyn Topology) {
    let (local, remote) = t.channel();
    let (near, far): (Vec<_>, Vec<_>) =
        (0..100).map(|_| MessageChannel::new().into_ports()).unzip();
    local.post_message("ports", far).unwrap();
    let mut peer = t.spawn(remote, answer_on_each_port);
    peer.settle();
    for (i, p) in near.iter().enumerate() {
        assert_eq!(p.blocking_recv().unwrap().data::<u32>().unwrap(), i as u32);
        // The peer dropped the far end after answering: close follows.
        assert!(p.blocking_recv().is_none());
    }
    peer.join();
}

fn post_mismatched_then_good(port: MessagePort) -> PeerFuture {
    Box::pin(async move {
        port.post_message("not a number", []).unwrap();
        port.post_message(7u32, []).unwrap();
        port.post_message(value!({ "x": [1, 2] }), []).unwrap();
    })
}

/// A message that does not decode as the requested type is an error for that message only.
fn decode_error_then_good_message(t: &dyn Topology) {
    let (local, remote) = t.channel();
    let mut peer = t.spawn(remote, post_mismatched_then_good);
    peer.settle();
    let bad = local.blocking_recv().unwrap();
    assert!(matches!(
        bad.data::<u32>(),
        Err(msgport::DecodeError::Mismatch(_))
    ));
    assert_eq!(bad.data::<String>().unwrap(), "not a number");
    assert_eq!(local.blocking_recv().unwrap().data::<u32>().unwrap(), 7);
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct X {
        x: Vec<u8>,
    }
    assert_eq!(
        local.blocking_recv().unwrap().data::<X>().unwrap(),
        X { x: vec![1, 2] }
    );
    assert!(local.blocking_recv().is_none());
    peer.join();
}

fn drop_at_once(port: MessagePort) -> PeerFuture {
    Box::pin(async move { drop(port) })
}

/// Posting to a port whose peer is gone is a silent drop; the close is observed.
fn posting_to_a_gone_peer_is_silent(t: &dyn Topology) {
    let (local, remote) = t.channel();
    let (keep, carried) = MessageChannel::new().into_ports();
    let peer = t.spawn(remote, drop_at_once);
    peer.join();
    assert!(local.blocking_recv().is_none());
    local.post_message("into the void", [carried]).unwrap();
    // The port carried by the dropped message closed with it.
    assert!(matches!(
        keep.recv_timeout(LIMIT),
        Err(msgport::RecvTimeoutError::Closed)
    ));
}

fn post_3_then_close(port: MessagePort) -> PeerFuture {
    Box::pin(async move {
        for i in 0..3u32 {
            port.post_message(i, []).unwrap();
        }
    })
}

/// Callbacks: nothing before `start`; then the messages in order and one close, after them.
fn callbacks_wait_for_start(t: &dyn Topology) {
    let (local, remote) = t.channel();
    let peer = t.spawn(remote, post_3_then_close);
    peer.join();
    let (tx, rx) = mpsc::channel::<Option<u32>>();
    let tx2 = tx.clone();
    local.on_message(move |e| tx.send(Some(e.data::<u32>().unwrap())).unwrap());
    local.on_close(move || tx2.send(None).unwrap());
    assert!(
        rx.recv_timeout(Duration::from_millis(50)).is_err(),
        "delivered before start"
    );
    local.start();
    local.start();
    let got: Vec<_> = (0..4).map(|_| rx.recv_timeout(LIMIT).unwrap()).collect();
    assert_eq!(got, vec![Some(0), Some(1), Some(2), None]);
    assert!(
        rx.recv_timeout(Duration::from_millis(50)).is_err(),
        "close seen twice"
    );
}

msgport_testkit::semantics_suite! {
    limit: LIMIT,
    peers: [
        stream_100k,
        post_50_then_close,
        post_50_then_drop,
        echo_doubled,
        stream_replies,
        answer_on_each_port,
        post_mismatched_then_good,
        drop_at_once,
        post_3_then_close,
    ],
    scenarios: [
        order_100k,
        n_then_close_races,
        queued_requests_are_answered,
        reply_stream,
        hundred_ports_in_one_message,
        decode_error_then_good_message,
        posting_to_a_gone_peer_is_silent,
        callbacks_wait_for_start,
    ],
    topologies: [
        same_thread => SameThread,
        two_threads => TwoThreads,
        async_tasks => AsyncTasks,
        transferred_3_times => Transferred(3),
        one_end_in_a_child => InChild(PEERS),
        end_crossed_three_processes => ViaChildren(PEERS),
    ],
}
