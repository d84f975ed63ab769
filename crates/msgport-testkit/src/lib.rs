//! msgport's shared test harness (not published).
//!
//! Every multi-process test of the workspace is built from these pieces:
//! - [`child`]: the test binary re-runs itself in a *role* (`child_entry` + an environment
//!   variable), a role ends with [`child::finish`] (flush, then the descriptor-leak check),
//!   and [`child::isolated`] runs one test alone in a fresh process;
//! - [`watchdog`]: a hang fails the test instead of stalling the suite;
//! - [`fds`]: descriptor counts and the leak check;
//! - [`topology`]: where a scenario's peer runs (same thread, threads, tasks, transferred,
//!   child processes), and [`semantics_suite!`], which makes a test per scenario and topology
//!   from one table;
//! - [`hostile`]: a port whose other end is a bare socket in the test's hands, to write
//!   hand-made frames and descriptors into.

pub mod child;
pub mod fds;
pub mod hostile;
pub mod topology;

use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on a thread and fails the test if it takes longer than `limit` (a hang is a bug).
pub fn watchdog<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            worker.join().expect("the body returned");
            v
        }
        Err(_) => {
            if worker.is_finished() {
                // The body panicked: surface its panic.
                if let Err(panic) = worker.join() {
                    std::panic::resume_unwind(panic);
                }
                unreachable!("a body that returned sent its result");
            }
            panic!("watchdog: the test did not finish within {limit:?}");
        }
    }
}

/// Two ports joined through a socket made by `process::listen` and `process::connect` in this
/// process: each port's peer is "in another process" (a link, read by the reactor), both in the
/// test's hands. The listening path lives in a directory named by `tag` and this process, gone
/// with the returned [`Rendezvous`].
pub fn linked_pair(tag: &str) -> (msgport::MessagePort, msgport::MessagePort, Rendezvous) {
    let dir = std::env::temp_dir().join(format!("msgport-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("rendezvous.sock");
    let _ = std::fs::remove_file(&path);
    let listener = msgport::process::listen(&path).expect("listen");
    let connecting = std::thread::spawn(move || msgport::process::connect(&path).expect("connect"));
    let (accepted, _) = listener.accept().expect("accept");
    let connected = connecting.join().expect("the connecting thread");
    (accepted, connected, Rendezvous(dir))
}

/// The directory of a [`linked_pair`]'s listening path, removed on drop.
pub struct Rendezvous(std::path::PathBuf);

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The repository README's examples, compiled and run as doc tests (here, in a crate that is
/// not published, since the README is outside every published crate).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct RepositoryReadme;
