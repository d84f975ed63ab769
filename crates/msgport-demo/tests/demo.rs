//! The demo (the README's main job) runs to completion and tells the seed's stories.

#[test]
fn the_seed_demo_runs_to_completion() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_msgport-demo"))
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("main: gave app").count(), 2, "{text}");
    assert_eq!(text.matches("received result: 42").count(), 2, "{text}");
    assert_eq!(text.matches("received result: 200").count(), 2, "{text}");
    assert_eq!(text.matches("received result: 14").count(), 2, "{text}");
    assert_eq!(text.matches("main: refused").count(), 1, "{text}");
    assert_eq!(text.matches("got response data: 42").count(), 10, "{text}");
    let ended = text.find("stream ended").expect("stream ended");
    assert!(
        text.rfind("got response data: 42").unwrap() < ended,
        "{text}"
    );
    assert!(text.contains("== done =="), "{text}");
}

/// One dependency suffices: msgport's types are re-exported.
#[test]
fn msgport_ipc_re_exports_what_the_seed_needs() {
    use msgport_ipc::{value, MessageChannel, Value};
    let (a, b) = MessageChannel::new().into_ports();
    a.post_message(value!({ "ok": true }), []).unwrap();
    let got: Value = b.blocking_recv().unwrap().value().unwrap();
    assert_eq!(got.get("ok").and_then(Value::as_bool), Some(true));
}
