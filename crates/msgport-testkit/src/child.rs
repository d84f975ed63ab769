//! Child processes by re-exec: the test binary runs itself again with `--exact child_entry`
//! and the role's name in [`ROLE`]. A test file has one `child_entry` test that returns at once
//! in the test process and runs the role in a child:
//!
//! ```ignore
//! #[test]
//! fn child_entry() {
//!     let Some(role) = msgport_testkit::child::role() else { return };
//!     let boot = msgport_testkit::child::bootstrap();
//!     match role.as_str() {
//!         "echo" => msgport_testkit::topology::echo(&boot),
//!         other => panic!("unknown role {other}"),
//!     }
//!     msgport_testkit::child::finish(Some(boot));
//! }
//! ```

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use msgport::MessagePort;

/// The environment variable that gives a re-run test binary its role.
pub const ROLE: &str = "MSGPORT_TEST_ROLE";

/// The name of the test that runs the roles.
pub const ENTRY: &str = "child_entry";

/// The role of this process, when it is a child of a test.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// This test binary, to run the test `entry` alone (stdout to /dev/null: the test harness's own
/// lines would mix with the parent's).
pub fn test_command(entry: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .stdout(Stdio::null());
    cmd
}

/// The command that runs this test binary in `role`.
pub fn command(role: &str) -> Command {
    let mut cmd = test_command(ENTRY);
    cmd.env(ROLE, role);
    cmd
}

/// Spawns this test binary in `role` with a msgport connection (`msgport::process::spawn`).
pub fn spawn(role: &str) -> (Child, MessagePort) {
    msgport::process::spawn(&mut command(role)).expect("spawn a child role")
}

/// Waits for a child and fails unless it exited with status 0.
pub fn wait_ok(mut child: Child) {
    let status = child.wait().expect("wait for the child");
    assert!(status.success(), "child failed: {status}");
}

/// Sockets open when the role started (`usize::MAX`: not recorded).
static BASELINE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// In a role: the connection to the parent; records the sockets open now (the connection
/// included) for [`finish`]'s leak check.
pub fn bootstrap() -> MessagePort {
    let boot = msgport::process::bootstrap().expect("bootstrap");
    record_baseline();
    boot
}

/// Records the sockets open now, for [`finish`]'s leak check (done by [`bootstrap`]).
pub fn record_baseline() {
    BASELINE.store(crate::fds::open_sockets(), Ordering::SeqCst);
}

/// Ends a role: writes out what the role posted, drops `boot`, checks that every port the role
/// made or received is closed (no more sockets than at the baseline), and exits with status 0
/// (the parent's [`wait_ok`] sees a leak as a failure).
pub fn finish(boot: Option<MessagePort>) -> ! {
    assert!(
        msgport::process::flush(Duration::from_secs(30)),
        "flush: messages left unwritten"
    );
    drop(boot);
    let baseline = BASELINE.load(Ordering::SeqCst);
    if baseline != usize::MAX {
        crate::fds::assert_sockets_back_to(baseline, Duration::from_secs(10));
    }
    std::process::exit(0);
}

const ISOLATED: &str = "MSGPORT_TEST_ISOLATED";

/// Runs the test `name` (this very test) alone in a fresh process of this test binary, with
/// `env` added; in that process, runs `body`. Fails if the process fails (a panic, an abort, a
/// signal) or takes longer than `limit`. For tests that measure the process (memory,
/// descriptors, CPU time) or break it (the reactor).
pub fn isolated(name: &str, env: &[(&str, &str)], limit: Duration, body: impl FnOnce()) {
    if std::env::var(ISOLATED).as_deref() == Ok(name) {
        body();
        // Leave without running the rest of the harness (and without waiting for threads).
        std::process::exit(0);
    }
    let mut cmd = test_command(name);
    cmd.stdout(Stdio::inherit())
        .env(ISOLATED, name)
        .env_remove(msgport::process::BOOTSTRAP_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the isolated test");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll the isolated test") {
            assert!(status.success(), "isolated test {name} failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("isolated test {name} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
