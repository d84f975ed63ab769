//! The `main_world` example runs: headless Chromium opens the page it prints, the page doubles
//! what Rust sends and sees the stream end with close, and the example exits after both flows.
//! A screenshot of the page is saved (to `MSGPORT_SCREENSHOT` if set, as docs/main_world.png
//! was made; else to a temporary file).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "../examples/common/files.rs"]
mod files;

#[test]
fn main_world_runs_in_chromium() {
    if let Err(e) = files::client_ready() {
        panic!("{e}");
    }
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/main_world");
    assert!(
        example.exists(),
        "cargo builds examples with the tests: {}",
        example.display()
    );
    let out = std::env::var("MSGPORT_SCREENSHOT").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join("msgport-main-world.png")
            .display()
            .to_string()
    });
    msgport_testkit::watchdog(Duration::from_secs(120), move || {
        let mut child = Command::new(example)
            .arg("--once")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the example");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("the example prints its URL").unwrap();
            if let Some(rest) = line.strip_prefix("open ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        let shot = Command::new("node")
            .args(["test/browser/screenshot.mjs", &url, ".end", &out])
            .current_dir(files::client_package())
            .status()
            .expect("node on the PATH");
        assert!(shot.success(), "the page did not finish");
        let printed: Vec<String> = lines.map(Result::unwrap).collect();
        let status = child.wait().unwrap();
        assert!(status.success(), "main_world failed: {printed:?}");
        for expected in [
            "the page doubled 5: 10",
            "streamed 5 replies to the page, then closed the port",
            "both flows ran",
        ] {
            assert!(
                printed.iter().any(|l| l.contains(expected)),
                "{expected:?} not in {printed:?}"
            );
        }
    });
}
