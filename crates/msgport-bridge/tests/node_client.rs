//! The TypeScript client from Node.js (`node --test`) against a live gateway: the scenarios of
//! packages/msgport-client/test, with their Rust side here (tests/support).

mod support;

use std::process::Command;
use std::time::Duration;

use msgport_bridge::Bridge;

/// Not a test: the child roles (returns at once in the test process).
#[test]
fn child_entry() {
    support::child_entry();
}

#[test]
fn node_client_scenarios() {
    if let Err(e) = support::files::client_ready() {
        panic!("{e}");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let host = runtime.block_on(support::start(Bridge::new));
    let package = support::files::client_package();
    let out = msgport_testkit::watchdog(Duration::from_secs(300), {
        let url = host.serving.url().to_owned();
        move || {
            Command::new("node")
                .args([
                    "--test",
                    "--test-reporter=spec",
                    "test/vectors.test.mjs",
                    "test/client.test.mjs",
                    "test/live.test.mjs",
                ])
                .current_dir(package)
                .env("MSGPORT_URL", url)
                .output()
                .expect("node (20 or newer) on the PATH")
        }
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed");
    // The live scenarios ran (not skipped).
    assert!(
        stdout.contains("ℹ skipped 0"),
        "some scenarios were skipped"
    );
    host.main.shutdown();
}
