//! The seed's third use case: a port in the "main world", here a web page in a real browser.
//!
//! The Rust process serves a page and the gateway on loopback and prints the page's URL. When
//! the page connects, Rust makes a channel and gives the page one end: the page is a worker
//! that doubles the numbers Rust sends on it (the seed's worker, in a page). The page also
//! hands Rust a port of its own and asks for a stream: Rust answers with five replies on it and
//! closes it, which the page sees as `close`.
//!
//! ```sh
//! npm ci --prefix packages/msgport-client   # the client and cbor-x, once
//! cargo run -p msgport-bridge --example main_world
//! ```
//!
//! `--once` exits after the first page has run both flows (the tests run it so, headless).

#[path = "common/files.rs"]
mod files;

use std::sync::mpsc;
use std::time::Duration;

use axum::response::Html;
use msgport::MessageChannel;
use msgport_bridge::Bridge;
use msgport_ipc::IpcMain;

const PAGE: &str = r#"<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>msgport: a port in the main world</title>
<!--IMPORT_MAP-->
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 2em; max-width: 44em; color: #222; }
  h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.5em; }
  ol { background: #f4f6f8; padding: .8em 2.5em; border-radius: 6px; min-height: 1.5em; }
  .end { color: #1a7f37; font-weight: 600; }
</style>
</head>
<body>
<h1>A MessagePort from a Rust process, in this page</h1>
<h2>This page is the worker: it doubles what Rust sends on the port it was given</h2>
<ol id="worker"></ol>
<h2>A reply stream: one request, replies from Rust, ended by close</h2>
<ol id="stream"></ol>
<script type="module">
import { connect, TrackedMessageChannel } from 'msgport-client'

const line = (list, text, cls) => {
  const li = document.createElement('li')
  li.textContent = text
  if (cls) li.className = cls
  document.getElementById(list).append(li)
}
const ipc = await connect(new URL('/msgport?token=__TOKEN__', location.href.replace(/^http/, 'ws')))

// Rust gives this page a port: the page doubles every number that arrives on it.
ipc.on('worker', (event) => {
  const [port] = event.ports
  port.onmessage = (e) => {
    line('worker', `${e.data} → ${e.data * 2}`)
    port.postMessage(e.data * 2)
  }
})

// The page gives Rust a port and asks for a stream; Rust closes it at the end.
const { port1, port2 } = new TrackedMessageChannel()
ipc.postMessage('give-me-a-stream', { count: 5 }, [port2])
port1.onmessage = (e) => line('stream', e.data)
port1.addEventListener('close', () => {
  line('stream', 'stream ended (close)', 'end')
  ipc.send('stream-ended')
})
</script>
</body>
</html>
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    files::client_ready()?;
    let once = std::env::args().any(|a| a == "--once");
    let main = IpcMain::new();
    let bridge = Bridge::new(&main);
    let (done_tx, done) = mpsc::channel::<&'static str>();

    // Each page that connects gets a worker port: Rust sends 1..=5 and prints the answers.
    let worker_done = done_tx.clone();
    bridge.on_connect(move |page| {
        let (mine, theirs) = MessageChannel::new().into_ports();
        if page.post_message("worker", (), [theirs]).is_err() {
            return;
        }
        let done = worker_done.clone();
        std::thread::spawn(move || {
            for n in 1..=5u32 {
                mine.post_message(n, []).expect("the page's port is open");
                match mine.recv_timeout(Duration::from_secs(30)) {
                    Ok(answer) => println!(
                        "the page doubled {n}: {}",
                        answer.data::<u32>().unwrap_or(0)
                    ),
                    Err(e) => return eprintln!("the page did not answer: {e}"),
                }
            }
            let _ = done.send("worker");
        });
    });

    // The page asks for a stream on a port of its own: five replies, then close.
    main.on("give-me-a-stream", |event| {
        let count = event
            .data
            .get("count")
            .and_then(msgport::Value::as_f64)
            .unwrap_or(3.0) as u32;
        let Some(port) = event.take_ports().pop() else {
            return;
        };
        for i in 1..=count {
            let _ = port.post_message(format!("reply {i} of {count}"), []);
        }
        port.close();
        println!("streamed {count} replies to the page, then closed the port");
    });
    main.on("stream-ended", move |event| {
        println!("the page saw the stream end (page {})", event.sender.id());
        let _ = done_tx.send("stream");
    });

    let token = bridge.token().to_owned();
    let page = PAGE
        .replace("<!--IMPORT_MAP-->", files::IMPORT_MAP)
        .replace("__TOKEN__", &token);
    let routes = axum::Router::new()
        .route("/", axum::routing::get(move || async move { Html(page) }))
        .merge(files::client_routes());
    let addr = std::env::var("MAIN_WORLD_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into());
    let serving = bridge.bind_with(addr, routes).await?;
    println!("open http://{}/ in a browser", serving.local_addr());

    let finished = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        while seen.len() < 2 || !once {
            match done.recv() {
                Ok(what) => seen.push(what),
                Err(_) => break,
            }
        }
    });
    finished.await?;
    println!("both flows ran");
    main.shutdown();
    Ok(())
}
