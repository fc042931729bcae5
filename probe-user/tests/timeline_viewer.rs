//! The `--trace` timeline in a real viewer: speedscope (npm's build of the
//! viewer behind speedscope.app, which `cargo xtask test` installs and
//! names in PROBE_TEST_SPEEDSCOPE) opens probe's Chrome trace-event JSON in
//! a headless Chromium, the way its own command line `speedscope FILE`
//! hands it a file, and what the page then shows is read off its DOM and
//! its console. (The Perfetto UI cannot be fetched here.)

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use base64::Engine;
use common::{report_path, trace_command, wait_with_timeout, Running};
use serde_json::Value as Json;

/// speedscope's built page, `dist/release/index.html`.
fn speedscope_page() -> PathBuf {
    let page = std::env::var_os("PROBE_TEST_SPEEDSCOPE").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "PROBE_TEST_SPEEDSCOPE is unset: run the tests with `cargo xtask test`, which installs \
             speedscope from npm and sets it"
        )
    });
    assert!(page.is_file(), "{} is missing: rerun `cargo xtask test`", page.display());
    page
}

/// What Chromium showed of `trace` (named `name`) opened in speedscope:
/// the DOM once the page settled, and the page's console.
struct Shown {
    dom: String,
    console: Vec<String>,
}

/// Opens `trace` in speedscope in a headless Chromium, as `speedscope
/// FILE` does: a script that hands speedscope the file in base64, named
/// in the page's `#localProfilePath`.
fn open_in_speedscope(name: &str, trace: &str) -> Shown {
    let directory = std::env::temp_dir().join(format!("probe-test-speedscope-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let loader = directory.join("trace.js");
    let base64 = base64::engine::general_purpose::STANDARD.encode(trace);
    let call = format!("speedscope.loadFileFromBase64({}, {})", Json::from(name), Json::from(base64));
    std::fs::write(&loader, call).unwrap();
    let url = format!("file://{}#localProfilePath={}", speedscope_page().display(), loader.display());
    let (dom, log) = (directory.join("dom.html"), directory.join("chromium.log"));
    let mut chromium = Running::spawn(
        Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--hide-scrollbars"])
            // speedscope draws with WebGL: Chromium's software renderer
            // then, there being no GPU.
            .args(["--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
            // The page's console on stderr.
            .args(["--enable-logging=stderr", "--v=0"])
            // The DOM once the import's timers have run.
            .args(["--virtual-time-budget=10000", "--dump-dom"])
            .arg(format!("--user-data-dir={}", directory.join("profile").display()))
            .arg(&url)
            .stdout(std::fs::File::create(&dom).unwrap())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let status = wait_with_timeout(&mut chromium, Duration::from_secs(120));
    let dom = std::fs::read_to_string(&dom).unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir_all(&directory);
    assert!(status.success(), "chromium failed ({status}): {log}");
    // `[…:INFO:CONSOLE:4] "message", source: URL (4)`
    let console = log.lines().filter(|line| line.contains(":CONSOLE")).map(str::to_owned).collect();
    Shown { dom, console }
}

/// The rows of speedscope's profile list (a profile per track), by the
/// name in their `title`: the total time of their slices as shown.
fn profile_rows(dom: &str) -> BTreeMap<String, String> {
    dom.split("<tr title=\"")
        .skip(1)
        .filter_map(|row| {
            let (title, rest) = row.split_once('"')?;
            let row = &rest[..rest.find("</tr>")?];
            // The last cell: "109.45ms".
            let weight = row.rsplit("<td").next()?.split_once('>')?.1.strip_suffix("</td>")?;
            let title = [("&quot;", "\""), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")]
                .iter()
                .fold(title.to_owned(), |title, (entity, character)| title.replace(entity, character));
            Some((title, weight.to_owned()))
        })
        .collect()
}

/// Milliseconds from speedscope's "1.23s", "109.45ms", "512.00µs".
fn milliseconds(shown: &str) -> f64 {
    let units = [("ms", 1.0), ("µs", 1e-3), ("s", 1e3)];
    let (number, scale) = units
        .iter()
        .find_map(|(unit, scale)| Some((shown.strip_suffix(unit)?, scale)))
        .unwrap_or_else(|| panic!("not a time: {shown}"));
    number.parse::<f64>().unwrap_or_else(|_| panic!("not a time: {shown}")) * scale
}

/// Runs the workload with `args` under `probe --trace`: the trace as
/// written, and the workload's account.
fn record(name: &str, args: &[&str]) -> (String, common::Workload) {
    let path = report_path(&format!("{name}-timeline"));
    let (_, run, output) = trace_command(name, &["--trace", path.to_str().unwrap()], args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let trace = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    (trace, run)
}

/// The names speedscope gives the tracks with slices: "PROCESS (pid P),
/// THREAD (tid T)", from the trace's own metadata.
fn track_names(trace: &Json) -> BTreeSet<String> {
    let events = trace["traceEvents"].as_array().unwrap();
    let metadata = |kind: &str| -> BTreeMap<(u64, Option<u64>), &str> {
        (events.iter())
            .filter(|e| e["ph"] == "M" && e["name"] == kind)
            .map(|e| ((e["pid"].as_u64().unwrap(), e["tid"].as_u64()), e["args"]["name"].as_str().unwrap()))
            .collect()
    };
    let (processes, threads) = (metadata("process_name"), metadata("thread_name"));
    (events.iter())
        .filter(|e| e["ph"] == "X")
        .map(|e| (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|(pid, tid)| {
            format!("{} (pid {pid}), {} (tid {tid})", processes[&(pid, None)], threads[&(pid, Some(tid))])
        })
        .collect()
}

#[test]
fn speedscope_shows_a_track_per_thread_with_its_calls() {
    const SLEEPS_MS: [u64; 3] = [5, 20, 50];
    // Threads named as they like: what the viewer shows is their name.
    const NAMES: [&str; 2] = ["reader", "a\"<b>&c"];
    let sleeps = SLEEPS_MS.map(|ms| ms.to_string()).join(",");
    let (text, run) = record(
        "speedscope",
        &[
            "--getppid",
            "3000",
            "--sleeps",
            &sleeps,
            "--spin",
            "30",
            "--rename",
            NAMES[0],
            "--rename",
            NAMES[1],
        ],
    );
    let trace: Json = serde_json::from_str(&text).expect("the timeline is JSON");
    let tracks = track_names(&trace);
    let shown = open_in_speedscope("probe-trace.json", &text);
    let (dom, console) = (&shown.dom, shown.console.join("\n"));
    assert!(console.contains("Importing as Trace Event Format profile"), "{console}");
    // An exception, or speedscope's own error page, or its landing page
    // still there (a file it did not take, or no WebGL to draw with).
    assert!(!console.contains("Uncaught"), "{console}");
    assert!(!dom.contains("Something went wrong"), "{dom}\n{console}");
    assert!(!dom.contains("Drag and drop a profile"), "speedscope loaded nothing: {dom}\n{console}");
    // A thread's slices are its syscalls one after the other; speedscope
    // says so when a slice ends inside another on its track (a syscall's
    // frame is "NAME {"ret":N}"). On the CPU tracks, runs end exactly where
    // the next begins, and speedscope's float sums of `ts + dur` can then
    // put an end past the next start: it says so, and those are not probe's.
    let misnested: Vec<&String> = (shown.console.iter())
        .filter(|line| line.contains("Tried to end") && line.contains("{\"ret\":"))
        .collect();
    assert!(misnested.is_empty(), "slices across each other on a thread's track: {misnested:#?}");
    // Every track, named as the trace names it, and the first on view.
    let rows = profile_rows(dom);
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), tracks, "{dom}");
    assert!(dom.contains(&format!("(1/{})", tracks.len())), "{dom}");
    for name in NAMES {
        assert!(rows.keys().any(|row| row.contains(&format!(", {name} ("))), "no thread {name}: {rows:#?}");
    }
    // Each workload thread.
    for thread in &run.threads {
        let (process, thread) =
            (format!("workload (pid {}), ", run.pid), format!(" ({0}) (tid {0})", thread.tid));
        let shown = rows.keys().any(|row| row.starts_with(&process) && row.ends_with(&thread));
        assert!(shown, "no track {process}…{thread}: {rows:#?}");
    }
    // The sleeper's time in its calls as the trace has it, which holds the
    // sleeps: the timestamps are microseconds, as speedscope reads them.
    let sleeper = run.doing("sleeps").next().expect("a sleeping thread");
    let in_calls_ms: f64 = (trace["traceEvents"].as_array().unwrap().iter())
        .filter(|e| e["ph"] == "X" && e["tid"] == sleeper.tid)
        .map(|e| e["dur"].as_f64().unwrap() / 1e3)
        .sum();
    let slept: u64 = SLEEPS_MS.iter().sum();
    assert!(in_calls_ms >= slept as f64, "{in_calls_ms} ms in calls, {slept} ms of sleeps");
    let name = format!("workload (pid {}), workload ({}) (tid {})", run.pid, sleeper.tid, sleeper.tid);
    // Shown with two decimals.
    let shown_ms = milliseconds(&rows[&name]);
    assert!(
        (shown_ms - in_calls_ms).abs() <= (in_calls_ms * 0.005).max(0.01),
        "the sleeper's {in_calls_ms} ms in calls shown as {}",
        rows[&name]
    );
}
