//! `--cgroup`: a whole-system trace kept to the threads of a cgroup and its
//! descendants, in the kernel: workloads in a cgroup, its child and a
//! sibling, each with exact counts of its own, and probe told the first.
//! Needs root and the cgroup v2 hierarchy.

mod common;

use std::{
    io::{BufReader, Read},
    path::Path,
    process::{ChildStdout, Command, Stdio},
};

use common::{cgroup::*, *};
use serde_json::Value;

/// A workload waiting for SIGUSR1, moved into `cgroup` before it starts
/// its threads (which are then born there).
fn workload_in(cgroup: &Path, args: &[&str]) -> (Running, BufReader<ChildStdout>) {
    let (workload, stdout) = waiting_workload(args);
    move_into(cgroup, &workload);
    (workload, stdout)
}

fn waiting_workload(args: &[&str]) -> (Running, BufReader<ChildStdout>) {
    let mut all = vec!["--wait-signal"];
    all.extend_from_slice(args);
    start_workload(&all, "{\"ready\"")
}

fn move_into(cgroup: &Path, workload: &Running) {
    std::fs::write(cgroup.join("cgroup.procs"), workload.id().to_string()).unwrap();
}

/// Lets a waiting workload go, and returns its account once it exits.
fn finish(mut workload: Running, mut stdout: BufReader<ChildStdout>) -> Workload {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(workload.id() as i32, libc::SIGUSR1) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(workload.wait().unwrap().success());
    Workload::parse(&rest)
}

fn field(sched: &Value, name: &str) -> u64 {
    sched[name].as_u64().unwrap_or_else(|| panic!("{name} missing from {sched}"))
}

#[test]
fn only_the_cgroup_and_its_descendants_are_traced() {
    let base = format!("probe-test-cgroup-filter-{}", std::process::id());
    let names = [format!("{base}-a"), format!("{base}-a/child"), format!("{base}-b")];
    let mount = unified_mount();
    // The child's cgroup is made with its parent, the first, and removes both.
    let made = (TestCgroup::make(&mount, &names[1]), TestCgroup::make(&mount, &names[2]));
    let (first, child, sibling) = (mount.join(&names[0]), made.0.dir(), made.1.dir());

    // Exact counts in each, and in the first a sleeper and a thread that
    // moves itself between CPUs for the scheduler view.
    let (a, a_out) = workload_in(&first, &["--getppid", "3000,5000", "--sleep", "50x1", "--affinity", "50"]);
    // Moved once probe traces: its main thread was not among the threads
    // of the cgroups at attach.
    let (c, c_out) = waiting_workload(&["--getppid", "7000", "--enoent", "11"]);
    let (b, b_out) = workload_in(&sibling, &["--getppid", "9000", "--sleep", "50x1", "--spin", "50"]);
    let sibling_pid = u64::from(b.id());

    let report = report_path("cgroup-filter");
    // The first cgroup relative to the mount, as a user would give it.
    let mut probe = Running::spawn(
        Command::new(PROBE).args(["--json", "--cgroup", &names[0], "-o"]).arg(&report).stderr(Stdio::piped()),
    );
    let stderr = wait_until_tracing(&mut probe);
    move_into(&child, &c);
    let (a, c, b) = (finish(a, a_out), finish(c, c_out), finish(b, b_out));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(probe.id() as i32, libc::SIGINT) };
    let trace = ended_trace(&mut probe, stderr, &report);
    drop(made);

    assert_eq!(trace.summary["lost_events"], 0, "{}", trace.summary["lost"]);
    // Every syscall-making thread's count (the CPU hopper's moves are not
    // calls of one name).
    for thread in a.threads.iter().chain(&c.threads).filter(|thread| thread.syscall != "affinity") {
        let call = trace.syscall(thread.tid, &thread.syscall);
        assert_eq!(
            call["count"].as_u64(),
            Some(thread.calls),
            "{} of {}: {call}",
            thread.syscall,
            thread.tid
        );
    }
    // Nothing else: not the sibling's threads (neither their calls nor
    // their scheduler rows), not probe, not another process of the host.
    let sibling_tids: Vec<u64> = b.threads.iter().map(|thread| thread.tid).collect();
    for thread in trace.summary["threads"].as_array().unwrap() {
        let pid = thread["pid"].as_u64().unwrap();
        assert!(pid == a.pid || pid == c.pid, "a thread outside the cgroup: {thread}");
        assert_ne!(pid, sibling_pid);
        assert!(!sibling_tids.contains(&thread["tid"].as_u64().unwrap()), "{thread}");
    }
    for interval in &trace.intervals {
        for thread in interval["threads"].as_array().into_iter().flatten() {
            let pid = thread["pid"].as_u64().unwrap();
            assert!(pid == a.pid || pid == c.pid, "a thread outside the cgroup: {thread}");
        }
    }

    // The scheduler view of the traced threads holds under the filter: the
    // kernel's own counts (read by each thread before the switches of its
    // exit).
    for thread in a.threads.iter().chain(&c.threads) {
        let sched = &trace.thread(thread.tid)["sched"];
        assert!(sched.is_object(), "no sched view: {}", trace.thread(thread.tid));
        for (name, kernel) in [
            ("voluntary_switches", thread.voluntary),
            ("involuntary_switches", thread.involuntary),
            ("migrations", thread.migrations),
        ] {
            let seen = field(sched, name);
            let what = &thread.syscall;
            assert!((kernel..=kernel + 5).contains(&seen), "{what}: {name} {seen}, kernel {kernel}: {sched}");
        }
    }
    let hopper = a.doing("affinity").next().unwrap();
    assert!(field(&trace.thread(hopper.tid)["sched"], "migrations") >= 50);
}

/// Runs probe with `args`, which it must refuse with one line.
fn refused(args: &[&str]) -> String {
    let output = Command::new(PROBE).args(args).args(["-d", "1s"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn bad_cgroups_are_one_line_and_a_failure() {
    let mount = unified_mount();
    let base = format!("probe-test-cgroup-refused-{}", std::process::id());
    let cgroup = TestCgroup::make(&mount, &base);
    let stderr = refused(&["--cgroup", "probe-no-such-cgroup"]);
    assert!(stderr.contains("no such cgroup"), "{stderr}");
    let stderr = refused(&["--cgroup", "/tmp"]);
    assert!(stderr.contains("is not under the cgroup v2 mount"), "{stderr}");
    let file = format!("{base}/cgroup.procs");
    let stderr = refused(&["--cgroup", &file]);
    assert!(stderr.contains("is not a cgroup directory"), "{stderr}");
    let stderr = refused(&["--cgroup", &format!("{base}/../{base}")]);
    assert!(stderr.contains("without '..'"), "{stderr}");
    // A planted link to the cgroup (cgroupfs itself takes none): outside
    // the mount, so refused for that.
    let link = std::env::temp_dir().join(format!("{base}-link"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(mount.join(&base), &link).unwrap();
    let stderr = refused(&["--cgroup", link.to_str().unwrap()]);
    std::fs::remove_file(&link).unwrap();
    assert!(stderr.contains("is not under the cgroup v2 mount"), "{stderr}");
    let nine = [base.as_str(); 9].join(",");
    let stderr = refused(&["--cgroup", &nine]);
    assert!(stderr.contains("at most 8"), "{stderr}");
    drop(cgroup);
}

#[test]
fn with_pid_only_its_threads_in_the_cgroup_are_traced() {
    let base = format!("probe-test-cgroup-pid-{}", std::process::id());
    let names = [format!("{base}-in"), format!("{base}-out")];
    let mount = unified_mount();
    let cgroups: Vec<TestCgroup> = names.iter().map(|name| TestCgroup::make(&mount, name)).collect();
    let args = ["--cgroup", &names[0]];
    // --pid of a process in the cgroup: its calls, exactly.
    let (mut inside, stdout) = workload_in(&cgroups[0].dir(), &["--getppid", "2000", "--enoent", "7"]);
    let pid = inside.id() as i32;
    // SAFETY: signalling our own child.
    let (trace, rest) = trace_pid("cgroup-pid-in", &args, &mut inside, stdout, || unsafe {
        libc::kill(pid, libc::SIGUSR1);
    });
    assert_exact(&trace, &Workload::parse(&rest));
    // --pid of a process outside it: the intersection is empty.
    let (mut outside, stdout) = workload_in(&cgroups[1].dir(), &["--getppid", "2000"]);
    let pid = outside.id() as i32;
    // SAFETY: signalling our own child.
    let (trace, rest) = trace_pid("cgroup-pid-out", &args, &mut outside, stdout, || unsafe {
        libc::kill(pid, libc::SIGUSR1);
    });
    assert_eq!(Workload::parse(&rest).threads[0].calls, 2000);
    assert_eq!(trace.summary["threads"].as_array().unwrap().len(), 0, "{}", trace.summary);
    drop(cgroups);
}
