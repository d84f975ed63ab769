//! The in-process group: msgport's ports against tokio's and crossbeam's channels, two threads
//! of one process, the same typed payload ([`Small`]); and, on one CPU, against a Node.js
//! worker's `MessagePort` (the in-process port of the design brief's figures), the payload an
//! object `{seq, rest: [7 numbers]}`.

use std::hint::black_box;
use std::thread;
use std::time::Instant;

use msgport::{codec, MessageChannel};

use crate::measure::{compare, Better, Report};
use crate::payload::Small;
use crate::{pin, Config, Placement};

/// A channel between two threads of one process, as its users write it.
pub(crate) trait InProc {
    /// How the figures name it.
    const NAME: &'static str;
    /// Messages per second, one producer thread and one consumer thread.
    fn throughput(n: u64, placement: Placement) -> f64;
    /// Microseconds per round trip between two threads.
    fn round_trip(n: u64, placement: Placement) -> f64;
}

fn two_threads(placement: Placement, a: impl FnOnce() + Send, b: impl FnOnce() + Send) -> f64 {
    let start = Instant::now();
    thread::scope(|s| {
        s.spawn(move || {
            pin(placement.cpu(1));
            b();
        });
        s.spawn(move || {
            pin(placement.cpu(0));
            a();
        });
    });
    start.elapsed().as_secs_f64()
}

/// msgport: the value is moved (never encoded) within a process.
pub(crate) struct Msgport;
impl InProc for Msgport {
    const NAME: &'static str = "msgport";
    fn throughput(n: u64, placement: Placement) -> f64 {
        let (tx, rx) = MessageChannel::new().into_ports();
        let secs = two_threads(
            placement,
            move || {
                for i in 0..n {
                    tx.post_message(Small::new(i), []).unwrap();
                }
            },
            move || {
                for i in 0..n {
                    let s: Small = rx.blocking_recv().unwrap().take_data().unwrap();
                    assert_eq!(s.seq, i);
                }
            },
        );
        n as f64 / secs
    }
    fn round_trip(n: u64, placement: Placement) -> f64 {
        let (a, b) = MessageChannel::new().into_ports();
        let secs = two_threads(
            placement,
            move || {
                for i in 0..n {
                    a.post_message(Small::new(i), []).unwrap();
                    black_box(a.blocking_recv().unwrap());
                }
            },
            move || {
                for _ in 0..n {
                    let m: Small = b.blocking_recv().unwrap().take_data().unwrap();
                    b.post_message(m, []).unwrap();
                }
            },
        );
        secs * 1e6 / n as f64
    }
}

/// msgport, the payload encoded to CBOR and back on every message with the codec's serde paths
/// (`codec::to_vec`, `codec::from_slice`): what leaving the process costs in CPU, without the
/// socket.
pub(crate) struct MsgportEncoded;
impl InProc for MsgportEncoded {
    const NAME: &'static str = "msgport, CBOR-encoded";
    fn throughput(n: u64, placement: Placement) -> f64 {
        let (tx, rx) = MessageChannel::new().into_ports();
        let secs = two_threads(
            placement,
            move || {
                for i in 0..n {
                    let bytes = codec::to_vec(&Small::new(i)).unwrap();
                    tx.post_message(bytes, []).unwrap();
                }
            },
            move || {
                for i in 0..n {
                    let bytes: Vec<u8> = rx.blocking_recv().unwrap().take_data().unwrap();
                    let s: Small = codec::from_slice(&bytes).unwrap();
                    assert_eq!(s.seq, i);
                }
            },
        );
        n as f64 / secs
    }
    fn round_trip(n: u64, placement: Placement) -> f64 {
        let (a, b) = MessageChannel::new().into_ports();
        let secs = two_threads(
            placement,
            move || {
                for i in 0..n {
                    let bytes = codec::to_vec(&Small::new(i)).unwrap();
                    a.post_message(bytes, []).unwrap();
                    black_box(a.blocking_recv().unwrap());
                }
            },
            move || {
                for _ in 0..n {
                    let bytes: Vec<u8> = b.blocking_recv().unwrap().take_data().unwrap();
                    let m: Small = codec::from_slice(&bytes).unwrap();
                    let bytes = codec::to_vec(&m).unwrap();
                    b.post_message(bytes, []).unwrap();
                }
            },
        );
        secs * 1e6 / n as f64
    }
}

/// `tokio::sync::mpsc`, unbounded, read with `blocking_recv` (threads, not tasks).
pub(crate) struct Tokio;
impl InProc for Tokio {
    const NAME: &'static str = "tokio::sync::mpsc";
    fn throughput(n: u64, placement: Placement) -> f64 {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Small>();
        let secs = two_threads(
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
        );
        n as f64 / secs
    }
    fn round_trip(n: u64, placement: Placement) -> f64 {
        let (tx1, mut rx1) = tokio::sync::mpsc::unbounded_channel::<Small>();
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel::<Small>();
        let secs = two_threads(
            placement,
            move || {
                for i in 0..n {
                    tx1.send(Small::new(i)).unwrap();
                    black_box(rx2.blocking_recv().unwrap());
                }
            },
            move || {
                for _ in 0..n {
                    tx2.send(rx1.blocking_recv().unwrap()).unwrap();
                }
            },
        );
        secs * 1e6 / n as f64
    }
}

/// `crossbeam-channel`, unbounded.
pub(crate) struct Crossbeam;
impl InProc for Crossbeam {
    const NAME: &'static str = "crossbeam-channel";
    fn throughput(n: u64, placement: Placement) -> f64 {
        let (tx, rx) = crossbeam_channel::unbounded::<Small>();
        let secs = two_threads(
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
        );
        n as f64 / secs
    }
    fn round_trip(n: u64, placement: Placement) -> f64 {
        let (tx1, rx1) = crossbeam_channel::unbounded::<Small>();
        let (tx2, rx2) = crossbeam_channel::unbounded::<Small>();
        let secs = two_threads(
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
        );
        secs * 1e6 / n as f64
    }
}

/// Runs `f` to completion on a current-thread tokio runtime of this thread (as a task).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// msgport, awaited: each side a task on its own thread's current-thread tokio runtime
/// (`recv().await`).
pub(crate) struct MsgportAsync;
impl InProc for MsgportAsync {
    const NAME: &'static str = "msgport, async";
    fn throughput(n: u64, placement: Placement) -> f64 {
        let (tx, rx) = MessageChannel::new().into_ports();
        let secs = two_threads(
            placement,
            move || {
                for i in 0..n {
                    tx.post_message(Small::new(i), []).unwrap();
                }
            },
            move || {
                block_on(async move {
                    for i in 0..n {
                        let s: Small = rx.recv().await.unwrap().take_data().unwrap();
                        assert_eq!(s.seq, i);
                    }
                })
            },
        );
        n as f64 / secs
    }
    fn round_trip(n: u64, placement: Placement) -> f64 {
        let (a, b) = MessageChannel::new().into_ports();
        let secs = two_threads(
            placement,
            move || {
                block_on(async move {
                    for i in 0..n {
                        a.post_message(Small::new(i), []).unwrap();
                        black_box(a.recv().await.unwrap());
                    }
                })
            },
            move || {
                block_on(async move {
                    for _ in 0..n {
                        let m: Small = b.recv().await.unwrap().take_data().unwrap();
                        b.post_message(m, []).unwrap();
                    }
                })
            },
        );
        secs * 1e6 / n as f64
    }
}

/// `tokio::sync::mpsc`, unbounded, awaited the same way.
pub(crate) struct TokioAsync;
impl InProc for TokioAsync {
    const NAME: &'static str = "tokio::sync::mpsc, async";
    fn throughput(n: u64, placement: Placement) -> f64 {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Small>();
        let secs = two_threads(
            placement,
            move || {
                for i in 0..n {
                    tx.send(Small::new(i)).unwrap();
                }
            },
            move || {
                block_on(async move {
                    for i in 0..n {
                        assert_eq!(rx.recv().await.unwrap().seq, i);
                    }
                })
            },
        );
        n as f64 / secs
    }
    fn round_trip(n: u64, placement: Placement) -> f64 {
        let (tx1, mut rx1) = tokio::sync::mpsc::unbounded_channel::<Small>();
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel::<Small>();
        let secs = two_threads(
            placement,
            move || {
                block_on(async move {
                    for i in 0..n {
                        tx1.send(Small::new(i)).unwrap();
                        black_box(rx2.recv().await.unwrap());
                    }
                })
            },
            move || {
                block_on(async move {
                    for _ in 0..n {
                        tx2.send(rx1.recv().await.unwrap()).unwrap();
                    }
                })
            },
        );
        secs * 1e6 / n as f64
    }
}

/// A Node.js main thread and a worker talking over a `MessageChannel` whose second port was
/// transferred to the worker, as Node's users write it (`postMessage`, `'message'` events). One
/// rep is one `node` process on the CPUs it is started on: a warm-up batch, then a timed one.
const NODE_WORKER: &str = r#"
const { Worker, MessageChannel, isMainThread, workerData } = require('worker_threads');
const small = (seq) => ({ seq, rest: [seq, seq, seq, seq, seq, seq, seq] });
if (!isMainThread) {
  const { port, n, mode } = workerData;
  let got = 0;
  port.on('message', (m) => {
    if (mode === 'rtt') { port.postMessage(m); return; }
    if (m.seq !== got % n) throw new Error('out of order');
    got++;
    if (got % n === 0) port.postMessage('done');
  });
} else {
  const [n, mode] = [Number(process.argv[2]), process.argv[3]];
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker(__filename, { workerData: { port: port2, n, mode }, transferList: [port2] });
  const next = () => new Promise((resolve) => port1.once('message', resolve));
  (async () => {
    let figure = 0;
    for (let r = 0; r < 2; r++) {
      const t0 = process.hrtime.bigint();
      if (mode === 'rtt') {
        // Each answer posts the next message from its own event (no promise per message).
        await new Promise((resolve) => {
          let i = 0;
          port1.on('message', (m) => {
            if (m.seq !== i) throw new Error('bad echo');
            if (++i === n) {
              port1.removeAllListeners('message');
              resolve();
            } else port1.postMessage(small(i));
          });
          port1.postMessage(small(0));
        });
        figure = Number(process.hrtime.bigint() - t0) / 1000 / n;
      } else {
        const done = next();
        for (let i = 0; i < n; i++) port1.postMessage(small(i));
        await done;
        figure = n / (Number(process.hrtime.bigint() - t0) / 1e9);
      }
    }
    console.log(JSON.stringify(figure));
    await worker.terminate();
  })();
}
"#;

/// One rep of [`NODE_WORKER`] on CPU 0: messages per second (`mode` "throughput") or
/// microseconds per round trip ("rtt"); `None` when it did not run.
fn node_worker(mode: &str, n: u64) -> Option<f64> {
    crate::ipc::run_node(
        "worker",
        &[("worker.js", NODE_WORKER)],
        0,
        &[n.to_string(), mode.to_string()],
    )
}

/// msgport against a Node.js worker's `MessagePort`, every thread on one CPU (Node's threads
/// cannot be pinned one by one, so there is no split figure).
fn against_node(cfg: &Config, report: &mut Report) {
    if !crate::ipc::node_available() {
        println!("inproc  node is not on this machine: the Node.js worker comparison is skipped");
        return;
    }
    let placement = Placement::OneCpu;
    let p = placement.label();
    let n = if cfg.quick { 50_000 } else { 200_000 };
    let rtt_n = if cfg.quick { 5_000 } else { 20_000 };
    type Case = (
        &'static str,
        fn(u64, Placement) -> f64,
        &'static str,
        u64,
        &'static str,
        Better,
    );
    let cases: [Case; 2] = [
        (
            "throughput",
            Msgport::throughput,
            "throughput",
            n,
            "msg/s",
            Better::Higher,
        ),
        (
            "round trip",
            Msgport::round_trip,
            "rtt",
            rtt_n,
            "µs",
            Better::Lower,
        ),
    ];
    for (what, ours, mode, count, unit, better) in cases {
        let s = compare(
            cfg.reps,
            &mut [&mut || ours(count, placement), &mut || {
                node_worker(mode, count).unwrap_or(f64::NAN)
            }],
        );
        report.versus(
            "inproc",
            format!("{what}, 64 B struct, against a Node.js worker, {p}"),
            unit,
            better,
            &s[0],
            "Node.js worker MessagePort",
            &s[1],
        );
    }
}

/// msgport against every rival, each metric's reps interleaved across all of them.
pub(crate) fn group(cfg: &Config, report: &mut Report) {
    let n = if cfg.quick { 200_000 } else { 1_000_000 };
    let rtt_n = if cfg.quick { 5_000 } else { 20_000 };
    for placement in Placement::BOTH {
        let p = placement.label();
        let s = compare(
            cfg.reps,
            &mut [
                &mut || Msgport::throughput(n, placement),
                &mut || Tokio::throughput(n, placement),
                &mut || Crossbeam::throughput(n, placement),
                &mut || MsgportEncoded::throughput(n, placement),
            ],
        );
        let name = format!("throughput, 64 B struct, {p}");
        let rivals = [Tokio::NAME, Crossbeam::NAME];
        report.versus_each("inproc", name.clone(), "msg/s", Better::Higher, &s, &rivals);
        report.versus(
            "inproc",
            format!("{name}, CBOR-encoded vs moved"),
            "msg/s",
            Better::Higher,
            &s[3],
            "msgport (moved)",
            &s[0],
        );
        let s = compare(
            cfg.reps,
            &mut [
                &mut || Msgport::round_trip(rtt_n, placement),
                &mut || Tokio::round_trip(rtt_n, placement),
                &mut || Crossbeam::round_trip(rtt_n, placement),
                &mut || MsgportEncoded::round_trip(rtt_n, placement),
            ],
        );
        let name = format!("round trip, 64 B struct, {p}");
        let rivals = [Tokio::NAME, Crossbeam::NAME];
        report.versus_each("inproc", name.clone(), "µs", Better::Lower, &s, &rivals);
        report.versus(
            "inproc",
            format!("{name}, CBOR-encoded vs moved"),
            "µs",
            Better::Lower,
            &s[3],
            "msgport (moved)",
            &s[0],
        );

        // The async path: `recv().await` on a current-thread runtime, against tokio's own.
        let s = compare(
            cfg.reps,
            &mut [&mut || MsgportAsync::throughput(n, placement), &mut || {
                TokioAsync::throughput(n, placement)
            }],
        );
        report.versus(
            "inproc",
            format!("throughput, 64 B struct, awaited, {p}"),
            "msg/s",
            Better::Higher,
            &s[0],
            TokioAsync::NAME,
            &s[1],
        );
        let s = compare(
            cfg.reps,
            &mut [
                &mut || MsgportAsync::round_trip(rtt_n, placement),
                &mut || TokioAsync::round_trip(rtt_n, placement),
            ],
        );
        report.versus(
            "inproc",
            format!("round trip, 64 B struct, awaited, {p}"),
            "µs",
            Better::Lower,
            &s[0],
            TokioAsync::NAME,
            &s[1],
        );
    }
    against_node(cfg, report);
}
