//! End-to-end: the real `probe` binary loads its programs into the running
//! kernel and traces `examples/workload.rs`, whose own report is the ground
//! truth. Needs root (CAP_BPF and CAP_PERFMON).

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// `cargo test` builds the examples next to the test binaries' `deps/`.
fn workload() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/workload");
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// What probe wrote with `--json`: interval lines, then the summary.
struct Trace {
    intervals: Vec<Value>,
    summary: Value,
}

impl Trace {
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        let summary = lines.pop().expect("no output");
        assert_eq!(summary["type"], "summary", "the last line is the summary");
        assert!(lines.iter().all(|line| line["type"] == "interval"));
        Self {
            intervals: lines,
            summary,
        }
    }

    fn thread(&self, tid: u64) -> &Value {
        self.summary["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|thread| thread["tid"] == tid)
            .unwrap_or_else(|| panic!("thread {tid} missing from {}", self.summary))
    }

    fn syscall(&self, tid: u64, name: &str) -> &Value {
        self.thread(tid)["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|call| call["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing for thread {tid}: {}", self.thread(tid)))
    }
}

/// The workload's own account: `(tid, syscall, calls)` per thread.
fn truth(stdout: &str) -> (u64, Vec<(u64, String, u64)>) {
    let line = stdout.lines().last().expect("the workload printed nothing");
    let report: Value = serde_json::from_str(line).unwrap();
    let threads = report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tid"].as_u64().unwrap(),
                t["syscall"].as_str().unwrap().to_owned(),
                t["calls"].as_u64().unwrap(),
            )
        })
        .collect();
    (report["pid"].as_u64().unwrap(), threads)
}

fn report_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("probe-test-{name}-{}.json", std::process::id()))
}

/// Checks that every workload thread's syscall count is exact.
fn assert_exact(trace: &Trace, truth: &[(u64, String, u64)]) {
    for (tid, syscall, calls) in truth {
        let call = trace.syscall(*tid, syscall);
        assert_eq!(
            call["count"].as_u64(),
            Some(*calls),
            "{syscall} of thread {tid}: {call}"
        );
    }
}

/// Reads stderr of a probe until it says it is tracing.
fn wait_until_tracing(probe: &mut Child) -> BufReader<std::process::ChildStderr> {
    let mut stderr = BufReader::new(probe.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("probe: tracing"),
        "probe did not start: {line:?}"
    );
    stderr
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
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

#[test]
fn command_mode_counts_exactly_times_sleeps_and_names_errors() {
    let report = report_path("command");
    let output = Command::new(PROBE)
        .args(["--json", "-i", "200ms", "-o"])
        .arg(&report)
        .arg("--")
        .arg(workload())
        .args([
            "--getppid",
            "1000,25000,70000",
            "--sleep",
            "20x10",
            "--enoent",
            "37",
            "--exit",
            "3",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "probe exits with the COMMAND's status; stderr: {stderr}"
    );
    let (pid, threads) = truth(&String::from_utf8_lossy(&output.stdout));
    let trace = Trace::read(&report);
    assert_eq!(trace.summary["lost_events"], 0);
    assert_eq!(trace.summary["exit_code"], 3);
    assert_exact(&trace, &threads);

    // The first syscall of the new program, its execve, is seen.
    let main = trace.syscall(pid, "execve");
    assert_eq!(main["count"], 1, "{main}");
    assert_eq!(main["errors"], 0, "{main}");

    let (sleeper, _, _) = threads.iter().find(|t| t.1 == "clock_nanosleep").unwrap();
    let sleep = trace.syscall(*sleeper, "clock_nanosleep");
    let p50 = sleep["p50_ns"].as_u64().unwrap();
    assert!(
        (10_000_000..=12_000_000).contains(&p50),
        "sleep p50 {p50} ns: {sleep}"
    );
    assert!(sleep["min_ns"].as_u64().unwrap() >= 10_000_000, "{sleep}");
    assert!(
        sleep["total_ns"].as_u64().unwrap() >= 200_000_000,
        "{sleep}"
    );

    let (opener, _, _) = threads.iter().find(|t| t.1 == "openat").unwrap();
    let opens = trace.syscall(*opener, "openat");
    assert_eq!(opens["errors"], 37, "{opens}");
    assert_eq!(opens["errnos"], serde_json::json!({"ENOENT": 37}));

    // Threads that exit are counted without a latency.
    let exit = trace.syscall(*opener, "exit");
    assert_eq!(
        (
            exit["count"].as_u64(),
            exit["timed"].as_u64(),
            &exit["p50_ns"]
        ),
        (Some(1), Some(0), &Value::Null)
    );

    // The sleeps take 200 ms, so some intervals were streamed, and the
    // intervals add up to the summary.
    assert!(!trace.intervals.is_empty(), "no interval reports");
    let streamed: u64 = trace
        .intervals
        .iter()
        .map(|i| i["events"].as_u64().unwrap())
        .sum();
    assert!(streamed <= trace.summary["events"].as_u64().unwrap());
    std::fs::remove_file(report).unwrap();
}

#[test]
fn pid_mode_sees_threads_started_after_attach_and_ends_with_the_target() {
    let report = report_path("pid");
    let mut workload = Command::new(workload())
        .args([
            "--wait-signal",
            "--getppid",
            "3000,17000,42000",
            "--enoent",
            "5",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(workload.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert!(ready.starts_with("{\"ready\""), "{ready}");

    let mut probe = Command::new(PROBE)
        .args(["--json", "-o"])
        .arg(&report)
        .args(["-p", &workload.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut probe_stderr = wait_until_tracing(&mut probe);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(workload.id() as i32, libc::SIGUSR1) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(workload.wait().unwrap().success());

    // probe ends by itself once its only target is gone.
    let status = wait_with_timeout(&mut probe, Duration::from_secs(10));
    let mut errors = String::new();
    probe_stderr.read_to_string(&mut errors).unwrap();
    assert!(status.success(), "probe failed: {errors}");
    let (_, threads) = truth(&rest);
    let trace = Trace::read(&report);
    assert_eq!(trace.summary["lost_events"], 0);
    assert_exact(&trace, &threads);
    std::fs::remove_file(report).unwrap();
}

#[test]
fn whole_system_mode_finds_the_workload_and_stops_on_sigint() {
    let report = report_path("system");
    let mut probe = Command::new(PROBE)
        .args(["--json", "-e", "getppid,openat", "-o"])
        .arg(&report)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stderr = wait_until_tracing(&mut probe);
    let probe_pid = u64::from(probe.id());
    let output = Command::new(workload())
        .args(["--getppid", "4321,8765", "--enoent", "12"])
        .output()
        .unwrap();
    assert!(output.status.success());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(probe.id() as i32, libc::SIGINT) };
    assert!(wait_with_timeout(&mut probe, Duration::from_secs(10)).success());
    let (pid, threads) = truth(&String::from_utf8_lossy(&output.stdout));
    let trace = Trace::read(&report);
    assert_exact(&trace, &threads);
    // -e left every other syscall out, for every process.
    for thread in trace.summary["threads"].as_array().unwrap() {
        for call in thread["syscalls"].as_array().unwrap() {
            assert!(
                ["getppid", "openat"].contains(&call["name"].as_str().unwrap()),
                "{call}"
            );
        }
        assert_ne!(thread["pid"], probe_pid, "probe traced itself");
    }
    assert!(trace.summary["threads"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["pid"] == pid));
    std::fs::remove_file(report).unwrap();
}

#[test]
fn a_missing_pid_is_one_line_and_a_failure() {
    let output = Command::new(PROBE)
        .args(["-p", "2147483647"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr, "probe: no process with PID 2147483647\n");
}

#[test]
fn a_missing_command_fails_like_a_shell() {
    let output = Command::new(PROBE)
        .args(["--", "probe-no-such-command"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "probe: command not found: probe-no-such-command\n"
    );
}
