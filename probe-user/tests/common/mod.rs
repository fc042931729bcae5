//! The harness of the end-to-end tests: the real `probe` binary loads its
//! programs into the running kernel and traces `examples/workload.rs`, whose
//! own report is the ground truth. Needs root (CAP_BPF and CAP_PERFMON).
#![allow(dead_code)] // Each test file uses its own part of the harness.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod cgroup;
pub mod metrics;

pub const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// `--buffer-size` for a test whose storm must be counted call by call:
/// 32 MiB holds its every record (80 bytes a call) even if probe's reader
/// does not run until the end. The default 4 MiB holds about 50,000
/// calls, 10 ms of a storm on two CPUs; a CI host that stalls the reader's
/// CPU that long turned such a test into an overload test, which
/// `robustness.rs` is.
pub const HOLDS_THE_STORM: [&str; 2] = ["--buffer-size", "33554432"];

/// The values of `key` (e.g. `prog_id`, `run_cnt`) in the fdinfo of every
/// descriptor of process `pid` that has one: what the kernel says of the
/// BPF programs and links it holds.
pub fn fdinfo_values(pid: u32, key: &str) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|line| line.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// A child process that a failing test does not leave running: it is
/// killed when dropped.
pub struct Running(pub Child);

impl Running {
    pub fn spawn(command: &mut Command) -> Self {
        Self(command.spawn().unwrap())
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cargo test` builds the examples next to the test binaries' `deps/`.
pub fn workload() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples/workload");
    assert!(path.is_file(), "{} is missing: run the tests with `cargo xtask test`", path.display());
    path
}

/// Starts the workload with `args` (which make it say when it is ready:
/// `--wait-signal`, `--ready-when-blocked`) and waits for that first line,
/// which must start with `ready`; returns it with the rest of stdout.
pub fn start_workload(args: &[&str], ready: &str) -> (Running, BufReader<std::process::ChildStdout>) {
    let mut workload =
        Running::spawn(Command::new(workload()).args(args).stdout(std::process::Stdio::piped()));
    let mut stdout = BufReader::new(workload.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with(ready), "{line}");
    (workload, stdout)
}

/// What probe wrote with `--json`: interval lines and `--slow` calls, then
/// the summary.
pub struct Trace {
    pub intervals: Vec<Value>,
    pub slow_calls: Vec<Value>,
    pub summary: Value,
}

impl Trace {
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        let summary = lines.pop().expect("no output");
        assert_eq!(summary["type"], "summary", "the last line is the summary");
        let (slow_calls, intervals): (Vec<Value>, Vec<Value>) =
            lines.into_iter().partition(|line| line["type"] == "slow_call");
        assert!(intervals.iter().all(|line| line["type"] == "interval"));
        Self { intervals, slow_calls, summary }
    }

    pub fn thread(&self, tid: u64) -> &Value {
        self.summary["threads"].as_array().unwrap().iter().find(|thread| thread["tid"] == tid).unwrap_or_else(
            || {
                panic!(
                    "thread {tid} missing from the summary's {} rows",
                    self.summary["threads"].as_array().unwrap().len()
                )
            },
        )
    }

    pub fn syscall(&self, tid: u64, name: &str) -> &Value {
        self.thread(tid)["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|call| call["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing for thread {tid}: {}", self.thread(tid)))
    }
}

/// What one workload thread says it did, and what the kernel counted for it.
#[derive(Debug)]
pub struct Thread {
    pub tid: u64,
    /// The syscall it made (or "affinity", "spin").
    pub syscall: String,
    pub calls: u64,
    /// Its CPU time, from `CLOCK_THREAD_CPUTIME_ID`.
    pub cpu_ns: u64,
    /// Its context switches, from `/proc/thread-self/status`.
    pub voluntary: u64,
    pub involuntary: u64,
    /// Its moves between CPUs, from `/proc/thread-self/sched`.
    pub migrations: u64,
    /// Its time on a CPU and waiting in a run queue, from
    /// `/proc/thread-self/schedstat` (0 for a short-lived child).
    pub run_ns: u64,
    pub wait_ns: u64,
}

/// The workload's own account, from the last line it printed.
pub struct Workload {
    pub pid: u64,
    pub threads: Vec<Thread>,
}

impl Workload {
    pub fn parse(stdout: &str) -> Self {
        let line = stdout.lines().last().expect("the workload printed nothing");
        let report: Value = serde_json::from_str(line).unwrap();
        let number = |thread: &Value, field: &str| thread[field].as_u64().unwrap();
        let threads = report["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| Thread {
                tid: number(t, "tid"),
                syscall: t["syscall"].as_str().unwrap().to_owned(),
                calls: number(t, "calls"),
                cpu_ns: number(t, "cpu_ns"),
                voluntary: number(t, "voluntary"),
                involuntary: number(t, "involuntary"),
                migrations: number(t, "migrations"),
                run_ns: t["run_ns"].as_u64().unwrap_or(0),
                wait_ns: t["wait_ns"].as_u64().unwrap_or(0),
            })
            .collect();
        Self { pid: report["pid"].as_u64().unwrap(), threads }
    }

    /// The threads that did `activity`.
    pub fn doing<'a>(&'a self, activity: &'a str) -> impl Iterator<Item = &'a Thread> {
        self.threads.iter().filter(move |t| t.syscall == activity)
    }
}

/// Runs probe with `args` on the workload with `workload_args` in COMMAND
/// mode, and returns probe's JSON trace and the workload's account.
pub fn trace_command(name: &str, args: &[&str], workload_args: &[&str]) -> (Trace, Workload, Output) {
    let (trace, output) = trace_program(name, args, &workload(), workload_args);
    let workload = Workload::parse(&String::from_utf8_lossy(&output.stdout));
    (trace, workload, output)
}

/// Runs probe with `args` on `program` with `program_args` in COMMAND mode,
/// and returns probe's JSON trace and output.
pub fn trace_program(name: &str, args: &[&str], program: &Path, program_args: &[&str]) -> (Trace, Output) {
    let report = report_path(name);
    let output = Command::new(PROBE)
        .args(["--json", "-o"])
        .arg(&report)
        .args(args)
        .arg("--")
        .arg(program)
        .args(program_args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code().is_some(), "probe was killed; stderr: {stderr}");
    let trace = Trace::read(&report);
    std::fs::remove_file(report).unwrap();
    (trace, output)
}

pub fn report_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("probe-test-{name}-{}.json", std::process::id()))
}

/// Checks that every workload thread's syscall count is exact.
pub fn assert_exact(trace: &Trace, workload: &Workload) {
    for thread in &workload.threads {
        let call = trace.syscall(thread.tid, &thread.syscall);
        let (tid, syscall) = (thread.tid, &thread.syscall);
        assert_eq!(call["count"].as_u64(), Some(thread.calls), "{syscall} of thread {tid}: {call}");
    }
}

/// Traces the running `workload` with `probe --json -p` and `args`; once
/// probe traces, `started` runs (a signal that lets the workload go on,
/// say); then the workload's remaining stdout is read, the workload must
/// exit well, and probe must end by itself with it. Returns probe's trace
/// and that stdout.
pub fn trace_pid(
    name: &str,
    args: &[&str],
    workload: &mut Running,
    mut stdout: BufReader<ChildStdout>,
    started: impl FnOnce(),
) -> (Trace, String) {
    let report = report_path(name);
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["--json", "-o"])
            .arg(&report)
            .args(args)
            .args(["-p", &workload.id().to_string()])
            .stderr(Stdio::piped()),
    );
    let probe_stderr = wait_until_tracing(&mut probe);
    started();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(workload.wait().unwrap().success());
    // probe ends by itself once its only target is gone.
    (ended_trace(&mut probe, probe_stderr, &report), rest)
}

/// Waits for `probe` to end (10 s at most), which it must do well, and
/// returns the trace it wrote to `report`, removing the file.
pub fn ended_trace(probe: &mut Child, mut stderr: BufReader<ChildStderr>, report: &Path) -> Trace {
    let status = wait_with_timeout(probe, Duration::from_secs(10));
    let mut errors = String::new();
    stderr.read_to_string(&mut errors).unwrap();
    assert!(status.success(), "probe failed: {errors}");
    let trace = Trace::read(report);
    std::fs::remove_file(report).unwrap();
    trace
}

/// Reads stderr of a probe until it says it is tracing (a note may come
/// first: the first probe on a fresh machine mounts tracefs and says so).
pub fn wait_until_tracing(probe: &mut Child) -> BufReader<std::process::ChildStderr> {
    let mut stderr = BufReader::new(probe.stderr.take().unwrap());
    let mut said = String::new();
    for _ in 0..3 {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        if line.starts_with("probe: tracing") {
            return stderr;
        }
        said.push_str(&line);
    }
    panic!("probe did not start: {said:?}");
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
