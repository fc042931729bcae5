//! Scheduler view, end to end: migrations, switches, blocked, run-queue and
//! on-CPU time of workload threads, against what the workload forced and
//! what the kernel itself counted for each thread.

mod common;

use common::*;
use serde_json::Value;

fn sched(trace: &Trace, tid: u64) -> &Value {
    let sched = &trace.thread(tid)["sched"];
    assert!(sched.is_object(), "thread {tid} has no sched view: {}", trace.thread(tid));
    sched
}

fn field(sched: &Value, name: &str) -> u64 {
    sched[name].as_u64().unwrap_or_else(|| panic!("{name} missing from {sched}"))
}

#[test]
fn forced_moves_sleeps_and_a_lone_spinner() {
    const MOVES: u64 = 200;
    let (trace, workload, output) = trace_command(
        "sched-solo",
        &[],
        &["--affinity", &MOVES.to_string(), "--sleep", "100x1", "--spin", "1000"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(trace.summary["lost_events"], 0);

    // Each move puts the thread on the other CPU: one migration each, plus
    // at most the first pin and a few the scheduler made by itself.
    let hopper = workload.doing("affinity").next().unwrap();
    let hops = sched(&trace, hopper.tid);
    let migrations = field(hops, "migrations");
    assert!((MOVES..=MOVES + 10).contains(&migrations), "{migrations} migrations for {MOVES} moves: {hops}");
    let pairs: u64 = hops["migration_pairs"].as_array().unwrap().iter().map(|p| field(p, "count")).sum();
    assert_eq!(pairs, migrations, "{hops}");
    for cpu in ["0", "1"] {
        assert!(hops["cpus"][cpu].as_u64().unwrap_or(0) > 0, "never ran on cpu {cpu}: {hops}");
    }

    // 100 sleeps of 1 ms: at least 100 voluntary switches and 100 ms asleep,
    // and the kernel's own count for the thread agrees (it read its count
    // before the switches of its exit).
    let sleeper = workload.doing("clock_nanosleep").next().unwrap();
    let naps = sched(&trace, sleeper.tid);
    let voluntary = field(naps, "voluntary_switches");
    assert!(voluntary >= 100, "{naps}");
    assert!(
        (sleeper.voluntary..=sleeper.voluntary + 5).contains(&voluntary),
        "kernel said {}: {naps}",
        sleeper.voluntary
    );
    assert!(field(naps, "blocked_ns") >= 100_000_000, "{naps}");

    // A thread that only spins: its on-CPU time is its CPU time.
    let spinner = workload.doing("spin").next().unwrap();
    let spin = sched(&trace, spinner.tid);
    let on_cpu = field(spin, "on_cpu_ns") as f64;
    let cpu = spinner.cpu_ns as f64;
    assert!((on_cpu - cpu).abs() <= 0.1 * cpu, "on-CPU {on_cpu} ns vs CPU time {cpu} ns: {spin}");
    let per_cpu: u64 = spin["cpus"].as_object().unwrap().values().map(|ns| ns.as_u64().unwrap()).sum();
    assert_eq!(per_cpu, field(spin, "on_cpu_ns"));
    assert!(spin["last_cpu"].is_u64());
}

#[test]
fn four_spinners_on_two_cpus_wait_in_the_run_queue() {
    let (trace, workload, output) = trace_command("sched-crowd", &[], &["--spin", "1000,1000,1000,1000"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut involuntary = 0;
    for spinner in workload.doing("spin") {
        let spin = sched(&trace, spinner.tid);
        involuntary += field(spin, "involuntary_switches");
        assert!(field(spin, "runq_p99_ns") > 0, "{spin}");
        assert!(field(spin, "runq_wait_ns") > 0, "{spin}");
        let on_cpu = field(spin, "on_cpu_ns") as f64;
        let cpu = spinner.cpu_ns as f64;
        assert!((on_cpu - cpu).abs() <= 0.1 * cpu, "on-CPU {on_cpu} ns vs CPU time {cpu} ns: {spin}");
        // Preemptions the kernel counted are ones probe saw.
        assert!(
            field(spin, "involuntary_switches") >= spinner.involuntary,
            "kernel said {}: {spin}",
            spinner.involuntary
        );
    }
    assert!(involuntary > 0);
}

#[test]
fn each_half_can_be_turned_off() {
    let (trace, workload, _) = trace_command("no-sched", &["--no-sched"], &["--getppid", "500"]);
    assert_exact(&trace, &workload);
    assert!(trace.summary["threads"].as_array().unwrap().iter().all(|t| t.get("sched").is_none()));

    let (trace, workload, _) = trace_command("no-syscalls", &["--no-syscalls"], &["--spin", "50"]);
    let spinner = workload.doing("spin").next().unwrap();
    assert!(field(sched(&trace, spinner.tid), "on_cpu_ns") > 0);
    for thread in trace.summary["threads"].as_array().unwrap() {
        assert_eq!(thread["syscalls"], serde_json::json!([]), "{thread}");
    }
}
