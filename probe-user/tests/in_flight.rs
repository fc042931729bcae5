//! Calls in flight, end to end: a thread blocked in `read` and one in a
//! long sleep are shown in progress at every interval and at the end, with
//! their ages; attached with `--pid` after they blocked, they are found at
//! once, with ages close to the truth, and when they return they are
//! counted apart, out of the latencies. The workload says when each call
//! began and ended, on the kernel programs' own clock.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// When a workload thread's call began and ended, as it says.
#[derive(Debug)]
struct Span {
    tid: u64,
    start_ns: u64,
    end_ns: u64,
}

/// The workload's blocking threads, from its last line.
fn spans(stdout: &str, activity: &str) -> Vec<Span> {
    let line = stdout.lines().last().expect("the workload printed nothing");
    let report: Value = serde_json::from_str(line).unwrap();
    report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|thread| thread["syscall"] == activity)
        .map(|thread| Span {
            tid: thread["tid"].as_u64().unwrap(),
            start_ns: thread["start_ns"].as_u64().expect("a blocking thread says when"),
            end_ns: thread["end_ns"].as_u64().unwrap(),
        })
        .collect()
}

/// The thread's call in progress in a report, if it lists the thread.
fn in_flight(report: &Value, tid: u64) -> Option<&Value> {
    let thread = report["threads"].as_array()?.iter().find(|thread| thread["tid"] == tid)?;
    Some(&thread["in_flight"]).filter(|call| !call.is_null())
}

/// Checks a shown call against the truth: its name, and an age within 5%
/// of the true one. The age is the report's time less `started_ns`, so the
/// start shown may be off by at most 5% of the age.
fn assert_close(call: &Value, name: &str, true_start_ns: u64, before_attach: bool) {
    assert_eq!(call["name"], name, "{call}");
    assert_eq!(call["started_before_attach"], before_attach, "{call}");
    let (started, age) = (call["started_ns"].as_u64().unwrap(), call["age_ns"].as_u64().unwrap());
    let true_age = (started + age) as i64 - true_start_ns as i64;
    let error = age as i64 - true_age;
    eprintln!(
        "{name}: shown age {:.3} s, true age {:.3} s, off by {:.3} ms ({:+.3}%)",
        age as f64 / 1e9,
        true_age as f64 / 1e9,
        error as f64 / 1e6,
        100.0 * error as f64 / true_age as f64
    );
    assert!(
        true_age > 0 && error.unsigned_abs() * 20 <= true_age as u64,
        "age {age} vs true {true_age}: {call}"
    );
    if before_attach {
        // A lower bound, but for what the estimate can be early by: a
        // microsecond or two, and the clocks' drift (at most 500 ppm).
        assert!(error <= 1_000_000 + true_age / 2000, "age {age} is more than the true {true_age}: {call}");
    }
}

#[test]
fn command_mode_shows_calls_in_progress_and_lists_them_at_the_end() {
    // The trace ends after 3 s, the read returns after 5 and the sleep
    // after 6: both are in progress at every report.
    let (trace, output) = trace_program(
        "in-flight-command",
        &["-i", "500ms", "-d", "3s"],
        &workload(),
        &["--block-read", "5", "--sleep", "1x6000"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reader = &spans(&stdout, "read")[0];
    let sleeper = &spans(&stdout, "clock_nanosleep")[0];
    assert!(
        reader.end_ns - reader.start_ns >= 5_000_000_000
            && sleeper.end_ns - sleeper.start_ns >= 6_000_000_000
    );

    let summary = &trace.summary;
    for (span, name) in [(reader, "read"), (sleeper, "clock_nanosleep")] {
        let call = in_flight(summary, span.tid).unwrap_or_else(|| panic!("{name} not in flight: {summary}"));
        assert_close(call, name, span.start_ns, false);
        assert_eq!(call["state"], "blocked", "{call}");
        assert!(call["age_ns"].as_u64().unwrap() > 2_000_000_000, "{call}");
        // Not returned: no row for it.
        let thread = summary["threads"].as_array().unwrap().iter().find(|t| t["tid"] == span.tid).unwrap();
        assert!(thread["syscalls"].as_array().unwrap().iter().all(|call| call["name"] != name), "{thread}");
    }
    // The read's arguments: its fd, a buffer, one byte.
    let args = &in_flight(summary, reader.tid).unwrap()["args"];
    assert_eq!(args.as_array().map(Vec::len), Some(6), "{args}");
    assert_eq!(args[2], "0x1", "{args}");
    // Every interval showed them, their ages growing.
    let ages: Vec<u64> = trace
        .intervals
        .iter()
        .filter_map(|interval| in_flight(interval, reader.tid))
        .map(|call| call["age_ns"].as_u64().unwrap())
        .collect();
    assert!(ages.len() >= 4, "{} intervals showed the read", ages.len());
    assert!(ages.windows(2).all(|pair| pair[0] < pair[1]), "{ages:?}");
}

#[test]
fn pid_mode_finds_calls_in_progress_at_attach_and_counts_them_apart_when_they_return() {
    let (mut workload, stdout) =
        start_workload(&["--ready-when-blocked", "--block-read", "5", "--sleep", "1x7000"], "{\"blocked\"");
    // Long enough blocked before probe comes that "since attach" would be
    // far off the truth.
    std::thread::sleep(Duration::from_millis(1500));
    let (trace, rest) = trace_pid("in-flight-pid", &["-i", "500ms"], &mut workload, stdout, || {});
    let reader = &spans(&rest, "read")[0];
    let sleeper = &spans(&rest, "clock_nanosleep")[0];

    // Every thread of the process is blocked in a call: the first interval
    // shows them all, though none of them made a call since.
    let first = &trace.intervals[0];
    let threads = first["threads"].as_array().unwrap();
    assert!(threads.len() >= 4, "{first}");
    assert!(threads.iter().all(|thread| !thread["in_flight"].is_null()), "{first}");
    for (span, name) in [(reader, "read"), (sleeper, "clock_nanosleep")] {
        let call = in_flight(first, span.tid).unwrap_or_else(|| panic!("{name} not in flight: {first}"));
        assert_close(call, name, span.start_ns, true);
        assert_eq!(call["state"], "blocked", "{call}");
    }
    assert_eq!(in_flight(first, reader.tid).unwrap()["args"][2], "0x1");

    // When they returned, each counted apart, with a lower bound of its
    // time, and out of the latencies.
    for (span, name) in [(reader, "read"), (sleeper, "clock_nanosleep")] {
        let call = trace.syscall(span.tid, name);
        assert_eq!(call["count"], 1, "{call}");
        assert_eq!(call["unfinished_at_attach"], 1, "{call}");
        assert_eq!(
            (&call["timed"], &call["p50_ns"], &call["max_ns"]),
            (&Value::from(0), &Value::Null, &Value::Null)
        );
        let (took, truly) = (call["unfinished_at_attach_ns"].as_u64().unwrap(), span.end_ns - span.start_ns);
        eprintln!("{name}: counted at least {:.3} s, truly {:.3} s", took as f64 / 1e9, truly as f64 / 1e9);
        assert!(took <= truly + 1_000_000 + truly / 2000, "{took} is more than {truly}: {call}");
        assert!((truly - took.min(truly)) * 20 <= truly, "{took} is not within 5% of {truly}: {call}");
    }
    assert!(in_flight(&trace.summary, reader.tid).is_none(), "the read returned");
}
