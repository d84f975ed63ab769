//! The IPC group: `invoke` round trip and `send` throughput, child → main, msgport-ipc next to
//! Node.js `child_process.fork` with `serialization: 'advanced'` doing the same, when `node` is
//! on the machine.

use std::process::Command;
use std::time::{Duration, Instant};

use msgport::Value;
use msgport_ipc::{IpcChild, IpcMain};

use crate::{median, pin, record, Config, Figure, Placement};

/// The child side of the msgport-ipc figures: measures, then reports to main.
pub fn child(role: &str, cpu: usize) {
    pin(cpu);
    let ipc = IpcChild::connect().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(u64, usize)>();
    ipc.on("go", move |e| {
        let n: u64 = e.data["n"].as_f64().unwrap() as u64;
        let reps = e.data["reps"].as_f64().unwrap() as usize;
        tx.send((n, reps)).unwrap();
    });
    let (n, reps) = rx.recv().unwrap();
    let payload = Value::from(&[0xa5u8; 64][..]);
    let figures: Vec<f64> = (0..=reps)
        .map(|_| {
            let t = Instant::now();
            if role == "mpipc-invoke" {
                for _ in 0..n {
                    ipc.invoke_blocking("echo", payload.clone()).unwrap();
                }
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            } else {
                for _ in 0..n {
                    ipc.send("data", payload.clone()).unwrap();
                }
                // Main answers after it has taken every message sent before.
                ipc.invoke_blocking("sync", ()).unwrap();
                n as f64 / t.elapsed().as_secs_f64()
            }
        })
        .skip(1)
        .collect();
    ipc.send("figure", median(figures)).unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

fn msgport_figure(role: &str, cpu: usize, n: u64, reps: usize) -> f64 {
    let main = IpcMain::new();
    main.handle("echo", |e| Ok(e.data.clone()));
    main.handle("sync", |_| Ok(Value::Null));
    main.on("data", |_| {});
    let (tx, rx) = std::sync::mpsc::channel();
    main.on("figure", move |e| {
        tx.send(e.data.as_f64().unwrap()).unwrap()
    });
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("--child").arg(role).arg(cpu.to_string());
    let child = main.spawn(&mut cmd).unwrap();
    child
        .send("go", msgport::value!({ "n": n, "reps": reps }))
        .unwrap();
    let figure = rx.recv_timeout(Duration::from_secs(600)).unwrap();
    let _ = child.kill();
    figure
}

const NODE_PARENT: &str = r#"
const { fork } = require('child_process');
const [n, reps, childCpu, mode] = process.argv.slice(2);
const child = fork(__dirname + '/child.js', [n, reps, mode], {
  serialization: 'advanced',
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
const [n, reps, mode] = process.argv.slice(2).map((x, i) => i < 2 ? Number(x) : x);
const payload = Buffer.alloc(64, 0xa5);
let nextId = 0;
const waiting = new Map();
process.on('message', (m) => { const r = waiting.get(m.id); waiting.delete(m.id); r(m.d); });
const invoke = (t, d) => new Promise((resolve) => { const id = nextId++; waiting.set(id, resolve); process.send({ t, id, d }); });
(async () => {
  const figures = [];
  for (let r = 0; r <= reps; r++) {
    const t0 = process.hrtime.bigint();
    if (mode === 'invoke') {
      for (let i = 0; i < n; i++) await invoke('invoke', payload);
      figures.push(Number(process.hrtime.bigint() - t0) / 1000 / n);
    } else {
      for (let i = 0; i < n; i++) process.send({ t: 'data', d: payload });
      await invoke('sync');
      figures.push(n / (Number(process.hrtime.bigint() - t0) / 1e9));
    }
  }
  figures.shift();
  figures.sort((a, b) => a - b);
  process.send({ t: 'figure', v: figures[Math.floor(figures.length / 2)] });
})();
"#;

fn node_figure(mode: &str, placement: Placement, n: u64, reps: usize) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("msgport-bench-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(dir.join("parent.js"), NODE_PARENT).ok()?;
    std::fs::write(dir.join("child.js"), NODE_CHILD).ok()?;
    let out = Command::new("taskset")
        .args(["-c", &placement.cpu(0).to_string(), "node"])
        .arg(dir.join("parent.js"))
        .args([
            n.to_string(),
            reps.to_string(),
            placement.cpu(1).to_string(),
            mode.to_string(),
        ])
        .output()
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

pub fn group(cfg: &Config, out: &mut Vec<Figure>) {
    let has_node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_node {
        println!("ipc      node is not on this machine: the Node.js comparison is skipped");
    }
    let reps = cfg.reps;
    for placement in [Placement::OneCpu, Placement::TwoCpus] {
        pin(placement.cpu(0));
        let p = placement.label();
        let n_inv = if cfg.quick { 2_000 } else { 10_000 };
        let ours = msgport_figure("mpipc-invoke", placement.cpu(1), n_inv, reps);
        let n_send = if cfg.quick { 20_000 } else { 200_000 };
        let ours_send = msgport_figure("mpipc-send", placement.cpu(1), n_send, reps);
        match (
            has_node
                .then(|| node_figure("invoke", placement, n_inv, reps))
                .flatten(),
            has_node
                .then(|| node_figure("send", placement, n_send, reps))
                .flatten(),
        ) {
            (Some(node_inv), Some(node_send)) => {
                record(
                    out,
                    "ipc",
                    format!("invoke round trip, 64 B, {p}"),
                    "µs",
                    "lower",
                    (ours, node_inv),
                    "Node.js fork IPC (advanced)",
                );
                record(
                    out,
                    "ipc",
                    format!("send throughput child→main, 64 B, {p}"),
                    "msg/s",
                    "higher",
                    (ours_send, node_send),
                    "Node.js fork IPC (advanced)",
                );
            }
            _ => {
                println!("ipc      invoke round trip, 64 B, {p}: {ours:.2} µs; send throughput: {ours_send:.0} msg/s (no Node.js figure)");
            }
        }
    }
}
