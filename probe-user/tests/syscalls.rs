//! Syscall view, end to end: exact counts, latencies and errors of a
//! workload that knows what it did, in COMMAND, --pid and whole-system mode.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

#[test]
fn command_mode_counts_exactly_times_sleeps_and_names_errors() {
    let (trace, workload, output) = trace_command(
        "command",
        &["-i", "200ms", HOLDS_THE_STORM[0], HOLDS_THE_STORM[1]],
        &["--getppid", "1000,25000,70000", "--sleep", "20x10", "--enoent", "37", "--exit", "3"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "probe exits with the COMMAND's status; stderr: {stderr}");
    assert_eq!(trace.summary["lost_events"], 0, "{}", trace.summary["lost"]);
    assert_eq!(trace.summary["exit_code"], 3);
    assert_exact(&trace, &workload);

    // The first syscall of the new program, its execve, is seen.
    let main = trace.syscall(workload.pid, "execve");
    assert_eq!((main["count"].as_u64(), main["errors"].as_u64()), (Some(1), Some(0)), "{main}");

    let sleeper = workload.doing("clock_nanosleep").next().unwrap();
    let sleep = trace.syscall(sleeper.tid, "clock_nanosleep");
    let p50 = sleep["p50_ns"].as_u64().unwrap();
    assert!((10_000_000..=12_000_000).contains(&p50), "sleep p50 {p50} ns: {sleep}");
    assert!(sleep["min_ns"].as_u64().unwrap() >= 10_000_000, "{sleep}");
    assert!(sleep["total_ns"].as_u64().unwrap() >= 200_000_000, "{sleep}");

    let opener = workload.doing("openat").next().unwrap();
    let opens = trace.syscall(opener.tid, "openat");
    assert_eq!(opens["errors"], 37, "{opens}");
    assert_eq!(opens["errnos"], serde_json::json!({"ENOENT": 37}));
    let slowest = opens["slowest"].as_array().unwrap();
    assert_eq!(slowest.len(), 3, "{opens}");
    assert!(slowest.iter().all(|call| call["ret"] == -2 && call["errno"] == "ENOENT"), "{opens}");

    // Threads that exit are counted without a latency.
    let exit = trace.syscall(opener.tid, "exit");
    assert_eq!(
        (exit["count"].as_u64(), exit["timed"].as_u64(), &exit["p50_ns"]),
        (Some(1), Some(0), &Value::Null)
    );

    // The sleeps take 200 ms, so intervals were streamed, and they never
    // hold more than the summary.
    assert!(!trace.intervals.is_empty(), "no interval reports");
    let streamed: u64 = trace.intervals.iter().map(|i| i["events"].as_u64().unwrap()).sum();
    assert!(streamed <= trace.summary["events"].as_u64().unwrap());
}

#[test]
fn the_slowest_calls_are_the_true_top_three_with_where_their_time_went() {
    // Sleeps of known lengths in this order: the three longest are 80, 60
    // and 40 ms, begun in the order 40, 80, 60; far enough apart that no
    // delay in waking swaps them.
    let (trace, workload, output) = trace_command("slowest", &[], &["--sleeps", "1,40,3,80,7,60,2"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let sleeper = workload.doing("sleeps").next().unwrap();
    let sleeps = trace.syscall(sleeper.tid, "clock_nanosleep");
    assert_eq!(sleeps["count"], 7, "{sleeps}");
    let slowest = sleeps["slowest"].as_array().unwrap();
    let field = |call: &Value, name: &str| call[name].as_u64().unwrap_or_else(|| panic!("{name}: {call}"));
    let durations: Vec<u64> = slowest.iter().map(|call| field(call, "duration_ns")).collect();
    assert_eq!(durations.len(), 3, "{sleeps}");
    for (&duration, ms) in durations.iter().zip([80, 60, 40]) {
        assert!((ms * 1_000_000..(ms + 15) * 1_000_000).contains(&duration), "{ms} ms: {sleeps}");
    }
    assert_eq!(sleeps["max_ns"], durations[0], "{sleeps}");
    let started: Vec<u64> = slowest.iter().map(|call| field(call, "started_ns")).collect();
    assert!(started[2] < started[0] && started[0] < started[1], "begun 40, 80, 60: {sleeps}");
    for call in slowest {
        assert_eq!((&call["ret"], &call["errno"]), (&0.into(), &Value::Null), "{call}");
        // Asleep for almost all of it; the parts add up to the whole.
        let (blocked, runq, on_cpu) =
            (field(call, "blocked_ns"), field(call, "runq_ns"), field(call, "on_cpu_ns"));
        assert!(blocked as f64 >= 0.9 * field(call, "duration_ns") as f64, "{call}");
        assert_eq!(blocked + runq + on_cpu, field(call, "duration_ns"), "{call}");
    }
}

#[test]
fn slow_calls_are_reported_one_by_one_as_they_return() {
    // At 30 ms, the sleeps of 40, 80 and 60 ms are slow; the short ones and
    // a storm of getppid are not.
    let (trace, workload, output) =
        trace_command("slow", &["--slow", "30ms"], &["--sleeps", "1,40,3,80,7,60,2", "--getppid", "100000"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Explaining them (symbolizing the program's objects takes a while the
    // first time) holds up no record of the storm beside them.
    assert_eq!(trace.summary["lost_events"], 0, "{}", trace.summary["lost"]);
    assert!(!trace.slow_calls.is_empty());
    for call in &trace.slow_calls {
        assert!(call["duration_ns"].as_u64().unwrap() >= 30_000_000, "{call}");
        assert_ne!(call["name"], "getppid", "{call}");
    }
    let sleeper = workload.doing("sleeps").next().unwrap();
    let sleeps: Vec<&Value> = trace.slow_calls.iter().filter(|call| call["tid"] == sleeper.tid).collect();
    let durations: Vec<u64> = sleeps.iter().map(|call| call["duration_ns"].as_u64().unwrap()).collect();
    assert_eq!(durations.len(), 3, "{sleeps:?}");
    // In the order they returned, each as long as asked.
    for (&duration, ms) in durations.iter().zip([40, 80, 60]) {
        assert!((ms * 1_000_000..(ms + 15) * 1_000_000).contains(&duration), "{ms} ms: {sleeps:?}");
    }
    for call in &sleeps {
        assert_eq!(
            (&call["name"], &call["pid"], &call["ret"]),
            (&"clock_nanosleep".into(), &workload.pid.into(), &0.into())
        );
        assert!(call["blocked_ns"].as_u64().unwrap() >= 30_000_000, "{call}");
    }
    // The same calls are the slowest of the summary.
    let summary = trace.syscall(sleeper.tid, "clock_nanosleep");
    let slowest: Vec<u64> =
        summary["slowest"].as_array().unwrap().iter().map(|c| c["duration_ns"].as_u64().unwrap()).collect();
    assert_eq!(slowest, [durations[1], durations[2], durations[0]], "{summary}");
}

#[test]
fn pid_mode_sees_threads_started_after_attach_and_ends_with_the_target() {
    let (mut workload, stdout) =
        start_workload(&["--wait-signal", "--getppid", "3000,17000,42000", "--enoent", "5"], "{\"ready\"");
    let pid = workload.id() as i32;
    // SAFETY: signalling our own child.
    let (trace, rest) = trace_pid("pid", &HOLDS_THE_STORM, &mut workload, stdout, || unsafe {
        libc::kill(pid, libc::SIGUSR1);
    });
    let workload = Workload::parse(&rest);
    assert_eq!(trace.summary["lost_events"], 0, "{}", trace.summary["lost"]);
    assert_exact(&trace, &workload);
}

#[test]
fn whole_system_mode_finds_the_workload_and_stops_on_sigint() {
    whole_system(&[]);
    // Without the scheduler view no program reads other tasks, and the
    // syscall programs read the thread's ids without task_struct offsets.
    whole_system(&["--no-sched"]);
}

fn whole_system(args: &[&str]) {
    let report = report_path("system");
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["--json", "-e", "getppid,openat", "-o"])
            .arg(&report)
            .args(args)
            .stderr(Stdio::piped()),
    );
    let _stderr = wait_until_tracing(&mut probe);
    let probe_pid = u64::from(probe.id());
    let output =
        Command::new(workload()).args(["--getppid", "4321,8765", "--enoent", "12"]).output().unwrap();
    assert!(output.status.success());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(probe.id() as i32, libc::SIGINT) };
    assert!(wait_with_timeout(&mut probe, Duration::from_secs(10)).success());
    let workload = Workload::parse(&String::from_utf8_lossy(&output.stdout));
    let trace = Trace::read(&report);
    assert_exact(&trace, &workload);
    // -e left every other syscall out, for every process.
    for thread in trace.summary["threads"].as_array().unwrap() {
        for call in thread["syscalls"].as_array().unwrap() {
            assert!(["getppid", "openat"].contains(&call["name"].as_str().unwrap()), "{call}");
        }
        assert_ne!(thread["pid"], probe_pid, "probe traced itself");
    }
    assert!(trace.summary["threads"].as_array().unwrap().iter().any(|t| t["pid"] == workload.pid));
    std::fs::remove_file(report).unwrap();
}

#[test]
fn a_missing_pid_is_one_line_and_a_failure() {
    let output = Command::new(PROBE).args(["-p", "2147483647"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr, "probe: no process with PID 2147483647\n");
}

#[test]
fn a_missing_command_fails_like_a_shell() {
    let output = Command::new(PROBE).args(["--", "probe-no-such-command"]).output().unwrap();
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "probe: command not found: probe-no-such-command\n");
}

#[test]
fn int_0x80_syscalls_are_named_from_the_i386_table() {
    let (trace, workload, output) = trace_command("int80", &[], &["--int80", "100"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // The workload names its activity as probe must: getpid, marked 32-bit.
    assert_exact(&trace, &workload);
    let thread = &workload.threads[0];
    let call = trace.syscall(thread.tid, "getpid (i386)");
    assert_eq!((call["abi"].as_str(), call["nr"].as_u64()), (Some("i386"), Some(20)), "{call}");
    // Not x86-64's number 20.
    let calls = trace.thread(thread.tid)["syscalls"].as_array().unwrap();
    assert!(calls.iter().all(|call| call["name"] != "writev"), "{calls:?}");
}

#[test]
fn hostile_thread_names_are_shown_not_obeyed() {
    // A terminal title, then "leave the alternate screen" and a newline:
    // what a neighbour could name a thread to drive root's terminal.
    let name = "\x1b]0;own\n\x07\x1b[?1049l";
    let report = report_path("hostile");
    let output = std::process::Command::new(PROBE)
        .args(["-o"])
        .arg(&report)
        .args(["--", workload().to_str().unwrap(), "--rename", name])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read(&report).unwrap();
    std::fs::remove_file(&report).unwrap();
    assert!(!text.contains(&0x1b) && !text.contains(&0x07), "raw control bytes in the text report");
    let text = String::from_utf8(text).unwrap();
    // The kernel keeps 15 bytes of it; each shown, none obeyed, and the
    // thread's row stays one row.
    let shown = "\\x1b]0;own\\x0a\\x07\\x1b[?104";
    let row = text.lines().find(|line| line.contains(shown)).unwrap_or_else(|| panic!("{text}"));
    // PID, TID, the name, then the syscall's columns: still one row.
    assert!(row.split_whitespace().count() >= 10, "{row}");

    let (trace, workload, _) = trace_command("hostile-json", &[], &["--rename", name]);
    let thread = trace.thread(workload.threads[0].tid);
    assert_eq!(thread["comm"], shown, "{thread}");
}
