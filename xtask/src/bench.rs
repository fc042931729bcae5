//! `cargo xtask bench`: what tracing costs a traced program, for probe
//! beside the floor (do-nothing programs at the same tracepoints) and its
//! peers, in one run, interleaved round by round, as medians.
//!
//! The workloads time themselves (`examples/workload.rs` reports the wall
//! time of its own loop), so every tracer is measured from inside the
//! program it slows down.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::command::{self, run};

mod servers;

/// Which workloads `cargo xtask bench --only` runs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// The syscall workloads, probe's own and Go's, timed by themselves.
    Syscalls,
    /// redis, nginx and a Go HTTP server under load from their clients.
    Servers,
}

/// A workload: its program, its flag, and the size of each of its
/// threads' loops.
struct Workload {
    name: &'static str,
    /// The Go workload (`xtask/go/workload`), else probe's own.
    go: bool,
    flag: &'static str,
    sizes: &'static [u64],
    unit: &'static str,
}

/// No pipe ping-pong between two threads: its round trips are wakeup
/// latency, which on this VM varies more between untraced runs than any
/// tracer adds, and pinning its threads to CPU 0 and CPU 1 made each round
/// trip cross CPUs, several times slower and no steadier.
const WORKLOADS: [Workload; 4] = [
    Workload { name: "getppid storm", go: false, flag: "--getppid", sizes: &[2_000_000], unit: "ns/syscall" },
    Workload {
        name: "mixed storm",
        go: false,
        flag: "--mixed",
        sizes: &[250_000, 250_000],
        unit: "ns/syscall",
    },
    Workload {
        name: "Go getppid loop",
        go: true,
        flag: "--getppid",
        sizes: &[1_000_000],
        unit: "ns/syscall",
    },
    Workload {
        name: "Go channel ping-pong",
        go: true,
        flag: "--chanpingpong",
        sizes: &[1_000_000],
        unit: "ns/round trip",
    },
];

impl Workload {
    /// The workload's arguments, its loops shortened by `divisor`: a cost
    /// per operation needs fewer operations under a tracer that is slow.
    fn args(&self, divisor: u64) -> Vec<String> {
        let sizes: Vec<String> = self.sizes.iter().map(|size| (size / divisor).to_string()).collect();
        vec![self.flag.to_owned(), sizes.join(",")]
    }
}

/// How the workload is run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tracer {
    Untraced,
    Floor,
    ProbePid,
    ProbeCommand,
    ProbeSystem,
    ProbeNoSched,
    /// `--no-goroutines`: a Go program without its Go view, beside
    /// `ProbeCommand`, which follows its goroutines.
    ProbeNoGoroutines,
    /// `--slow 10ms`: what its details cost where no call is that slow
    /// (stacks at each blocking switch, wakers) beside `ProbeCommand`.
    ProbeSlow,
    /// `--prometheus 127.0.0.1:0`, scraped (the servers only).
    ProbePrometheus,
    Bpftrace,
    PerfTrace,
    Strace,
    /// `--against BINARY`: another build of probe, beside this one.
    AgainstPid,
    AgainstSystem,
}

const TRACERS: [Tracer; 10] = [
    Tracer::Untraced,
    Tracer::Floor,
    Tracer::ProbePid,
    Tracer::ProbeCommand,
    Tracer::ProbeSystem,
    Tracer::ProbeNoSched,
    Tracer::ProbeSlow,
    Tracer::Bpftrace,
    Tracer::PerfTrace,
    Tracer::Strace,
];

/// Which tracers run a workload: the Go view is weighed against probe
/// without it.
fn tracers_of(workload: &Workload, all: &[Tracer]) -> Vec<Tracer> {
    match workload.go {
        true => vec![Tracer::Untraced, Tracer::Floor, Tracer::ProbeCommand, Tracer::ProbeNoGoroutines],
        false => all.to_vec(),
    }
}

impl Tracer {
    /// How much shorter its loops are: ptrace-based tracers cost tens of
    /// microseconds a syscall.
    fn divisor(self) -> u64 {
        match self {
            Tracer::Strace => 50,
            Tracer::PerfTrace => 20,
            _ => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tracer::Untraced => "untraced",
            Tracer::Floor => "floor (empty programs)",
            Tracer::ProbePid => "probe --pid",
            Tracer::ProbeCommand => "probe -- COMMAND",
            Tracer::ProbeSystem => "probe (whole system)",
            Tracer::ProbeNoSched => "probe --no-sched",
            Tracer::ProbeNoGoroutines => "probe --no-goroutines",
            Tracer::ProbeSlow => "probe --slow 10ms",
            Tracer::ProbePrometheus => "probe --prometheus",
            Tracer::Bpftrace => "bpftrace histogram",
            Tracer::PerfTrace => "perf trace -s",
            Tracer::Strace => "strace -f -c",
            Tracer::AgainstPid => "--against probe --pid",
            Tracer::AgainstSystem => "--against probe (whole system)",
        }
    }
}

/// bpftrace's per-thread syscall latency histogram of the command it runs.
const BPFTRACE_PROGRAM: &str = "tracepoint:raw_syscalls:sys_enter /pid == cpid/ { @start[tid] = nsecs; } \
     tracepoint:raw_syscalls:sys_exit /pid == cpid && @start[tid]/ { @ns[tid] = hist(nsecs - @start[tid]); delete(@start[tid]); }";

/// One run of one workload under one tracer.
#[derive(Default, Clone)]
struct Sample {
    ns_per_op: f64,
    /// probe's own numbers, when probe traced.
    events: Option<f64>,
    lost: Option<f64>,
    events_per_s: Option<f64>,
    /// probe's CPU from when it traces to its exit (every record read, and
    /// the final report) per event: what a record costs it, apart from its
    /// start-up, which is `start_cpu_ms`.
    cpu_ns_per_event: Option<f64>,
    /// probe's CPU from its start until it traces.
    start_cpu_ms: Option<f64>,
    peak_rss_mib: Option<f64>,
    attach_ms: Option<f64>,
}

struct Paths {
    probe: PathBuf,
    /// Another build of probe to measure beside this one.
    against: Option<PathBuf>,
    workload: PathBuf,
    go_workload: PathBuf,
    report: PathBuf,
}

/// Runs every workload under every tracer, `rounds` times, and prints and
/// saves the medians; with `against`, also under that build of probe (the
/// commit before a change, say), interleaved in the same rounds. `only`
/// runs one suite; `duration` is how long each server's load runs.
pub fn bench(
    root: &Path,
    rounds: usize,
    against: Option<PathBuf>,
    only: Option<Suite>,
    duration: Duration,
) -> Result<()> {
    install_peers()?;
    let mut tracers = TRACERS.to_vec();
    if against.is_some() {
        tracers.extend([Tracer::AgainstPid, Tracer::AgainstSystem]);
    }
    let paths = Paths {
        against,
        probe: root.join("target/release/probe"),
        workload: root.join("target/release/examples/workload"),
        go_workload: build_go(root, "workload", "go-workload")?,
        report: root.join("target/bench/probe-report.json"),
    };
    std::fs::create_dir_all(root.join("target/bench"))?;
    let mut samples: BTreeMap<(usize, Tracer), Vec<Sample>> = BTreeMap::new();
    let syscall_rounds = match only {
        Some(Suite::Servers) => 0,
        _ => rounds,
    };
    for round in 1..=syscall_rounds {
        eprintln!("xtask: bench round {round} of {rounds}");
        for (w, workload) in WORKLOADS.iter().enumerate() {
            for tracer in tracers_of(workload, &tracers) {
                let sample = measure(&paths, workload, tracer)
                    .with_context(|| format!("{} under {}", workload.name, tracer.name()))?;
                samples.entry((w, tracer)).or_default().push(sample);
            }
        }
    }
    let mut table = summarize(&samples);
    // The rounds asked for, also when only the servers ran.
    table["rounds"] = rounds.into();
    print_table(&table);
    if only != Some(Suite::Syscalls) {
        table["servers"] = servers::bench(root, &paths, rounds, duration)?;
    }
    let out = root.join("target/bench/bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&table)?)?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

/// Builds the Go program in `xtask/go/DIR` with Debian's Go (installed when
/// missing) as `target/bench/OUTPUT`.
fn build_go(root: &Path, dir: &str, output: &str) -> Result<PathBuf> {
    command::install_missing(&[("go", "golang-go")])?;
    let binary = root.join("target/bench").join(output);
    run(Command::new("go")
        .current_dir(root.join("xtask/go").join(dir))
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", root.join("target/bench/go-cache"))
        .args(["build", "-o"])
        .arg(&binary)
        .arg("."))?;
    Ok(binary)
}

/// Installs bpftrace, perf and strace from Debian's packages when missing,
/// and mounts tracefs, which their tracepoints need.
fn install_peers() -> Result<()> {
    command::install_missing(&[("bpftrace", "bpftrace"), ("perf", "linux-perf"), ("strace", "strace")])?;
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
    }
    Ok(())
}

fn measure(paths: &Paths, workload: &Workload, tracer: Tracer) -> Result<Sample> {
    let args = workload.args(tracer.divisor());
    let program = if workload.go { &paths.go_workload } else { &paths.workload };
    let build = |binary: &Path, args: &[&str]| {
        let mut command = Command::new(binary);
        command.args(["--json", "-o"]).arg(&paths.report).args(args);
        command
    };
    let probe = |args: &[&str]| build(&paths.probe, args);
    let against = || paths.against.as_deref().map(|binary| build(binary, &[])).context("no --against build");
    let with_workload = |mut command: Command| {
        command.arg("--").arg(program).args(&args);
        command
    };
    match tracer {
        Tracer::Untraced => {
            let mut command = Command::new(program);
            command.args(&args);
            Ok(Sample { ns_per_op: ns_per_op(&stdout_of(command)?)?, ..Sample::default() })
        }
        Tracer::Floor => traced_by_probe(paths, with_workload(probe(&["--bench-floor"])), false),
        Tracer::ProbeCommand => traced_by_probe(paths, with_workload(probe(&[])), true),
        Tracer::ProbeNoSched => traced_by_probe(paths, with_workload(probe(&["--no-sched"])), true),
        Tracer::ProbeNoGoroutines => traced_by_probe(paths, with_workload(probe(&["--no-goroutines"])), true),
        Tracer::ProbeSlow => traced_by_probe(paths, with_workload(probe(&["--slow", "10ms"])), true),
        Tracer::ProbePrometheus => bail!("the syscall workloads run without --prometheus"),
        Tracer::ProbePid => probe_pid(paths, &args, probe(&[])),
        Tracer::ProbeSystem => probe_system(paths, &args, probe(&[])),
        Tracer::AgainstPid => probe_pid(paths, &args, against()?),
        Tracer::AgainstSystem => probe_system(paths, &args, against()?),
        Tracer::Bpftrace => {
            let mut command = Command::new("bpftrace");
            command.args(["-q", "-e", BPFTRACE_PROGRAM, "-c"]).arg(shell_words(program, &args));
            Ok(Sample { ns_per_op: ns_per_op(&stdout_of(command)?)?, ..Sample::default() })
        }
        Tracer::PerfTrace => {
            let mut command = Command::new("perf");
            command.args(["trace", "-s", "-o", "/dev/null", "--"]).arg(program).args(&args);
            Ok(Sample { ns_per_op: ns_per_op(&stdout_of(command)?)?, ..Sample::default() })
        }
        Tracer::Strace => {
            let mut command = Command::new("strace");
            command.args(["-f", "-c", "-o", "/dev/null", "--"]).arg(program).args(&args);
            Ok(Sample { ns_per_op: ns_per_op(&stdout_of(command)?)?, ..Sample::default() })
        }
    }
}

fn shell_words(program: &Path, args: &[String]) -> String {
    std::iter::once(program.display().to_string()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ")
}

fn stdout_of(mut command: Command) -> Result<String> {
    let output = command.stderr(Stdio::null()).output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The workload's cost per operation: the mean over its threads of their
/// loop's wall time per call (per round trip for ping-pong).
fn ns_per_op(stdout: &str) -> Result<f64> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with("{\"pid\""))
        .context("the workload printed no report")?;
    let report: Value = serde_json::from_str(line)?;
    let threads = report["threads"].as_array().context("no threads in the workload's report")?;
    let per_thread: Vec<f64> = threads
        .iter()
        .map(|t| t["elapsed_ns"].as_f64().unwrap_or(0.0) / t["calls"].as_f64().unwrap_or(1.0).max(1.0))
        .collect();
    Ok(per_thread.iter().sum::<f64>() / per_thread.len().max(1) as f64)
}

/// Waits for a child and returns its resource usage: CPU time and peak RSS.
fn wait_rusage(child: &mut Child) -> Result<(i32, libc::rusage)> {
    wait4(child, 0)?.context("wait4 returned without the child")
}

/// `wait4` on our own child: its status and resource usage once it has
/// ended; `None` while it runs, with `WNOHANG` in `options`.
fn wait4(child: &mut Child, options: i32) -> Result<Option<(i32, libc::rusage)>> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, options, &mut usage) };
    match pid {
        0 => Ok(None),
        pid if pid < 0 => bail!("cannot wait for {}: {}", child.id(), std::io::Error::last_os_error()),
        _ => Ok(Some((status, usage))),
    }
}

/// Sends `signal` to our own child and reaps it: its resource usage. The
/// signal goes again every 10 s while the child lives (bpftrace once took a
/// SIGINT here and went on tracing, and the bench waited for it until a
/// second one); after a minute the child is killed and this fails.
fn stop_rusage(child: &mut Child, signal: i32) -> Result<libc::rusage> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        let sent = Instant::now();
        while sent.elapsed() < Duration::from_secs(10) {
            if let Some((_, usage)) = wait4(child, libc::WNOHANG)? {
                return Ok(usage);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    kill(child);
    bail!("{} did not end within a minute of signal {signal}: killed", child.id())
}

/// Kills our own child and reaps it, if it has not ended already: nothing
/// of a failed measurement is left running beside the next one.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// CPU time `pid`'s threads have used so far, in nanoseconds: the
/// scheduler's own count (`/proc/PID/task/*/schedstat`).
fn cpu_ns(pid: u32) -> Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("cannot list {pid}'s threads"))?;
    let mut total = 0.0;
    for task in tasks {
        // A thread that ended meanwhile has no file left: nothing to add.
        let text = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += text.split_whitespace().next().and_then(|ns| ns.parse::<f64>().ok()).unwrap_or(0.0);
    }
    Ok(total)
}

/// Fills in probe's own numbers from its summary and its resource usage;
/// `start_ns` is its CPU time when it said it traces. (rusage's CPU time
/// is the scheduler's exact sum: only its user and system shares come from
/// clock ticks.)
fn probe_numbers(paths: &Paths, sample: &mut Sample, start_ns: f64, usage: &libc::rusage) -> Result<()> {
    let text = std::fs::read_to_string(&paths.report).context("probe wrote no report")?;
    let summary: Value = serde_json::from_str(text.lines().last().context("empty report")?)?;
    let events = summary["events"].as_f64().unwrap_or(0.0);
    let elapsed_s = summary["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9;
    sample.events = Some(events);
    sample.lost = summary["lost_events"].as_f64();
    sample.events_per_s = Some(events / elapsed_s.max(1e-9));
    let timeval_ns = |time: libc::timeval| time.tv_sec as f64 * 1e9 + time.tv_usec as f64 * 1e3;
    let total_ns = timeval_ns(usage.ru_utime) + timeval_ns(usage.ru_stime);
    sample.cpu_ns_per_event = Some((total_ns - start_ns).max(0.0) / events.max(1.0));
    sample.start_cpu_ms = Some(start_ns / 1e6);
    sample.peak_rss_mib = Some(usage.ru_maxrss as f64 / 1024.0);
    Ok(())
}

/// probe in COMMAND mode. Its resource usage includes the COMMAND's, which
/// it reaps, so its CPU and memory are measured in the other modes.
fn traced_by_probe(paths: &Paths, mut command: Command, numbers: bool) -> Result<Sample> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut stdout = String::new();
    child.stdout.take().context("no stdout")?.read_to_string(&mut stdout)?;
    let (_, usage) = wait_rusage(&mut child)?;
    let mut sample = Sample { ns_per_op: ns_per_op(&stdout)?, ..Sample::default() };
    if numbers {
        probe_numbers(paths, &mut sample, 0.0, &usage)?;
        sample.cpu_ns_per_event = None;
        sample.start_cpu_ms = None;
        sample.peak_rss_mib = None;
    }
    Ok(sample)
}

/// probe, started and tracing.
struct Started {
    child: Child,
    /// How long it took to say it is tracing.
    attach_ms: f64,
    /// Its CPU time then: what "cpu ns/ev" leaves out.
    start_ns: f64,
    /// The URL of its metrics, if it serves them.
    metrics: Option<String>,
}

/// Starts probe and waits until it says it is tracing.
fn start_probe(command: &mut Command) -> Result<Started> {
    let start = Instant::now();
    let mut child = command.stderr(Stdio::piped()).spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().context("no stderr")?);
    let mut metrics = None;
    loop {
        let mut line = String::new();
        stderr.read_line(&mut line)?;
        if let Some(url) = line.strip_prefix("probe: serving metrics at ") {
            metrics = Some(url.trim().to_owned());
            continue;
        }
        let attach_ms = start.elapsed().as_secs_f64() * 1e3;
        let start_ns = match line.starts_with("probe: tracing") {
            true => cpu_ns(child.id()),
            false => Err(anyhow!("probe did not start: {line}")),
        };
        return match start_ns {
            Ok(start_ns) => Ok(Started { child, attach_ms, start_ns, metrics }),
            Err(err) => {
                kill(&mut child);
                Err(err)
            }
        };
    }
}

fn probe_pid(paths: &Paths, args: &[String], mut probe: Command) -> Result<Sample> {
    let mut target =
        Command::new(&paths.workload).arg("--wait-signal").args(args).stdout(Stdio::piped()).spawn()?;
    let mut stdout = BufReader::new(target.stdout.take().context("no stdout")?);
    let mut ready = String::new();
    stdout.read_line(&mut ready)?;
    let Started { mut child, attach_ms, start_ns, .. } =
        start_probe(probe.args(["-p", &target.id().to_string()]))?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(target.id() as i32, libc::SIGUSR1) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest)?;
    target.wait()?;
    let (_, usage) = wait_rusage(&mut child)?;
    let mut sample = Sample { ns_per_op: ns_per_op(&rest)?, attach_ms: Some(attach_ms), ..Sample::default() };
    probe_numbers(paths, &mut sample, start_ns, &usage)?;
    Ok(sample)
}

fn probe_system(paths: &Paths, args: &[String], mut probe: Command) -> Result<Sample> {
    let Started { mut child, attach_ms, start_ns, .. } = start_probe(&mut probe)?;
    let mut command = Command::new(&paths.workload);
    command.args(args);
    let stdout = stdout_of(command)?;
    let usage = stop_rusage(&mut child, libc::SIGINT)?;
    let mut sample =
        Sample { ns_per_op: ns_per_op(&stdout)?, attach_ms: Some(attach_ms), ..Sample::default() };
    probe_numbers(paths, &mut sample, start_ns, &usage)?;
    Ok(sample)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Medians per workload and tracer, and the ratios that matter.
fn summarize(samples: &BTreeMap<(usize, Tracer), Vec<Sample>>) -> Value {
    let pick = |w: usize, tracer: Tracer, field: fn(&Sample) -> Option<f64>| {
        median(samples.get(&(w, tracer)).map_or_else(Vec::new, |s| s.iter().filter_map(field).collect()))
    };
    let workloads: Vec<Value> = WORKLOADS
        .iter()
        .enumerate()
        .filter(|&(w, _)| samples.keys().any(|&(sw, _)| sw == w))
        .map(|(w, workload)| {
            let ns = |tracer| pick(w, tracer, |s| Some(s.ns_per_op)).unwrap_or(f64::NAN);
            let base = ns(Tracer::Untraced);
            let overhead = |tracer| ns(tracer) - base;
            let spread = |tracer| {
                let values = samples.get(&(w, tracer)).into_iter().flatten().map(|s| s.ns_per_op);
                let (min, max) =
                    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
                (min, max)
            };
            let measured = samples.keys().filter(|&&(sw, _)| sw == w).map(|&(_, tracer)| tracer);
            let rows: Vec<Value> = measured
                .map(|tracer| {
                    let (min, max) = spread(tracer);
                    json!({
                        "tracer": tracer.name(),
                        "ns_per_op": ns(tracer),
                        "ns_per_op_min": min,
                        "ns_per_op_max": max,
                        "slowdown": ns(tracer) / base,
                        "overhead_ns": overhead(tracer),
                        "overhead_vs_floor": overhead(tracer) / overhead(Tracer::Floor),
                        "overhead_vs_bpftrace": overhead(tracer) / overhead(Tracer::Bpftrace),
                        "events_per_s": pick(w, tracer, |s| s.events_per_s),
                        "lost_events": pick(w, tracer, |s| s.lost),
                        "cpu_ns_per_event": pick(w, tracer, |s| s.cpu_ns_per_event),
                        "peak_rss_mib": pick(w, tracer, |s| s.peak_rss_mib),
                        "attach_ms": pick(w, tracer, |s| s.attach_ms),
                        "start_cpu_ms": pick(w, tracer, |s| s.start_cpu_ms),
                    })
                })
                .collect();
            json!({"workload": workload.name, "unit": workload.unit, "rows": rows})
        })
        .collect();
    json!({"machine": machine(), "workloads": workloads})
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")?.split(':').nth(1).map(str::trim).map(String::from)
            })
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cpus} × {cpu}, Linux {}", kernel.trim())
}

fn print_table(table: &Value) {
    let cell = |value: &Value, format: &dyn Fn(f64) -> String| {
        value.as_f64().filter(|v| v.is_finite()).map_or("-".to_owned(), format)
    };
    println!("machine: {}; {} rounds, medians", table["machine"].as_str().unwrap_or(""), table["rounds"]);
    for workload in table["workloads"].as_array().into_iter().flatten() {
        println!();
        println!(
            "{} ({})",
            workload["workload"].as_str().unwrap_or(""),
            workload["unit"].as_str().unwrap_or("")
        );
        println!(
            "| {:<30} | {:>9} | {:>13} | {:>8} | {:>9} | {:>8} | {:>9} | {:>10} | {:>9} | {:>8} | {:>8} | {:>8} | {:>9} |",
            "tracer",
            "ns/op",
            "min–max",
            "slowdown",
            "overhead",
            "÷ floor",
            "÷ bpftrace",
            "events/s",
            "lost",
            "cpu ns/ev",
            "peak RSS",
            "attach",
            "start cpu"
        );
        println!("|{}|", ["-"; 13].map(|_| "---").join("|"));
        for row in workload["rows"].as_array().into_iter().flatten() {
            let range = format!(
                "{}–{}",
                cell(&row["ns_per_op_min"], &|v| format!("{v:.0}")),
                cell(&row["ns_per_op_max"], &|v| format!("{v:.0}"))
            );
            println!(
                "| {:<30} | {:>9} | {:>13} | {:>8} | {:>9} | {:>8} | {:>9} | {:>10} | {:>9} | {:>8} | {:>8} | {:>8} | {:>9} |",
                row["tracer"].as_str().unwrap_or(""),
                cell(&row["ns_per_op"], &|v| format!("{v:.0}")),
                range,
                cell(&row["slowdown"], &|v| format!("{v:.2}×")),
                cell(&row["overhead_ns"], &|v| format!("{v:+.0}")),
                cell(&row["overhead_vs_floor"], &|v| format!("{v:.2}")),
                cell(&row["overhead_vs_bpftrace"], &|v| format!("{v:.2}")),
                cell(&row["events_per_s"], &|v| format!("{:.2}M", v / 1e6)),
                cell(&row["lost_events"], &|v| format!("{v:.0}")),
                cell(&row["cpu_ns_per_event"], &|v| format!("{v:.0}")),
                cell(&row["peak_rss_mib"], &|v| format!("{v:.0} MiB")),
                cell(&row["attach_ms"], &|v| format!("{v:.0} ms")),
                cell(&row["start_cpu_ms"], &|v| format!("{v:.0} ms")),
            );
        }
    }
}
