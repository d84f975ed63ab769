//! The gateway against a WebSocket client written here from the protocol (frame.rs): the
//! checks before the upgrade, the IPC envelopes on port 0, ports both ways, close both ways,
//! and every way a client can break the protocol or a limit (each ending its connection only).

use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use msgport::{value, MessageChannel, MessagePort, Value};
use msgport_bridge::frame::Frame;
use msgport_bridge::{Bridge, Limits};
use msgport_ipc::{ChildRef, IpcMain};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const LONG: Duration = Duration::from_secs(10);

struct Client {
    ws: Socket,
    /// Frames of a batch read and not yet taken.
    read: std::collections::VecDeque<Frame>,
}

impl Client {
    async fn connect(url: &str, origin: Option<&str>) -> Result<Client, String> {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin).unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Client {
            ws,
            read: Default::default(),
        })
    }

    async fn send(&mut self, frame: Frame) {
        self.ws
            .send(Message::Binary(frame.encode().into()))
            .await
            .expect("the gateway reads");
    }

    async fn raw(&mut self, bytes: Vec<u8>) {
        let _ = self.ws.send(Message::Binary(bytes.into())).await;
    }

    /// The next frame, or the close code that ended the connection.
    async fn next(&mut self) -> Result<Frame, Option<u16>> {
        if let Some(frame) = self.read.pop_front() {
            return Ok(frame);
        }
        loop {
            let message = tokio::time::timeout(LONG, self.ws.next())
                .await
                .expect("the gateway answers in time");
            match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let frames = Frame::decode_all(&bytes).expect("the gateway writes frames");
                    self.read.extend(frames);
                    return Ok(self.read.pop_front().expect("a batch is never empty"));
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    async fn ipc(&mut self, envelope: Value, transfer: Vec<u64>) {
        self.send(Frame::Message {
            port: 0,
            data: envelope,
            transfer,
        })
        .await;
    }
}

fn send_envelope(channel: &str, data: Value) -> Value {
    value!({ "t": "send", "ch": (channel), "d": (data) })
}

async fn serve(bridge: &Bridge) -> msgport_bridge::Serving {
    bridge.bind_loopback(0).await.expect("a loopback port")
}

fn peers(bridge: &Bridge) -> mpsc::Receiver<ChildRef> {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    bridge.on_connect(move |peer| {
        let _ = tx.lock().unwrap().send(peer.clone());
    });
    rx
}

/// The first port of each message clients send on `channel`.
fn ports_given(main: &IpcMain, channel: &str) -> mpsc::Receiver<MessagePort> {
    let (tx, rx) = mpsc::channel();
    main.on(channel, move |e| {
        let _ = tx.send(e.take_ports().remove(0));
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_the_upgrade() {
    let main = IpcMain::new();
    let bridge = Bridge::new(&main).allow_origin("http://app.example");
    let serving = serve(&bridge).await;
    let addr = serving.local_addr();
    let good = serving.url().to_owned();
    let refused = |r: Result<Client, String>| match r {
        Ok(_) => panic!("connected"),
        Err(e) => e,
    };
    let no_token = format!("ws://{addr}/msgport");
    assert!(refused(Client::connect(&no_token, None).await).contains("401"));
    // The token with its first digit changed (to another digit: always a different token).
    let token = bridge.token();
    let first = if token.starts_with('0') { '1' } else { '0' };
    let wrong = format!("ws://{addr}/msgport?token={first}{}", &token[1..]);
    assert!(refused(Client::connect(&wrong, None).await).contains("401"));
    let e = refused(Client::connect(&good, Some("http://evil.example")).await);
    assert!(e.contains("403"), "{e}");
    // DNS rebinding: a name that resolves to loopback, with a matching Origin.
    let rebound = good.replace("127.0.0.1", "localtest.invalid");
    let mut request = rebound.into_client_request().unwrap();
    let _ = &mut request;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    request.headers_mut().insert(
        "Origin",
        HeaderValue::from_static("http://localtest.invalid"),
    );
    let e = tokio_tungstenite::client_async(request, stream)
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("403"), "{e}");
    // Admitted: the gateway's own origin, an allowed one, none (not a browser).
    let own = format!("http://{addr}");
    for origin in [Some(own.as_str()), Some("http://app.example"), None] {
        Client::connect(&good, origin).await.expect("admitted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_a_peer_of_main_like_a_child() {
    let main = IpcMain::new();
    let bridge = Bridge::new(&main).allow_origin("http://app.example");
    let connected = peers(&bridge);
    let serving = serve(&bridge).await;
    let (tx, rx) = mpsc::channel();
    main.on("hello", move |e| {
        let _ = tx.send((e.sender.clone(), e.data::<String>().unwrap()));
    });
    main.handle_typed("double", |e| e.data::<u32>().map(|n| n * 2));

    let mut client = Client::connect(serving.url(), Some("http://app.example"))
        .await
        .unwrap();
    let peer = connected.recv_timeout(LONG).unwrap();
    let remote = peer.remote().expect("a remote peer");
    assert_eq!(remote.origin.as_deref(), Some("http://app.example"));
    assert!(remote.address.unwrap().ip().is_loopback());

    client
        .ipc(send_envelope("hello", "hi".into()), vec![])
        .await;
    let (sender, text) = rx.recv_timeout(LONG).unwrap();
    assert_eq!((sender, text.as_str()), (peer.clone(), "hi"));

    client
        .ipc(
            value!({ "t": "invoke", "ch": "double", "id": 7, "d": 21 }),
            vec![],
        )
        .await;
    let reply = client.next().await.unwrap();
    assert_eq!(
        reply,
        Frame::Message {
            port: 0,
            data: value!({ "t": "reply", "id": 7, "ok": 42 }),
            transfer: vec![]
        }
    );
    client
        .ipc(
            value!({ "t": "invoke", "ch": "nobody", "id": 8, "d": null }),
            vec![],
        )
        .await;
    let Frame::Message { data, .. } = client.next().await.unwrap() else {
        panic!("a reply")
    };
    assert_eq!(data["err"]["kind"], Value::from("no-handler"));

    peer.send("news", 5).unwrap();
    assert_eq!(
        client.next().await.unwrap(),
        Frame::Message {
            port: 0,
            data: send_envelope("news", 5.into()),
            transfer: vec![]
        }
    );
}

/// A Rust port sent to the client, and a client's port sent to Rust: messages both ways, in
/// order, and close both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_both_ways_and_close_both_ways() {
    let main = IpcMain::new();
    let bridge = Bridge::new(&main);
    let connected = peers(&bridge);
    let serving = serve(&bridge).await;
    let mut client = Client::connect(serving.url(), None).await.unwrap();
    let peer = connected.recv_timeout(LONG).unwrap();

    // Rust → client: queued before the client uses it, in order.
    let (mine, theirs) = MessageChannel::new().into_ports();
    for i in 0..3 {
        mine.post_message(i, []).unwrap();
    }
    peer.post_message("port", "take it", [theirs]).unwrap();
    let Frame::Message {
        port: 0, transfer, ..
    } = client.next().await.unwrap()
    else {
        panic!("the envelope");
    };
    assert_eq!(transfer, [2]);
    for i in 0..3 {
        let frame = client.next().await.unwrap();
        assert_eq!(
            frame,
            Frame::Message {
                port: 2,
                data: i.into(),
                transfer: vec![]
            }
        );
    }
    client
        .send(Frame::Message {
            port: 2,
            data: "back".into(),
            transfer: vec![],
        })
        .await;
    assert_eq!(
        mine.recv_timeout(LONG).unwrap().value().unwrap(),
        "back".into()
    );
    drop(mine);
    assert_eq!(client.next().await.unwrap(), Frame::Close { port: 2 });

    // Client → Rust, then the client closes it.
    let rx = ports_given(&main, "yours");
    client
        .ipc(send_envelope("yours", Value::Null), vec![1])
        .await;
    let given = rx.recv_timeout(LONG).unwrap();
    given.post_message("to the client", []).unwrap();
    assert_eq!(
        client.next().await.unwrap(),
        Frame::Message {
            port: 1,
            data: "to the client".into(),
            transfer: vec![]
        }
    );
    client.send(Frame::Close { port: 1 }).await;
    assert!(given.recv_timeout(LONG).is_err(), "closed");

    // A Rust port sent over a client's port, and a message on a port closed meanwhile.
    client
        .ipc(send_envelope("yours", Value::Null), vec![3])
        .await;
    let given = rx.recv_timeout(LONG).unwrap();
    let (a, b) = MessageChannel::new().into_ports();
    given.post_message(value!([(Value::Port(0))]), [b]).unwrap();
    assert_eq!(
        client.next().await.unwrap(),
        Frame::Message {
            port: 3,
            data: value!([(Value::Port(0))]),
            transfer: vec![4]
        }
    );
    a.post_message("via 4", []).unwrap();
    assert_eq!(
        client.next().await.unwrap(),
        Frame::Message {
            port: 4,
            data: "via 4".into(),
            transfer: vec![]
        }
    );
    drop(a);
    assert_eq!(client.next().await.unwrap(), Frame::Close { port: 4 });
    // The client did not see the close yet and posts on 4, transferring port 5: lost, and 5
    // comes back closed.
    client
        .send(Frame::Message {
            port: 4,
            data: Value::Null,
            transfer: vec![5],
        })
        .await;
    assert_eq!(client.next().await.unwrap(), Frame::Close { port: 5 });
    drop(given);
    assert_eq!(client.next().await.unwrap(), Frame::Close { port: 3 });
}

/// Each way of breaking the protocol ends that connection (with a close code), and every port
/// it held closes for its Rust peer; another connection is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_protocol_ends_only_that_connection() {
    let main = IpcMain::new();
    let bridge = Bridge::new(&main).with_limits(Limits {
        max_ports: 8,
        max_frame_bytes: 4096,
        ..Limits::default()
    });
    let connected = peers(&bridge);
    let serving = serve(&bridge).await;
    let rx = ports_given(&main, "yours");
    let mut bystander = Client::connect(serving.url(), None).await.unwrap();
    let bystander_peer = connected.recv_timeout(LONG).unwrap();

    let too_many: Vec<u64> = (0..9).map(|i| 2 * i + 3).collect();
    let cases: Vec<(&str, Frame, Option<Vec<u8>>, u16)> = vec![
        ("not CBOR", Frame::Close { port: 0 }, Some(vec![0xff]), 1002),
        (
            "not a frame",
            Frame::Close { port: 0 },
            Some(vec![0x80]),
            1002,
        ),
        (
            "a port never given",
            Frame::Message {
                port: 6,
                data: Value::Null,
                transfer: vec![],
            },
            None,
            1002,
        ),
        (
            "a close of a port never given",
            Frame::Close { port: 9 },
            None,
            1002,
        ),
        (
            "a new port out of order",
            Frame::Message {
                port: 0,
                data: Value::Null,
                transfer: vec![7],
            },
            None,
            1002,
        ),
        (
            "a port slot past the list",
            Frame::Message {
                port: 0,
                data: Value::Port(1),
                transfer: vec![3],
            },
            None,
            1002,
        ),
        (
            "too many ports",
            Frame::Message {
                port: 0,
                data: Value::Null,
                transfer: too_many,
            },
            None,
            1008,
        ),
        (
            "too large a frame",
            Frame::Close { port: 0 },
            Some(
                Frame::Message {
                    port: 0,
                    data: Value::String("x".repeat(5000)),
                    transfer: vec![],
                }
                .encode(),
            ),
            1009,
        ),
    ];
    for (what, frame, raw, code) in cases {
        let mut client = Client::connect(serving.url(), None).await.unwrap();
        connected.recv_timeout(LONG).unwrap();
        // A port the client gave Rust, to see it close with the connection.
        client
            .ipc(send_envelope("yours", Value::Null), vec![1])
            .await;
        let given = rx.recv_timeout(LONG).unwrap();
        match raw {
            Some(bytes) => client.raw(bytes).await,
            None => client.send(frame).await,
        }
        assert_eq!(client.next().await, Err(Some(code)), "{what}");
        assert!(given.recv_timeout(LONG).is_err(), "{what}: the port closed");
    }
    bystander_peer.send("still", "here").unwrap();
    assert_eq!(
        bystander.next().await.unwrap(),
        Frame::Message {
            port: 0,
            data: send_envelope("still", "here".into()),
            transfer: vec![]
        }
    );
}

/// A client that reads nothing while main keeps sending is cut off at the queue limit; main's
/// memory does not grow with what it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off() {
    let main = IpcMain::new();
    let bridge = Bridge::new(&main).with_limits(Limits {
        max_queued_bytes: 1 << 20,
        ..Limits::default()
    });
    let connected = peers(&bridge);
    let (left_tx, left) = mpsc::channel();
    let left_tx = std::sync::Mutex::new(left_tx);
    bridge.on_disconnect(move |peer| {
        let _ = left_tx.lock().unwrap().send(peer.id());
    });
    let serving = serve(&bridge).await;
    let _client = Client::connect(serving.url(), None).await.unwrap();
    let peer = connected.recv_timeout(LONG).unwrap();
    let chunk = Value::String("y".repeat(64 << 10));
    // 32 MiB: the socket buffers take a few, then the queue fills to its 1 MiB limit; the rest
    // is dropped with the connection.
    for _ in 0..512 {
        peer.send("flood", &chunk)
            .expect("a post never fails for a slow reader");
    }
    let id = left.recv_timeout(LONG).expect("the connection was cut off");
    assert_eq!(id, peer.id());
}

/// A gateway whose `max_unread_bytes` is `limit`, a client of it, and the port the client gave
/// main (its own is port 1).
async fn given_with_unread_limit(
    limit: usize,
) -> (IpcMain, msgport_bridge::Serving, Client, MessagePort) {
    let main = IpcMain::new();
    let bridge = Bridge::new(&main).with_limits(Limits {
        max_unread_bytes: limit,
        ..Limits::default()
    });
    let serving = serve(&bridge).await;
    let rx = ports_given(&main, "yours");
    let mut client = Client::connect(serving.url(), None).await.unwrap();
    client
        .ipc(send_envelope("yours", Value::Null), vec![1])
        .await;
    let given = rx.recv_timeout(LONG).unwrap();
    (main, serving, client, given)
}

/// A client posting into a Rust port faster than the Rust side reads is no longer read from
/// past `max_unread_bytes`, rather than buffered in main without bound (it used to be: every
/// frame became a queued message at once); once the Rust side reads, the rest arrives, all of
/// it, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_posting_faster_than_rust_reads_is_paused_not_buffered() {
    const CHUNK: usize = 256 << 10;
    const COUNT: usize = 128;
    let (_main, _serving, mut client, given) = given_with_unread_limit(4 << 20).await;
    // 32 MiB, posted as fast as the gateway takes it; main reads none of it for a while.
    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            let data = Value::String(format!("{i:08}{}", "y".repeat(CHUNK)));
            client
                .send(Frame::Message {
                    port: 1,
                    data,
                    transfer: vec![],
                })
                .await;
        }
        client
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut waiting = Vec::new();
    while let Ok(event) = given.try_recv() {
        waiting.push(event);
    }
    // 4 MiB of 256 KiB messages is 16; a few more may have been on their way.
    assert!(
        waiting.len() <= 24,
        "{} of {COUNT} messages queued unread",
        waiting.len()
    );
    let mut seen = waiting.len();
    for (i, event) in waiting.into_iter().enumerate() {
        assert!(event
            .data::<String>()
            .unwrap()
            .starts_with(&format!("{i:08}")));
    }
    while seen < COUNT {
        let event = given.recv_timeout(LONG).expect("the rest arrives");
        assert!(event
            .data::<String>()
            .unwrap()
            .starts_with(&format!("{seen:08}")));
        seen += 1;
    }
    let _client = sender.await.unwrap();
}

/// The same when the port's peer lives in another process that does not read: what the client
/// posts waits in main to be written to that process's full socket, and counts against the
/// limit as if it were queued here. (The other process is a port pair made by `listen` and
/// `connect` in this one: the same link, and nobody reads its far end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_posting_to_a_process_that_does_not_read_is_paused_not_buffered() {
    posting_to_a_process_that_does_not_read(32 << 10, 3072).await;
}

/// The same with messages large enough to travel in shared memory: a region the far process
/// has not read counts as what waits for its socket does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_to_a_process_that_does_not_read_are_paused_too() {
    posting_to_a_process_that_does_not_read(1 << 20, 160).await;
}

/// A client posts `count` messages of `chunk` bytes to a port whose peer is in a process that
/// does not read; the gateway's limit is 4 MiB.
async fn posting_to_a_process_that_does_not_read(chunk: usize, count: usize) {
    let (_main, _serving, mut client, given) = given_with_unread_limit(4 << 20).await;
    // `given` leaves for "another process", where nobody reads it.
    let (near, far, _rendezvous) = msgport_testkit::linked_pair(&format!("bridge-far-{chunk}"));
    near.post_message("take", [given]).unwrap();
    let arrived = far.recv_timeout(LONG).unwrap().ports.pop().unwrap();

    let message = move |i: usize| Value::from(&vec![i as u8; chunk][..]);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let sender = tokio::spawn(async move {
        for i in 0..count {
            client
                .send(Frame::Message {
                    port: 1,
                    data: message(i),
                    transfer: vec![],
                })
                .await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        client
    });
    // Wait until the client cannot send any more (its socket buffers full, the gateway not
    // reading), or has sent everything.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(std::sync::atomic::Ordering::Relaxed);
        if now == last || now == count {
            break;
        }
        last = now;
    }
    // The gateway pauses past 4 MiB; TCP buffers on both sides (up to 36 MiB here) and the
    // far socket hold the rest of what the client could send.
    let stalled = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        stalled * chunk <= 56 << 20,
        "the client sent {} of {} MiB before it had to wait",
        (stalled * chunk) >> 20,
        (count * chunk) >> 20
    );
    let reading = std::thread::spawn(move || {
        for i in 0..count {
            let event = arrived.recv_timeout(LONG).expect("the rest arrives");
            assert_eq!(event.value().unwrap(), message(i));
        }
    });
    let _client = sender.await.unwrap();
    tokio::task::spawn_blocking(move || reading.join().unwrap())
        .await
        .unwrap();
}

/// The connection's end (the client vanishing) closes every port it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_closes_its_ports() {
    let main = IpcMain::new();
    let bridge = Bridge::new(&main);
    let connected = peers(&bridge);
    let serving = serve(&bridge).await;
    let rx = ports_given(&main, "yours");
    let mut client = Client::connect(serving.url(), None).await.unwrap();
    let peer = connected.recv_timeout(LONG).unwrap();
    client
        .ipc(send_envelope("yours", Value::Null), vec![1])
        .await;
    let given = rx.recv_timeout(LONG).unwrap();
    let (mine, theirs) = MessageChannel::new().into_ports();
    peer.post_message("port", (), [theirs]).unwrap();
    client.next().await.unwrap();
    drop(client);
    assert!(given.recv_timeout(LONG).is_err());
    assert!(mine.recv_timeout(LONG).is_err());
}

/// Pages served next to the gateway (`bind_with`) get the same Host rule: a DNS-rebinding site
/// cannot read a page that embeds the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_served_with_the_gateway_refuse_a_foreign_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let main = IpcMain::new();
    let bridge = Bridge::new(&main);
    let routes = axum::Router::new().route("/page", axum::routing::get(|| async { "secret" }));
    let serving = bridge.bind_with("127.0.0.1:0", routes).await.unwrap();
    let addr = serving.local_addr();
    let get = |host: String| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /page HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let foreign = get(format!("rebound.example:{}", addr.port())).await;
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
    assert!(!foreign.contains("secret"));
    let own = get(addr.to_string()).await;
    assert!(
        own.starts_with("HTTP/1.1 200") && own.contains("secret"),
        "{own}"
    );
}

/// Mounted in an application's own axum router (the other way to run it), with the peers'
/// addresses from `into_make_service_with_connect_info`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_in_an_application_router() {
    let main = IpcMain::new();
    let bridge = Bridge::new(&main).at("/ipc");
    let connected = peers(&bridge);
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "the app" }))
        .merge(bridge.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, service).await
    });
    let url = format!("ws://{addr}/ipc?token={}", bridge.token());
    let mut client = Client::connect(&url, Some(&format!("http://{addr}")))
        .await
        .unwrap();
    let peer = connected.recv_timeout(LONG).unwrap();
    assert!(peer.remote().unwrap().address.is_some());
    peer.send("hello", 1).unwrap();
    assert_eq!(
        client.next().await.unwrap(),
        Frame::Message {
            port: 0,
            data: send_envelope("hello", 1.into()),
            transfer: vec![]
        }
    );
}

/// `IpcMain::shutdown` reaches pages as it reaches children: a goodbye, then the connection's
/// normal close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_shutting_down_says_goodbye_and_closes() {
    let main = IpcMain::new();
    let bridge = Bridge::new(&main);
    let connected = peers(&bridge);
    let serving = serve(&bridge).await;
    let mut client = Client::connect(serving.url(), None).await.unwrap();
    connected.recv_timeout(LONG).unwrap();
    let shutdown = tokio::task::spawn_blocking(move || main.shutdown());
    assert_eq!(
        client.next().await.unwrap(),
        Frame::Message {
            port: 0,
            data: value!({ "t": "bye" }),
            transfer: vec![]
        }
    );
    assert_eq!(client.next().await, Ok(Frame::Close { port: 0 }));
    assert_eq!(client.next().await, Err(Some(1000)));
    shutdown.await.unwrap();
}
