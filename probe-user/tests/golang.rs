//! The Go view against Go programs built here with Debian's golang-go:
//! their own account (goroutine ids and counts they print) is the truth.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{trace_program, Trace};
use serde_json::Value;

/// Builds the Go program in `tests/go/NAME` with `flags`, once per name.
fn build(name: &str, flags: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go").join(name);
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let binary = target.join(format!("go-{name}{}", flags.join("").replace(['-', '=', ' '], "")));
    let status = Command::new("go")
        .current_dir(&source)
        .args(["build", "-o"])
        .arg(&binary)
        .args(flags)
        .arg(".")
        .env("GOCACHE", target.join("go-cache"))
        .env("GOFLAGS", "-mod=mod")
        .status()
        .expect("go is missing: run the tests with `cargo xtask test`, which installs golang-go");
    assert!(status.success(), "go build {name} failed");
    binary
}

/// probe's JSON trace of `binary args` in COMMAND mode, the program's
/// stdout and probe's stderr.
fn trace(name: &str, binary: &Path, args: &[&str]) -> (Trace, String, String) {
    let (trace, output) = trace_program(name, &["--goroutines"], binary, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    (trace, String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

fn goroutine(trace: &Trace, goid: u64) -> &Value {
    let goroutines = trace.summary["goroutines"].as_array().expect("a goroutines list");
    goroutines
        .iter()
        .find(|g| g["goid"] == goid)
        .unwrap_or_else(|| panic!("no goroutine {goid}: {goroutines:?}"))
}

/// Successful calls of `name` (a read interrupted and restarted by the
/// kernel is seen twice, once failing).
fn succeeded(entry: &Value, name: &str) -> u64 {
    entry["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|call| call["name"] == name)
        .map_or(0, |call| call["count"].as_u64().unwrap() - call["errors"].as_u64().unwrap())
}

#[test]
fn hello_world_is_written_by_goroutine_one_on_the_threads_it_counts() {
    let binary = build("hello", &[]);
    let (trace, stdout, _) = trace("go-hello", &binary, &[]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[2], "Hello world!");
    let threadcreate: usize = lines[1].parse().unwrap();
    let go = &trace.summary["go"][0];
    assert!(go["version"].as_str().unwrap().starts_with("go1."), "{go}");
    let threads = go["threads"].as_array().unwrap();
    assert!(
        threads.len() >= threadcreate,
        "{} threads seen, the runtime counted {threadcreate}",
        threads.len()
    );
    assert!(threads.iter().any(|t| t["role"].as_str().unwrap().starts_with("sysmon")), "{threads:?}");
    assert!(go["gomaxprocs"].as_i64().unwrap() >= 1);
    // Three Println calls, three writes, all by goroutine 1 (runtime.main).
    let main = goroutine(&trace, 1);
    assert_eq!(main["start_fn"], "runtime.main");
    assert_eq!(succeeded(main, "write"), 3, "{main}");
    let others: u64 = trace.summary["goroutines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["goid"] != 1)
        .map(|g| succeeded(g, "write"))
        .sum();
    assert_eq!(others, 0);
}

#[test]
fn each_goroutines_calls_are_counted_exactly_wherever_it_ran() {
    let binary = build("goroutines", &[]);
    let (trace, stdout, _) = trace("go-goroutines", &binary, &["6"]);
    let mut moved = 0;
    for line in stdout.lines() {
        let account: Value = serde_json::from_str(line).unwrap();
        let entry = goroutine(&trace, account["goid"].as_u64().unwrap());
        assert!(entry["start_fn"].as_str().unwrap().starts_with("main.main.func"), "{entry}");
        assert_eq!(succeeded(entry, "getppid"), account["getppid"].as_u64().unwrap(), "{entry}");
        assert_eq!(succeeded(entry, "read"), account["reads"].as_u64().unwrap(), "{entry}");
        moved += entry["moves"].as_u64().unwrap();
    }
    assert_eq!(stdout.lines().count(), 6);
    assert!(moved > 0, "no goroutine moved between threads: the attribution was not put to the test");
}

#[test]
fn a_stripped_go_binary_gets_a_note_and_the_thread_view() {
    let binary = build("hello", &["-ldflags=-s -w"]);
    let (trace, stdout, stderr) = trace("go-stripped", &binary, &[]);
    assert!(stdout.contains("Hello world!"));
    assert!(stderr.contains("is a Go program") && stderr.contains("stripped"), "{stderr}");
    assert!(trace.summary.get("goroutines").is_none());
    assert!(!trace.summary["threads"].as_array().unwrap().is_empty());
}

#[test]
fn without_goroutines_a_go_program_gets_a_hint_and_no_uprobes() {
    let binary = build("hello", &[]);
    let (trace, output) = trace_program("go-hint", &[], &binary, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is a Go program: --goroutines"), "{stderr}");
    assert!(trace.summary.get("goroutines").is_none());
}

#[test]
fn a_go_programs_slow_reads_name_their_goroutines_and_functions() {
    // Each worker's first read waits for main's first write, 5 ms on.
    let binary = build("goroutines", &[]);
    // It lives on for 300 ms after, for its objects to be read.
    let (trace, output) =
        trace_program("go-slow", &["--goroutines", "--slow", "3ms"], &binary, &["4", "300"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let workers: Vec<u64> = stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["goid"].as_u64().unwrap())
        .collect();
    let reads: Vec<&Value> = trace.slow_calls.iter().filter(|call| call["name"] == "read").collect();
    assert!(reads.len() >= workers.len(), "{:#?}", trace.slow_calls);
    let mut named = 0;
    for read in reads {
        let goid = read["goroutine"].as_u64().unwrap_or_else(|| panic!("no goroutine: {read}"));
        assert!(workers.contains(&goid), "goroutine {goid} is no worker {workers:?}: {read}");
        if read["user_stack"]["end"] == "process_gone" {
            continue;
        }
        named += 1;
        let from: Vec<&str> = read["user_stack"]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["function"].as_str())
            .collect();
        assert!(from.contains(&"syscall.Read"), "{from:?}");
        assert!(from.iter().any(|f| f.starts_with("main.main.func")), "{from:?}");
    }
    assert!(named > 0, "no slow read was explained while the program lived");
}
