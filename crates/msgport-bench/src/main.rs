//! `cargo run --release -p msgport-bench -- [--quick] [--only GROUP] [--json PATH] [--svg PATH]`
//!
//! Every figure is measured next to its rivals in the same run: each family of contenders
//! implements one comparator trait ([`inproc::InProc`], [`xproc::Transport`],
//! [`ipc::IpcSystem`]), [`measure::compare`] runs them interleaved rep by rep, and every figure
//! is reported through [`measure::Report`] as medians, a ratio and the spread of the per-rep
//! ratios. Every contender sends the same typed payload (`payload.rs`). Latencies are reported
//! twice: both sides pinned to one CPU, and split across two (waking a sleeping CPU costs
//! ≈ 33 µs on the reference machine; DESIGN §4).

mod bridge;
mod chart;
mod inproc;
mod ipc;
mod measure;
mod payload;
mod xproc;

use std::time::Instant;

use measure::Report;

pub(crate) struct Config {
    pub quick: bool,
    pub reps: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    OneCpu,
    TwoCpus,
}

impl Placement {
    pub(crate) const BOTH: [Placement; 2] = [Placement::OneCpu, Placement::TwoCpus];

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
/// affinity mask, so a child of a pinned process can still be placed elsewhere). A figure
/// labelled "pinned" must be pinned: failing to pin ends the run.
pub(crate) fn pin(cpu: usize) {
    let n = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(num_cpus_online());
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu % n);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("cannot pin to CPU {cpu}: {e}; the figures would be mislabelled");
        std::process::exit(1);
    }
}

/// Lets this thread (and the threads and processes it starts from now on) run on every CPU.
pub(crate) fn unpin() {
    let mut set = rustix::thread::CpuSet::new();
    for cpu in 0..num_cpus_online().max(1) {
        set.set(cpu);
    }
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("cannot unpin: {e}; the figures would be mislabelled");
        std::process::exit(1);
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

/// What a results file says about where it was measured.
#[derive(serde::Serialize)]
struct Run<'a> {
    commit: String,
    cpu: String,
    cpus_online: usize,
    quick: bool,
    reps: usize,
    figures: &'a [measure::Figure],
    sweep: &'a [measure::SweepPoint],
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

const USAGE: &str = "\
usage: msgport-bench [--quick] [--only inproc|xproc|ipc|bridge] [--json PATH] [--svg PATH]

  --quick        fewer messages and 3 reps per figure instead of 9 (about 1 minute)
  --only GROUP   one group: inproc (threads of one process), xproc (processes), ipc (msgport-ipc),
                 bridge (msgport-bridge: a page in headless Chromium and a Node.js client)
  --json PATH    write every figure, with the commit and the CPU, as JSON
  --svg PATH     draw the comparisons as an SVG bar chart
  -h, --help     this text

MSGPORT_BENCH_CASE=rtt|rtt-binary|rtt-callback|rtt-ll|throughput|sweep|ports|senders|16mib|create|live|close
runs one case of the xproc group (for profiling); MSGPORT_BENCH_SIZE=<bytes> one size of its sweep.";

/// The command line.
struct Args {
    quick: bool,
    only: Option<String>,
    json: Option<String>,
    svg: Option<String>,
}

impl Args {
    fn parse() -> Result<Args, lexopt::Error> {
        use lexopt::prelude::*;
        let mut args = Args {
            quick: false,
            only: None,
            json: None,
            svg: None,
        };
        let mut parser = lexopt::Parser::from_env();
        while let Some(arg) = parser.next()? {
            match arg {
                Long("quick") => args.quick = true,
                Long("only") => {
                    let group: String = parser.value()?.parse()?;
                    if !["inproc", "xproc", "ipc", "bridge"].contains(&group.as_str()) {
                        return Err(format!("unknown group {group:?}").into());
                    }
                    args.only = Some(group);
                }
                Long("json") => args.json = Some(parser.value()?.parse()?),
                Long("svg") => args.svg = Some(parser.value()?.parse()?),
                Short('h') | Long("help") => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                _ => return Err(arg.unexpected()),
            }
        }
        Ok(args)
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child") {
        let cpu = argv.get(3).and_then(|c| c.parse().ok()).unwrap_or(0);
        if argv[2].starts_with("mpipc-") {
            ipc::child(&argv[2], cpu);
        } else {
            xproc::child(&argv[2], cpu, argv.get(4).cloned());
        }
        return;
    }
    let Args {
        quick,
        only,
        json,
        svg,
    } = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for meaningful figures");
    }
    let cfg = Config {
        quick,
        reps: if quick { 3 } else { 9 },
    };
    println!(
        "commit {}, {} ({} CPUs), {} reps per figure, interleaved; [min–max] of the per-rep ratios, ~ when they straddle 1",
        commit(),
        cpu_model(),
        num_cpus_online(),
        cfg.reps
    );
    let started = Instant::now();
    let mut report = Report::default();
    let wants = |g: &str| only.as_deref().is_none_or(|o| o == g);
    if wants("inproc") {
        inproc::group(&cfg, &mut report);
    }
    if wants("xproc") {
        xproc::group(&cfg, &mut report);
    }
    if wants("ipc") {
        ipc::group(&cfg, &mut report);
    }
    if wants("bridge") {
        bridge::group(&cfg, &mut report);
    }
    println!(
        "{} figures in {:.1?}",
        report.figures.len(),
        started.elapsed()
    );
    if let Some(path) = json {
        let run = Run {
            commit: commit(),
            cpu: cpu_model(),
            cpus_online: num_cpus_online(),
            quick,
            reps: cfg.reps,
            figures: &report.figures,
            sweep: &report.sweep,
        };
        let text = serde_json::to_string_pretty(&run).expect("figures serialize");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
        println!("wrote {path}");
    }
    if let Some(path) = svg {
        if let Err(e) = std::fs::write(&path, chart::svg(&report.figures, &report.sweep)) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
        println!("wrote {path}");
    }
}
