//! The HTTP side: the checks before the upgrade, and one task pair per connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use msgport::MessageChannel;
use msgport_ipc::RemoteInfo;
use tokio::sync::{mpsc, watch};

use crate::conn::{Conn, Shut, MESSAGE_TOO_BIG, NORMAL, POLICY_VIOLATION, PROTOCOL_ERROR};
use crate::frame::Frame;
use crate::Config;

/// A batch written to a client grows to about this many bytes at most.
const BATCH_BYTES: usize = 256 << 10;

/// How long a connection's last frames and close frame may take to leave.
const GOODBYE: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a connection paused for the Rust side (`Limits::max_unread_bytes`) looks whether
/// it may read again.
const UNREAD_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// A gateway being served by [`Bridge::bind`](crate::Bridge::bind); dropping it stops
/// accepting (connections already open go on until they end).
#[derive(Debug)]
pub struct Serving {
    addr: SocketAddr,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a client connects to, token included (`ws://127.0.0.1:PORT/msgport?token=...`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn router(config: Arc<Config>) -> axum::Router {
    let path = config.path.clone();
    axum::Router::new().route(
        &path,
        axum::routing::get(move |request: Request| upgrade(config, request)),
    )
}

pub(crate) async fn bind(
    config: Arc<Config>,
    addr: impl tokio::net::ToSocketAddrs,
    routes: axum::Router,
) -> std::io::Result<Serving> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let url = format!("ws://{addr}{}?token={}", config.path, config.token);
    let any_host = config.any_host;
    // Pages served next to the gateway may embed its token: the same Host rule guards them
    // (a DNS-rebinding site could otherwise read the token from them).
    let routes = routes.layer(axum::middleware::from_fn(
        move |request: Request, next: axum::middleware::Next| async move {
            if !any_host && !host_allowed(host(request.headers())) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "Host is not an IP address or localhost",
                )
                .into_response();
            }
            next.run(request).await
        },
    ));
    let app = router(config).merge(routes);
    let task = tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!("msgport-bridge: serving stopped: {e}");
        }
    });
    Ok(Serving { addr, url, task })
}

/// Why a request does not become a connection.
struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        tracing::warn!("msgport-bridge: refused a connection: {}", self.1);
        (self.0, self.1).into_response()
    }
}

fn refuse(status: StatusCode, why: &'static str) -> Refused {
    Refused(status, why)
}

/// Equal in time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// The host part of a `Host` header (`[::1]:8080` → `::1`, `localhost:80` → `localhost`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The `Host` header, or "" (a request without one names no host we accept).
fn host(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
}

/// Whether `host` names this machine by address or as `localhost`: a DNS name could be
/// rebound to loopback by a foreign site.
fn host_allowed(host: &str) -> bool {
    let name = host_name(host);
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()
}

/// Decides whether the request may become a connection: token, host, origin.
fn admit(config: &Config, parts: &axum::http::request::Parts) -> Result<Option<String>, Refused> {
    let query = parts.uri.query().unwrap_or("");
    let token = query_param(query, "token").unwrap_or("");
    if config.token.is_empty() || !same(token.as_bytes(), config.token.as_bytes()) {
        return Err(refuse(StatusCode::UNAUTHORIZED, "missing or wrong token"));
    }
    let host = host(&parts.headers);
    if !config.any_host && !host_allowed(host) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "Host is not an IP address or localhost",
        ));
    }
    let origin = match parts.headers.get(header::ORIGIN) {
        None if config.require_origin => {
            return Err(refuse(StatusCode::FORBIDDEN, "no Origin"));
        }
        None => None,
        Some(origin) => {
            let Ok(origin) = origin.to_str() else {
                return Err(refuse(StatusCode::FORBIDDEN, "Origin is not text"));
            };
            let own = origin
                .split_once("://")
                .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest == host);
            if !own && !config.origins.iter().any(|o| o == origin) {
                return Err(refuse(StatusCode::FORBIDDEN, "Origin not allowed"));
            }
            Some(origin.to_owned())
        }
    };
    Ok(origin)
}

/// Counts a connection for as long as it lives.
struct Counted(Arc<Config>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn upgrade(config: Arc<Config>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let origin = match admit(&config, &parts) {
        Ok(origin) => origin,
        Err(refused) => return refused.into_response(),
    };
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let previous = config.connections.fetch_add(1, Ordering::AcqRel);
    let counted = Counted(config.clone());
    if previous >= config.limits.max_connections {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    }
    let address = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let remote = RemoteInfo::new("websocket", origin, address);
    let max = config.limits.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            connection(config, socket, remote).await;
            drop(counted);
        })
}

/// Runs connection listeners on a blocking-pool thread, awaited: a listener that takes long
/// (or blocks) delays its own connection only, never the tokio workers that serve the others.
async fn listeners(
    config: &Arc<Config>,
    peer: &msgport_ipc::ChildRef,
    which: fn(&Config) -> &crate::Listeners,
) {
    let (config, peer) = (config.clone(), peer.clone());
    let ran = tokio::task::spawn_blocking(move || which(&config).call(&peer)).await;
    if ran.is_err() {
        tracing::error!("msgport-bridge: a connection listener panicked");
    }
}

/// Serves one connection until either side ends it.
async fn connection(config: Arc<Config>, socket: WebSocket, remote: RemoteInfo) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let (shut_tx, mut shut_rx) = watch::channel(None::<Shut>);
    let conn = Conn::new(config.limits, out_tx, queued.clone(), shut_tx);
    let (theirs, ours) = MessageChannel::new().into_ports();
    let peer = config.main.admit_remote(theirs, remote);
    conn.attach(0, ours);
    listeners(&config, &peer, |c| &c.on_connect).await;

    let (mut sink, mut stream) = socket.split();
    let mut writer_shut = shut_rx.clone();
    let writer = async move {
        loop {
            tokio::select! {
                biased;
                _ = writer_shut.changed() => break,
                bytes = out_rx.recv() => {
                    let Some(bytes) = bytes else { break };
                    // Frames queued meanwhile leave with it, as one batch.
                    let mut more = Vec::new();
                    let mut size = bytes.len();
                    while size < BATCH_BYTES {
                        let Ok(next) = out_rx.try_recv() else { break };
                        size += next.len();
                        more.push(next);
                    }
                    let len = size;
                    let bytes = if more.is_empty() {
                        bytes
                    } else {
                        more.insert(0, bytes);
                        Frame::batch(more.iter().map(Vec::as_slice))
                    };
                    // A client that does not read blocks the send: a shut for a limit wins and
                    // drops it. A clean end still sends what was taken (the queue may have
                    // handed over main's last messages with the close, in this very batch),
                    // then the rest, below.
                    let send = sink.send(Message::Binary(bytes.into()));
                    tokio::pin!(send);
                    let clean_end = tokio::select! {
                        biased;
                        _ = writer_shut.changed() => {
                            let clean = writer_shut.borrow().as_ref().is_some_and(|s| s.code == NORMAL);
                            if !clean {
                                break;
                            }
                            true
                        }
                        sent = &mut send => {
                            if sent.is_err() {
                                return;
                            }
                            false
                        }
                    };
                    if clean_end {
                        // Within the goodbye's time: a client that reads nothing is dropped.
                        if !matches!(tokio::time::timeout(GOODBYE, send).await, Ok(Ok(()))) {
                            return;
                        }
                        break;
                    }
                    queued.fetch_sub(len, Ordering::AcqRel);
                }
            }
        }
        let shut = writer_shut.borrow().clone();
        let Some(shut) = shut else { return };
        let goodbye = async {
            if shut.code == NORMAL {
                // A clean end: what was queued before it goes out first.
                while let Ok(bytes) = out_rx.try_recv() {
                    if sink.send(Message::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
            }
            let reason = shut.reason.chars().take(100).collect::<String>();
            // Fails when the client closed first (the reply to its close is already queued):
            // closing the sink below still flushes that reply.
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: shut.code,
                    reason: reason.into(),
                })))
                .await;
            let _ = sink.close().await;
        };
        // A client that reads nothing gets no goodbye: its socket is dropped.
        let _ = tokio::time::timeout(GOODBYE, goodbye).await;
    };
    let reader_conn = conn.clone();
    let unread_limit = config.limits.max_unread_bytes;
    let reader = async move {
        loop {
            let message = tokio::select! {
                _ = shut_rx.changed() => return,
                message = stream.next() => message,
            };
            let shut = match message {
                None => None,
                Some(Err(e)) => {
                    let reason = e.to_string();
                    tracing::debug!("msgport-bridge: socket error: {reason}");
                    // tungstenite's capacity error: a frame past the size limit.
                    let code = if reason.contains("too long") || reason.contains("Space limit") {
                        MESSAGE_TOO_BIG
                    } else {
                        POLICY_VIOLATION
                    };
                    Some(Shut {
                        code,
                        reason: format!("the socket failed: {reason}"),
                    })
                }
                Some(Ok(Message::Binary(bytes))) => match reader_conn.incoming(&bytes) {
                    Ok(()) => {
                        // The Rust side is behind: read nothing more from this client until
                        // what it posted is down to half the limit.
                        let max = unread_limit;
                        if reader_conn.unread_over(max, false) {
                            while reader_conn.unread_over(max / 2, true) {
                                tokio::select! {
                                    _ = shut_rx.changed() => return,
                                    _ = tokio::time::sleep(UNREAD_POLL) => {}
                                }
                            }
                        }
                        continue;
                    }
                    Err(shut) => Some(shut),
                },
                Some(Ok(Message::Text(_))) => Some(Shut {
                    code: PROTOCOL_ERROR,
                    reason: "a text message (frames are binary)".into(),
                }),
                Some(Ok(Message::Close(_))) => None,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            };
            match shut {
                Some(shut) => {
                    if shut.code != NORMAL {
                        tracing::warn!(
                            code = shut.code,
                            "msgport-bridge: closing a connection: {}",
                            shut.reason
                        );
                    }
                    reader_conn.shut(shut.code, shut.reason);
                }
                None => reader_conn.shut(NORMAL, "the client left"),
            }
            return;
        }
    };
    // The writer ends once the connection is shut (by the reader, a limit, or main); the
    // reader when the client leaves or breaks the protocol.
    let writer = tokio::spawn(writer);
    reader.await;
    conn.end();
    let _ = writer.await;
    listeners(&config, &peer, |c| &c.on_disconnect).await;
}
