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
    // "pid P reader R writer W"
    let said = String::from_utf8_lossy(&output.stdout);
    let ids: Vec<u64> = said.split_whitespace().filter_map(|word| word.parse().ok()).collect();
    let [pid, reader, writer] = ids[..] else { panic!("the program said {said:?}") };

    // Exactly its two slow calls, none of its 1000 fast ones.
    let names: Vec<&str> = trace.slow_calls.iter().map(|call| call["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["clock_nanosleep", "read"], "{:#?}", trace.slow_calls);
    let (nap, read) = (&trace.slow_calls[0], &trace.slow_calls[1]);
    for call in [nap, read] {
        assert_eq!((call["pid"].as_u64(), call["tid"].as_u64()), (Some(pid), Some(reader)), "{call}");
    }
    assert!(nap["duration_ns"].as_u64().unwrap() >= 20_000_000, "{nap}");
    assert!(read["duration_ns"].as_u64().unwrap() >= 30_000_000, "{read}");

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
    // The blocked time is the call's, less its moments on the CPU.
    assert!(read["blocked_ns"].as_u64().unwrap() >= 29_000_000, "{read}");

    // Its arguments: the fd as the pipe it is, the count as a number.
    let args = read["args"].as_array().unwrap();
    assert_eq!((args[0]["name"].as_str(), args[0]["fd"].as_i64()), (Some("fd"), Some(3)), "{args:?}");
    assert!(args[0]["what"].as_str().is_some_and(|what| what.starts_with("pipe:[")), "{args:?}");
    assert_eq!((args[2]["name"].as_str(), args[2]["value"].as_u64()), (Some("count"), Some(1)), "{args:?}");
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
}
