//! The seed's use cases, as processes: `cargo run --release -p msgport-demo`.
//!
//! 1. Worker process: main spawns a hidden worker and two app processes (and a stranger); an
//!    app asks main for a channel to the worker; main checks who is asking, creates a
//!    `MessageChannel`, gives one end to the worker and the other to the app; the app then sends
//!    work to the worker and gets results directly, main not on the path.
//! 2. Reply streams: a child asks main for a stream, passing the port to answer on; main sends
//!    ten messages on it and closes it; the child prints each, then "stream ended".
//!
//! The same binary runs every process: with no argument it is main; `worker`, `app`,
//! `stranger` and `streamer` are the children.

use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use msgport::{value, MessageChannel, MessagePort, Value};
use msgport_ipc::{ChildRef, IpcChild, IpcMain};

fn main() {
    // msgport reports what it does on a peer's behalf (a port closed for a malformed frame, a
    // raised descriptor limit) through `tracing`: show warnings, or what `RUST_LOG` asks for.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match std::env::args().nth(1).as_deref() {
        None => run_main(),
        Some("worker") => worker(),
        Some("app") => app(),
        Some("stranger") => stranger(),
        Some("streamer") => streamer(),
        Some(other) => {
            eprintln!("unknown role {other}");
            std::process::exit(2);
        }
    }
}

fn child_cmd(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg(role);
    cmd
}

fn run_main() {
    println!("== Worker process ==");
    let main = IpcMain::new();
    // The worker is a hidden process, so that it can do heavy work without blocking anyone.
    let worker = main.spawn(&mut child_cmd("worker")).expect("spawn worker");
    let apps: Arc<Mutex<Vec<ChildRef>>> = Arc::default();
    let (done_tx, done_rx) = mpsc::channel::<String>();

    // We can't use `handle` here, because the reply needs to transfer a MessagePort.
    let allowed = apps.clone();
    let to_worker = worker.clone();
    let refused = done_tx.clone();
    main.on("request-worker-channel", move |event| {
        // For security reasons, let's make sure only the processes we expect can access the
        // worker.
        if allowed.lock().unwrap().contains(&event.sender) {
            // Create a new channel ...
            let (port1, port2) = MessageChannel::new().into_ports();
            // ... send one end to the worker ...
            to_worker.post_message("new-client", (), [port1]).unwrap();
            // ... and the other end to the app.
            event
                .sender
                .post_message("provide-worker-channel", (), [port2])
                .unwrap();
            // Now the app and the worker can communicate with each other without going
            // through the main process!
            println!(
                "main: gave app {} a channel to the worker",
                event.sender.id()
            );
        } else {
            println!(
                "main: refused a worker channel to process {} (not an app)",
                event.sender.pid()
            );
            refused.send("refused".into()).unwrap();
        }
    });
    let finished = done_tx.clone();
    main.on("app-done", move |event| {
        finished
            .send(format!("app {} done", event.sender.id()))
            .unwrap();
    });

    // We might get multiple clients, for instance if there are multiple app windows.
    for _ in 0..2 {
        let app = main.spawn(&mut child_cmd("app")).expect("spawn app");
        apps.lock().unwrap().push(app);
    }
    let stranger = main
        .spawn(&mut child_cmd("stranger"))
        .expect("spawn stranger");
    for app in apps.lock().unwrap().iter() {
        app.send("go", ()).unwrap();
    }
    stranger.send("go", ()).unwrap();
    for _ in 0..3 {
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("apps finish");
    }

    println!("== Reply streams ==");
    main.on("give-me-a-stream", |event| {
        // The child has sent us a MessagePort that it wants us to send our response over.
        let Some(reply_port) = event.ports.pop() else {
            return;
        };
        let element = event.data["element"].clone();
        let count = event.data["count"].as_f64().unwrap_or(0.0) as u32;
        // Here we send the messages synchronously, but we could just as easily store the port
        // somewhere and send messages asynchronously.
        for _ in 0..count {
            reply_port.post_message(element.clone(), []).unwrap();
        }
        // We close the port when we're done to indicate to the other end that we won't be
        // sending any more messages. This isn't strictly necessary: dropping the port would
        // also close it.
        reply_port.close();
    });
    let (streamed_tx, streamed_rx) = mpsc::channel();
    main.on("stream-done", move |_| streamed_tx.send(()).unwrap());
    let _streamer = main
        .spawn(&mut child_cmd("streamer"))
        .expect("spawn streamer");
    streamed_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("stream finishes");
    println!("== done ==");
    // Say goodbye: every child sees a shutdown (and exits with status 0), not a crash of main.
    main.shutdown();
    for child in apps.lock().unwrap().iter().chain([&worker, &stranger]) {
        let _ = child.wait();
    }
}

fn do_work(input: u32) -> u32 {
    // Something cpu-intensive.
    input * 2
}

fn worker() {
    let ipc = IpcChild::connect().expect("connect to main");
    // We might get multiple clients, for instance if there are multiple app windows.
    ipc.on("new-client", |mut event| {
        let Some(port) = event.ports.pop() else {
            return;
        };
        std::thread::spawn(move || {
            while let Some(message) = port.blocking_recv() {
                // The message data can be any serializable value (and could even carry other
                // MessagePorts with it!)
                let result = do_work(message.data::<u32>().unwrap_or(0));
                port.post_message(result, []).unwrap();
            }
        });
    });
    std::thread::sleep(Duration::from_secs(3600));
}

fn app() {
    let ipc = IpcChild::connect().expect("connect to main");
    let (port_tx, port_rx) = mpsc::channel::<MessagePort>();
    // Once we receive the reply, we can take the port...
    ipc.once("provide-worker-channel", move |mut event| {
        port_tx.send(event.ports.pop().expect("a port")).unwrap();
    });
    let requester = ipc.clone();
    ipc.on("go", move |_| {
        // We request that the main process sends us a channel we can use to communicate with
        // the worker.
        requester.send("request-worker-channel", ()).unwrap();
    });
    let port = port_rx.recv().unwrap();
    let me = std::process::id();
    // ... and start sending it work!
    for input in [21u32, 100, 7] {
        port.post_message(input, []).unwrap();
        let result: u32 = port.blocking_recv().unwrap().data().unwrap();
        println!("app {me}: received result: {result}");
    }
    ipc.send("app-done", ()).unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

fn stranger() {
    let ipc = IpcChild::connect().expect("connect to main");
    let requester = ipc.clone();
    ipc.on("go", move |_| {
        requester.send("request-worker-channel", ()).unwrap()
    });
    std::thread::sleep(Duration::from_secs(3600));
}

fn make_streaming_request(ipc: &IpcChild, element: u32, mut callback: impl FnMut(Value)) {
    // MessageChannels are lightweight: it's cheap to create a new one for each request.
    let (port1, port2) = MessageChannel::new().into_ports();
    // We send one end of the port to the main process ...
    ipc.post_message(
        "give-me-a-stream",
        value!({ "element": element, "count": 10 }),
        [port2],
    )
    .unwrap();
    // ... and we hang on to the other end. The main process will send messages to its end of
    // the port, and close it when it's finished.
    while let Some(event) = port1.blocking_recv() {
        callback(event.value().unwrap());
    }
    println!("stream ended");
}

fn streamer() {
    let ipc = IpcChild::connect().expect("connect to main");
    make_streaming_request(&ipc, 42, |data| {
        println!("got response data: {}", data.as_f64().unwrap_or(f64::NAN));
    });
    // We will see "got response data: 42" 10 times.
    ipc.send("stream-done", ()).unwrap();
    if !msgport::process::flush(Duration::from_secs(5)) {
        eprintln!("streamer: main did not read the last message in time");
    }
}
