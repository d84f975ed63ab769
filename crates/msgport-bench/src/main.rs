//! `cargo run --release -p msgport-bench -- [--quick] [--json PATH]`
//!
//! Every figure is measured next to its comparison in the same run, repeated, and reported as
//! medians and a ratio. Latencies are reported twice: both threads pinned to one CPU, and split
//! across two (waking a sleeping CPU costs ≈ 33 µs on the reference machine; DESIGN §4).

mod chart;
mod ipc;
mod transport;

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use msgport::{codec, MessageChannel, Value};
use serde::Serialize;

/// A small message: 64 bytes of payload.
#[derive(Clone, Copy, Serialize, serde::Deserialize)]
struct Small {
    seq: u64,
    rest: [u64; 7],
}

impl Small {
    fn new(seq: u64) -> Self {
        Small {
            seq,
            rest: [seq; 7],
        }
    }
}

#[derive(Serialize)]
pub(crate) struct Figure {
    pub group: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub msgport: f64,
    pub rival: String,
    pub rival_value: f64,
    /// msgport / rival; `better` says which direction is good for this figure.
    pub ratio: f64,
    pub better: &'static str,
}

pub(crate) struct Config {
    pub quick: bool,
    pub reps: usize,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Placement {
    OneCpu,
    TwoCpus,
}

impl Placement {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Placement::OneCpu => "pinned to one CPU",
            Placement::TwoCpus => "split across two CPUs",
        }
    }
    pub(crate) fn cpu(self, side: usize) -> usize {
        match self {
            Placement::OneCpu => 0,
            Placement::TwoCpus => side,
        }
    }
}

/// Pins the calling thread to `cpu` (taken modulo the machine's CPU count, not the current
/// affinity mask, so a child of a pinned process can still be placed elsewhere).
pub(crate) fn pin(cpu: usize) {
    let n = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(num_cpus_online());
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu % n);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("cannot pin to CPU {cpu}: {e}");
    }
}

fn num_cpus_online() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| {
            s.trim()
                .rsplit(['-', ','])
                .next()
                .and_then(|last| last.parse::<usize>().ok())
        })
        .map_or(1, |last| last + 1)
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Runs `a` and `b` interleaved `reps` times (so drift hits both alike); returns medians.
fn side_by_side(reps: usize, mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> (f64, f64) {
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    a();
    b();
    for _ in 0..reps {
        xa.push(a());
        xb.push(b());
    }
    (median(xa), median(xb))
}

/// Messages per second, one producer thread and one consumer thread.
fn rate(
    n: u64,
    placement: Placement,
    produce: impl FnOnce() + Send,
    consume: impl FnOnce() + Send,
) -> f64 {
    let start = Instant::now();
    thread::scope(|s| {
        s.spawn(move || {
            pin(placement.cpu(0));
            produce();
        });
        s.spawn(move || {
            pin(placement.cpu(1));
            consume();
        });
    });
    n as f64 / start.elapsed().as_secs_f64()
}

fn msgport_rate(n: u64, placement: Placement) -> f64 {
    let (tx, rx) = MessageChannel::new().into_ports();
    rate(
        n,
        placement,
        move || {
            for i in 0..n {
                tx.post_message(Small::new(i), []).unwrap();
            }
        },
        move || {
            for i in 0..n {
                let mut e = rx.blocking_recv().unwrap();
                let s: Small = e.take_data().unwrap();
                assert_eq!(s.seq, i);
            }
        },
    )
}

fn msgport_encoded_rate(n: u64, placement: Placement) -> f64 {
    // What a message would cost if it were encoded even within the process.
    let (tx, rx) = MessageChannel::new().into_ports();
    rate(
        n,
        placement,
        move || {
            for i in 0..n {
                let bytes = codec::encode(&msgport::to_value(&Small::new(i)).unwrap());
                tx.post_message(bytes, []).unwrap();
            }
        },
        move || {
            for i in 0..n {
                let mut e = rx.blocking_recv().unwrap();
                let bytes: Vec<u8> = e.take_data().unwrap();
                let s: Small = msgport::from_value(codec::decode(&bytes).unwrap()).unwrap();
                assert_eq!(s.seq, i);
            }
        },
    )
}

fn tokio_rate(n: u64, placement: Placement) -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Small>();
    rate(
        n,
        placement,
        move || {
            for i in 0..n {
                tx.send(Small::new(i)).unwrap();
            }
        },
        move || {
            for i in 0..n {
                assert_eq!(rx.blocking_recv().unwrap().seq, i);
            }
        },
    )
}

fn crossbeam_rate(n: u64, placement: Placement) -> f64 {
    let (tx, rx) = crossbeam_channel::unbounded::<Small>();
    rate(
        n,
        placement,
        move || {
            for i in 0..n {
                tx.send(Small::new(i)).unwrap();
            }
        },
        move || {
            for i in 0..n {
                assert_eq!(rx.recv().unwrap().seq, i);
            }
        },
    )
}

/// Microseconds per round trip between two threads.
fn round_trip(
    n: u64,
    placement: Placement,
    ping: impl FnOnce() + Send,
    pong: impl FnOnce() + Send,
) -> f64 {
    let start = Instant::now();
    thread::scope(|s| {
        s.spawn(move || {
            pin(placement.cpu(1));
            pong();
        });
        s.spawn(move || {
            pin(placement.cpu(0));
            ping();
        });
    });
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn msgport_rtt(n: u64, placement: Placement) -> f64 {
    let (a, b) = MessageChannel::new().into_ports();
    round_trip(
        n,
        placement,
        move || {
            for i in 0..n {
                a.post_message(Small::new(i), []).unwrap();
                black_box(a.blocking_recv().unwrap());
            }
        },
        move || {
            for _ in 0..n {
                let mut e = b.blocking_recv().unwrap();
                let m: Small = e.take_data().unwrap();
                b.post_message(m, []).unwrap();
            }
        },
    )
}

fn tokio_rtt(n: u64, placement: Placement) -> f64 {
    let (tx1, mut rx1) = tokio::sync::mpsc::unbounded_channel::<Small>();
    let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel::<Small>();
    round_trip(
        n,
        placement,
        move || {
            for i in 0..n {
                tx1.send(Small::new(i)).unwrap();
                black_box(rx2.blocking_recv().unwrap());
            }
        },
        move || {
            for _ in 0..n {
                let m = rx1.blocking_recv().unwrap();
                tx2.send(m).unwrap();
            }
        },
    )
}

fn crossbeam_rtt(n: u64, placement: Placement) -> f64 {
    let (tx1, rx1) = crossbeam_channel::unbounded::<Small>();
    let (tx2, rx2) = crossbeam_channel::unbounded::<Small>();
    round_trip(
        n,
        placement,
        move || {
            for i in 0..n {
                tx1.send(Small::new(i)).unwrap();
                black_box(rx2.recv().unwrap());
            }
        },
        move || {
            for _ in 0..n {
                tx2.send(rx1.recv().unwrap()).unwrap();
            }
        },
    )
}

pub(crate) fn record(
    out: &mut Vec<Figure>,
    group: &'static str,
    name: String,
    unit: &'static str,
    better: &'static str,
    (ours, theirs): (f64, f64),
    rival: &str,
) {
    let ratio = ours / theirs;
    println!(
        "{group:<8} {name:<58} msgport {ours:>12.3} {unit:<7} {rival:<22} {theirs:>12.3}  ratio {ratio:>6.2} ({better} is better)"
    );
    out.push(Figure {
        group,
        name,
        unit,
        msgport: ours,
        rival: rival.to_owned(),
        rival_value: theirs,
        ratio,
        better,
    });
}

fn inproc(cfg: &Config, out: &mut Vec<Figure>) {
    let n = if cfg.quick { 200_000 } else { 1_000_000 };
    let rtt_n = if cfg.quick { 5_000 } else { 20_000 };
    for placement in [Placement::OneCpu, Placement::TwoCpus] {
        let p = placement.label();
        let name = format!("throughput, 64 B messages, {p}");
        let m = side_by_side(
            cfg.reps,
            || msgport_rate(n, placement),
            || tokio_rate(n, placement),
        );
        record(
            out,
            "inproc",
            name.clone(),
            "msg/s",
            "higher",
            m,
            "tokio::sync::mpsc",
        );
        let c = side_by_side(
            cfg.reps,
            || msgport_rate(n, placement),
            || crossbeam_rate(n, placement),
        );
        record(
            out,
            "inproc",
            name.clone(),
            "msg/s",
            "higher",
            c,
            "crossbeam-channel",
        );
        let e = side_by_side(
            cfg.reps,
            || msgport_encoded_rate(n, placement),
            || msgport_rate(n, placement),
        );
        record(
            out,
            "inproc",
            format!("{name}, CBOR-encoded vs moved"),
            "msg/s",
            "higher",
            e,
            "msgport (moved)",
        );
        let name = format!("round trip, 64 B, {p}");
        let t = side_by_side(
            cfg.reps,
            || msgport_rtt(rtt_n, placement),
            || tokio_rtt(rtt_n, placement),
        );
        record(
            out,
            "inproc",
            name.clone(),
            "µs",
            "lower",
            t,
            "tokio::sync::mpsc",
        );
        let c = side_by_side(
            cfg.reps,
            || msgport_rtt(rtt_n, placement),
            || crossbeam_rtt(rtt_n, placement),
        );
        record(out, "inproc", name, "µs", "lower", c, "crossbeam-channel");
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child") {
        let cpu = argv.get(3).and_then(|c| c.parse().ok()).unwrap_or(0);
        if argv[2].starts_with("mpipc-") {
            ipc::child(&argv[2], cpu);
        } else {
            transport::child(&argv[2], cpu, argv.get(4).cloned());
        }
        return;
    }
    let mut quick = false;
    let mut json = None;
    let mut only: Option<String> = None;
    let mut svg = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json = args.next(),
            "--only" => only = args.next(),
            "--svg" => svg = args.next(),
            "-h" | "--help" => {
                println!("usage: msgport-bench [--quick] [--json PATH] [--svg PATH] [--only inproc|xproc|ipc]");
                return;
            }
            other => {
                eprintln!(
                    "unknown argument {other:?}; usage: msgport-bench [--quick] [--json PATH]"
                );
                std::process::exit(2);
            }
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for meaningful figures");
    }
    let cfg = Config {
        quick,
        reps: if quick { 3 } else { 9 },
    };
    let started = Instant::now();
    let mut figures = Vec::new();
    // Keep the payload type honest: `Value` must stay usable as data too.
    black_box(Value::Null);
    let wants = |g: &str| only.as_deref().is_none_or(|o| o == g);
    if wants("inproc") {
        inproc(&cfg, &mut figures);
    }
    if wants("xproc") {
        transport::group(&cfg, &mut figures);
    }
    if wants("ipc") {
        ipc::group(&cfg, &mut figures);
    }
    println!(
        "{} figures in {:.1?}",
        figures.len(),
        started.elapsed().max(Duration::ZERO)
    );
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&figures).expect("figures serialize");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
        println!("wrote {path}");
    }
    if let Some(path) = svg {
        if let Err(e) = std::fs::write(&path, chart::svg(&figures)) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
        println!("wrote {path}");
    }
}
