//! The Rust side of the client scenarios (packages/msgport-client/test/scenarios.mjs): a main
//! process with a gateway, handlers and port behaviours the scenarios call for, and a log of
//! what it observed (closes), which the scenarios read back with `invoke("log")`.

#![allow(dead_code)]

#[path = "../../examples/common/files.rs"]
pub mod files;

use std::sync::{Arc, Mutex};

use msgport::{value, MessageChannel, MessagePort, Value};
use msgport_bridge::{Bridge, Serving};
use msgport_ipc::{ChildRef, IpcChild, IpcMain};

pub type Log = Arc<Mutex<Vec<String>>>;

pub struct Host {
    pub main: IpcMain,
    pub bridge: Bridge,
    pub serving: Serving,
    pub log: Log,
}

/// Serves `port` until either side closes it: `respond` answers each message; the peer's
/// close is logged as `closed:<label>`.
fn keep(
    port: MessagePort,
    label: String,
    log: Log,
    respond: impl Fn(&MessagePort, Value) + Send + 'static,
) {
    let port = Arc::new(port);
    let me = port.clone();
    port.on_message(move |event| match event.value() {
        Ok(v) => respond(&me, v),
        Err(e) => eprintln!("scenario host: {e}"),
    });
    let me = port.clone();
    port.on_close(move || {
        log.lock().unwrap().push(format!("closed:{label}"));
        me.close();
    });
    port.start();
}

fn stream(port: &MessagePort, v: &Value) -> bool {
    let Some(n) = v.get("stream").and_then(Value::as_f64) else {
        return false;
    };
    for i in 0..n as u32 {
        let _ = port.post_message(i, []);
    }
    port.close();
    true
}

/// A Rust port that doubles numbers; `"close"` closes it, `{stream: n}` streams n replies then
/// closes, `"nest"` answers `{port}` with a new doubling port inside.
fn doubler(port: MessagePort, label: String, log: Log) {
    let inner_log = log.clone();
    let inner_label = label.clone();
    keep(port, label, log, move |port, v| {
        if v == Value::from("close") {
            port.close();
        } else if v == Value::from("nest") {
            let (a, b) = MessageChannel::new().into_ports();
            doubler(a, format!("{inner_label}/inner"), inner_log.clone());
            let _ = port.post_message(value!({ "port": (Value::Port(0)) }), [b]);
        } else if let Some(n) = v.as_f64() {
            let _ = port.post_message(n * 2.0, []);
        } else {
            stream(port, &v);
        }
    });
}

/// A page port in Rust's hands: echoes `{echo: data}`; `"close"` and `{stream: n}` as above.
fn echoer(port: MessagePort, label: String, log: Log) {
    keep(port, label, log, |port, v| {
        if v == Value::from("close") {
            port.close();
        } else if !stream(port, &v) {
            let _ = port.post_message(value!({ "echo": v }), []);
        }
    });
}

pub async fn start(bridge_of: impl FnOnce(&IpcMain) -> Bridge) -> Host {
    start_with(bridge_of, axum::Router::new()).await
}

pub async fn start_with(bridge_of: impl FnOnce(&IpcMain) -> Bridge, routes: axum::Router) -> Host {
    let main = IpcMain::new();
    let bridge = bridge_of(&main);
    let log: Log = Arc::default();
    main.handle("echo", |e| Ok(e.data.clone()));
    main.handle("fail", |_| Err("no luck".into()));
    let l = log.clone();
    main.handle("log", move |_| {
        let log = l.lock().unwrap();
        Ok(Value::Array(
            log.iter().map(|s| Value::from(s.as_str())).collect(),
        ))
    });
    main.on("ping", |e| {
        let _ = e.sender.send("pong", &e.data);
    });
    let l = log.clone();
    main.on("give-port", move |e| {
        let label = e.data::<String>().unwrap_or_default();
        let (mine, theirs) = MessageChannel::new().into_ports();
        doubler(mine, label.clone(), l.clone());
        let _ = e.sender.post_message("port", label, [theirs]);
    });
    let l = log.clone();
    main.on("take-port", move |e| {
        let label = e.data::<String>().unwrap_or_default();
        if let Some(port) = e.take_ports().pop() {
            echoer(port, label, l.clone());
        }
    });
    main.on("return-port", |e| {
        let ports = e.take_ports();
        let _ = e.sender.post_message("returned", (), ports);
    });
    let child: Arc<Mutex<Option<ChildRef>>> = Arc::default();
    let killer = child.clone();
    main.on("kill-child", move |_| {
        if let Some(child) = killer.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    });
    let spawner = main.clone();
    main.on("to-child", move |e| {
        let mut child = child.lock().unwrap();
        let child = child.get_or_insert_with(|| {
            spawner
                .spawn(&mut msgport_testkit::child::command("echo-child"))
                .expect("spawn the child")
        });
        let label = e.data::<String>().unwrap_or_default();
        let _ = child.post_message("port", label, e.take_ports());
    });
    let serving = bridge.bind_with("127.0.0.1:0", routes).await.expect("bind");
    Host {
        main,
        bridge,
        serving,
        log,
    }
}

/// The child roles of the test binaries that include this module (their `child_entry` test
/// calls this; it returns at once in the test process).
pub fn child_entry() {
    let Some(role) = msgport_testkit::child::role() else {
        return;
    };
    match role.as_str() {
        "echo-child" => echo_child(),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// The child role: answers `child says <text>` on every port main forwards to it.
pub fn echo_child() {
    let ipc = IpcChild::connect().expect("connect to main");
    ipc.on("port", |mut e| {
        for port in e.take_ports() {
            let port = Arc::new(port);
            let me = port.clone();
            port.on_message(move |m| {
                if let Ok(text) = m.data::<String>() {
                    let _ = me.post_message(format!("child says {text}"), []);
                }
            });
            let me = port.clone();
            port.on_close(move || me.close());
            port.start();
        }
    });
    ipc.wait_main_gone();
}
