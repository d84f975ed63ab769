//! Where a scenario's peer runs, and the semantics suite made from one table.
//!
//! A scenario has a local side (the test body, `fn(&dyn Topology)`) and a peer side: a
//! [`Peer`] script, an `async fn(MessagePort)` that a [`Topology`] runs where it says (same
//! thread, another thread, a task on a runtime, at the end of several transfers, in a child
//! process, or after crossing three processes). [`semantics_suite!`](crate::semantics_suite)
//! turns the list of scenarios and peers into one test per scenario and topology, plus one per
//! scenario with both ends in child processes: a new scenario is a function and its name in the
//! list.

use std::future::Future;
use std::pin::Pin;

use msgport::{MessageChannel, MessagePort};

use crate::child;

/// What a peer script returns.
pub type PeerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// A peer script: a plain function, so that a child process can run it by name.
pub type Peer = fn(MessagePort) -> PeerFuture;
/// Named peer scripts, so that a child process can run one.
pub type Peers = &'static [(&'static str, Peer)];
/// A scenario: the local side of a test, given where its peer runs.
pub type Scenario = fn(&dyn Topology);
/// Named scenarios, so that a child process can run a whole one.
pub type Scenarios = &'static [(&'static str, Scenario)];

/// Where the peer side of a scenario runs.
pub trait Topology {
    /// A fresh channel: `(local, remote)`, the remote end as the topology delivers it.
    fn channel(&self) -> (MessagePort, MessagePort) {
        MessageChannel::new().into_ports()
    }
    /// Runs `peer` with `port`; the returned handle waits for it.
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle;
    /// How many rounds a race scenario runs here (fewer where a round costs a process).
    fn race_rounds(&self) -> usize {
        1000
    }
}

/// A running peer.
pub enum PeerHandle {
    /// On the test's thread: runs when settled or joined.
    Deferred(MessagePort, Peer),
    /// On a thread.
    Thread(std::thread::JoinHandle<()>),
    /// A task on a runtime of its own.
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
                unreachable!("matched above")
            };
            futures::executor::block_on(peer(port));
        }
    }

    /// Waits for the peer (runs it now, for the same-thread topology); a peer child must exit
    /// with status 0 (its own leak check included).
    pub fn join(self) {
        match self {
            PeerHandle::Deferred(port, peer) => futures::executor::block_on(peer(port)),
            PeerHandle::Thread(t) => t.join().expect("peer panicked"),
            PeerHandle::Task(rt, task) => rt.block_on(task).expect("peer task panicked"),
            PeerHandle::Children(children) => {
                for (child, boot) in children {
                    // A relay serves until its bootstrap port closes.
                    drop(boot);
                    child::wait_ok(child);
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
            carrier_in
                .post_message("hop", [remote])
                .expect("transfer a port");
            remote = std::thread::spawn(move || {
                let mut event = carrier_out.blocking_recv().expect("carried port");
                event.ports.pop().expect("one port")
            })
            .join()
            .expect("the carrier thread");
        }
        (local, remote)
    }
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle {
        TwoThreads.spawn(port, peer)
    }
}

/// The peer runs in a child process (its end crossed one process boundary).
pub struct InChild(pub Peers);
impl Topology for InChild {
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle {
        let (child, boot) = child::spawn(&format!("peer:{}", name_of(self.0, peer)));
        boot.post_message("run", [port]).expect("send the port");
        PeerHandle::Children(vec![(child, boot)])
    }
    fn race_rounds(&self) -> usize {
        20
    }
}

/// The peer's end goes to child A, back to this process, then to child B, where the peer runs:
/// it crossed three process boundaries.
pub struct ViaChildren(pub Peers);
impl Topology for ViaChildren {
    fn spawn(&self, port: MessagePort, peer: Peer) -> PeerHandle {
        let (relay, relay_boot) = child::spawn("relay");
        relay_boot
            .post_message("there", [port])
            .expect("send the port");
        let port = relay_boot
            .blocking_recv()
            .expect("port back")
            .ports
            .pop()
            .expect("one port");
        let (child, boot) = child::spawn(&format!("peer:{}", name_of(self.0, peer)));
        boot.post_message("run", [port]).expect("send the port");
        PeerHandle::Children(vec![(child, boot), (relay, relay_boot)])
    }
    fn race_rounds(&self) -> usize {
        10
    }
}

fn name_of(peers: Peers, peer: Peer) -> &'static str {
    peers
        .iter()
        .find(|(_, p)| std::ptr::fn_addr_eq(*p, peer))
        .map(|(name, _)| *name)
        .expect("peer script missing from the table")
}

/// Runs scenario `name` in a child of this process (its peer in a grandchild) and checks that it
/// succeeded.
pub fn scenario_in_child(name: &str) {
    let (child, _boot) = child::spawn(&format!("scenario:{name}"));
    child::wait_ok(child);
}

/// The child-side entry of the semantics suite: runs the role named in the environment, if any,
/// then exits (after the leak check).
pub fn run_child_role(peers: Peers, scenarios: Scenarios) {
    let Some(role) = child::role() else {
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
        child::record_baseline();
        scenario(&InChild(peers));
        child::finish(None);
    }
    let boot = child::bootstrap();
    if role == "relay" {
        // Send every port that arrives straight back.
        while let Some(event) = boot.blocking_recv() {
            boot.post_message("back", event.ports)
                .expect("send the port back");
        }
    } else if let Some(name) = role.strip_prefix("peer:") {
        let peer = peers
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
    child::finish(Some(boot));
}

/// Child role: sends every message back, with its ports, until the port closes.
pub fn echo(boot: &MessagePort) {
    while let Some(mut event) = boot.blocking_recv() {
        let ports = std::mem::take(&mut event.ports);
        boot.post_message(event.value().expect("a value"), ports)
            .expect("echo");
    }
}

/// Child role: every port that arrives gets a thread that echoes on it until it closes.
pub fn serve_ports(boot: &MessagePort) {
    let mut servers = Vec::new();
    while let Some(event) = boot.blocking_recv() {
        for port in event.ports {
            servers.push(std::thread::spawn(move || {
                while let Some(e) = port.blocking_recv() {
                    port.post_message(e.value().expect("a value"), [])
                        .expect("echo");
                }
            }));
        }
    }
    for server in servers {
        let _ = server.join();
    }
}

/// The semantics suite of a test file, from one table: `child_entry` (the child roles), one
/// test per scenario in every topology (a module per topology), and one per scenario with both
/// ends in child processes (`ends_in_two_children`). Scenarios are `fn(&dyn Topology)`, peers
/// `fn(MessagePort) -> PeerFuture`, all in scope where the macro is used.
///
/// ```ignore
/// msgport_testkit::semantics_suite! {
///     limit: Duration::from_secs(60),
///     peers: [stream_100k, echo_doubled],
///     scenarios: [order_100k, queued_requests_are_answered],
///     topologies: [same_thread => SameThread, one_end_in_a_child => InChild(PEERS)],
/// }
/// ```
#[macro_export]
macro_rules! semantics_suite {
    (
        limit: $limit:expr,
        peers: [$($peer:ident),* $(,)?],
        scenarios: $scenarios:tt,
        topologies: [$($topology:ident => $make:expr),* $(,)?] $(,)?
    ) => {
        /// Every peer script, by name, for the child-process topologies.
        const PEERS: $crate::topology::Peers = &[$((stringify!($peer), $peer)),*];

        /// Every scenario, by name, for the runs with both ends in children.
        const SCENARIOS: $crate::topology::Scenarios = $crate::__scenario_table!($scenarios);

        /// Not a test: the entry point of the child processes (returns at once in the test
        /// process).
        #[test]
        fn child_entry() {
            $crate::topology::run_child_role(PEERS, SCENARIOS);
        }

        $crate::__scenarios_in_children!($limit, $scenarios);
        $($crate::__scenarios_in!($topology, $limit, $make, $scenarios);)*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __scenario_table {
    ([$($scenario:ident),* $(,)?]) => {
        &[$((stringify!($scenario), $scenario as $crate::topology::Scenario)),*]
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __scenarios_in {
    ($topology:ident, $limit:expr, $make:expr, [$($scenario:ident),* $(,)?]) => {
        mod $topology {
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    $crate::watchdog($limit, || super::$scenario(&$make));
                }
            )*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __scenarios_in_children {
    ($limit:expr, [$($scenario:ident),* $(,)?]) => {
        /// Both ends of every channel in child processes: the scenario runs in a child, its
        /// peer in that child's child.
        mod ends_in_two_children {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    $crate::watchdog($limit, || {
                        $crate::topology::scenario_in_child(stringify!($scenario))
                    });
                }
            )*
        }
    };
}
