//! The TypeScript client in a real browser: Debian's Chromium, headless, driven by
//! playwright-core (packages/msgport-client/test/browser/drive.mjs), against a gateway and the
//! scenario host of tests/support. Run twice: with Chromium's default (no MessagePort close
//! event: the client delivers close itself) and with `--enable-blink-features=MessagePortCloseEvent`.

mod support;

use std::process::Command;
use std::time::Duration;

use axum::response::{Html, IntoResponse};
use msgport_bridge::Bridge;

/// Not a test: the child roles (returns at once in the test process).
#[test]
fn child_entry() {
    support::child_entry();
}

/// The test pages (`/test/...` from packages/msgport-client/test), with the import map filled
/// in; the client and cbor-x.
fn routes() -> axum::Router {
    let dir = support::files::client_package().join("test");
    let pages = axum::Router::new().route(
        "/test/{*path}",
        axum::routing::get(
            move |axum::extract::Path(path): axum::extract::Path<String>| {
                let dir = dir.clone();
                async move {
                    if path.contains("..") {
                        return axum::http::StatusCode::NOT_FOUND.into_response();
                    }
                    let Ok(text) = std::fs::read_to_string(dir.join(&path)) else {
                        return axum::http::StatusCode::NOT_FOUND.into_response();
                    };
                    if path.ends_with(".html") {
                        Html(text.replace("<!--IMPORT_MAP-->", support::files::IMPORT_MAP))
                            .into_response()
                    } else {
                        (
                            [(axum::http::header::CONTENT_TYPE, "text/javascript")],
                            text,
                        )
                            .into_response()
                    }
                }
            },
        ),
    );
    pages.merge(support::files::client_routes())
}

fn run(close_event: bool) {
    if let Err(e) = support::files::client_ready() {
        panic!("{e}");
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install Debian's (apt-get install chromium) or set CHROMIUM"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let host = runtime.block_on(support::start_with(Bridge::new, routes()));
    // A site of another origin, for the refusal.
    let foreign = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let page = std::fs::read_to_string(
            support::files::client_package().join("test/browser/foreign.html"),
        )
        .unwrap();
        let app = axum::Router::new().route(
            "/foreign.html",
            axum::routing::get(move || async move { Html(page) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/foreign.html")
    });
    let base = format!("http://{}", host.serving.local_addr());
    let url = host.serving.url().to_owned();
    let package = support::files::client_package();
    let out = msgport_testkit::watchdog(Duration::from_secs(300), move || {
        Command::new("node")
            .arg("test/browser/drive.mjs")
            .current_dir(package)
            .env("MSGPORT_BASE", base)
            .env("MSGPORT_URL", url)
            .env("MSGPORT_FOREIGN", foreign)
            .env("MSGPORT_CLOSE_EVENT", if close_event { "1" } else { "0" })
            .env("CHROMIUM", chromium)
            .output()
            .expect("node (20 or newer) on the PATH")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let mut failed = Vec::new();
    let mut passed = 0;
    for line in stdout.lines() {
        println!("{line}");
        if line.contains(r#""ok":true"#) {
            passed += 1;
        } else if line.contains(r#""ok":false"#) {
            failed.push(line.to_owned());
        }
    }
    assert!(out.status.success(), "the driver failed");
    assert!(failed.is_empty(), "failed in Chromium: {failed:#?}");
    // Every shared scenario and the browser-only ones reported.
    assert!(passed >= 18, "only {passed} scenarios reported");
    host.main.shutdown();
}

#[test]
fn chromium_without_the_close_event() {
    run(false);
}

#[test]
fn chromium_with_the_close_event() {
    run(true);
}
