//! `--slow`'s answers, end to end, against what the programs themselves
//! know: a C program built without frame pointers and a Rust one make
//! calls of known lengths from functions of known names, and one call
//! waits for a thread of a known name.

mod common;

use std::{path::Path, process::Command};

use common::*;
use serde_json::Value;

/// Builds `tests/c/NAME.c` as the usual C program is: `-O2`, no frame
/// pointers (Debian's C library has none either), with debug information.
fn build_c(name: &str) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(format!("{name}.c"));
    let program = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-g", "-pthread", "-o"])
        .arg(&program)
        .arg(&source)
        .status()
        .expect("gcc");
    assert!(status.success());
    program
}

/// What `slowcalls` said: "pid P reader R writer W read_ns N", the
/// numbers.
fn said(output: &std::process::Output) -> [u64; 4] {
    let said = String::from_utf8_lossy(&output.stdout);
    let ids: Vec<u64> = said.split_whitespace().filter_map(|word| word.parse().ok()).collect();
    ids.try_into().unwrap_or_else(|_| panic!("the program said {said:?}"))
}

/// The functions of a stack, innermost first.
fn functions(stack: &Value) -> Vec<&str> {
    let frames = stack["frames"].as_array().unwrap_or_else(|| panic!("no frames: {stack}"));
    frames.iter().map(|frame| frame["function"].as_str().unwrap_or("?")).collect()
}

#[test]
fn a_c_programs_slow_calls_come_with_their_callers_sleeps_and_wakers() {
    let program = build_c("slowcalls");
    let (trace, output) = trace_program("slow-c", &["--slow", "10ms"], &program, &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let [pid, reader, writer, read_ns] = said(&output);

    // Exactly its two slow calls, none of its 1000 fast ones.
    let names: Vec<&str> = trace.slow_calls.iter().map(|call| call["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["clock_nanosleep", "read"], "{:#?}", trace.slow_calls);
    let (nap, read) = (&trace.slow_calls[0], &trace.slow_calls[1]);
    for call in [nap, read] {
        assert_eq!((call["pid"].as_u64(), call["tid"].as_u64()), (Some(pid), Some(reader)), "{call}");
    }
    assert!(nap["duration_ns"].as_u64().unwrap() >= 20_000_000, "{nap}");
    // The read as its caller timed it around the call: the syscall within,
    // less only the C library's wrapper (and a preemption around the call).
    let read_took = read["duration_ns"].as_u64().unwrap();
    assert!((read_ns.saturating_sub(1_000_000)..=read_ns).contains(&read_took), "{read_ns} ns: {read}");
    assert!(read_took >= 10_000_000, "reported, so at least --slow's 10 ms: {read}");

    // Called from the functions that made them: the caller of the C
    // library's wrapper too, though neither has a frame pointer.
    let nap_from = functions(&nap["user_stack"]);
    let at =
        nap_from.iter().position(|f| *f == "nap_for_twenty_ms").unwrap_or_else(|| panic!("{nap_from:?}"));
    assert_eq!(nap_from.get(at + 1), Some(&"main"), "{nap_from:?}");
    assert!(nap_from[..at].iter().any(|f| f.contains("nanosleep")), "{nap_from:?}");
    assert_eq!(nap["user_stack"]["end"], "complete", "{nap}");
    let read_from = functions(&read["user_stack"]);
    let at =
        read_from.iter().position(|f| *f == "wait_for_writer").unwrap_or_else(|| panic!("{read_from:?}"));
    assert_eq!(read_from.get(at + 1), Some(&"main"), "{read_from:?}");
    let line = &read["user_stack"]["frames"][at];
    assert_eq!(line["file"], "slowcalls.c", "{line}");

    // What each slept in, and who woke it: a timer's interrupt, and the
    // writer thread in its write.
    assert!(functions(&nap["blocked_in"]).contains(&"do_nanosleep"), "{nap}");
    let nap_waker = &nap["woken_by"];
    assert_eq!(nap_waker["context"], "interrupt", "{nap_waker}");
    assert!(functions(&nap_waker["stack"]).contains(&"hrtimer_wakeup"), "{nap_waker}");
    assert!(functions(&read["blocked_in"]).iter().any(|f| f.ends_with("pipe_read")), "{read}");
    let read_waker = &read["woken_by"];
    assert_eq!(
        (read_waker["context"].as_str(), read_waker["tid"].as_u64(), read_waker["comm"].as_str()),
        (Some("task"), Some(writer), Some("writer")),
        "{read_waker}"
    );
    assert_eq!(read_waker["syscall"], "write", "{read_waker}");
    assert!(functions(&read_waker["stack"]).iter().any(|f| f.ends_with("pipe_write")), "{read_waker}");
    // The call's time is off the CPU, blocked until the write, then
    // waiting for a CPU: its moments on the CPU are microseconds.
    let blocked = read["blocked_ns"].as_u64().unwrap();
    assert!(blocked + read["runq_ns"].as_u64().unwrap() + 1_000_000 >= read_took, "{read}");
    // One sleep, the one the stacks and the waker are of.
    assert_eq!(read["longest_sleep_ns"].as_u64(), Some(blocked), "{read}");

    // Its arguments: the fd as the pipe it is, the count as a number.
    let args = read["args"].as_array().unwrap();
    assert_eq!((args[0]["name"].as_str(), args[0]["fd"].as_i64()), (Some("fd"), Some(3)), "{args:?}");
    assert!(args[0]["what"].as_str().is_some_and(|what| what.starts_with("pipe:[")), "{args:?}");
    assert_eq!((args[2]["name"].as_str(), args[2]["value"].as_u64()), (Some("count"), Some(1)), "{args:?}");

    // The summary's slowest read is that call, with the same answers.
    let slowest = &trace.syscall(reader, "read")["slowest"][0];
    assert_eq!(slowest["started_ns"], read["started_ns"], "{slowest}");
    assert_eq!(slowest["user_stack"], read["user_stack"], "{slowest}");
    assert_eq!(slowest["woken_by"]["comm"], "writer", "{slowest}");
}

#[test]
fn a_process_gone_before_its_calls_are_explained_still_has_them_named() {
    // It exits right after its read: its objects are read while it lives
    // (at its first slow call), its read is symbolized after it is gone.
    let program = build_c("slowcalls");
    let (trace, output) = trace_program("slow-gone", &["--slow", "10ms"], &program, &["exit"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let names: Vec<&str> = trace.slow_calls.iter().map(|call| call["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["clock_nanosleep", "read"], "{:#?}", trace.slow_calls);
    for (call, function) in trace.slow_calls.iter().zip(["nap_for_twenty_ms", "wait_for_writer"]) {
        let from = functions(&call["user_stack"]);
        let at = from.iter().position(|f| *f == function).unwrap_or_else(|| panic!("{from:?}"));
        assert_eq!(from.get(at + 1), Some(&"main"), "{from:?}");
        assert_eq!(call["user_stack"]["frames"][at]["file"], "slowcalls.c", "{call}");
    }
}

#[test]
fn a_rust_programs_slow_call_names_its_functions() {
    // The sleeper sleeps 30 ms while a spinner keeps the process alive, so
    // that its objects can still be read when the call is explained.
    let (trace, workload, output) =
        trace_command("slow-rust", &["--slow", "20ms"], &["--sleeps", "30", "--spin", "300"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let sleeper = workload.doing("sleeps").next().unwrap();
    let calls: Vec<&Value> = trace
        .slow_calls
        .iter()
        .filter(|call| call["tid"] == sleeper.tid && call["name"] == "clock_nanosleep")
        .collect();
    assert_eq!(calls.len(), 1, "{:#?}", trace.slow_calls);
    let from = functions(&calls[0]["user_stack"]);
    assert!(from.contains(&"workload::sleep_once"), "{from:?}");
    assert!(from.iter().any(|f| f.ends_with("thread_start")), "{from:?}");
    assert!(functions(&calls[0]["blocked_in"]).contains(&"do_nanosleep"), "{}", calls[0]);
    // The timer's interrupt woke it, whatever it interrupted (the spinner
    // in user code, an idle CPU, probe itself).
    let waker = &calls[0]["woken_by"];
    assert_eq!(waker["context"], "interrupt", "{waker}");
    assert!(functions(&waker["stack"]).contains(&"hrtimer_wakeup"), "{waker}");
}

#[test]
fn the_timeline_draws_an_arrow_from_the_writer_to_the_reader_it_woke() {
    let program = build_c("slowcalls");
    let path = report_path("slow-timeline").with_extension("trace.json");
    let path_arg = path.to_str().unwrap();
    // No --slow: the wakers of a COMMAND's calls are sent with its tail
    // details.
    let (_, output) = trace_program("slow-timeline", &["--trace", path_arg], &program, &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let [_, reader, writer, _] = said(&output);
    let timeline: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let events = timeline["traceEvents"].as_array().unwrap();
    let flow = |phase: &str, tid: u64| {
        events
            .iter()
            .filter(|e| e["ph"] == phase && e["tid"] == tid)
            .map(|e| e["id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    // The writer's write woke the reader's read: one arrow between them,
    // starting inside the write's slice and ending inside the read's.
    let starts = flow("s", writer);
    let ends = flow("f", reader);
    let arrow = starts.iter().find(|id| ends.contains(id)).unwrap_or_else(|| panic!("{starts:?} {ends:?}"));
    let at = |phase: &str| {
        events.iter().find(|e| e["ph"] == phase && e["id"] == *arrow).unwrap()["ts"].as_f64().unwrap()
    };
    let slice = |tid: u64, name: &str| {
        events.iter().filter(|e| e["ph"] == "X" && e["tid"] == tid && e["name"] == name).any(|e| {
            let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
            (ts..=ts + dur).contains(&at("s"))
        })
    };
    assert!(slice(writer, "write"), "the arrow does not start in the writer's write");
    assert!(slice(reader, "read"), "the arrow does not end in the reader's read");
}

#[test]
fn each_syscall_says_where_in_the_kernel_its_blocked_time_went() {
    let program = build_c("slowcalls");
    let (trace, output) = trace_program("slow-sites", &["--slow", "10ms"], &program, &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let [_, reader, _, _] = said(&output);
    // All of the read's sleep was in the pipe, all of the nap's in the
    // timer; both sites are named by their innermost kernel functions.
    for (name, site) in [("read", "pipe_read"), ("clock_nanosleep", "do_nanosleep")] {
        let call = trace.syscall(reader, name);
        let sites = call["wait_sites"].as_array().unwrap_or_else(|| panic!("no wait sites: {call}"));
        assert!(sites[0]["site"].as_str().unwrap().contains(site), "{sites:?}");
        assert!(sites[0]["share"].as_f64().unwrap() > 0.99, "{sites:?}");
        let asleep: u64 = sites.iter().map(|s| s["blocked_ns"].as_u64().unwrap()).sum();
        assert!(asleep <= call["blocked_ns"].as_u64().unwrap() + 1_000_000, "{call}");
    }
}

#[test]
fn without_slow_the_runs_slowest_calls_still_come_with_their_callers_and_arguments() {
    let program = build_c("slowcalls");
    let (trace, output) = trace_program("slow-tail", &[], &program, &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let [_, reader, _, read_ns] = said(&output);
    assert!(trace.slow_calls.is_empty(), "no --slow, no slow_call lines: {:?}", trace.slow_calls);
    for (name, function) in [("read", "wait_for_writer"), ("clock_nanosleep", "nap_for_twenty_ms")] {
        let slowest = &trace.syscall(reader, name)["slowest"][0];
        let from = functions(&slowest["user_stack"]);
        let at = from.iter().position(|f| *f == function).unwrap_or_else(|| panic!("{name}: {slowest}"));
        assert_eq!(from.get(at + 1), Some(&"main"), "{from:?}");
        // Kernel stacks cost a walk at every blocking switch: only --slow
        // takes them.
        assert!(slowest.get("blocked_in").is_none_or(Value::is_null), "{slowest}");
    }
    let read = &trace.syscall(reader, "read")["slowest"][0];
    let fd = &read["args"][0];
    assert!(fd["what"].as_str().is_some_and(|what| what.starts_with("pipe:[")), "{read}");
    // Who woke it is known (a small record at each wakeup), but not from
    // where: the wakeup's stack is --slow's.
    let waker = &read["woken_by"];
    assert_eq!(
        (waker["comm"].as_str(), waker["syscall"].as_str()),
        (Some("writer"), Some("write")),
        "{read}"
    );
    assert!(waker["stack"].is_null(), "{waker}");
    // The read as its caller timed it around the call, one sleep long.
    let read_took = read["duration_ns"].as_u64().unwrap();
    assert!((read_ns.saturating_sub(1_000_000)..=read_ns).contains(&read_took), "{read_ns} ns: {read}");
    assert_eq!(read["longest_sleep_ns"], read["blocked_ns"], "{read}");
    // A timer woke the nap: an interrupt, though without the wakeup's stack
    // one of user code cannot be told from the task it interrupted.
    let nap = &trace.syscall(reader, "clock_nanosleep")["slowest"][0];
    let context = nap["woken_by"]["context"].as_str();
    assert!(matches!(context, Some("interrupt" | "task_or_interrupt")), "{nap}");
    // Wait sites come from the kernel stacks, --slow's only.
    assert!(
        trace
            .syscall(reader, "read")
            .get("wait_sites")
            .is_none_or(|sites| sites.as_array().is_some_and(Vec::is_empty)),
        "{read}"
    );
    // The 1000 getppid calls are far under the millisecond from which
    // calls send details: none has any, and none is said to miss them.
    for call in trace.syscall(reader, "getppid")["slowest"].as_array().unwrap() {
        assert!(call.get("user_stack").is_none() && call.get("no_details").is_none(), "{call}");
    }
}
