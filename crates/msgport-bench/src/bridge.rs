//! The browser bridge: a page in headless Chromium, and a Node.js program, talking to Rust
//! through msgport-bridge (a real `MessagePort` relayed to a Rust port that decodes each
//! message as its typed struct), next to a plain WebSocket between the same two ends doing the
//! same work (JSON of the same struct, decoded by serde_json on the Rust side), in one run.
//! The measuring side is `packages/msgport-client/bench/run.mjs`; it interleaves the two
//! contenders rep by rep and reports each rep. Not pinned: Chromium is a dozen processes.

use std::process::Command;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Query;
use axum::response::{Html, IntoResponse};
use msgport::MessageChannel;
use msgport_bridge::Bridge;
use msgport_ipc::IpcMain;
use serde::Deserialize;

use crate::measure::{Better, Report, Samples};
use crate::payload::Small;
use crate::Config;

#[path = "../../msgport-bridge/examples/common/files.rs"]
mod files;

#[derive(Deserialize)]
struct Mode {
    mode: String,
    #[serde(default)]
    n: u64,
}

/// Rust's end of a bench port, a tokio task as the plain rival's is: echoes every message (as
/// the typed struct), or counts `n` of them and then answers once.
async fn serve_port(port: msgport::MessagePort, mode: Mode) {
    let mut seen = 0;
    while let Some(mut event) = port.recv().await {
        let Ok(m) = event.take_data::<Small>() else {
            return;
        };
        if mode.mode == "echo" {
            let _ = port.post_message(m, []);
        } else {
            seen += 1;
            if seen == mode.n {
                let _ = port.post_message("done", []);
            }
        }
    }
}

/// The plain WebSocket rival's Rust end: the same work, in JSON.
async fn plain(socket: WebSocket, mode: Mode) {
    use futures_util::{SinkExt, StreamExt};
    let (mut tx, mut rx) = socket.split();
    let mut seen = 0;
    while let Some(Ok(message)) = rx.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(m) = serde_json::from_str::<Small>(&text) else {
            return;
        };
        if mode.mode == "echo" {
            let back = serde_json::to_string(&m).expect("a struct serializes");
            if tx.send(Message::Text(back.into())).await.is_err() {
                return;
            }
        } else {
            seen += 1;
            if seen == mode.n && tx.send(Message::Text("done".into())).await.is_err() {
                return;
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Result {
    bridge_rtt: Vec<f64>,
    plain_rtt: Vec<f64>,
    bridge_tput: Vec<f64>,
    plain_tput: Vec<f64>,
}

const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><!--IMPORT_MAP--></head><body>bench</body></html>"#;

pub(crate) fn group(cfg: &Config, report: &mut Report) {
    if let Err(e) = files::client_ready() {
        println!("bridge  skipped: {e}");
        return;
    }
    // Every process of a placement inherits it: Rust's runtime threads, Node.js, and each of
    // Chromium's processes (browser, renderer, network service). Chromium cannot be split
    // across CPUs by role, so the second placement leaves every process free on both.
    crate::pin(0);
    placement(cfg, report, "all on one CPU");
    crate::unpin();
    placement(cfg, report, "free on two CPUs");
}

fn placement(cfg: &Config, report: &mut Report, placement: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let main = IpcMain::new();
    let bridge = Bridge::new(&main);
    let handle = runtime.handle().clone();
    main.on("bench-port", move |event| {
        let Ok(mode) = event.data::<Mode>() else {
            return;
        };
        let (mine, theirs) = MessageChannel::new().into_ports();
        handle.spawn(serve_port(mine, mode));
        let _ = event.sender.post_message("bench-port", (), [theirs]);
    });
    let bench_dir = files::client_package().join("bench");
    let page = PAGE.replace("<!--IMPORT_MAP-->", files::IMPORT_MAP);
    let routes = axum::Router::new()
        .route(
            "/plain",
            axum::routing::get(
                |ws: WebSocketUpgrade, Query(mode): Query<Mode>| async move {
                    ws.on_upgrade(move |socket| plain(socket, mode))
                },
            ),
        )
        .route(
            "/bench.html",
            axum::routing::get(move || async move { Html(page).into_response() }),
        )
        .merge(files::client_routes())
        .merge(files::serve_dir("/bench", bench_dir));
    let serving = runtime
        .block_on(bridge.bind_with("127.0.0.1:0", routes))
        .expect("bind the gateway");
    let base = format!("http://{}", serving.local_addr());
    let plain_url = format!("ws://{}/plain", serving.local_addr());
    if std::env::var_os("MSGPORT_BENCH_SERVE").is_some() {
        // For profiling by hand: serve until killed.
        println!("bridge  serving: {base} {} {plain_url}", serving.url());
        runtime.block_on(std::future::pending::<()>());
    }
    let (n_rtt, n_tput) = if cfg.quick {
        (1_000, 10_000)
    } else {
        (5_000, 50_000)
    };
    for (where_, label) in [
        ("chromium", "page in headless Chromium"),
        ("node", "Node.js client"),
    ] {
        let out = Command::new("node")
            .arg("bench/drive.mjs")
            .args([where_, &base, serving.url(), &plain_url])
            .args([cfg.reps.to_string(), n_rtt.to_string(), n_tput.to_string()])
            .current_dir(files::client_package())
            .output();
        let result = out.ok().and_then(|o| {
            if !o.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&o.stderr));
            }
            serde_json::from_slice::<Result>(&o.stdout).ok()
        });
        let Some(r) = result else {
            println!("bridge  {label}, {placement}: the driver failed (node, Chromium and npm ci needed)");
            continue;
        };
        let rival = "plain WebSocket (JSON)";
        report.versus(
            "bridge",
            format!("round trip, 64 B struct, {label} ↔ Rust, {placement}"),
            "µs",
            Better::Lower,
            &Samples(r.bridge_rtt),
            rival,
            &Samples(r.plain_rtt),
        );
        report.versus(
            "bridge",
            format!("one-way throughput, 64 B struct, {label} → Rust, {placement}"),
            "msg/s",
            Better::Higher,
            &Samples(r.bridge_tput),
            rival,
            &Samples(r.plain_tput),
        );
    }
    main.shutdown();
}
