//! The semantics suite's harness: topologies, and a watchdog.
//!
//! A scenario has a local side (the test body) and a peer side: an `async fn(MessagePort)` that
//! a [`Topology`] runs where it says (same thread, another thread, a task on a runtime, at the
//! end of several transfers). The cross-process topologies of the transport add themselves here.

#![allow(dead_code)]

pub mod hostile;

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
    /// Child processes, with their bootstrap ports (kept open until they are joined).
    Children(Vec<(std::process::Child, MessagePort)>),
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
            PeerHandle::Children(children) => {
                for (mut child, boot) in children {
                    // A relay serves until its bootstrap port closes.
                    drop(boot);
                    let status = child.wait().expect("wait for child");
                    assert!(status.success(), "peer child failed: {status}");
                }
            }
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

/// The environment variable that gives a re-run test binary its child role.
pub const ROLE: &str = "MSGPORT_TEST_ROLE";

/// Re-runs this test binary as a child running only the test `entry`, in role `role`.
pub fn spawn_child(entry: &str, role: &str) -> (std::process::Child, MessagePort) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdout(std::process::Stdio::null());
    msgport::process::spawn(&mut cmd).expect("spawn child")
}

/// Named peer scripts, so that a child process can run one.
pub type Peers = &'static [(&'static str, Peer)];

/// Named scenarios, so that a child process can run a whole one.
pub type Scenarios = &'static [(&'static str, fn(&dyn Topology))];

/// Runs scenario `name` in a child of this process (its peer in a grandchild) and checks that it
/// succeeded.
pub fn scenario_in_child(name: &str) {
    let (mut child, _boot) = spawn_child("child_entry", &format!("scenario:{name}"));
    let status = child.wait().expect("wait for child");
    assert!(
        status.success(),
        "scenario {name} failed in a child: {status}"
    );
}

fn name_of(peers: Peers, peer: Peer) -> &'static str {
    peers
        .iter()
        .find(|(_, p)| std::ptr::fn_addr_eq(*p, peer))
        .map(|(name, _)| *name)
        .expect("peer script missing from the table")
}

/// The child-side entry: runs the role named in the environment, if any, then exits.
pub fn run_child_role(entry_peers: Peers, scenarios: Scenarios) {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    if let Some(name) = role.strip_prefix("scenario:") {
        // A whole scenario in this child, its peer in a child of ours: the two ends of every
        // channel live in two children of the test process's tree, none in the test process.
        let scenario = scenarios
            .iter()
            .find(|(n, _)| *n == name)
            .expect("known scenario")
            .1;
        scenario(&InChild(entry_peers));
        assert!(
            msgport::process::flush(std::time::Duration::from_secs(30)),
            "flush"
        );
        std::process::exit(0);
    }
    let boot = msgport::process::bootstrap().expect("bootstrap");
    if role == "relay" {
        // Send every port that arrives straight back.
        while let Some(event) = boot.blocking_recv() {
            boot.post_message("back", event.ports).unwrap();
        }
    } else if let Some(name) = role.strip_prefix("peer:") {
        let peer = entry_peers
            .iter()
            .find(|(n, _)| *n == name)
            .expect("known peer")
            .1;
        let mut event = boot.blocking_recv().expect("the port to run on");
        let port = event.ports.pop().expect("one port");
        futures::executor::block_on(peer(port));
    } else {
        panic!("unknown role {role}");
    }
    assert!(
        msgport::process::flush(std::time::Duration::from_secs(30)),
        "flush"
    );
    std::process::exit(0);
}

/// The peer runs in a child process (its end crossed one process boundary).
pub struct InChild(pub Peers);
impl Topology for InChild {
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle {
        let (child, boot) = spawn_child("child_entry", &format!("peer:{}", name_of(self.0, peer)));
        boot.post_message("run", [port]).unwrap();
        PeerHandle::Children(vec![(child, boot)])
    }
}

/// The peer's end goes to child A, back to this process, then to child B, where the peer runs:
/// it crossed three process boundaries.
pub struct ViaChildren(pub Peers);
impl Topology for ViaChildren {
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle {
        let (relay, relay_boot) = spawn_child("child_entry", "relay");
        relay_boot.post_message("there", [port]).unwrap();
        let port = relay_boot
            .blocking_recv()
            .expect("port back")
            .ports
            .pop()
            .expect("one port");
        let (child, boot) = spawn_child("child_entry", &format!("peer:{}", name_of(self.0, peer)));
        boot.post_message("run", [port]).unwrap();
        PeerHandle::Children(vec![(child, boot), (relay, relay_boot)])
    }
}

/// Child role: sends every message back, with its ports, until the port closes.
pub fn echo(boot: &MessagePort) {
    while let Some(mut event) = boot.blocking_recv() {
        let ports = std::mem::take(&mut event.ports);
        boot.post_message(event.value().unwrap(), ports).unwrap();
    }
}

/// Child role: every port that arrives gets a thread that echoes on it until it closes.
pub fn serve_ports(boot: &MessagePort) {
    while let Some(event) = boot.blocking_recv() {
        for port in event.ports {
            std::thread::spawn(move || {
                while let Some(e) = port.blocking_recv() {
                    port.post_message(e.value().unwrap(), []).unwrap();
                }
            });
        }
    }
}
