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
    assert_eq!(trace.summary["lost_events"], 0, "{}", trace.summary["lost"]);

    // Each move puts the thread on the other CPU: one migration each, plus
    // at most the first pin and a few the scheduler made by itself; and as
    // many as the kernel counted for it (it read its count before the
    // switches of its exit).
    let hopper = workload.doing("affinity").next().unwrap();
    let hops = sched(&trace, hopper.tid);
    let migrations = field(hops, "migrations");
    assert!((MOVES..=MOVES + 10).contains(&migrations), "{migrations} migrations for {MOVES} moves: {hops}");
    assert!(
        (hopper.migrations..=hopper.migrations + 2).contains(&migrations),
        "kernel said {}: {hops}",
        hopper.migrations
    );
    // The moves seen as runs on the other CPU, the ends of runs whose start
    // the kernel never reported (see README) among them: no more than the
    // kernel's count, and all but a rare one (seen once in many runs on
    // this VM, its cause not found: the exact count is `migrations`, above).
    let pairs: u64 = hops["migration_pairs"].as_array().unwrap().iter().map(|p| field(p, "count")).sum();
    assert!((MOVES - 2..=migrations).contains(&pairs), "{hops}");
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

    // A thread that only spins: its on-CPU time is its CPU time, unless a
    // switch of it went unreported (see README), which it then says: its
    // time is short by the runs seen at one end only.
    let spinner = workload.doing("spin").next().unwrap();
    let spin = sched(&trace, spinner.tid);
    let on_cpu = field(spin, "on_cpu_ns") as f64;
    let cpu = spinner.cpu_ns as f64;
    assert!(on_cpu <= 1.1 * cpu, "on-CPU {on_cpu} ns vs CPU time {cpu} ns: {spin}");
    if spin["sampled"] == false {
        assert!(on_cpu >= 0.9 * cpu, "on-CPU {on_cpu} ns vs CPU time {cpu} ns: {spin}");
    }
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

#[test]
fn short_lived_children_are_seen_to_their_last_switch() {
    const CHILDREN: u64 = 20;
    let (trace, workload, output) = trace_command("sched-children", &[], &["--children", "20x2000"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(trace.summary["lost_events"], 0, "{}", trace.summary["lost"]);
    let children: Vec<_> = workload.doing("child").collect();
    assert_eq!(children.len() as u64, CHILDREN);
    let mut sampled = 0;
    for child in children {
        let sched = sched(&trace, child.tid);
        // The kernel's counts, read by the child as its last act; then it
        // exits, and its final switch is one more voluntary one (the exit
        // path may be preempted once too).
        let voluntary = field(sched, "voluntary_switches");
        assert!(
            (child.voluntary + 1..=child.voluntary + 2).contains(&voluntary),
            "kernel said {} before exiting: {sched}",
            child.voluntary
        );
        let involuntary = field(sched, "involuntary_switches");
        assert!((child.involuntary..=child.involuntary + 1).contains(&involuntary), "{sched}");
        let migrations = field(sched, "migrations");
        assert!(
            (child.migrations..=child.migrations + 1).contains(&migrations),
            "kernel said {}: {sched}",
            child.migrations
        );
        // It ran for its CPU time and its exit, not until its parent reaped
        // it 50 ms later (the exit, and time the hypervisor stole, which
        // probe counts and the kernel's CPU time does not, once took 4 ms).
        let on_cpu = field(sched, "on_cpu_ns");
        assert!(on_cpu <= child.cpu_ns + 10_000_000, "{on_cpu} ns on-CPU of {} ns: {sched}", child.cpu_ns);
        // A run whose switch-in the kernel never reported (see README) has
        // no start: such a child says its times are a sample.
        if sched["sampled"] == true {
            sampled += 1;
            continue;
        }
        // The kernel's CPU clock of a new child may include part of its
        // first wait for a CPU (up to 0.4 ms of 2 ms seen here, beside
        // `sched_switch` as bpftrace saw it too), which probe counts as that.
        let runq = field(sched, "runq_wait_ns");
        assert!(
            (on_cpu + runq) as f64 >= 0.95 * child.cpu_ns as f64,
            "{on_cpu} ns on-CPU and {runq} ns waiting of {} ns: {sched}",
            child.cpu_ns
        );
    }
    assert!(sampled <= CHILDREN / 4, "{sampled} children have sampled times");
}

#[test]
fn intervals_split_waits_at_their_ends_and_add_up_to_the_summary() {
    let (trace, output) = trace_program(
        "sched-intervals",
        &["-i", "200ms", "--top", "1000"],
        std::path::Path::new("/bin/sh"),
        &["-c", "sleep 0.7; sleep 0.5"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(trace.intervals.len() >= 5, "{} intervals", trace.intervals.len());
    const TIMES: [&str; 3] = ["on_cpu_ns", "blocked_ns", "runq_wait_ns"];
    const COUNTS: [&str; 3] = ["voluntary_switches", "involuntary_switches", "migrations"];
    let mut sums: std::collections::BTreeMap<(u64, u64), [u64; 6]> = Default::default();
    let mut covered = 0;
    for interval in &trace.intervals {
        let span = interval["span_ns"].as_u64().unwrap();
        covered += span;
        for thread in interval["threads"].as_array().unwrap() {
            let Some(sched) = thread.get("sched") else { continue };
            let times: u64 = TIMES.iter().map(|name| field(sched, name)).sum();
            // Clocks of the two CPUs may disagree by a little.
            assert!(times <= span + 1_000_000, "{times} ns of a {span} ns interval: {thread}");
            let key = (thread["tid"].as_u64().unwrap(), thread["generation"].as_u64().unwrap());
            let sum = sums.entry(key).or_default();
            for (i, name) in TIMES.iter().chain(&COUNTS).enumerate() {
                sum[i] += field(sched, name);
            }
        }
    }
    // The summary holds the intervals and the unreported rest.
    let rest = trace.summary["elapsed_ns"].as_u64().unwrap() - covered;
    let sleeper = sums.iter().filter(|(_, sum)| sum[1] > 600_000_000).count();
    assert!(sleeper >= 1, "no interval lines hold the 0.7 s sleep, split: {sums:?}");
    for thread in trace.summary["threads"].as_array().unwrap() {
        let Some(sched) = thread.get("sched") else { continue };
        let key = (thread["tid"].as_u64().unwrap(), thread["generation"].as_u64().unwrap());
        let sum = sums.get(&key).copied().unwrap_or_default();
        for (i, name) in TIMES.iter().enumerate() {
            let total = field(sched, name);
            assert!(
                sum[i] <= total && total - sum[i] <= rest + 1_000_000,
                "{name}: {} in intervals, {total} in all: {thread}",
                sum[i]
            );
        }
        for (i, name) in COUNTS.iter().enumerate() {
            assert!(sum[3 + i] <= field(sched, name), "{name}: {thread}");
        }
    }
}

#[test]
fn switches_and_migrations_stay_exact_when_records_are_lost() {
    // A 16 KiB ring buffer beside a storm: scheduler records are dropped
    // too, and the kernel counts the switches it could not send.
    let (trace, workload, output) = trace_command(
        "sched-overload",
        &["--buffer-size", "16384"],
        &["--getppid", "1000000,1000000", "--sleep", "300x1", "--spin", "300", "--affinity", "200"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(trace.summary["lost_events"].as_u64().unwrap() > 0, "a 16 KiB buffer kept up?");
    let mut sampled = 0;
    for thread in &workload.threads {
        let sched = sched(&trace, thread.tid);
        // Read by the workload before the switches of its exit.
        let voluntary = field(sched, "voluntary_switches");
        assert!(
            (thread.voluntary..=thread.voluntary + 5).contains(&voluntary),
            "{}: kernel said {} voluntary: {sched}",
            thread.syscall,
            thread.voluntary
        );
        let involuntary = field(sched, "involuntary_switches");
        assert!(
            (thread.involuntary..=thread.involuntary + 5).contains(&involuntary),
            "{}: kernel said {} involuntary: {sched}",
            thread.syscall,
            thread.involuntary
        );
        // Migrations too: the kernel's own count comes with every switch-out.
        let migrations = field(sched, "migrations");
        assert!(
            (thread.migrations..=thread.migrations + 2).contains(&migrations),
            "{}: kernel said {} migrations: {sched}",
            thread.syscall,
            thread.migrations
        );
        let partial = field(sched, "lost_records") + field(sched, "partial_runs");
        assert_eq!(sched["sampled"], partial > 0, "{sched}");
        sampled += u64::from(sched["sampled"] == true);
    }
    assert!(sampled > 0, "no thread's times were marked as a sample");
}

#[test]
fn switches_and_migrations_equal_the_kernels_own_counts() {
    // Spinners contending for two CPUs, 1 ms sleepers, a thread moving
    // itself between CPUs and a pipe ping-pong pair: each thread read the
    // kernel's counts for itself (status, sched, schedstat) before the
    // switches of its exit.
    let (trace, workload, output) = trace_command(
        "sched-kernel",
        &[],
        &["--spin", "400,400,400", "--sleep", "200x1", "--affinity", "100", "--pingpong", "2000"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(trace.summary["lost_events"], 0, "{}", trace.summary["lost"]);
    let mut sampled = 0;
    for thread in &workload.threads {
        let sched = sched(&trace, thread.tid);
        let what = &thread.syscall;
        for (name, kernel) in [
            ("voluntary_switches", thread.voluntary),
            ("involuntary_switches", thread.involuntary),
            ("migrations", thread.migrations),
        ] {
            // The switches of its exit come after (a sleeper's once took 4).
            let seen = field(sched, name);
            assert!((kernel..=kernel + 5).contains(&seen), "{what}: {name} {seen}, kernel {kernel}: {sched}");
        }
        // Where its time went, against the kernel's run and wait times
        // (the run-queue share differs for threads that run briefly and
        // often: see the README; the sum does not, beyond a few ms of
        // the VM's steal on a thread's few ms of waits). Not for the thread that
        // moves itself between CPUs: once in a CI run the kernel counted
        // 25 ms of run delay where probe saw 15 ms of waits, cause not
        // found (README, "Scheduler view").
        // A thread a switch-in of which the kernel never reported says its
        // times are a sample (README): only its counts hold then.
        if sched["sampled"] == true {
            sampled += 1;
            continue;
        }
        let (on_cpu, runq) = (field(sched, "on_cpu_ns") as f64, field(sched, "runq_wait_ns") as f64);
        let kernel = (thread.run_ns + thread.wait_ns) as f64;
        // After its counters are read, the thread waits for the others, is
        // woken with all of them at once and runs to its exit among them:
        // a wait for a CPU at that wakeup, and maybe one more on the way
        // out (each at most its longest), are probe's to see and not the
        // read's (a ping-pong thread once showed 12.8 ms more than its
        // read, its longest wait 5.7 ms).
        let after_read = 2.0 * field(sched, "runq_max_ns") as f64;
        assert!(
            what == "affinity" || (on_cpu + runq - kernel).abs() <= 0.05 * kernel + 5e6 + after_read,
            "{what}: on-CPU + run queue {} ms, kernel {} ms: {sched}",
            (on_cpu + runq) / 1e6,
            kernel / 1e6
        );
        if what == "spin" {
            assert!((on_cpu - thread.cpu_ns as f64).abs() <= 0.1 * thread.cpu_ns as f64, "{sched}");
        }
    }
    // Spinners share their CPUs with that thread most: one or two of them
    // are often marked, the others not.
    assert!(sampled < workload.threads.len(), "every thread's times are a sample");
}
