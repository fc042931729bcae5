//! Who held the CPU while a thread waited: a traced spinner and a rival
//! spinner in another process, not traced, both pinned to CPU 1 at nice -20
//! (above anything else the shared machine runs there): the traced one's
//! run-queue waits are the rival's runs, by name, in `-p` mode (where the
//! kernel sends the rival's switches only while a traced thread waits) and
//! in whole-system mode (where every switch is sent).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cgroup::*, *};
use serde_json::Value;

/// The rival: its own process, spinning longer than the traced thread.
fn start_rival() -> (Running, u64) {
    let rival = Running::spawn(
        Command::new(workload()).args(["--pinned-spin", "1,4000,rival-spin"]).stdout(Stdio::null()),
    );
    let pid = u64::from(rival.id());
    // On CPU 1 before the traced spinner starts.
    std::thread::sleep(Duration::from_millis(200));
    (rival, pid)
}

/// The traced spinner's run-queue waits are blamed on the rival (by pid and
/// name) for at least 90% of them, and the blame adds up to its run-queue
/// time exactly: the spinner's waits all ended before it exited (README,
/// "Who held the CPU").
fn assert_blamed_on_rival(trace: &Trace, workload: &Workload, rival_pid: u64) {
    let spinner = workload.doing("pinned-spin").next().expect("the spinner's account");
    let sched = &trace.thread(spinner.tid)["sched"];
    let waited = sched["runq_wait_ns"].as_u64().unwrap();
    // Two equal spinners on one CPU: about half of the second waiting.
    assert!(waited >= 200_000_000, "waited only {waited} ns: {sched}");
    let blame = sched["runq_blame"].as_array().unwrap();
    let blamed: u64 = blame.iter().map(|entry| entry["ns"].as_u64().unwrap()).sum();
    assert_eq!(blamed, waited, "{sched}");
    let rival = blame.iter().find(|entry| entry["pid"] == rival_pid).unwrap_or_else(|| panic!("{sched}"));
    assert_eq!((&rival["holder"], &rival["comm"]), (&Value::from("thread"), &Value::from("rival-spin")));
    let share = rival["ns"].as_u64().unwrap() as f64 / waited as f64;
    assert!(share >= 0.9, "only {:.0}% behind the rival: {sched}", share * 100.0);
    // The first entry is the largest.
    assert_eq!(blame[0]["pid"], rival_pid, "{sched}");
}

#[test]
fn pid_mode_blames_the_untraced_rival() {
    let (_rival, rival_pid) = start_rival();
    // The rival in a cgroup named the way docker names a container's.
    let id = format!("b1a3e{:059x}", std::process::id());
    let container = TestCgroup::make(&unified_mount(), &format!("system.slice/docker-{id}.scope"));
    container.enter(rival_pid as u32);
    let (mut workload, stdout) =
        start_workload(&["--wait-signal", "--pinned-spin", "1,1000,traced-spin"], "{\"ready\"");
    let pid = workload.id() as i32;
    // SAFETY: signalling our own child.
    let (trace, rest) = trace_pid("blame-pid", &[], &mut workload, stdout, || unsafe {
        libc::kill(pid, libc::SIGUSR1);
    });
    assert_eq!(trace.summary["lost_events"], 0, "{}", trace.summary["lost"]);
    assert_blamed_on_rival(&trace, &Workload::parse(&rest), rival_pid);
    // The rival itself is not traced, but its container is named.
    let threads = trace.summary["threads"].as_array().unwrap();
    assert!(threads.iter().all(|thread| thread["pid"] != rival_pid));
    let blame =
        threads.iter().flat_map(|thread| thread["sched"]["runq_blame"].as_array().into_iter().flatten());
    let rival = blame.clone().find(|entry| entry["pid"] == rival_pid).unwrap();
    assert_eq!(rival["container"], serde_json::json!({"runtime": "docker", "id": &id[..12]}), "{rival}");
    assert!(blame.filter(|entry| entry["holder"] == "idle").all(|entry| entry["container"].is_null()));
}

#[test]
fn whole_system_mode_blames_the_rival() {
    let report = report_path("blame-system");
    let mut probe =
        Running::spawn(Command::new(PROBE).args(["--json", "-o"]).arg(&report).stderr(Stdio::piped()));
    let _stderr = wait_until_tracing(&mut probe);
    let (_rival, rival_pid) = start_rival();
    let output = Command::new(workload()).args(["--pinned-spin", "1,1000,traced-spin"]).output().unwrap();
    assert!(output.status.success());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(probe.id() as i32, libc::SIGINT) };
    assert!(wait_with_timeout(&mut probe, Duration::from_secs(10)).success());
    let trace = Trace::read(&report);
    std::fs::remove_file(report).unwrap();
    assert_blamed_on_rival(&trace, &Workload::parse(&String::from_utf8_lossy(&output.stdout)), rival_pid);
}
