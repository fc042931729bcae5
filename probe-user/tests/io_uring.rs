//! io_uring requests per thread and opcode, and where each syscall's time
//! went, against the workload's own account.

mod common;

use common::{trace_command, Trace};
use serde_json::Value;

fn io_uring<'a>(trace: &'a Trace, tid: u64, opcode: &str) -> &'a Value {
    let thread = trace.thread(tid);
    let ops = thread["io_uring"].as_array().unwrap_or_else(|| panic!("no io_uring entries: {thread}"));
    ops.iter().find(|op| op["opcode"] == opcode).unwrap_or_else(|| panic!("no {opcode} in {ops:?}"))
}

#[test]
fn io_uring_requests_are_counted_per_thread_and_opcode() {
    let (nops, reads, offloaded) = (300, 200, 50);
    let (trace, run, _) =
        trace_command("io-uring", &[], &["--io-uring", &format!("{nops},{reads},{offloaded}")]);
    let thread = run.doing("io_uring").next().unwrap();
    // The offloaded reads run on io-wq workers, and are the submitter's.
    let read = io_uring(&trace, thread.tid, "READ");
    assert_eq!(read["async"], offloaded, "{read}");
    for (opcode, count) in [("NOP", nops), ("READ", reads + offloaded)] {
        let op = io_uring(&trace, thread.tid, opcode);
        assert_eq!(op["count"], count, "{op}");
        assert_eq!(op["errors"], 0, "{op}");
        assert!(op["p50_ns"].as_u64().unwrap() > 0 && op["p99_ns"].as_u64() <= op["max_ns"].as_u64(), "{op}");
    }
    assert_eq!(trace.summary["lost_events"], 0, "{}", trace.summary["lost"]);
}

#[test]
fn each_syscalls_time_splits_into_blocked_runq_and_on_cpu() {
    let (trace, run, _) =
        trace_command("breakdown", &[], &["--sleep", "50x5", "--zero-read", "20x64", "--getppid", "10000"]);
    let part = |call: &Value, field: &str| {
        call[field].as_u64().unwrap_or_else(|| panic!("no {field}: {call}")) as f64
    };
    let sleeper = run.doing("clock_nanosleep").next().unwrap();
    let sleep = trace.syscall(sleeper.tid, "clock_nanosleep");
    assert!(part(sleep, "blocked_ns") > 0.9 * part(sleep, "total_ns"), "asleep, not on a CPU: {sleep}");
    let reader = run.doing("read").next().unwrap();
    let read = trace.syscall(reader.tid, "read");
    assert!(part(read, "on_cpu_ns") > 0.8 * part(read, "total_ns"), "zeroing 64 MiB is CPU work: {read}");
    for thread in trace.summary["threads"].as_array().unwrap() {
        for call in
            thread["syscalls"].as_array().unwrap().iter().filter(|call| call["timed"].as_u64() > Some(0))
        {
            let parts = part(call, "on_cpu_ns") + part(call, "blocked_ns") + part(call, "runq_ns");
            let total = part(call, "total_ns");
            assert!((parts - total).abs() <= 0.01 * total, "parts {parts} vs total {total}: {call}");
        }
    }
}
