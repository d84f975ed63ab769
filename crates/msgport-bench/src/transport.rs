//! The cross-process group: msgport next to a raw `AF_UNIX` socket pair written plainly here,
//! and Servo's ipc-channel, on the same payloads, each in a child process of this binary
//! (`msgport-bench --child ROLE CPU [NAME]`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{
    self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender,
};
use msgport::{process, MessagePort, Value};

use crate::{median, pin, record, Config, Figure, Placement};

/// The bootstrap message of the ipc-channel children: where the parent sends data, and where it
/// sends the sender for the replies.
type IpcBoot = (IpcBytesSender, IpcSender<IpcBytesSender>);

fn payload(size: usize) -> Value {
    Value::from(&vec![0xa5u8; size][..])
}

fn child_cmd(role: &str, cpu: usize, name: Option<&str>) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg("--child").arg(role).arg(cpu.to_string());
    if let Some(name) = name {
        cmd.arg(name);
    }
    cmd
}

/// The child side: runs `role` pinned to `cpu`.
pub fn child(role: &str, cpu: usize, name: Option<String>) {
    pin(cpu);
    match role {
        "msgport-echo" | "msgport-echo-ll" => {
            let port = process::bootstrap().unwrap();
            port.set_low_latency(role == "msgport-echo-ll");
            while let Some(mut e) = port.blocking_recv() {
                port.post_message(e.take_data::<Value>().unwrap(), [])
                    .unwrap();
            }
        }
        "msgport-sink" => {
            let port = process::bootstrap().unwrap();
            while let Some(e) = port.blocking_recv() {
                let n: u64 = e.data().unwrap();
                for _ in 0..n {
                    port.blocking_recv().unwrap();
                }
                port.post_message("done", []).unwrap();
            }
        }
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
        "msgport-keep" => {
            // Keeps every port it is given, echoing on each (callbacks, no thread per port).
            let port = process::bootstrap().unwrap();
            let mut kept = Vec::new();
            while let Some(e) = port.blocking_recv() {
                for p in e.ports {
                    let p = std::sync::Arc::new(p);
                    let echo = std::sync::Arc::downgrade(&p);
                    p.on_message(move |mut m| {
                        if let Some(p) = echo.upgrade() {
                            let _ = p.post_message(m.take_data::<Value>().unwrap(), []);
                        }
                    });
                    p.start();
                    kept.push(p);
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
        "raw-echo-spin" => {
            let mut s = raw_inherited();
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            loop {
                let mut got = 0;
                while got < 64 {
                    match s.read(&mut buf[got..]) {
                        Ok(0) => return,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::hint::spin_loop()
                        }
                        Err(_) => return,
                    }
                }
                s.write_all(&buf).unwrap();
            }
        }
        "raw-echo" => {
            let mut s = raw_inherited();
            let mut buf = [0u8; 64];
            while s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf).unwrap();
            }
        }
        "raw-sink" => {
            let mut s = raw_inherited();
            let mut head = [0u8; 16];
            let mut buf = vec![0u8; 1 << 20];
            while s.read_exact(&mut head).is_ok() {
                let total = u64::from_le_bytes(head[..8].try_into().unwrap())
                    * u64::from_le_bytes(head[8..].try_into().unwrap());
                let mut got = 0u64;
                while got < total {
                    let want = buf.len().min((total - got) as usize);
                    let n = s.read(&mut buf[..want]).unwrap();
                    assert!(n > 0);
                    got += n as u64;
                }
                s.write_all(&[1]).unwrap();
            }
        }
        "ipc-drop" => {
            let boot = IpcSender::<IpcBoot>::connect(name.expect("server name")).unwrap();
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
        "ipc-echo" | "ipc-sink" => {
            let boot = IpcSender::<IpcBoot>::connect(name.expect("server name")).unwrap();
            let (data_tx, data_rx) = ipc::bytes_channel().unwrap();
            let (reply_tx_tx, reply_tx_rx) = ipc::channel::<IpcBytesSender>().unwrap();
            boot.send((data_tx, reply_tx_tx)).unwrap();
            let reply = reply_tx_rx.recv().unwrap();
            if role == "ipc-echo" {
                while let Ok(m) = data_rx.recv() {
                    reply.send(&m).unwrap();
                }
            } else {
                while let Ok(head) = data_rx.recv() {
                    let n = u64::from_le_bytes(head[..8].try_into().unwrap());
                    for _ in 0..n {
                        data_rx.recv().unwrap();
                    }
                    reply.send(b"done").unwrap();
                }
            }
        }
        other => panic!("unknown child role {other}"),
    }
    // Best effort: the parent may already have hung up.
    let _ = process::flush(Duration::from_secs(10));
}

fn raw_inherited() -> UnixStream {
    let s = UnixStream::from(process::bootstrap_socket().unwrap());
    s.set_nonblocking(false).unwrap();
    s
}

struct MsgportChild(Child, Option<MessagePort>);
impl MsgportChild {
    fn spawn(role: &str, cpu: usize) -> Self {
        let (child, port) = process::spawn(&mut child_cmd(role, cpu, None)).unwrap();
        MsgportChild(child, Some(port))
    }
    fn port(&self) -> &MessagePort {
        self.1.as_ref().unwrap()
    }
}
impl Drop for MsgportChild {
    fn drop(&mut self) {
        self.1.take();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A raw child: spawned through msgport's bootstrap (for the inherited socket) but spoken to
/// with plain reads and writes.
struct RawChild(Child, UnixStream);
impl RawChild {
    fn spawn(role: &str, cpu: usize) -> Self {
        let (child, here) = process::spawn_socket(&mut child_cmd(role, cpu, None)).unwrap();
        let here = UnixStream::from(here);
        here.set_nonblocking(false).unwrap();
        RawChild(child, here)
    }
}
impl Drop for RawChild {
    fn drop(&mut self) {
        let _ = self.1.shutdown(std::net::Shutdown::Both);
        let _ = self.0.wait();
    }
}

struct IpcChild(
    Child,
    IpcBytesSender,
    IpcBytesReceiver,
    IpcSender<IpcBytesSender>,
);
impl IpcChild {
    fn spawn(role: &str, cpu: usize) -> Self {
        let (server, name) = IpcOneShotServer::<IpcBoot>::new().unwrap();
        let child = child_cmd(role, cpu, Some(&name)).spawn().unwrap();
        let (_rx, (data_tx, reply_tx_tx)): (IpcReceiver<IpcBoot>, IpcBoot) =
            server.accept().unwrap();
        let (reply_tx, reply_rx) = ipc::bytes_channel().unwrap();
        reply_tx_tx.send(reply_tx).unwrap();
        IpcChild(child, data_tx, reply_rx, reply_tx_tx)
    }
}
impl Drop for IpcChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Microseconds per round trip, median of `reps` batches of `n`.
fn rtt(reps: usize, n: usize, mut one: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        one();
    }
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    one();
                }
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            })
            .collect(),
    )
}

/// Messages per second (or bytes per second with `bytes`), median of `reps` batches.
fn rate(reps: usize, mut batch: impl FnMut() -> u64) -> f64 {
    batch();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                let n = batch();
                n as f64 / t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

pub fn group(cfg: &Config, out: &mut Vec<Figure>) {
    let reps = cfg.reps;
    let n_rtt = if cfg.quick { 2_000 } else { 10_000 };
    for placement in [Placement::OneCpu, Placement::TwoCpus] {
        pin(placement.cpu(0));
        let cpu = placement.cpu(1);
        let p = placement.label();

        // MSGPORT_BENCH_CASE=rtt|throughput|16mib|close runs one case (for profiling).
        let case = std::env::var("MSGPORT_BENCH_CASE").ok();
        let runs = |c: &str| case.as_deref().is_none_or(|x| x == c);

        if runs("rtt") {
            // Round trip, 64 B.
            let m = MsgportChild::spawn("msgport-echo", cpu);
            let msg = payload(64);
            let ours = rtt(reps, n_rtt, || {
                m.port().post_message(msg.clone(), []).unwrap();
                m.port().blocking_recv().unwrap();
            });
            drop(m);
            let mut r = RawChild::spawn("raw-echo", cpu);
            let mut buf = [0u8; 64];
            let raw = rtt(reps, n_rtt, || {
                r.1.write_all(&[0xa5; 64]).unwrap();
                r.1.read_exact(&mut buf).unwrap();
            });
            drop(r);
            let i = IpcChild::spawn("ipc-echo", cpu);
            let ipc_rtt = rtt(reps, n_rtt, || {
                i.1.send(&[0xa5; 64]).unwrap();
                i.2.recv().unwrap();
            });
            drop(i);
            let name = format!("round trip, 64 B, {p}");
            record(
                out,
                "xproc",
                name.clone(),
                "µs",
                "lower",
                (ours, raw),
                "raw AF_UNIX socket pair",
            );
            record(
                out,
                "xproc",
                name,
                "µs",
                "lower",
                (ours, ipc_rtt),
                "ipc-channel",
            );
        }

        if runs("rtt-callback") {
            // Electron's style: the reply arrives in an `on_message` callback (run on msgport's
            // callback pool, never on the I/O thread) against the same echo read with
            // `blocking_recv`.
            let m = MsgportChild::spawn("msgport-echo", cpu);
            let msg = payload(64);
            let pulled = rtt(reps, n_rtt, || {
                m.port().post_message(msg.clone(), []).unwrap();
                m.port().blocking_recv().unwrap();
            });
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            m.port().on_message(move |_| {
                let _ = tx.send(());
            });
            m.port().start();
            let callback = rtt(reps, n_rtt, || {
                m.port().post_message(msg.clone(), []).unwrap();
                rx.recv().unwrap();
            });
            drop(m);
            record(
                out,
                "xproc",
                format!("round trip, 64 B, reply by callback, {p}"),
                "µs",
                "lower",
                (callback, pulled),
                "msgport, blocking_recv",
            );
        }

        // Busy-polling two processes on one CPU only burns time slices: this one is measured
        // split across CPUs (as DESIGN §4 asks).
        if runs("rtt-ll") && matches!(placement, Placement::TwoCpus) {
            // The low-latency option against raw sockets that busy-poll.
            let m = MsgportChild::spawn("msgport-echo-ll", cpu);
            m.port().set_low_latency(true);
            let msg = payload(64);
            let ours = rtt(reps, n_rtt, || {
                m.port().post_message(msg.clone(), []).unwrap();
                m.port().blocking_recv().unwrap();
            });
            drop(m);
            let mut r = RawChild::spawn("raw-echo-spin", cpu);
            r.1.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            let raw = rtt(reps, n_rtt, || {
                r.1.write_all(&[0xa5; 64]).unwrap();
                let mut got = 0;
                while got < 64 {
                    match r.1.read(&mut buf[got..]) {
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::hint::spin_loop()
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            r.1.set_nonblocking(false).unwrap();
            drop(r);
            record(
                out,
                "xproc",
                format!("round trip, 64 B, low-latency option, {p}"),
                "µs",
                "lower",
                (ours, raw),
                "raw AF_UNIX, busy-polling",
            );
        }

        // One-way throughput, 64 B and 4 KiB.
        for size in [64usize, 4096] {
            if !runs("throughput") {
                continue;
            }
            let n: u64 = if cfg.quick { 20_000 } else { 200_000 } / if size > 64 { 4 } else { 1 };
            let m = MsgportChild::spawn("msgport-sink", cpu);
            let msg = payload(size);
            let ours = rate(reps, || {
                m.port().post_message(n, []).unwrap();
                for _ in 0..n {
                    m.port().post_message(msg.clone(), []).unwrap();
                }
                m.port().blocking_recv().unwrap();
                n
            });
            drop(m);
            let mut r = RawChild::spawn("raw-sink", cpu);
            let block = vec![0xa5u8; size];
            let raw = rate(reps, || {
                let mut head = [0u8; 16];
                head[..8].copy_from_slice(&n.to_le_bytes());
                head[8..].copy_from_slice(&(size as u64).to_le_bytes());
                r.1.write_all(&head).unwrap();
                for _ in 0..n {
                    r.1.write_all(&block).unwrap();
                }
                let mut ack = [0u8; 1];
                r.1.read_exact(&mut ack).unwrap();
                n
            });
            drop(r);
            let i = IpcChild::spawn("ipc-sink", cpu);
            let ipc_rate = rate(reps, || {
                i.1.send(&n.to_le_bytes()).unwrap();
                for _ in 0..n {
                    i.1.send(&block).unwrap();
                }
                i.2.recv().unwrap();
                n
            });
            drop(i);
            let name = format!("one-way throughput, {size} B, {p}");
            record(
                out,
                "xproc",
                name.clone(),
                "msg/s",
                "higher",
                (ours, raw),
                "raw AF_UNIX, one write per message",
            );
            record(
                out,
                "xproc",
                name,
                "msg/s",
                "higher",
                (ours, ipc_rate),
                "ipc-channel",
            );
        }

        // 16 MiB messages, against a single-thread memcpy.
        if runs("16mib") {
            let size = 16 << 20;
            let k: u64 = if cfg.quick { 4 } else { 16 };
            let m = MsgportChild::spawn("msgport-sink", cpu);
            let msg = payload(size);
            // Posting moves the message: the copies are made before the clock starts, as
            // ipc-channel sends from a borrowed buffer.
            let ours = median(
                (0..=reps)
                    .map(|_| {
                        let batch: Vec<Value> = (0..k).map(|_| msg.clone()).collect();
                        let t = Instant::now();
                        m.port().post_message(k, []).unwrap();
                        for v in batch {
                            m.port().post_message(v, []).unwrap();
                        }
                        m.port().blocking_recv().unwrap();
                        (k * size as u64) as f64 / t.elapsed().as_secs_f64()
                    })
                    .skip(1)
                    .collect(),
            ) / 1e9;
            drop(m);
            let i = IpcChild::spawn("ipc-sink", cpu);
            let block = vec![0xa5u8; size];
            let ipc_rate = rate(reps, || {
                i.1.send(&k.to_le_bytes()).unwrap();
                for _ in 0..k {
                    i.1.send(&block).unwrap();
                }
                i.2.recv().unwrap();
                k * size as u64
            }) / 1e9;
            drop(i);
            let src = vec![0x5au8; size];
            let mut dst = vec![0u8; size];
            let memcpy = rate(reps, || {
                for _ in 0..k {
                    dst.copy_from_slice(std::hint::black_box(&src));
                }
                k * size as u64
            }) / 1e9;
            let name = format!("16 MiB messages, {p}");
            record(
                out,
                "xproc",
                name.clone(),
                "GB/s",
                "higher",
                (ours, memcpy),
                "memcpy, one thread",
            );
            record(
                out,
                "xproc",
                name,
                "GB/s",
                "higher",
                (ours, ipc_rate),
                "ipc-channel",
            );
        }

        if runs("create") {
            let n: u64 = if cfg.quick { 2_000 } else { 20_000 };
            let m = MsgportChild::spawn("msgport-drop", cpu);
            let ours = rate(reps, || {
                m.port().post_message(n, []).unwrap();
                for _ in 0..n {
                    let (_here, there) = msgport::MessageChannel::new().into_ports();
                    m.port().post_message((), [there]).unwrap();
                }
                m.port().blocking_recv().unwrap();
                n
            });
            drop(m);
            let i = IpcChild::spawn("ipc-drop", cpu);
            let theirs = rate(reps, || {
                i.1.send(&n.to_le_bytes()).unwrap();
                for _ in 0..n {
                    let (tx, _rx) = ipc::bytes_channel().unwrap();
                    i.3.send(tx).unwrap();
                }
                i.2.recv().unwrap();
                n
            });
            drop(i);
            record(
                out,
                "xproc",
                format!("create a channel and transfer one end, {p}"),
                "1/s",
                "higher",
                (ours, theirs),
                "ipc-channel",
            );
        }

        if runs("live") && matches!(placement, Placement::TwoCpus) {
            live_ports(cfg, cpu, out);
        }

        if !runs("close") {
            continue;
        }
        // Close observed after the peer process is SIGKILLed.
        let samples: Vec<f64> = (0..reps.max(5))
            .map(|_| {
                let mut h = MsgportChild::spawn("msgport-hold", cpu);
                let (mine, theirs) = msgport::MessageChannel::new().into_ports();
                h.port().post_message((), [theirs]).unwrap();
                h.port().blocking_recv().unwrap();
                let t = Instant::now();
                h.0.kill().unwrap();
                assert!(mine.blocking_recv().is_none());
                let us = t.elapsed().as_secs_f64() * 1e6;
                let _ = h.0.wait();
                h.1.take();
                us
            })
            .collect();
        let close = median(samples);
        println!("xproc    close observed after SIGKILL, {p:<37} msgport {close:>12.3} µs      (kernel sees it in ≈ 50 µs; target ≤ 1000 µs)");
        out.push(Figure {
            group: "xproc",
            name: format!("close observed after SIGKILL, {p}"),
            unit: "µs",
            msgport: close,
            rival: "target 1000 µs".into(),
            rival_value: 1000.0,
            ratio: close / 1000.0,
            better: "lower",
        });
    }
}

/// How many cross-process ports one process holds before the descriptor limit stops it, and
/// whether a message costs more on the last of them than on the first.
fn live_ports(cfg: &Config, cpu: usize, out: &mut Vec<Figure>) {
    let m = MsgportChild::spawn("msgport-keep", cpu);
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(0) as f64;
    let mut ports = Vec::new();
    let cap = if cfg.quick { 2_000 } else { 100_000 };
    while ports.len() < cap {
        let (here, there) = msgport::MessageChannel::new().into_ports();
        match m.port().post_message((), [there]) {
            Ok(()) => ports.push(here),
            Err(_) => break,
        }
    }
    // The child may have hit its own limit first: keep the ports that answer.
    let probe = payload(64);
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
    let first = rtt(cfg.reps, n, || {
        ports[0].post_message(probe.clone(), []).unwrap();
        ports[0].blocking_recv().unwrap();
    });
    let last = rtt(cfg.reps, n, || {
        ports[live - 1].post_message(probe.clone(), []).unwrap();
        ports[live - 1].blocking_recv().unwrap();
    });
    println!(
        "xproc    live cross-process ports in one process: {live} of a descriptor limit of {limit} ({:.0} %); round trip on the first {first:.2} µs, on the last {last:.2} µs",
        100.0 * live as f64 / limit
    );
    out.push(Figure {
        group: "xproc",
        name: "live cross-process ports (fraction of the descriptor limit)".into(),
        unit: "ports",
        msgport: live as f64,
        rival: "RLIMIT_NOFILE".into(),
        rival_value: limit,
        ratio: live as f64 / limit,
        better: "higher",
    });
    out.push(Figure {
        group: "xproc",
        name: format!("round trip on port #{live} against port #1"),
        unit: "µs",
        msgport: last,
        rival: "port #1".into(),
        rival_value: first,
        ratio: last / first,
        better: "lower",
    });
    drop(ports);
    drop(m);
}
