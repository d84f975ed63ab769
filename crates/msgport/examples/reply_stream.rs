//! The seed's "reply streams" use case, between two threads of one process:
//! one request carrying a fresh reply port, ten replies on it, then close.
//!
//! Run with `cargo run --release -p msgport --example reply_stream`.

use msgport::{value, MessageChannel, MessagePort, Value};

/// The "main" side: answers each stream request with `count` copies of `element` on the port
/// the request carried, then closes that port to end the stream.
fn serve(requests: MessagePort) {
    requests.on_message(|event| {
        let (msg, ports) = match event.into_parts::<Value>() {
            Ok(parts) => parts,
            Err(e) => return eprintln!("main: bad request: {e}"),
        };
        // The renderer has sent us a port it wants our response streamed over.
        let Some(reply_port) = ports.into_iter().next() else {
            return eprintln!("main: request without a reply port");
        };
        let count = msg["count"].as_f64().unwrap_or(0.0) as u32;
        for _ in 0..count {
            reply_port.post_message(msg["element"].clone(), []).unwrap();
        }
        // We close the port when we're done to tell the other end no more messages will come.
        // (Dropping it would do the same.)
        reply_port.close();
    });
    requests.start();
    // Keep serving until the requester hangs up.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    requests.on_close(move || {
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv();
}

/// The "renderer" side: makes a streaming request and prints each reply as it arrives.
fn make_streaming_request(main: &MessagePort, element: u32, mut callback: impl FnMut(u32)) {
    // MessageChannels are lightweight: it's cheap to create a new one for each request.
    let (port1, port2) = MessageChannel::new().into_ports();
    // We send one end of the channel to main...
    main.post_message(value!({ "element": element, "count": 10 }), [port2])
        .unwrap();
    // ...and keep the other end; main streams its replies over it and closes it when finished.
    while let Some(event) = port1.blocking_recv() {
        match event.data::<u32>() {
            Ok(data) => callback(data),
            Err(e) => eprintln!("renderer: undecodable reply: {e}"),
        }
    }
    println!("stream ended");
}

fn main() {
    // msgport's warnings go through `tracing`: show them (set RUST_LOG for more).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let (renderer_end, main_end) = MessageChannel::new().into_ports();
    let main_thread = std::thread::spawn(move || serve(main_end));
    let mut got = 0;
    make_streaming_request(&renderer_end, 42, |data| {
        println!("got response data: {data}");
        got += 1;
    });
    assert_eq!(got, 10, "we see \"got response data: 42\" 10 times");
    drop(renderer_end);
    main_thread.join().unwrap();
}
