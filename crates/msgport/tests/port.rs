//! Rules of a single port that need no topology: transfer edge cases, leaks, every receive form.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures::StreamExt;
use msgport::{
    value, MessageChannel, MessagePort, PostError, RecvTimeoutError, TryRecvError, Value,
};
use msgport_testkit::watchdog;
use serde::{Deserialize, Serialize};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn ports_are_send_and_sync_events_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<MessagePort>();
    send_sync::<MessageChannel>();
    send::<msgport::MessageEvent>();
    send_sync::<Value>();
}

#[test]
fn posting_the_peer_through_its_own_channel_kills_the_channel() {
    watchdog(LIMIT, || {
        let (port1, port2) = MessageChannel::new().into_ports();
        port2.post_message("queued for port1", []).unwrap();
        assert_eq!(
            port1.post_message("x", [port2]),
            Err(PostError::PeerTransferred)
        );
        // port1 still gets what was queued for it, then the close; later posts go nowhere.
        assert_eq!(
            port1.blocking_recv().unwrap().data::<String>().unwrap(),
            "queued for port1"
        );
        assert!(port1.blocking_recv().is_none());
        port1.post_message("after", []).unwrap();
        assert!(port1.blocking_recv().is_none());
    });
}

#[test]
fn peer_inside_a_larger_transfer_list_closes_the_others_too() {
    let (port1, port2) = MessageChannel::new().into_ports();
    let (keep, other) = MessageChannel::new().into_ports();
    assert_eq!(
        port1.post_message((), [other, port2]),
        Err(PostError::PeerTransferred)
    );
    assert!(matches!(keep.try_recv(), Err(TryRecvError::Closed)));
}

#[test]
fn a_closed_port_can_be_transferred_and_arrives_closed() {
    let (a, b) = MessageChannel::new().into_ports();
    let (closed, closed_peer) = MessageChannel::new().into_ports();
    closed.close();
    closed.close(); // idempotent
    a.post_message((), [closed]).unwrap();
    let mut event = b.blocking_recv().unwrap();
    let arrived = event.ports.pop().unwrap();
    assert!(arrived.is_closed());
    assert!(matches!(arrived.try_recv(), Err(TryRecvError::Closed)));
    assert!(closed_peer.blocking_recv().is_none());
}

#[test]
fn a_port_whose_peer_closed_arrives_with_its_queue_then_close() {
    let (a, b) = MessageChannel::new().into_ports();
    let (x, y) = MessageChannel::new().into_ports();
    x.post_message(1u8, []).unwrap();
    x.post_message(2u8, []).unwrap();
    drop(x);
    a.post_message((), [y]).unwrap();
    let y = b.blocking_recv().unwrap().ports.pop().unwrap();
    assert_eq!(y.blocking_recv().unwrap().data::<u8>().unwrap(), 1);
    assert_eq!(y.blocking_recv().unwrap().data::<u8>().unwrap(), 2);
    assert!(y.blocking_recv().is_none());
}

#[test]
fn transferred_several_times_before_start_keeps_everything_in_order() {
    watchdog(LIMIT, || {
        let (sender, mut receiving) = MessageChannel::new().into_ports();
        let mut next = 0u32;
        for _hop in 0..4 {
            for _ in 0..25 {
                sender.post_message(next, []).unwrap();
                next += 1;
            }
            let (c_in, c_out) = MessageChannel::new().into_ports();
            c_in.post_message((), [receiving]).unwrap();
            // Posted while the port is in flight.
            sender.post_message(next, []).unwrap();
            next += 1;
            receiving =
                std::thread::spawn(move || c_out.blocking_recv().unwrap().ports.pop().unwrap())
                    .join()
                    .unwrap();
        }
        drop(sender);
        let got: Vec<u32> = std::iter::from_fn(|| receiving.blocking_recv())
            .map(|e| e.data().unwrap())
            .collect();
        assert_eq!(got, (0..next).collect::<Vec<_>>());
    });
}

#[test]
fn a_transferred_port_loses_its_callbacks_and_arrives_unstarted() {
    let (a, b) = MessageChannel::new().into_ports();
    let (x, y) = MessageChannel::new().into_ports();
    let (tx, rx) = mpsc::channel();
    y.on_message(move |e| tx.send(e.data::<u32>().unwrap()).unwrap());
    y.start();
    x.post_message(1u32, []).unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 1);
    a.post_message((), [y]).unwrap();
    x.post_message(2u32, []).unwrap();
    assert!(
        rx.recv_timeout(Duration::from_millis(20)).is_err(),
        "old callback still ran"
    );
    let y = b.blocking_recv().unwrap().ports.pop().unwrap();
    assert_eq!(y.try_recv().unwrap().data::<u32>().unwrap(), 2);
}

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A payload that counts its live instances.
#[derive(Serialize)]
struct Counted(u32);
impl Counted {
    fn new(n: u32) -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Counted(n)
    }
}
impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn dropping_a_channel_with_queued_messages_holding_ports_leaks_nothing() {
    let (a, b) = MessageChannel::new().into_ports();
    let mut far_ends = Vec::new();
    for i in 0..100 {
        let (near, far) = MessageChannel::new().into_ports();
        // Each carried port itself holds queued messages that hold ports.
        let (deep_near, deep_far) = MessageChannel::new().into_ports();
        far.post_message(Counted::new(i), [deep_far]).unwrap();
        a.post_message(Counted::new(i), [near]).unwrap();
        far_ends.push(far);
        far_ends.push(deep_near);
    }
    assert_eq!(LIVE.load(Ordering::SeqCst), 200);
    drop(a);
    drop(b);
    assert_eq!(LIVE.load(Ordering::SeqCst), 0, "payloads leaked");
    for end in far_ends {
        assert!(
            matches!(end.try_recv(), Err(TryRecvError::Closed)),
            "a carried port leaked"
        );
    }
}

/// A type whose serialization panics: moving it through a port must never serialize it.
#[derive(Deserialize, Debug, PartialEq)]
struct NoSerialize(Vec<u8>);
impl Serialize for NoSerialize {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("in-process messages must move, not serialize");
    }
}

#[test]
fn in_process_data_moves_without_encoding() {
    let (a, b) = MessageChannel::new().into_ports();
    a.post_message(NoSerialize(vec![1, 2, 3]), []).unwrap();
    let mut event = b.try_recv().unwrap();
    assert!(event.is::<NoSerialize>());
    assert_eq!(
        event.take_data::<NoSerialize>().unwrap(),
        NoSerialize(vec![1, 2, 3])
    );
    assert_eq!(
        event.take_data::<NoSerialize>(),
        Err(msgport::DecodeError::Taken)
    );
}

#[test]
fn port_slots_must_index_the_transfer_list() {
    let (a, b) = MessageChannel::new().into_ports();
    let (keep, carried) = MessageChannel::new().into_ports();
    assert_eq!(
        a.post_message(value!({ "p": (Value::Port(1)) }), [carried]),
        Err(PostError::PortNotTransferred {
            slot: 1,
            transferred: 1
        })
    );
    assert!(matches!(b.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(keep.try_recv(), Err(TryRecvError::Closed)));
    let (_keep, carried) = MessageChannel::new().into_ports();
    a.post_message(value!({ "p": (Value::Port(0)) }), [carried])
        .unwrap();
    let event = b.try_recv().unwrap();
    assert_eq!(event.value().unwrap()["p"], Value::Port(0));
    assert_eq!(event.ports.len(), 1);
}

#[test]
fn try_recv_and_recv_timeout() {
    let (a, b) = MessageChannel::new().into_ports();
    assert!(matches!(b.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(
        b.recv_timeout(Duration::from_millis(10)),
        Err(RecvTimeoutError::Timeout)
    ));
    a.post_message(1u8, []).unwrap();
    assert!(b.recv_timeout(Duration::from_millis(10)).is_ok());
    drop(a);
    assert!(matches!(
        b.recv_timeout(LIMIT),
        Err(RecvTimeoutError::Closed)
    ));
    assert!(matches!(b.try_recv(), Err(TryRecvError::Closed)));
}

#[test]
fn closing_wakes_a_blocked_receiver_on_the_same_end() {
    watchdog(LIMIT, || {
        let (_a, b) = MessageChannel::new().into_ports();
        let b = Arc::new(b);
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || b2.blocking_recv().is_none());
        std::thread::sleep(Duration::from_millis(20));
        b.close();
        assert!(waiter.join().unwrap());
    });
}

#[test]
fn stream_collects_until_close() {
    let (a, b) = MessageChannel::new().into_ports();
    std::thread::spawn(move || {
        for i in 0..100u32 {
            a.post_message(i, []).unwrap();
        }
    });
    let got: Vec<u32> =
        futures::executor::block_on(b.map(|e| e.data::<u32>().unwrap()).collect::<Vec<_>>());
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_works_on_tokio_and_is_cancel_safe() {
    let (a, b) = MessageChannel::new().into_ports();
    // A recv cancelled by a timeout loses nothing.
    assert!(tokio::time::timeout(Duration::from_millis(10), b.recv())
        .await
        .is_err());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        a.post_message("late", []).unwrap();
    });
    let event = b.recv().await.unwrap();
    assert_eq!(event.data::<String>().unwrap(), "late");
    assert!(b.recv().await.is_none());
}

#[test]
fn a_panicking_callback_is_contained_and_the_port_keeps_working() {
    let (a, b) = MessageChannel::new().into_ports();
    let (tx, rx) = mpsc::channel();
    b.on_message(move |e| {
        let n = e.data::<u32>().unwrap();
        if n == 1 {
            panic!("callback failure on purpose");
        }
        tx.send(n).unwrap();
    });
    b.start();
    for i in 0..3u32 {
        a.post_message(i, []).unwrap();
    }
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 0);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 2);
}

#[test]
fn callbacks_replying_to_each_other_do_not_recurse_or_deadlock() {
    watchdog(LIMIT, || {
        let (a, b) = MessageChannel::new().into_ports();
        let (a, b) = (Arc::new(a), Arc::new(b));
        let (done_tx, done_rx) = mpsc::channel();
        for (me, other) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
            let me_weak = Arc::downgrade(&me);
            let done = done_tx.clone();
            me.on_message(move |e| {
                let n = e.data::<u32>().unwrap();
                if n == 100_000 {
                    done.send(()).unwrap();
                } else if let Some(port) = me_weak.upgrade() {
                    port.post_message(n + 1, []).unwrap();
                }
            });
            drop(other);
        }
        a.start();
        b.start();
        a.post_message(0u32, []).unwrap();
        done_rx.recv_timeout(LIMIT).unwrap();
    });
}

#[test]
fn close_callback_runs_once_when_dropped_peer_and_close_race() {
    for _ in 0..1000 {
        let (a, b) = MessageChannel::new().into_ports();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        b.on_close(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        let t = std::thread::spawn(move || {
            a.close();
            drop(a);
        });
        b.start();
        t.join().unwrap();
        assert!(b.blocking_recv().is_none());
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}

/// A refused message hands its ports back when none was touched (as tokio's `SendError` hands
/// back its value): usable, entangled, in order.
#[test]
fn a_refused_message_hands_its_ports_back() {
    struct Unserializable;
    impl Serialize for Unserializable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no way"))
        }
    }
    watchdog(LIMIT, || {
        // A port slot past the transfer list, in process and across a socket.
        let (near, far) = msgport_testkit::hostile::socket_pair();
        for (a, _b) in [MessageChannel::new().into_ports(), (near, far)] {
            let (x, x_far) = MessageChannel::new().into_ports();
            let (y, y_far) = MessageChannel::new().into_ports();
            let refused = a.try_post_message(Value::Port(2), [x, y]).unwrap_err();
            assert!(matches!(
                refused.error,
                PostError::PortNotTransferred {
                    slot: 2,
                    transferred: 2
                }
            ));
            let [x, y]: [MessagePort; 2] = refused.ports.try_into().unwrap();
            x.post_message("still x", []).unwrap();
            y.post_message("still y", []).unwrap();
            assert_eq!(
                x_far.blocking_recv().unwrap().data::<String>().unwrap(),
                "still x"
            );
            assert_eq!(
                y_far.blocking_recv().unwrap().data::<String>().unwrap(),
                "still y"
            );
        }
        // Data that does not serialize, on a port whose peer is in another process.
        let (a, _b) = msgport_testkit::hostile::socket_pair();
        let (x, x_far) = MessageChannel::new().into_ports();
        let refused = a.try_post_message(Unserializable, [x]).unwrap_err();
        assert!(matches!(refused.error, PostError::Serialize(ref m) if m.contains("no way")));
        refused.ports[0].post_message(1u8, []).unwrap();
        assert_eq!(x_far.blocking_recv().unwrap().data::<u8>().unwrap(), 1);
        // The peer in the transfer list: the others come back, the channel is closed.
        let (a, b) = MessageChannel::new().into_ports();
        let (x, x_far) = MessageChannel::new().into_ports();
        let refused = a.try_post_message((), [x, b]).unwrap_err();
        assert_eq!(refused.error, PostError::PeerTransferred);
        assert_eq!(refused.ports.len(), 1);
        refused.ports[0].post_message(2u8, []).unwrap();
        assert_eq!(x_far.blocking_recv().unwrap().data::<u8>().unwrap(), 2);
        assert!(a.blocking_recv().is_none(), "the channel is closed");
        // `post_message` still closes them.
        let (a, _b) = MessageChannel::new().into_ports();
        let (x, x_far) = MessageChannel::new().into_ports();
        assert!(a.post_message(Value::Port(1), [x]).is_err());
        assert!(x_far.blocking_recv().is_none());
    });
}

/// A port slot inside a struct's `Value` field, with nothing transferred, is refused at the
/// sender across processes too (it used to leave, and the receiver closed the port on it).
#[test]
fn a_port_slot_inside_typed_data_is_checked_at_the_sender() {
    #[derive(Serialize)]
    struct Wrapper {
        name: &'static str,
        inner: Value,
    }
    watchdog(LIMIT, || {
        let (a, b) = msgport_testkit::hostile::socket_pair();
        let bad = Wrapper {
            name: "x",
            inner: Value::Array(vec![Value::Port(0)]),
        };
        assert_eq!(
            a.post_message(bad, []),
            Err(PostError::PortNotTransferred {
                slot: 0,
                transferred: 0
            })
        );
        // The channel is intact, and a slot that is transferred goes through.
        let (x, x_far) = MessageChannel::new().into_ports();
        let good = Wrapper {
            name: "y",
            inner: Value::Port(0),
        };
        a.post_message(good, [x]).unwrap();
        let mut event = b.blocking_recv().unwrap();
        assert_eq!(event.value().unwrap()["name"], Value::from("y"));
        event.ports.remove(0).post_message(3u8, []).unwrap();
        assert_eq!(x_far.blocking_recv().unwrap().data::<u8>().unwrap(), 3);
    });
}

/// Removing the listeners while the message callback runs takes effect: the running callback
/// is not put back when it returns (it used to be, so the next message went to the removed
/// callback instead of the pull waiting for it).
#[test]
fn removing_listeners_during_a_callback_takes_effect() {
    watchdog(LIMIT, || {
        let (a, b) = MessageChannel::new().into_ports();
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        b.on_message(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = entered_tx.send(());
            let _ = release_rx.recv();
        });
        b.start();
        // The callback runs on the posting thread: post from another one.
        let poster = std::thread::spawn(move || {
            a.post_message(1u32, []).unwrap();
            a
        });
        entered.recv().unwrap();
        b.remove_listeners();
        release.send(()).unwrap();
        drop(release);
        let a = poster.join().unwrap();
        a.post_message(2u32, []).unwrap();
        let next = b
            .recv_timeout(Duration::from_secs(5))
            .expect("the pull gets it");
        assert_eq!(next.data::<u32>().unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}
