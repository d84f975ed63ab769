//! The cross-process group: msgport against what a Rust user would pick instead, each written as
//! its own users write it and doing the same work on the same typed payload: Servo's
//! ipc-channel (`IpcSender<T>`), and a raw `AF_UNIX` socket pair carrying the same structs
//! encoded with postcard (ipc-channel's format), one `write` per message or batched through a
//! `BufWriter`, its reader decoding every message. Each contender talks to a child process of
//! this binary (`msgport-bench --child ROLE CPU [NAME]`) that does the same in its own terms.

use std::io::{BufReader, BufWriter, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{
    self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender,
};
use msgport::{process, MessageChannel, MessagePort, Value};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::measure::{compare, Better, Report, Samples, SweepPoint};
use crate::payload::{frame, unframe, Blob, Small};
use crate::{pin, Config, Placement};

/// What a contender's child does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Sends every [`Small`] back.
    Echo,
    /// Reads a count, then that many messages of the kind, decoding each; then acknowledges.
    Sink(Kind),
}

/// The payload kinds a sink decodes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Small,
    Blob,
}

impl Role {
    fn tag(self) -> &'static str {
        match self {
            Role::Echo => "echo",
            Role::Sink(Kind::Small) => "sink-small",
            Role::Sink(Kind::Blob) => "sink-blob",
        }
    }
}

/// A typed payload every contender can carry.
pub(crate) trait Payload: Serialize + DeserializeOwned + Clone + Send + 'static {
    const KIND: Kind;
}
impl Payload for Small {
    const KIND: Kind = Kind::Small;
}
impl Payload for Blob {
    const KIND: Kind = Kind::Blob;
}

/// A way to make a round trip with a child process that echoes (see [`rtt_detail`]).
pub(crate) trait RoundTrip {
    /// One round trip of `m`.
    fn round_trip(&mut self, m: Small) -> Small;
    /// The child process's id (for its CPU time).
    fn child_pid(&self) -> u32;
}

impl<T: Transport> RoundTrip for T {
    fn round_trip(&mut self, m: Small) -> Small {
        Transport::round_trip(self, m)
    }
    fn child_pid(&self) -> u32 {
        Transport::child_pid(self)
    }
}

/// A way to talk to another process, as its users write it.
pub(crate) trait Transport: Sized {
    /// How the figures name it.
    const NAME: &'static str;
    /// Spawns a child of this binary running `role` in this transport's terms, pinned to `cpu`.
    fn spawn(role: Role, cpu: usize) -> Self;
    /// One round trip of `m` (the child is an echo).
    fn round_trip(&mut self, m: Small) -> Small;
    /// The child process's id (for its CPU time).
    fn child_pid(&self) -> u32;
    /// Sends every message of `batch` (taking them, or reading them, as the transport's API
    /// wants) and waits until the child has decoded them all (the child is a sink).
    fn one_way<T: Payload>(&mut self, batch: &mut Vec<T>);
}

fn child_cmd(role: &str, cpu: usize, name: Option<&str>) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg("--child").arg(role).arg(cpu.to_string());
    if let Some(name) = name {
        cmd.arg(name);
    }
    cmd
}

fn finish(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---- msgport -------------------------------------------------------------------------------

/// msgport: posts the structs as they are; the child takes them with `take_data`.
pub(crate) struct Msgport {
    child: Option<Child>,
    port: Option<MessagePort>,
}

impl Msgport {
    /// Posts borrowed messages (`post_message_ref`): the caller keeps them, as a sender of
    /// `&[u8]` through `IpcBytesSender` does.
    fn one_way_ref<T: Payload>(&mut self, batch: &[T]) {
        let port = self.port();
        port.post_message(batch.len() as u64, []).unwrap();
        for m in batch {
            port.post_message_ref(m, []).unwrap();
        }
        port.blocking_recv().unwrap();
    }

    fn spawn_role(role: &str, cpu: usize) -> Self {
        let (child, port) = process::spawn(&mut child_cmd(role, cpu, None)).expect("spawn");
        Msgport {
            child: Some(child),
            port: Some(port),
        }
    }
    pub(crate) fn port(&self) -> &MessagePort {
        self.port.as_ref().expect("open")
    }
}

impl Drop for Msgport {
    fn drop(&mut self) {
        self.port.take();
        if let Some(child) = self.child.take() {
            finish(child);
        }
    }
}

impl Transport for Msgport {
    const NAME: &'static str = "msgport";
    fn spawn(role: Role, cpu: usize) -> Self {
        Self::spawn_role(&format!("msgport-{}", role.tag()), cpu)
    }
    fn child_pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
    fn round_trip(&mut self, m: Small) -> Small {
        self.port().post_message(m, []).unwrap();
        self.port().blocking_recv().unwrap().take_data().unwrap()
    }
    fn one_way<T: Payload>(&mut self, batch: &mut Vec<T>) {
        let port = self.port();
        port.post_message(batch.len() as u64, []).unwrap();
        for m in batch.drain(..) {
            port.post_message(m, []).unwrap();
        }
        port.blocking_recv().unwrap();
    }
}

// ---- raw sockets ---------------------------------------------------------------------------

/// A raw `AF_UNIX` stream socket: postcard frames (u32 length, body), one `write` per message
/// (`BATCHED = false`) or through a 64 KiB `BufWriter` flushed at the end of a batch.
pub(crate) struct Raw<const BATCHED: bool> {
    child: Option<Child>,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    buf: Vec<u8>,
}

impl<const BATCHED: bool> Raw<BATCHED> {
    fn spawn_role(role: &str, cpu: usize) -> Self {
        let (child, here) = process::spawn_socket(&mut child_cmd(role, cpu, None)).expect("spawn");
        let stream = UnixStream::from(here);
        stream.set_nonblocking(false).unwrap();
        let reader = BufReader::with_capacity(64 << 10, stream.try_clone().unwrap());
        Raw {
            child: Some(child),
            stream,
            reader,
            buf: Vec::new(),
        }
    }
}

impl<const BATCHED: bool> Drop for Raw<BATCHED> {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// Reads one frame's body into `body`; `false` at the end of the stream.
fn read_frame(r: &mut impl Read, body: &mut Vec<u8>) -> bool {
    let mut len = [0u8; 4];
    if r.read_exact(&mut len).is_err() {
        return false;
    }
    body.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(body).is_ok()
}

fn write_frame<T: Serialize>(w: &mut impl Write, m: &T, buf: &mut Vec<u8>) {
    buf.clear();
    frame(m, buf);
    w.write_all(buf).unwrap();
}

impl<const BATCHED: bool> Transport for Raw<BATCHED> {
    const NAME: &'static str = if BATCHED {
        "raw AF_UNIX, postcard, BufWriter"
    } else {
        "raw AF_UNIX, postcard, a write each"
    };
    fn child_pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
    fn spawn(role: Role, cpu: usize) -> Self {
        Self::spawn_role(&format!("raw-{}", role.tag()), cpu)
    }
    fn round_trip(&mut self, m: Small) -> Small {
        write_frame(&mut self.stream, &m, &mut self.buf);
        assert!(read_frame(&mut self.reader, &mut self.buf));
        unframe(&self.buf)
    }
    fn one_way<T: Payload>(&mut self, batch: &mut Vec<T>) {
        let n = batch.len() as u64;
        if BATCHED {
            let mut w = BufWriter::with_capacity(64 << 10, &self.stream);
            write_frame(&mut w, &n, &mut self.buf);
            for m in batch.iter() {
                write_frame(&mut w, m, &mut self.buf);
            }
            w.flush().unwrap();
        } else {
            write_frame(&mut self.stream, &n, &mut self.buf);
            for m in batch.iter() {
                write_frame(&mut self.stream, m, &mut self.buf);
            }
        }
        let mut ack = [0u8; 1];
        self.reader.read_exact(&mut ack).unwrap();
    }
}

// ---- raw seqpacket socket -------------------------------------------------------------------

/// A raw `AF_UNIX` seqpacket socket pair (the kind ipc-channel runs over), one record per
/// message: the record is the frame, its body the postcard encoding. Round trips only (a record
/// has a size limit a stream does not). The child's end is passed over the bootstrap socket.
pub(crate) struct RawSeq {
    child: Option<Child>,
    socket: OwnedFd,
    buf: Vec<u8>,
}

impl RawSeq {
    const NAME: &'static str = "raw AF_UNIX seqpacket, postcard, a record each";

    fn spawn_echo(cpu: usize) -> Self {
        let (child, boot) =
            process::spawn_socket(&mut child_cmd("rawseq-echo", cpu, None)).expect("spawn");
        let (socket, there) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("seqpacket socket pair");
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [there.as_fd()];
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &boot,
            &[IoSlice::new(&[1])],
            &mut control,
            SendFlags::empty(),
        )
        .expect("send the child its end");
        RawSeq {
            child: Some(child),
            socket,
            buf: vec![0; 4096],
        }
    }
}

/// In a `rawseq-*` child: the seqpacket end its parent sent over the bootstrap socket.
fn rawseq_inherited() -> OwnedFd {
    let boot = raw_inherited();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(
        &boot,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("receive the seqpacket end");
    control
        .drain()
        .find_map(|m| match m {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .expect("a descriptor with the byte")
}

impl Drop for RawSeq {
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Both);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl RoundTrip for RawSeq {
    fn round_trip(&mut self, m: Small) -> Small {
        let record = postcard::to_slice(&m, &mut self.buf).expect("postcard encodes");
        rustix::net::send(&self.socket, record, SendFlags::empty()).expect("send");
        let (n, _) =
            rustix::net::recv(&self.socket, &mut self.buf, RecvFlags::empty()).expect("recv");
        unframe(&self.buf[..n])
    }
    fn child_pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

// ---- ipc-channel ---------------------------------------------------------------------------

/// What an ipc-channel child sends its parent once connected: its data sender, its control
/// sender (counts), and where the parent sends the senders for the replies (echoed `Small`s,
/// acknowledged counts).
type IpcBoot<T> = (
    IpcSender<T>,
    IpcSender<u64>,
    IpcSender<(IpcSender<Small>, IpcSender<u64>)>,
);

/// Servo's ipc-channel: typed `IpcSender<T>` / `IpcReceiver<T>` (postcard inside).
pub(crate) struct IpcChannel {
    child: Option<Child>,
    small: Option<IpcSender<Small>>,
    blob: Option<IpcSender<Blob>>,
    control: IpcSender<u64>,
    replies: IpcReceiver<Small>,
    acks: IpcReceiver<u64>,
}

impl Drop for IpcChannel {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            finish(child);
        }
    }
}

/// Spawns an ipc-channel child and connects: (child, its data sender, its control sender,
/// replies, acknowledgements).
fn ipc_connect<T: Payload>(
    role: &str,
    cpu: usize,
) -> (
    Child,
    IpcSender<T>,
    IpcSender<u64>,
    IpcReceiver<Small>,
    IpcReceiver<u64>,
) {
    let (server, name) = IpcOneShotServer::<IpcBoot<T>>::new().unwrap();
    let child = child_cmd(role, cpu, Some(&name)).spawn().unwrap();
    let (_rx, (data, control, setup)): (IpcReceiver<IpcBoot<T>>, IpcBoot<T>) =
        server.accept().unwrap();
    let (reply_tx, replies) = ipc::channel::<Small>().unwrap();
    let (ack_tx, acks) = ipc::channel::<u64>().unwrap();
    setup.send((reply_tx, ack_tx)).unwrap();
    (child, data, control, replies, acks)
}

impl Transport for IpcChannel {
    const NAME: &'static str = "ipc-channel";
    fn child_pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
    fn spawn(role: Role, cpu: usize) -> Self {
        let name = format!("ipc-{}", role.tag());
        match role {
            Role::Echo | Role::Sink(Kind::Small) => {
                let (child, data, control, replies, acks) = ipc_connect::<Small>(&name, cpu);
                IpcChannel {
                    child: Some(child),
                    small: Some(data),
                    blob: None,
                    control,
                    replies,
                    acks,
                }
            }
            Role::Sink(Kind::Blob) => {
                let (child, data, control, replies, acks) = ipc_connect::<Blob>(&name, cpu);
                IpcChannel {
                    child: Some(child),
                    small: None,
                    blob: Some(data),
                    control,
                    replies,
                    acks,
                }
            }
        }
    }
    fn round_trip(&mut self, m: Small) -> Small {
        self.small.as_ref().expect("an echo").send(m).unwrap();
        self.replies.recv().unwrap()
    }
    fn one_way<T: Payload>(&mut self, batch: &mut Vec<T>) {
        self.control.send(batch.len() as u64).unwrap();
        let any: &dyn std::any::Any = match T::KIND {
            Kind::Small => self.small.as_ref().expect("a small sink"),
            Kind::Blob => self.blob.as_ref().expect("a blob sink"),
        };
        let sender = any.downcast_ref::<IpcSender<T>>().expect("the sink's type");
        for m in batch.drain(..) {
            sender.send(m).unwrap();
        }
        self.acks.recv().unwrap();
    }
}

// ---- the children --------------------------------------------------------------------------

fn raw_inherited() -> UnixStream {
    let s = UnixStream::from(process::bootstrap_socket().unwrap());
    s.set_nonblocking(false).unwrap();
    s
}

fn msgport_sink<T: Payload>(port: &MessagePort) {
    while let Some(e) = port.blocking_recv() {
        let n: u64 = e.data().unwrap();
        for _ in 0..n {
            let m: T = port.blocking_recv().unwrap().take_data().unwrap();
            std::hint::black_box(m);
        }
        port.post_message("done", []).unwrap();
    }
}

/// A child that keeps every port it is given and echoes each message, as `T`, on the port it
/// came on (callbacks, no thread per port); with `ready`, it answers each batch of ports.
fn echo_on_every_port<T: Serialize + DeserializeOwned + Send + 'static>(ready: bool) {
    let port = process::bootstrap().unwrap();
    let mut kept = Vec::new();
    while let Some(e) = port.blocking_recv() {
        for p in e.ports {
            let p = std::sync::Arc::new(p);
            let echo = std::sync::Arc::downgrade(&p);
            p.on_message(move |mut m| {
                if let Some(p) = echo.upgrade() {
                    let _ = p.post_message(m.take_data::<T>().unwrap(), []);
                }
            });
            p.start();
            kept.push(p);
        }
        if ready {
            port.post_message("ready", []).unwrap();
        }
    }
}

fn raw_sink<T: Payload>(stream: UnixStream) {
    let mut ack = stream.try_clone().unwrap();
    let mut r = BufReader::with_capacity(64 << 10, stream);
    let mut body = Vec::new();
    while read_frame(&mut r, &mut body) {
        let n: u64 = unframe(&body);
        for _ in 0..n {
            assert!(read_frame(&mut r, &mut body));
            std::hint::black_box(unframe::<T>(&body));
        }
        ack.write_all(&[1]).unwrap();
    }
}

fn ipc_child<T: Payload>(
    name: String,
) -> (
    IpcReceiver<T>,
    IpcReceiver<u64>,
    IpcSender<Small>,
    IpcSender<u64>,
) {
    let boot = IpcSender::<IpcBoot<T>>::connect(name).unwrap();
    let (data_tx, data_rx) = ipc::channel::<T>().unwrap();
    let (ctl_tx, ctl_rx) = ipc::channel::<u64>().unwrap();
    let (setup_tx, setup_rx) = ipc::channel::<(IpcSender<Small>, IpcSender<u64>)>().unwrap();
    boot.send((data_tx, ctl_tx, setup_tx)).unwrap();
    let (reply, ack) = setup_rx.recv().unwrap();
    (data_rx, ctl_rx, reply, ack)
}

fn ipc_sink<T: Payload>(name: String) {
    let (data, control, _reply, ack) = ipc_child::<T>(name);
    while let Ok(n) = control.recv() {
        for _ in 0..n {
            std::hint::black_box(data.recv().unwrap());
        }
        ack.send(n).unwrap();
    }
}

/// The child side: runs `role` pinned to `cpu`.
pub(crate) fn child(role: &str, cpu: usize, name: Option<String>) {
    pin(cpu);
    match role {
        "msgport-echo" | "msgport-echo-ll" | "msgport-echo-value" => {
            let port = process::bootstrap().unwrap();
            port.set_low_latency(role == "msgport-echo-ll");
            while let Some(mut e) = port.blocking_recv() {
                if role == "msgport-echo-value" {
                    let v: Value = e.take_data().unwrap();
                    port.post_message(v, []).unwrap();
                } else {
                    let m: Small = e.take_data().unwrap();
                    port.post_message(m, []).unwrap();
                }
            }
        }
        "msgport-sink-small" => msgport_sink::<Small>(&process::bootstrap().unwrap()),
        "msgport-sink-blob" => msgport_sink::<Blob>(&process::bootstrap().unwrap()),
        "msgport-drop" => {
            // Takes ports and drops them; after each batch of n (announced first), acks.
            let port = process::bootstrap().unwrap();
            while let Some(e) = port.blocking_recv() {
                let n: u64 = e.data().unwrap();
                for _ in 0..n {
                    drop(port.blocking_recv().unwrap());
                }
                port.post_message("done", []).unwrap();
            }
        }
        // Keeps every port it is given, echoing on each; "multi" echoes the typed struct and
        // says "ready" after each batch.
        "msgport-keep" => echo_on_every_port::<Value>(false),
        "msgport-multi" => echo_on_every_port::<Small>(true),
        "ipc-multi" => {
            // Echoes on every channel pair it is given, waiting on all of them at once.
            let boot = IpcSender::<MultiBootstrap>::connect(name.expect("server name")).unwrap();
            let (tx, rx) = ipc::channel::<MultiBoot>().unwrap();
            let (ready, ready_rx) = ipc::channel::<()>().unwrap();
            boot.send((tx, ready_rx)).unwrap();
            let mut set = ipc_channel::ipc::IpcReceiverSet::new().unwrap();
            let mut replies = std::collections::HashMap::new();
            // The pairs come in batches (ipc-channel sends at most 64 descriptors a message),
            // ended by an empty one.
            loop {
                let pairs = rx.recv().unwrap();
                if pairs.is_empty() {
                    break;
                }
                for (requests, reply) in pairs {
                    replies.insert(set.add(requests).unwrap(), reply);
                }
            }
            ready.send(()).unwrap();
            while !replies.is_empty() {
                for event in set.select().unwrap() {
                    match event {
                        ipc_channel::ipc::IpcSelectionResult::MessageReceived(id, msg) => {
                            let m: Small = msg.to().unwrap();
                            replies[&id].send(m).unwrap();
                        }
                        ipc_channel::ipc::IpcSelectionResult::ChannelClosed(id) => {
                            replies.remove(&id);
                        }
                    }
                }
            }
        }
        "msgport-hold" => {
            let port = process::bootstrap().unwrap();
            let held = port.blocking_recv().unwrap().ports;
            port.post_message("holding", []).unwrap();
            std::thread::sleep(Duration::from_secs(3600));
            drop(held);
        }
        "raw-hold" => {
            let mut s = raw_inherited();
            s.write_all(&[1]).unwrap();
            std::thread::sleep(Duration::from_secs(3600));
        }
        "raw-echo" => {
            let s = raw_inherited();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::with_capacity(64 << 10, s);
            let (mut body, mut buf) = (Vec::new(), Vec::new());
            while read_frame(&mut r, &mut body) {
                let m: Small = unframe(&body);
                write_frame(&mut w, &m, &mut buf);
            }
        }
        "raw-echo-spin" => {
            // Busy-polls its socket: the latency floor of two processes on two CPUs.
            let mut s = raw_inherited();
            s.set_nonblocking(true).unwrap();
            let (mut body, mut buf) = (Vec::new(), Vec::new());
            loop {
                let mut len = [0u8; 4];
                if !spin_read(&mut s, &mut len) {
                    return;
                }
                body.resize(u32::from_le_bytes(len) as usize, 0);
                if !spin_read(&mut s, &mut body) {
                    return;
                }
                let m: Small = unframe(&body);
                buf.clear();
                frame(&m, &mut buf);
                s.set_nonblocking(false).unwrap();
                s.write_all(&buf).unwrap();
                s.set_nonblocking(true).unwrap();
            }
        }
        "rawseq-echo" => {
            let s = rawseq_inherited();
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, _) = rustix::net::recv(&s, &mut buf, RecvFlags::empty()).expect("recv");
                if n == 0 {
                    return;
                }
                let m: Small = unframe(&buf[..n]);
                let mut out = [0u8; 128];
                let record = postcard::to_slice(&m, &mut out).expect("postcard encodes");
                rustix::net::send(&s, record, SendFlags::empty()).expect("send");
            }
        }
        "raw-sink-small" => raw_sink::<Small>(raw_inherited()),
        "raw-sink-blob" => raw_sink::<Blob>(raw_inherited()),
        "ipc-echo" => {
            let (data, _control, reply, _ack) = ipc_child::<Small>(name.expect("server name"));
            while let Ok(m) = data.recv() {
                reply.send(m).unwrap();
            }
        }
        "ipc-sink-small" => ipc_sink::<Small>(name.expect("server name")),
        "ipc-sink-blob" => ipc_sink::<Blob>(name.expect("server name")),
        "ipc-bytes" => {
            // Echoes byte messages, or sinks them after a count (`[n; 8]`, then n messages).
            let boot = IpcSender::<(IpcBytesSender, IpcSender<IpcBytesSender>)>::connect(
                name.expect("server name"),
            )
            .unwrap();
            let (data_tx, data_rx) = ipc::bytes_channel().unwrap();
            let (reply_tx_tx, reply_tx_rx) = ipc::channel::<IpcBytesSender>().unwrap();
            boot.send((data_tx, reply_tx_tx)).unwrap();
            let reply = reply_tx_rx.recv().unwrap();
            while let Ok(m) = data_rx.recv() {
                if m.len() == 9 && m[8] == 0xff {
                    let n = u64::from_le_bytes(m[..8].try_into().unwrap());
                    for _ in 0..n {
                        data_rx.recv().unwrap();
                    }
                    reply.send(b"done").unwrap();
                } else {
                    reply.send(&m).unwrap();
                }
            }
        }
        "ipc-drop" => {
            let boot = IpcSender::<(IpcBytesSender, IpcSender<IpcBytesSender>)>::connect(
                name.expect("server name"),
            )
            .unwrap();
            let (data_tx, data_rx) = ipc::bytes_channel().unwrap();
            let (senders_tx, senders_rx) = ipc::channel::<IpcBytesSender>().unwrap();
            boot.send((data_tx, senders_tx)).unwrap();
            let reply = senders_rx.recv().unwrap();
            while let Ok(head) = data_rx.recv() {
                let n = u64::from_le_bytes(head[..8].try_into().unwrap());
                for _ in 0..n {
                    drop(senders_rx.recv().unwrap());
                }
                reply.send(b"done").unwrap();
            }
        }
        other => panic!("unknown child role {other}"),
    }
    // Best effort: the parent may already have hung up.
    let _ = process::flush(Duration::from_secs(10));
}

/// Reads exactly `buf.len()` bytes from a non-blocking socket, spinning; `false` at the end.
fn spin_read(s: &mut UnixStream, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(_) => return false,
        }
    }
    true
}

/// ipc-channel's byte channels (`IpcBytesSender`), its fastest way to move a buffer.
struct IpcBytes {
    child: Option<Child>,
    data: IpcBytesSender,
    replies: IpcBytesReceiver,
}

impl IpcBytes {
    fn spawn(cpu: usize) -> Self {
        let (server, name) =
            IpcOneShotServer::<(IpcBytesSender, IpcSender<IpcBytesSender>)>::new().unwrap();
        let child = child_cmd("ipc-bytes", cpu, Some(&name)).spawn().unwrap();
        let (_rx, (data, reply_tx_tx)) = server.accept().unwrap();
        let (reply_tx, replies) = ipc::bytes_channel().unwrap();
        reply_tx_tx.send(reply_tx).unwrap();
        IpcBytes {
            child: Some(child),
            data,
            replies,
        }
    }
    fn sink(&self, batch: &[Vec<u8>]) {
        let mut head = (batch.len() as u64).to_le_bytes().to_vec();
        head.push(0xff);
        self.data.send(&head).unwrap();
        for m in batch {
            self.data.send(m).unwrap();
        }
        self.replies.recv().unwrap();
    }
}

impl Drop for IpcBytes {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            finish(child);
        }
    }
}

// ---- the group -----------------------------------------------------------------------------

/// Microseconds per round trip: one rep is a batch of `n`.
fn rtt_rep(n: usize, mut one: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        one();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn rtt_of<T: Transport>(c: &mut T, n: usize) -> f64 {
    let mut seq = 0u64;
    rtt_rep(n, || {
        seq += 1;
        let back = c.round_trip(Small::new(seq));
        assert_eq!(back.seq, seq);
    })
}

/// One rep of single round trips, each timed: the mean (µs), the p50 / p99 / p999 of the single
/// round trips (µs), and the CPU time both processes spent per round trip (µs: every thread of
/// this process and of the child, from the kernel's scheduler statistics), so that time spent
/// spinning shows as cost.
struct RttDetail {
    mean: f64,
    percentiles: [f64; 3],
    cpu: f64,
}

/// Which figure of a rep's details.
type Pick = fn(&RttDetail) -> f64;

fn rtt_detail<T: RoundTrip>(c: &mut T, n: usize) -> RttDetail {
    let pids = [std::process::id(), c.child_pid()];
    let cpu_before: u64 = pids.iter().map(|&p| cpu_ns(p)).sum();
    let mut single = Vec::with_capacity(n);
    let mut seq = 0u64;
    let t = Instant::now();
    for _ in 0..n {
        seq += 1;
        let one = Instant::now();
        let back = c.round_trip(Small::new(seq));
        single.push(one.elapsed().as_secs_f64() * 1e6);
        assert_eq!(back.seq, seq);
    }
    let mean = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let cpu_after: u64 = pids.iter().map(|&p| cpu_ns(p)).sum();
    single.sort_by(f64::total_cmp);
    let at = |q: f64| single[((single.len() as f64 * q) as usize).min(single.len() - 1)];
    RttDetail {
        mean,
        percentiles: [at(0.50), at(0.99), at(0.999)],
        cpu: cpu_after.saturating_sub(cpu_before) as f64 / 1e3 / n as f64,
    }
}

/// Keeps a rep's details and returns its mean (what `compare` records).
fn keep(into: &mut Vec<RttDetail>, d: RttDetail) -> f64 {
    let mean = d.mean;
    into.push(d);
    mean
}

/// CPU time a process's threads have run, in ns (`/proc/PID/task/*/schedstat`, first field).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Messages (or bytes, with `per = size`) per second of one batch; the batch is made before
/// the clock starts.
fn one_way_of<T: Transport, P: Payload>(c: &mut T, n: usize, make: impl Fn(u64) -> P) -> f64 {
    let mut batch: Vec<P> = (0..n as u64).map(&make).collect();
    let t = Instant::now();
    c.one_way(&mut batch);
    let secs = t.elapsed().as_secs_f64();
    drop(batch);
    n as f64 / secs
}

pub(crate) fn group(cfg: &Config, report: &mut Report) {
    let reps = cfg.reps;
    let n_rtt = if cfg.quick { 2_000 } else { 10_000 };
    // MSGPORT_BENCH_CASE=rtt|rtt-binary|rtt-callback|rtt-ll|throughput|sweep|ports|senders|16mib|create|live|close
    // runs one case (for profiling).
    let case = std::env::var("MSGPORT_BENCH_CASE").ok();
    let runs = |c: &str| case.as_deref().is_none_or(|x| x == c);
    for placement in Placement::BOTH {
        pin(placement.cpu(0));
        let cpu = placement.cpu(1);
        let p = placement.label();

        if runs("rtt") {
            let mut m = Msgport::spawn(Role::Echo, cpu);
            let mut raw = Raw::<false>::spawn(Role::Echo, cpu);
            let mut ipc = IpcChannel::spawn(Role::Echo, cpu);
            let mut seq = RawSeq::spawn_echo(cpu);
            // Each rep also keeps its single round trips' percentiles and the CPU time spent.
            let mut details: [Vec<RttDetail>; 4] = Default::default();
            let [dm, dr, di, ds] = &mut details;
            let s = compare(
                reps,
                &mut [
                    &mut || keep(dm, rtt_detail(&mut m, n_rtt)),
                    &mut || keep(dr, rtt_detail(&mut raw, n_rtt)),
                    &mut || keep(di, rtt_detail(&mut ipc, n_rtt)),
                    &mut || keep(ds, rtt_detail(&mut seq, n_rtt)),
                ],
            );
            let name = format!("round trip, 64 B struct, {p}");
            let rivals = [Raw::<false>::NAME, IpcChannel::NAME, RawSeq::NAME];
            report.versus_each("xproc", name, "µs", Better::Lower, &s, &rivals);
            // The warm-up rep is not a sample.
            let of = |d: &[RttDetail], f: Pick| Samples(d.iter().skip(1).map(f).collect());
            let figures: [(&str, Pick); 4] = [
                ("p50 of single round trips", |d| d.percentiles[0]),
                ("p99 of single round trips", |d| d.percentiles[1]),
                ("p999 of single round trips", |d| d.percentiles[2]),
                ("CPU time per round trip, both processes", |d| d.cpu),
            ];
            for (what, f) in figures {
                let s = details.each_ref().map(|d| of(d, f));
                let name = format!("round trip, 64 B struct, {what}, {p}");
                report.versus_each("xproc", name, "µs", Better::Lower, &s, &rivals);
            }
        }

        if runs("rtt-binary") {
            // The one kind msgport carries without serde: bytes, against ipc-channel's bytes.
            let m = Msgport::spawn_role("msgport-echo-value", cpu);
            let ipc = IpcBytes::spawn(cpu);
            let msg = Value::from(&[0xa5u8; 64][..]);
            let s = compare(
                reps,
                &mut [
                    &mut || {
                        rtt_rep(n_rtt, || {
                            m.port().post_message(msg.clone(), []).unwrap();
                            m.port().blocking_recv().unwrap();
                        })
                    },
                    &mut || {
                        rtt_rep(n_rtt, || {
                            ipc.data.send(&[0xa5; 64]).unwrap();
                            ipc.replies.recv().unwrap();
                        })
                    },
                ],
            );
            report.versus(
                "xproc",
                format!("round trip, 64 B as bytes (Value::Binary), {p}"),
                "µs",
                Better::Lower,
                &s[0],
                "ipc-channel, IpcBytesSender",
                &s[1],
            );
        }

        if runs("rtt-callback") {
            // Electron's style: the reply arrives in an `on_message` callback (run on msgport's
            // callback pool, never on the I/O thread) against the same echo read with
            // `blocking_recv`, each on a child of its own.
            let mut pulled = Msgport::spawn(Role::Echo, cpu);
            let called = Msgport::spawn(Role::Echo, cpu);
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            called.port().on_message(move |_| {
                let _ = tx.send(());
            });
            called.port().start();
            let s = compare(
                reps,
                &mut [
                    &mut || {
                        rtt_rep(n_rtt, || {
                            called.port().post_message(Small::new(1), []).unwrap();
                            rx.recv().unwrap();
                        })
                    },
                    &mut || rtt_of(&mut pulled, n_rtt),
                ],
            );
            report.versus(
                "xproc",
                format!("round trip, 64 B struct, reply by callback, {p}"),
                "µs",
                Better::Lower,
                &s[0],
                "msgport, blocking_recv",
                &s[1],
            );
        }

        // Busy-polling two processes on one CPU only burns time slices: measured split only.
        // A busy-polling child burns its CPU while idle too: each rep has children of its own,
        // so that one contender's spinner never runs during the other's turn.
        if runs("rtt-ll") && placement == Placement::TwoCpus {
            let s = compare(
                reps,
                &mut [
                    &mut || {
                        let mut m = Msgport::spawn_role("msgport-echo-ll", cpu);
                        m.port().set_low_latency(true);
                        rtt_of(&mut m, n_rtt / 10);
                        rtt_of(&mut m, n_rtt)
                    },
                    &mut || {
                        let mut raw = Raw::<false>::spawn_role("raw-echo-spin", cpu);
                        let (mut buf, mut body) = (Vec::new(), Vec::new());
                        let mut one = || {
                            buf.clear();
                            frame(&Small::new(1), &mut buf);
                            raw.stream.write_all(&buf).unwrap();
                            raw.stream.set_nonblocking(true).unwrap();
                            let mut len = [0u8; 4];
                            assert!(spin_read(&mut raw.stream, &mut len));
                            body.resize(u32::from_le_bytes(len) as usize, 0);
                            assert!(spin_read(&mut raw.stream, &mut body));
                            raw.stream.set_nonblocking(false).unwrap();
                            std::hint::black_box(unframe::<Small>(&body));
                        };
                        rtt_rep(n_rtt / 10, &mut one);
                        rtt_rep(n_rtt, &mut one)
                    },
                ],
            );
            report.versus(
                "xproc",
                format!("round trip, 64 B struct, low-latency option, {p}"),
                "µs",
                Better::Lower,
                &s[0],
                "raw AF_UNIX, busy-polling",
                &s[1],
            );
        }

        if runs("throughput") {
            let n = if cfg.quick { 20_000 } else { 200_000 };
            let mut m = Msgport::spawn(Role::Sink(Kind::Small), cpu);
            let mut raw = Raw::<false>::spawn(Role::Sink(Kind::Small), cpu);
            let mut rawb = Raw::<true>::spawn(Role::Sink(Kind::Small), cpu);
            let mut ipc = IpcChannel::spawn(Role::Sink(Kind::Small), cpu);
            let s = compare(
                reps,
                &mut [
                    &mut || one_way_of(&mut m, n, Small::new),
                    &mut || one_way_of(&mut raw, n, Small::new),
                    &mut || one_way_of(&mut rawb, n, Small::new),
                    &mut || one_way_of(&mut ipc, n, Small::new),
                ],
            );
            let name = format!("one-way throughput, 64 B struct, {p}");
            let rivals = [Raw::<false>::NAME, Raw::<true>::NAME, IpcChannel::NAME];
            report.versus_each("xproc", name, "msg/s", Better::Higher, &s, &rivals);
            drop((m, raw, rawb, ipc));

            let n = n / 4;
            let blob = |_| Blob::new(4096);
            let mut m = Msgport::spawn(Role::Sink(Kind::Blob), cpu);
            let mut rawb = Raw::<true>::spawn(Role::Sink(Kind::Blob), cpu);
            let mut ipc = IpcChannel::spawn(Role::Sink(Kind::Blob), cpu);
            let s = compare(
                reps,
                &mut [
                    &mut || one_way_of(&mut m, n, blob),
                    &mut || one_way_of(&mut rawb, n, blob),
                    &mut || one_way_of(&mut ipc, n, blob),
                ],
            );
            let name = format!("one-way throughput, 4 KiB struct, {p}");
            let rivals = [Raw::<true>::NAME, IpcChannel::NAME];
            report.versus_each("xproc", name, "msg/s", Better::Higher, &s, &rivals);
        }

        if runs("sweep") {
            sweep(cfg, report, placement, cpu);
        }

        if runs("ports") {
            many_ports(cfg, report, placement, cpu);
        }

        if runs("senders") {
            // Four threads posting on one port (msgport) or one cloned sender each
            // (ipc-channel), to one consuming child.
            let n = if cfg.quick { 20_000 } else { 200_000 };
            let threads = 4;
            let m = Msgport::spawn(Role::Sink(Kind::Small), cpu);
            let ipc = IpcChannel::spawn(Role::Sink(Kind::Small), cpu);
            let s = compare(
                reps,
                &mut [
                    &mut || {
                        let port = m.port();
                        let t = Instant::now();
                        port.post_message(n as u64, []).unwrap();
                        std::thread::scope(|scope| {
                            for k in 0..threads {
                                scope.spawn(move || {
                                    for i in (k..n).step_by(threads) {
                                        port.post_message(Small::new(i as u64), []).unwrap();
                                    }
                                });
                            }
                        });
                        port.blocking_recv().unwrap();
                        n as f64 / t.elapsed().as_secs_f64()
                    },
                    &mut || {
                        let sender = ipc.small.as_ref().expect("a small sink");
                        let t = Instant::now();
                        ipc.control.send(n as u64).unwrap();
                        std::thread::scope(|scope| {
                            for k in 0..threads {
                                let sender = sender.clone();
                                scope.spawn(move || {
                                    for i in (k..n).step_by(threads) {
                                        sender.send(Small::new(i as u64)).unwrap();
                                    }
                                });
                            }
                        });
                        ipc.acks.recv().unwrap();
                        n as f64 / t.elapsed().as_secs_f64()
                    },
                ],
            );
            report.versus(
                "xproc",
                format!("one-way throughput, 4 threads posting, 64 B struct, {p}"),
                "msg/s",
                Better::Higher,
                &s[0],
                IpcChannel::NAME,
                &s[1],
            );
        }

        if runs("16mib") {
            let size = 16 << 20;
            let k = if cfg.quick { 4 } else { 16 };
            let mut m = Msgport::spawn(Role::Sink(Kind::Blob), cpu);
            let ipc = IpcBytes::spawn(cpu);
            let src = vec![0x5au8; size];
            let mut dst = vec![0u8; size];
            let gbps = |msgs: f64| msgs * size as f64 / 1e9;
            let s = compare(
                reps,
                &mut [
                    // Both send borrowed bytes and keep them: the batch is made and dropped
                    // outside the timed part, on both sides.
                    &mut || {
                        let batch: Vec<Blob> = (0..k).map(|_| Blob::new(size)).collect();
                        let t = Instant::now();
                        m.one_way_ref(&batch);
                        gbps(k as f64 / t.elapsed().as_secs_f64())
                    },
                    &mut || {
                        let batch: Vec<Vec<u8>> = (0..k).map(|_| src.clone()).collect();
                        let t = Instant::now();
                        ipc.sink(&batch);
                        gbps(k as f64 / t.elapsed().as_secs_f64())
                    },
                    // The floor of one copy, of the same batch: `k` buffers made outside the
                    // timed part (copying one buffer `k` times reads it from cache, which the
                    // transports, each sending `k` distinct buffers, cannot: measured here,
                    // 20 against 15 GB/s).
                    &mut || {
                        let batch: Vec<Vec<u8>> = (0..k).map(|_| src.clone()).collect();
                        let t = Instant::now();
                        for b in &batch {
                            dst.copy_from_slice(std::hint::black_box(b));
                            std::hint::black_box(&mut dst);
                        }
                        gbps(k as f64 / t.elapsed().as_secs_f64())
                    },
                ],
            );
            let name = format!("16 MiB struct (serde_bytes), {p}");
            report.versus(
                "xproc",
                name.clone(),
                "GB/s",
                Better::Higher,
                &s[0],
                "ipc-channel, IpcBytesSender",
                &s[1],
            );
            report.versus(
                "xproc",
                name,
                "GB/s",
                Better::Higher,
                &s[0],
                "memcpy, one thread",
                &s[2],
            );
        }

        if runs("create") {
            let n: u64 = if cfg.quick { 2_000 } else { 20_000 };
            let m = Msgport::spawn_role("msgport-drop", cpu);
            let (server, name) =
                IpcOneShotServer::<(IpcBytesSender, IpcSender<IpcBytesSender>)>::new().unwrap();
            let ipc_child = child_cmd("ipc-drop", cpu, Some(&name)).spawn().unwrap();
            let (_rx, (data, senders)) = server.accept().unwrap();
            let (reply_tx, replies) = ipc::bytes_channel().unwrap();
            senders.send(reply_tx).unwrap();
            let s = compare(
                reps,
                &mut [
                    &mut || {
                        let t = Instant::now();
                        m.port().post_message(n, []).unwrap();
                        for _ in 0..n {
                            let (_here, there) = msgport::MessageChannel::new().into_ports();
                            m.port().post_message((), [there]).unwrap();
                        }
                        m.port().blocking_recv().unwrap();
                        n as f64 / t.elapsed().as_secs_f64()
                    },
                    &mut || {
                        let t = Instant::now();
                        data.send(&n.to_le_bytes()).unwrap();
                        for _ in 0..n {
                            let (tx, _rx) = ipc::bytes_channel().unwrap();
                            senders.send(tx).unwrap();
                        }
                        replies.recv().unwrap();
                        n as f64 / t.elapsed().as_secs_f64()
                    },
                ],
            );
            finish(ipc_child);
            drop(m);
            report.versus(
                "xproc",
                format!("create a channel and transfer one end, {p}"),
                "1/s",
                Better::Higher,
                &s[0],
                "ipc-channel",
                &s[1],
            );
        }

        if runs("live") && placement == Placement::TwoCpus {
            live_ports(cfg, cpu, report);
        }

        if runs("close") {
            // Close observed after the peer process is SIGKILLed, against the kernel's own end
            // of stream on a raw socket whose holder is killed the same way.
            let s = compare(
                reps.max(5),
                &mut [
                    &mut || {
                        let mut h = Msgport::spawn_role("msgport-hold", cpu);
                        let (mine, theirs) = msgport::MessageChannel::new().into_ports();
                        h.port().post_message((), [theirs]).unwrap();
                        h.port().blocking_recv().unwrap();
                        let mut child = h.child.take().unwrap();
                        let t = Instant::now();
                        child.kill().unwrap();
                        assert!(mine.blocking_recv().is_none());
                        let us = t.elapsed().as_secs_f64() * 1e6;
                        let _ = child.wait();
                        us
                    },
                    &mut || {
                        let mut h = Raw::<false>::spawn_role("raw-hold", cpu);
                        let mut ready = [0u8; 1];
                        h.stream.read_exact(&mut ready).unwrap();
                        let mut child = h.child.take().unwrap();
                        let t = Instant::now();
                        child.kill().unwrap();
                        assert_eq!(h.stream.read(&mut ready).unwrap(), 0);
                        let us = t.elapsed().as_secs_f64() * 1e6;
                        let _ = child.wait();
                        us
                    },
                ],
            );
            report.versus(
                "xproc",
                format!("close observed after SIGKILL, {p}"),
                "µs",
                Better::Lower,
                &s[0],
                "raw AF_UNIX end of stream",
                &s[1],
            );
        }
    }
}

/// How many cross-process ports one process holds before the descriptor limit stops it, and
/// whether a message costs more on the last of them than on the first.
fn live_ports(cfg: &Config, cpu: usize, report: &mut Report) {
    let m = Msgport::spawn_role("msgport-keep", cpu);
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(0) as f64;
    let mut ports = Vec::new();
    let cap = if cfg.quick { 2_000 } else { 100_000 };
    // A port in flight holds descriptors until its message is written: a refusal may come from
    // those, not from the ports held. Give the writes a moment before taking it as the limit:
    // the limit is three refusals in a row, 100 ms apart (three refusals in all, 20 ms apart,
    // once stopped a loaded run at 14,189 ports where the same binary alone reached 19,990).
    let mut refusals = 0;
    while ports.len() < cap && refusals < 3 {
        let (here, there) = msgport::MessageChannel::new().into_ports();
        match m.port().post_message((), [there]) {
            Ok(()) => {
                ports.push(here);
                refusals = 0;
            }
            Err(_) => {
                refusals += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // The child may have hit its own limit first: keep the ports that answer.
    let probe = Value::from(&[0xa5u8; 64][..]);
    let answers = |p: &MessagePort| {
        p.post_message(probe.clone(), []).is_ok() && p.recv_timeout(Duration::from_secs(5)).is_ok()
    };
    while let Some(last) = ports.last() {
        if answers(last) {
            break;
        }
        ports.pop();
    }
    let live = ports.len();
    let n = 2_000;
    let one = |p: &MessagePort| {
        rtt_rep(n, || {
            p.post_message(probe.clone(), []).unwrap();
            p.blocking_recv().unwrap();
        })
    };
    let s = compare(
        cfg.reps,
        &mut [&mut || one(&ports[live - 1]), &mut || one(&ports[0])],
    );
    report.solo(
        "xproc",
        "live cross-process ports in one process".into(),
        "ports",
        Better::Higher,
        &Samples(vec![live as f64]),
        &format!("of a descriptor limit of {limit}"),
    );
    report.versus(
        "xproc",
        format!("round trip on port #{live} against port #1"),
        "µs",
        Better::Lower,
        &s[0],
        "port #1",
        &s[1],
    );
    drop(ports);
    drop(m);
}

/// What the "ipc-multi" child is given: channel pairs (requests in, replies out), in batches.
type MultiBoot = Vec<(IpcReceiver<Small>, IpcSender<Small>)>;
/// What it sends main first: where the batches go, and where it says it is ready.
type MultiBootstrap = (IpcSender<MultiBoot>, IpcReceiver<()>);

/// Many ports through one process's I/O path: `n` ports between main and one child, which
/// echoes on each; a round posts a 64 B struct on every port, then reads every echo. msgport's
/// child serves its ports with `on_message` callbacks, ipc-channel's waits on all its receivers
/// with an `IpcReceiverSet`: each as its users would write it.
fn many_ports(cfg: &Config, report: &mut Report, placement: Placement, cpu: usize) {
    let p = placement.label();
    for n in [1usize, 10, 100, 1000] {
        let total = if cfg.quick { 4_000 } else { 20_000 };
        let rounds = (total / n).max(4);
        let m = Msgport::spawn_role("msgport-multi", cpu);
        // Memory before and after: an empty batch first, so that the child is up.
        m.port().post_message((), []).unwrap();
        m.port().blocking_recv().unwrap();
        let child_pid = m.child.as_ref().map_or(0, Child::id);
        let rss = || rss_kib(std::process::id()) + rss_kib(child_pid);
        let before = rss();
        let (ports, theirs): (Vec<MessagePort>, Vec<MessagePort>) =
            (0..n).map(|_| MessageChannel::new().into_ports()).unzip();
        m.port().post_message((), theirs).unwrap();
        m.port().blocking_recv().unwrap();
        let idle = rss();

        let (server, name) = IpcOneShotServer::<MultiBootstrap>::new().unwrap();
        let child = child_cmd("ipc-multi", cpu, Some(&name)).spawn().unwrap();
        let (_rx, (boot, ready)) = server.accept().unwrap();
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..n {
            let (req_tx, req_rx) = ipc::channel::<Small>().unwrap();
            let (rep_tx, rep_rx) = ipc::channel::<Small>().unwrap();
            requests.push(req_tx);
            replies.push(rep_rx);
            theirs.push((req_rx, rep_tx));
        }
        let mut theirs = theirs.into_iter().peekable();
        while theirs.peek().is_some() {
            boot.send(theirs.by_ref().take(32).collect()).unwrap();
        }
        boot.send(Vec::new()).unwrap();
        ready.recv().unwrap();

        let s = compare(
            cfg.reps,
            &mut [
                &mut || {
                    let t = Instant::now();
                    for r in 0..rounds {
                        for port in &ports {
                            port.post_message(Small::new(r as u64), []).unwrap();
                        }
                        for port in &ports {
                            std::hint::black_box(port.blocking_recv().unwrap());
                        }
                    }
                    (rounds * n) as f64 / t.elapsed().as_secs_f64()
                },
                &mut || {
                    let t = Instant::now();
                    for r in 0..rounds {
                        for tx in &requests {
                            tx.send(Small::new(r as u64)).unwrap();
                        }
                        for rx in &replies {
                            std::hint::black_box(rx.recv().unwrap());
                        }
                    }
                    (rounds * n) as f64 / t.elapsed().as_secs_f64()
                },
            ],
        );
        report.versus(
            "xproc",
            format!("{n} ports to one child, a 64 B struct on each then its echo, {p}"),
            "msg/s",
            Better::Higher,
            &s[0],
            "ipc-channel, a channel pair per port",
            &s[1],
        );
        if n == 1000 {
            let busy = rss();
            let per_port = |after: u64| after.saturating_sub(before) as f64 / n as f64;
            for (what, after) in [("idle", idle), ("after use", busy)] {
                report.solo(
                    "xproc",
                    format!("memory per cross-process port, {what}, both processes, {p}"),
                    "KiB",
                    Better::Lower,
                    &Samples(vec![per_port(after)]),
                    "resident set growth / 1,000 ports",
                );
            }
        }
        drop((ports, requests, replies));
        finish(child);
        drop(m);
    }
}

/// A process's resident set, in KiB (0 if it cannot be read).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sizes of the sweep: across msgport's thresholds (64 B inline in process, 64 KiB a part of
/// its own, 256 KiB shared memory) up to 64 MiB.
const SWEEP: [usize; 8] = [
    64,
    65,
    1 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    16 << 20,
    64 << 20,
];

fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// One-way throughput of a struct holding `size` bytes (`serde_bytes`), for each size of
/// [`SWEEP`], against ipc-channel's typed sender and a raw socket through a `BufWriter`
/// (postcard): each posts the structs by value as its users do, batches made outside the
/// timed part.
fn sweep(cfg: &Config, report: &mut Report, placement: Placement, cpu: usize) {
    let p = placement.label();
    let mut m = Msgport::spawn(Role::Sink(Kind::Blob), cpu);
    let mut rawb = Raw::<true>::spawn(Role::Sink(Kind::Blob), cpu);
    let mut ipc = IpcChannel::spawn(Role::Sink(Kind::Blob), cpu);
    // MSGPORT_BENCH_SIZE=<bytes> runs one size of the sweep (for profiling).
    let only: Option<usize> = std::env::var("MSGPORT_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok());
    for size in SWEEP.into_iter().filter(|s| only.is_none_or(|o| o == *s)) {
        // About 64 MiB per rep (16 with --quick), at least 4 messages, at most 20,000.
        let budget: usize = if cfg.quick { 16 << 20 } else { 64 << 20 };
        let n = (budget / size).clamp(4, 20_000);
        let gbps = |rate: f64| rate * size as f64 / 1e9;
        let blob = |_| Blob::new(size);
        let s = compare(
            cfg.reps,
            &mut [
                &mut || gbps(one_way_of(&mut m, n, blob)),
                &mut || gbps(one_way_of(&mut rawb, n, blob)),
                &mut || gbps(one_way_of(&mut ipc, n, blob)),
            ],
        );
        let name = format!("sweep: one-way, struct of {}, {p}", size_label(size));
        let rivals = [Raw::<true>::NAME, IpcChannel::NAME];
        report.versus_each("xproc", name, "GB/s", Better::Higher, &s, &rivals);
        let names = std::iter::once("msgport").chain(rivals);
        let series = names
            .zip(&s)
            .map(|(n, s)| (n.to_owned(), s.median()))
            .collect();
        report.sweep.push(SweepPoint {
            placement: p,
            size,
            series,
        });
    }
}
