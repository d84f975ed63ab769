//! The IPC group: `invoke` round trip and `send` throughput, child → main, msgport-ipc against
//! Node.js `child_process.fork` doing the same with its two serializations (`advanced`, the
//! structured clone, and `json`, its default), when `node` is on the machine. The payload is
//! the same 64 B record on every side (a `Small` struct; an object `{seq, rest: [7 numbers]}`
//! in JavaScript). One rep is one child process: a warm-up batch, then a timed one.

use std::process::Command;
use std::time::{Duration, Instant};

use msgport::Value;
use msgport_ipc::{IpcChild, IpcMain};

use crate::measure::{compare, Better, Report};
use crate::payload::Small;
use crate::{pin, Config, Placement};

/// The two IPC figures, as one system (main and a child) produces them.
pub(crate) trait IpcSystem {
    /// How the figures name it.
    const NAME: &'static str;
    /// Microseconds per `invoke` round trip (one rep).
    fn invoke(placement: Placement, n: u64) -> Option<f64>;
    /// Messages per second sent child → main (one rep).
    fn send(placement: Placement, n: u64) -> Option<f64>;
}

/// The child side of the msgport-ipc figures: measures a warm-up batch and a timed one, then
/// reports to main.
pub(crate) fn child(role: &str, cpu: usize) {
    pin(cpu);
    let ipc = IpcChild::connect().unwrap();
    if role == "mpipc-many" {
        // One of many children: says it is up, then sends its share when told, and says done
        // once main has taken all of it.
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        ipc.on("go", move |e| tx.send(e.data::<u64>().unwrap()).unwrap());
        ipc.send("ready", ()).unwrap();
        let n = rx.recv().unwrap();
        for i in 0..n {
            ipc.send("data", Small::new(i)).unwrap();
        }
        ipc.invoke_blocking("sync", ()).unwrap();
        ipc.send("done", ()).unwrap();
        ipc.wait_main_gone();
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    ipc.on("go", move |e| tx.send(e.data::<u64>().unwrap()).unwrap());
    let n = rx.recv().unwrap();
    let mut figure = 0.0;
    for _warm_up_then_timed in 0..2 {
        let t = Instant::now();
        if role == "mpipc-invoke" {
            for i in 0..n {
                let back: Small = ipc.invoke_blocking_as("echo", Small::new(i)).unwrap();
                assert_eq!(back.seq, i);
            }
            figure = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        } else {
            for i in 0..n {
                ipc.send("data", Small::new(i)).unwrap();
            }
            // Main answers after it has taken every message sent before.
            ipc.invoke_blocking("sync", ()).unwrap();
            figure = n as f64 / t.elapsed().as_secs_f64();
        }
    }
    ipc.send("figure", figure).unwrap();
    ipc.wait_main_gone();
}

/// msgport-ipc: `invoke_blocking_as` against `handle`, `send` against `on`.
pub(crate) struct MsgportIpc;

impl MsgportIpc {
    fn figure(role: &str, placement: Placement, n: u64) -> Option<f64> {
        let main = IpcMain::new();
        main.handle("echo", |e| Ok(e.data.clone()));
        main.handle("sync", |_| Ok(Value::Null));
        main.on("data", |e| {
            std::hint::black_box(&e.data);
        });
        let (tx, rx) = std::sync::mpsc::channel();
        main.on("figure", move |e| {
            let _ = tx.send(e.data::<f64>().unwrap());
        });
        let mut cmd = Command::new(std::env::current_exe().ok()?);
        cmd.arg("--child")
            .arg(role)
            .arg(placement.cpu(1).to_string());
        let child = main.spawn(&mut cmd).ok()?;
        child.send("go", n).ok()?;
        let figure = rx.recv_timeout(Duration::from_secs(600)).ok();
        main.shutdown();
        let _ = child.wait();
        figure
    }
}

impl MsgportIpc {
    /// Messages per second main takes from `k` children sending `n` each at once (the time from
    /// telling them to go, every child up, to the last one done).
    fn many_children(k: usize, placement: Placement, n: u64) -> Option<f64> {
        let main = IpcMain::new();
        main.handle("sync", |_| Ok(Value::Null));
        main.on("data", |e| {
            std::hint::black_box(&e.data);
        });
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let done = tx.clone();
        main.on("ready", move |_| {
            let _ = tx.send(());
        });
        main.on("done", move |_| {
            let _ = done.send(());
        });
        let mut children = Vec::new();
        for _ in 0..k {
            let mut cmd = Command::new(std::env::current_exe().ok()?);
            cmd.arg("--child")
                .arg("mpipc-many")
                .arg(placement.cpu(1).to_string());
            children.push(main.spawn(&mut cmd).ok()?);
        }
        let wait_all = || (0..k).all(|_| rx.recv_timeout(Duration::from_secs(120)).is_ok());
        if !wait_all() {
            return None;
        }
        let t = Instant::now();
        for child in &children {
            child.send("go", n).ok()?;
        }
        let all_done = wait_all();
        let rate = (k as u64 * n) as f64 / t.elapsed().as_secs_f64();
        main.shutdown();
        for child in children {
            let _ = child.wait();
        }
        all_done.then_some(rate)
    }
}

impl IpcSystem for MsgportIpc {
    const NAME: &'static str = "msgport-ipc";
    fn invoke(placement: Placement, n: u64) -> Option<f64> {
        Self::figure("mpipc-invoke", placement, n)
    }
    fn send(placement: Placement, n: u64) -> Option<f64> {
        Self::figure("mpipc-send", placement, n)
    }
}

const NODE_PARENT: &str = r#"
const { fork } = require('child_process');
const [n, childCpu, mode, serialization] = process.argv.slice(2);
const child = fork(__dirname + '/child.js', [n, mode], {
  serialization,
  execPath: '/usr/bin/taskset',
  execArgv: ['-c', childCpu, process.execPath],
});
child.on('message', (m) => {
  if (m.t === 'invoke') child.send({ t: 'reply', id: m.id, d: m.d });
  else if (m.t === 'sync') child.send({ t: 'reply', id: m.id });
  else if (m.t === 'figure') { console.log(JSON.stringify(m.v)); child.kill(); }
});
"#;

const NODE_CHILD: &str = r#"
const [n, mode] = process.argv.slice(2).map((x, i) => i < 1 ? Number(x) : x);
const small = (seq) => ({ seq, rest: [seq, seq, seq, seq, seq, seq, seq] });
let nextId = 0;
const waiting = new Map();
process.on('message', (m) => { const r = waiting.get(m.id); waiting.delete(m.id); r(m.d); });
const invoke = (t, d) => new Promise((resolve) => { const id = nextId++; waiting.set(id, resolve); process.send({ t, id, d }); });
(async () => {
  let figure = 0;
  for (let r = 0; r < 2; r++) {
    const t0 = process.hrtime.bigint();
    if (mode === 'invoke') {
      for (let i = 0; i < n; i++) {
        const back = await invoke('invoke', small(i));
        if (back.seq !== i) throw new Error('bad echo');
      }
      figure = Number(process.hrtime.bigint() - t0) / 1000 / n;
    } else {
      for (let i = 0; i < n; i++) process.send({ t: 'data', d: small(i) });
      await invoke('sync');
      figure = n / (Number(process.hrtime.bigint() - t0) / 1e9);
    }
  }
  process.send({ t: 'figure', v: figure });
})();
"#;

/// Node.js `fork` IPC with the serialization `S`.
pub(crate) struct Node<const ADVANCED: bool>;

impl<const ADVANCED: bool> Node<ADVANCED> {
    fn figure(mode: &str, placement: Placement, n: u64) -> Option<f64> {
        run_node(
            "node",
            &[("parent.js", NODE_PARENT), ("child.js", NODE_CHILD)],
            placement.cpu(0),
            &[
                n.to_string(),
                placement.cpu(1).to_string(),
                mode.to_string(),
                if ADVANCED { "advanced" } else { "json" }.to_string(),
            ],
        )
    }
}

/// Runs the first of `scripts` (file name, source; all written to a directory of this run
/// named for `tag`) with `node` pinned to `cpu`, with `args`: the number it prints, `None`
/// when it did not run.
pub(crate) fn run_node(
    tag: &str,
    scripts: &[(&str, &str)],
    cpu: usize,
    args: &[String],
) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("msgport-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    for (name, source) in scripts {
        std::fs::write(dir.join(name), source).ok()?;
    }
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "node"])
        .arg(dir.join(scripts.first()?.0))
        .args(args)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Whether `node` runs on this machine (the Node.js rivals are skipped otherwise).
pub(crate) fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl<const ADVANCED: bool> IpcSystem for Node<ADVANCED> {
    const NAME: &'static str = if ADVANCED {
        "Node.js fork IPC (advanced)"
    } else {
        "Node.js fork IPC (json)"
    };
    fn invoke(placement: Placement, n: u64) -> Option<f64> {
        Self::figure("invoke", placement, n)
    }
    fn send(placement: Placement, n: u64) -> Option<f64> {
        Self::figure("send", placement, n)
    }
}

pub(crate) fn group(cfg: &Config, report: &mut Report) {
    let n_inv = if cfg.quick { 2_000 } else { 10_000 };
    let n_send = if cfg.quick { 20_000 } else { 200_000 };
    for placement in Placement::BOTH {
        pin(placement.cpu(0));
        for k in [1usize, 10, 50] {
            let per_child = (n_send / k as u64).max(1);
            let samples: Vec<f64> = (0..cfg.reps)
                .filter_map(|_| MsgportIpc::many_children(k, placement, per_child))
                .collect();
            if samples.is_empty() {
                println!("ipc     {k} children: no rep completed");
                continue;
            }
            report.solo(
                "ipc",
                format!(
                    "send throughput, {k} {} at once → main, 64 B struct, {}",
                    if k == 1 { "child" } else { "children" },
                    placement.label()
                ),
                "msg/s",
                Better::Higher,
                &crate::measure::Samples(samples),
                "all children's messages / time from go to the last done",
            );
        }
    }
    if !node_available() {
        println!("ipc     node is not on this machine: the Node.js comparisons are skipped");
        return;
    }
    let nan = f64::NAN;
    for placement in Placement::BOTH {
        pin(placement.cpu(0));
        let p = placement.label();
        let s = compare(
            cfg.reps,
            &mut [
                &mut || MsgportIpc::invoke(placement, n_inv).unwrap_or(nan),
                &mut || Node::<true>::invoke(placement, n_inv).unwrap_or(nan),
                &mut || Node::<false>::invoke(placement, n_inv).unwrap_or(nan),
            ],
        );
        let name = format!("invoke round trip, 64 B struct, {p}");
        let rivals = [Node::<true>::NAME, Node::<false>::NAME];
        report.versus_each("ipc", name, "µs", Better::Lower, &s, &rivals);
        let s = compare(
            cfg.reps,
            &mut [
                &mut || MsgportIpc::send(placement, n_send).unwrap_or(nan),
                &mut || Node::<true>::send(placement, n_send).unwrap_or(nan),
                &mut || Node::<false>::send(placement, n_send).unwrap_or(nan),
            ],
        );
        let name = format!("send throughput child→main, 64 B struct, {p}");
        let rivals = [Node::<true>::NAME, Node::<false>::NAME];
        report.versus_each("ipc", name, "msg/s", Better::Higher, &s, &rivals);
    }
}
