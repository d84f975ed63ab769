//! The semantics suite's harness: topologies, and a watchdog.
//!
//! A scenario has a local side (the test body) and a peer side: an `async fn(MessagePort)` that
//! a [`Topology`] runs where it says (same thread, another thread, a task on a runtime, at the
//! end of several transfers). The cross-process topologies of the transport add themselves here.

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::time::Duration;

use msgport::{MessageChannel, MessagePort};

pub type PeerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// A peer script: a plain function, so that a future child-process topology can name it.
pub type Peer = fn(MessagePort) -> PeerFuture;

/// Where the peer side of a scenario runs.
pub trait Topology {
    /// A fresh channel: `(local, remote)`, the remote end as the topology delivers it.
    fn channel(&self) -> (MessagePort, MessagePort) {
        MessageChannel::new().into_ports()
    }
    /// Runs `peer` with `port`; the returned handle waits for it.
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle;
}

pub enum PeerHandle {
    Deferred(MessagePort, Peer),
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::runtime::Runtime, tokio::task::JoinHandle<()>),
}

impl PeerHandle {
    /// Lets a deferred (same-thread) peer run now; the others are already running.
    pub fn settle(&mut self) {
        if let PeerHandle::Deferred(..) = self {
            let PeerHandle::Deferred(port, peer) =
                std::mem::replace(self, PeerHandle::Thread(std::thread::spawn(|| {})))
            else {
                unreachable!()
            };
            futures::executor::block_on(peer(port));
        }
    }

    /// Waits for the peer (runs it now, for the same-thread topology).
    pub fn join(self) {
        match self {
            PeerHandle::Deferred(port, peer) => futures::executor::block_on(peer(port)),
            PeerHandle::Thread(t) => t.join().expect("peer panicked"),
            PeerHandle::Task(rt, task) => rt.block_on(task).expect("peer task panicked"),
        }
    }
}

/// Both ends on the test's thread: the peer runs when joined.
pub struct SameThread;
impl Topology for SameThread {
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle {
        PeerHandle::Deferred(port, peer)
    }
}

/// The peer on its own thread.
pub struct TwoThreads;
impl Topology for TwoThreads {
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle {
        PeerHandle::Thread(std::thread::spawn(move || {
            futures::executor::block_on(peer(port))
        }))
    }
}

/// The peer as a task on a multi-threaded tokio runtime.
pub struct AsyncTasks;
impl Topology for AsyncTasks {
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let task = rt.spawn(peer(port));
        PeerHandle::Task(rt, task)
    }
}

/// The remote end reaches the peer after `hops` transfers through other channels, each received
/// on its own thread; the peer then runs on a thread.
pub struct Transferred(pub usize);
impl Topology for Transferred {
    fn channel(&self) -> (MessagePort, MessagePort) {
        let (local, mut remote) = MessageChannel::new().into_ports();
        for _ in 0..self.0 {
            let (carrier_in, carrier_out) = MessageChannel::new().into_ports();
            carrier_in.post_message("hop", [remote]).unwrap();
            remote = std::thread::spawn(move || {
                let mut event = carrier_out.blocking_recv().expect("carried port");
                event.ports.pop().expect("one port")
            })
            .join()
            .unwrap();
        }
        (local, remote)
    }
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle {
        TwoThreads.spawn(port, peer)
    }
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit` (a hang is a bug).
pub fn watchdog<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            worker.join().unwrap();
            v
        }
        Err(_) => {
            if worker.is_finished() {
                // The body panicked: surface its panic.
                worker.join().unwrap();
                unreachable!("a body that returned sent its result");
            }
            panic!("watchdog: the test did not finish within {limit:?}");
        }
    }
}
