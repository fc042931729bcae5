//! Nothing lost, nothing crashes: exact counts when the ring buffer
//! overflows, children followed, signals, a closed stdout, bad input, no
//! privileges, and no BPF program left behind, however probe ends.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// The BPF programs a process holds, through its program and link fds.
fn programs_of(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> =
        fdinfo_values(pid, "prog_id").into_iter().map(|id| u32::try_from(id).unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Waits until the kernel has unloaded `programs` (the release is
/// asynchronous to the exit of the process that held them).
fn assert_unloaded(programs: &[u32]) {
    let loaded = || -> Vec<u32> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|program| program.id())
            .filter(|id| programs.contains(id))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !loaded().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(loaded(), Vec::<u32>::new(), "programs outlived probe");
}

#[test]
fn a_tiny_ring_buffer_loses_records_but_no_count() {
    let (trace, workload, output) = trace_command(
        "overload",
        &["--buffer-size", "4096"],
        &["--getppid", "200000,300000", "--enoent", "2000"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = &trace.summary;
    assert!(summary["lost_events"].as_u64().unwrap() > 0, "a 4 KiB buffer kept up with 500k calls?");
    assert_eq!(summary["counts_exact"], true, "{}", summary["lost"]);
    assert_exact(&trace, &workload);
    let opener = workload.doing("openat").next().unwrap();
    let opens = trace.syscall(opener.tid, "openat");
    assert_eq!(opens["errnos"], serde_json::json!({"ENOENT": 2000}), "{opens}");
    // What was dropped is said per syscall: the latencies are a sample.
    let storms: u64 =
        workload.doing("getppid").map(|t| trace.syscall(t.tid, "getppid")["lost"].as_u64().unwrap()).sum();
    assert!(storms > 0);
    for thread in workload.doing("getppid") {
        let call = trace.syscall(thread.tid, "getppid");
        assert_eq!(call["timed"].as_u64().unwrap() + call["lost"].as_u64().unwrap(), thread.calls, "{call}");
    }
}

#[test]
fn children_of_a_command_are_followed_unless_told_not_to() {
    let (trace, workload, _) = trace_command("follow", &[], &["--fork", "4321"]);
    assert_exact(&trace, &workload);
    let child = &workload.threads[0];
    assert_ne!(child.tid, workload.pid);
    assert_eq!(trace.thread(child.tid)["pid"], child.tid);

    let (trace, workload, _) = trace_command("no-follow", &["--no-follow-forks"], &["--fork", "4321"]);
    let child = workload.threads[0].tid;
    assert!(trace.summary["threads"].as_array().unwrap().iter().all(|t| t["tid"] != child));
    assert!(trace.summary["threads"].as_array().unwrap().iter().any(|t| t["pid"] == workload.pid));
}

#[test]
fn signals_end_with_the_summary_and_no_program_left() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let report = report_path("signal");
        let mut probe =
            Running::spawn(Command::new(PROBE).args(["--json", "-o"]).arg(&report).stderr(Stdio::piped()));
        let _stderr = wait_until_tracing(&mut probe);
        let programs = programs_of(probe.id());
        assert!(programs.len() >= 6, "{programs:?}");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(probe.id() as i32, signal) };
        let status = wait_with_timeout(&mut probe, Duration::from_secs(10));
        assert!(status.success(), "signal {signal}: {status}");
        assert_eq!(Trace::read(&report).summary["type"], "summary");
        std::fs::remove_file(report).unwrap();
        assert_unloaded(&programs);
    }

    // Killed outright, probe cannot clean up; the kernel does.
    let mut probe = Running::spawn(Command::new(PROBE).args(["-o", "/dev/null"]).stderr(Stdio::piped()));
    let _stderr = wait_until_tracing(&mut probe);
    let programs = programs_of(probe.id());
    probe.kill().unwrap();
    probe.wait().unwrap();
    assert_unloaded(&programs);
}

#[test]
fn a_closed_stdout_ends_probe_quietly() {
    let mut probe = Running::spawn(
        Command::new(PROBE).args(["-i", "100ms"]).stdout(Stdio::piped()).stderr(Stdio::piped()),
    );
    let mut stdout = BufReader::new(probe.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with('['), "{first}");
    drop(stdout);
    let status = wait_with_timeout(&mut probe, Duration::from_secs(10));
    let mut stderr = String::new();
    probe.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A COMMAND is waited for, not orphaned, and its status is probe's.
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["-i", "100ms", "--", "sh", "-c", "sleep 1; exit 5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let started = Instant::now();
    drop(probe.stdout.take());
    let status = wait_with_timeout(&mut probe, Duration::from_secs(10));
    assert_eq!(status.code(), Some(5));
    assert!(started.elapsed() >= Duration::from_millis(900), "probe ended before its COMMAND");
}

#[test]
fn bad_input_is_one_line_and_a_failure() {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["-p", "0"], 2, "a PID is a whole number from 1 up"),
        (&["-p", "-5"], 2, "a PID is a whole number from 1 up"),
        (&["-p", "abc"], 2, "not a PID"),
        (&["-p", "2"], 1, "kernel thread"),
        (&["-e", "opnat"], 2, "did you mean 'openat'"),
        (&["-i", "0"], 2, "longer than zero"),
        (&["-i", "soon"], 2, "examples: 500ms"),
        (&["-d", "-1s"], 2, "examples: 500ms"),
        (&["-i", "2days"], 2, "at most"),
        (&["--buffer-size", "1000"], 2, "power of two"),
        (&["-o", "/nonexistent/dir/report"], 1, "cannot write the report to /nonexistent/dir/report"),
        (&["--", "/etc/passwd"], 126, "not executable"),
        (&["--", "probe-no-such-command"], 127, "command not found"),
        (&["--no-sched", "--no-syscalls"], 2, "cannot be used with"),
        (&["-p", "2147483647"], 1, "no process with PID 2147483647"),
        (&["--tui"], 1, "--tui needs a terminal on stdout"),
        (&["--tui", "--json"], 2, "cannot be used with"),
        (&["--prometheus", "localhost"], 2, "not an address"),
        (&["--prometheus-threads", "5"], 2, "--prometheus"),
        (&["--trace", "/nonexistent/dir/timeline.json"], 1, "cannot write the timeline to /nonexistent/dir"),
        (&["--trace", "/tmp/probe-unused.json", "--trace-limit", "0"], 2, "more than zero"),
        (&["--trace", "/proc/sys/kernel/pid_max"], 1, "a file of /proc or /sys"),
        (&["-o", "/tmp", "--json"], 1, "cannot write the report to /tmp"),
        (&["-o", "/tmp/probe-same", "--trace", "/tmp/probe-same"], 1, "name the same file"),
        (&["-i", "1ns"], 2, "at least 10ms"),
        (&["--top", "0"], 2, "--top"),
        (&["--goroutines"], 2, "not provided: <--pid <PID>|COMMAND>"),
    ];
    for (args, code, says) in cases {
        let output = Command::new(PROBE).args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(*code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: not one line: {stderr}");
        assert!(stderr.starts_with("probe: ") && stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn without_privileges_probe_says_what_it_needs() {
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"])
        .arg(PROBE)
        .args(["-d", "1s"])
        .output()
        .expect("setpriv (util-linux) runs probe unprivileged");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "probe: probe needs root, or the capabilities CAP_BPF and CAP_PERFMON: run it with sudo\n"
    );
}

#[test]
fn an_unreadable_tracefs_is_named_as_such_and_costs_only_io_uring() {
    // A user with CAP_BPF and CAP_PERFMON but not root: tracefs (mode 0700)
    // is mounted, and closed to it.
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon", "--"])
        .arg(PROBE)
        .args(["--no-tui", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains("io_uring requests are not followed"), "{stderr}");
    assert!(first.contains("cannot be read") && !first.contains("not mounted"), "{stderr}");
}

#[test]
fn capabilities_of_a_user_namespace_are_named_as_not_enough() {
    // Root of its own user namespace: every capability, none of them for BPF.
    let output = Command::new("unshare").args(["-U", "-r"]).arg(PROBE).args(["--", "true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("host's user namespace") && !stderr.contains("5.18"), "{stderr}");
}

/// 30 s of threads and processes that start, make a few calls and die, beside
/// a storm of known size, into a tiny ring buffer: the storm's count stays
/// exact, losses are reported, and probe's memory and maps stay flat.
#[test]
fn stress_churn_and_storm_with_a_tiny_buffer() {
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["--json", "--buffer-size", "16384", "-i", "1s", "--top", "3", "--"])
            .arg(workload())
            .args(["--churn", "28", "--getppid", "3000000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut programs = programs_of(probe.id());
    while programs.len() < 6 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        programs = programs_of(probe.id());
    }
    let mut lines = Vec::new();
    let mut workload_line = String::new();
    for line in BufReader::new(probe.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        match serde_json::from_str::<Value>(&line) {
            Ok(value) if value.get("type").is_some() => lines.push(value),
            _ => workload_line = line,
        }
    }
    let status = wait_with_timeout(&mut probe, Duration::from_secs(60));
    let mut stderr = String::new();
    probe.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let workload = Workload::parse(&workload_line);
    let summary = lines.pop().unwrap();
    let trace = Trace { intervals: lines, slow_calls: Vec::new(), summary };

    let storm = workload.doing("getppid").next().unwrap();
    let call = trace.syscall(storm.tid, "getppid");
    assert_eq!(call["count"].as_u64(), Some(storm.calls), "{call}");
    let churned = workload.doing("churn").next().unwrap().calls;
    assert!(churned > 10_000, "only {churned} threads started");
    assert!(trace.summary["lost_events"].as_u64().unwrap() > 0);
    assert_eq!(trace.summary["counts_exact"], true, "{}", trace.summary["lost"]);

    // Memory once warmed up (a third of the way in), against the end:
    // flat, though hundreds of thousands of threads came and went.
    let rss: Vec<u64> = trace.intervals.iter().map(|i| i["probe"]["rss_bytes"].as_u64().unwrap()).collect();
    assert!(rss.len() >= 20, "{} intervals", rss.len());
    let third = rss.len() / 3;
    let warm = rss[third..third + 3].iter().copied().max().unwrap();
    let late = rss[rss.len() - 3..].iter().copied().max().unwrap();
    // The allocator keeps the high-water mark of a busy interval, so RSS
    // rises in steps; a leak would rise with the threads, steadily.
    assert!(late <= warm + warm / 2 + (16 << 20), "RSS grew from {warm} to {late}: {rss:?}");
    for interval in &trace.intervals {
        let probe = &interval["probe"];
        assert!(probe["calls_off_cpu"].as_u64().unwrap() < 1000, "{probe}");
    }
    let rows = trace.summary["threads"].as_array().unwrap().len();
    assert!(rows < 1100 + 64, "{rows} rows for {churned} threads");
    assert_unloaded(&programs);
}

#[test]
fn a_command_gets_default_signals_so_pipelines_end() {
    // probe ignores SIGPIPE; its COMMAND must not: `yes` dies of SIGPIPE
    // when `head` has its line, and the pipeline ends at once.
    let report = report_path("sigpipe");
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["--json", "-o"])
            .arg(&report)
            .args(["--", "sh", "-c", "yes | head -1; while :; do echo x; done | head -1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let status = wait_with_timeout(&mut probe, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    probe.stdout.as_mut().unwrap().read_to_string(&mut stdout).unwrap();
    assert_eq!(stdout, "y\nx\n");
    std::fs::remove_file(report).unwrap();
}

#[test]
fn too_few_descriptors_are_named_as_such() {
    let output =
        Command::new("prlimit").args(["--nofile=16:16"]).arg(PROBE).args(["-d", "1s"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("too few file descriptors") && !stderr.contains("5.18"), "{stderr}");
}

#[test]
fn a_tight_address_space_limit_is_named_as_such() {
    // 30 MB: less than probe needs to read the kernel's BTF.
    let output =
        Command::new("prlimit").args(["--as=30000000"]).arg(PROBE).args(["--", "true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("out of memory") && stderr.contains("ulimit -v"), "{stderr}");
}

#[test]
fn a_planted_symlink_is_not_followed() {
    // A link that user nobody put in /tmp, to a file only root may write.
    let target = std::env::temp_dir().join(format!("probe-precious-{}", std::process::id()));
    let link = std::env::temp_dir().join(format!("probe-planted-{}", std::process::id()));
    std::fs::write(&target, b"precious").unwrap();
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // SAFETY: lchown on a path we just made.
    let path = std::ffi::CString::new(link.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::lchown(path.as_ptr(), 65534, 65534) }, 0);
    for flag in ["-o", "--trace"] {
        let output = Command::new(PROBE).arg(flag).arg(&link).args(["--", "true"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{flag}: {stderr}");
        assert!(stderr.contains("symlink owned by uid 65534"), "{flag}: {stderr}");
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(&target).unwrap();
}

#[test]
fn a_full_disk_stops_the_timeline_not_the_trace() {
    let dir = std::env::temp_dir().join(format!("probe-tiny-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&dir).status();
    assert!(mounted.unwrap().success(), "cannot mount a small tmpfs");
    let report = report_path("full-disk");
    let output = Command::new(PROBE)
        .args(["--json", "-o"])
        .arg(&report)
        .arg("--trace")
        .arg(dir.join("timeline.json"))
        .arg("--")
        .arg(workload())
        .args(["--getppid", "20000", "--exit", "3"])
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The COMMAND's status, its summary, and one line about the timeline.
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("the timeline in") && stderr.contains("stopped"), "{stderr}");
    let trace = Trace::read(&report);
    std::fs::remove_file(report).unwrap();
    assert_eq!(trace.summary["exit_code"], 3);
}

#[test]
fn a_reader_that_stops_reading_cannot_hold_probe() {
    // `probe -i 10ms -d 1s | sleep 25`: the pipe fills, and nobody reads.
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["-i", "10ms", "-d", "1s", "--top", "50"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stderr = wait_until_tracing(&mut probe);
    let programs = programs_of(probe.id());
    let started = Instant::now();
    let status = wait_with_timeout(&mut probe, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(3), "probe took {:?}", started.elapsed());
    assert_unloaded(&programs);
    let mut said = String::new();
    stderr.read_to_string(&mut said).unwrap();
    assert!(said.contains("not reading"), "{said}");
    // The same with a signal while the reader is stuck.
    let mut probe = Running::spawn(
        Command::new(PROBE).args(["-i", "10ms", "--top", "50"]).stdout(Stdio::piped()).stderr(Stdio::piped()),
    );
    let _stderr = wait_until_tracing(&mut probe);
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(probe.id() as i32, libc::SIGTERM) };
    let status = wait_with_timeout(&mut probe, Duration::from_secs(3));
    assert!(status.success(), "{status}");
}
