//! Exports: the Prometheus endpoint scraped over HTTP and parsed as
//! OpenMetrics text, and the `--trace` timeline parsed as JSON, both
//! against the workload's own account.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    report_path, trace_command, wait_until_tracing, wait_with_timeout, workload, Running, Workload, PROBE,
};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::Value as Json;

/// A loopback port nothing listens on (free when this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `probe --prometheus` on the whole system, already tracing.
fn serve(port: u16, args: &[&str]) -> Running {
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["--prometheus", &format!("127.0.0.1:{port}"), "-i", "200ms"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_until_tracing(&mut probe);
    probe
}

fn scrape(port: u16) -> Vec<Sample> {
    let body = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .expect("the endpoint answers")
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(body.ends_with("# EOF\n"), "not OpenMetrics: {}", &body[body.len().saturating_sub(200)..]);
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("the scrape parses").samples
}

fn value(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(_) | Value::Summary(_) => panic!("{} is not a number", sample.metric),
    }
}

/// The samples of `metric` whose labels include `labels`.
fn find<'a>(samples: &'a [Sample], metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// Scrapes until `done` holds (the series come with the next interval).
fn scrape_until(port: u16, what: &str, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(port);
        if done(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "no {what} after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_workload(args: &[&str]) -> Workload {
    let output = Command::new(workload()).args(args).output().unwrap();
    assert!(output.status.success());
    Workload::parse(&String::from_utf8_lossy(&output.stdout))
}

#[test]
fn prometheus_counters_are_exact_and_histograms_agree() {
    let port = free_port();
    let _probe = serve(port, &["-e", "getppid", "--prometheus-threads", "100"]);
    let run = run_workload(&["--getppid", "1000,2500,4000"]);
    let pid = run.pid.to_string();
    let total: u64 = run.threads.iter().map(|t| t.calls).sum();
    let process = [("pid", pid.as_str()), ("syscall", "getppid")];
    let samples = scrape_until(port, "counter for the workload", |samples| {
        find(samples, "probe_syscalls_total", &process).first().is_some_and(|s| value(s) == total as f64)
    });
    let count = find(&samples, "probe_syscall_latency_seconds_count", &process);
    assert_eq!(
        count.iter().map(|s| value(s)).collect::<Vec<_>>(),
        [total as f64],
        "histogram count = counter"
    );
    let histogram = find(&samples, "probe_syscall_latency_seconds", &process);
    let Some(Value::Histogram(buckets)) = histogram.first().map(|s| &s.value) else {
        panic!("no latency histogram: {histogram:?}");
    };
    let inf = buckets.iter().find(|b| b.less_than == f64::INFINITY).expect("a +Inf bucket");
    assert_eq!(inf.count, total as f64);
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "cumulative buckets: {buckets:?}");
    for thread in &run.threads {
        let tid = thread.tid.to_string();
        let labels = [("pid", pid.as_str()), ("tid", tid.as_str()), ("syscall", "getppid")];
        let counter = find(&samples, "probe_thread_syscalls_total", &labels);
        assert_eq!(
            counter.iter().map(|s| value(s)).collect::<Vec<_>>(),
            [thread.calls as f64],
            "thread {tid}"
        );
    }
    let health = find(&samples, "probe_lost_events_total", &[]);
    assert_eq!(health.len(), 1);
    assert!(find(&samples, "probe_sched_on_cpu_seconds_total", &[("pid", pid.as_str())]).len() == 1);
}

#[test]
fn thread_series_stay_under_the_cap_and_go_after_their_threads() {
    let port = free_port();
    let cap = 50;
    let _probe =
        serve(port, &["-e", "getppid", "--prometheus-threads", &cap.to_string(), "--prometheus-grace", "3s"]);
    let run = run_workload(&["--threads", "2000"]);
    let pid = run.pid.to_string();
    let of_workload = [("pid", pid.as_str())];
    let samples = scrape_until(port, "the workload's series", |samples| {
        find(samples, "probe_syscalls_total", &of_workload).first().is_some_and(|s| value(s) == 2000.0)
    });
    let threads = find(&samples, "probe_thread_syscalls_total", &of_workload);
    let tids: BTreeMap<&str, f64> =
        threads.iter().map(|s| (s.labels.get("tid").unwrap(), value(s))).collect();
    assert!(tids.len() <= cap + 1, "{} thread series, cap {cap}", tids.len());
    assert_eq!(tids.values().sum::<f64>(), 2000.0, "the folded threads are counted under tid=\"other\"");
    assert!(tids.contains_key("other"));
    // Gone, and three seconds of grace later, their series go too.
    scrape_until(port, "the series to go", |samples| {
        find(samples, "probe_thread_syscalls_total", &of_workload).is_empty()
            && find(samples, "probe_syscalls_total", &of_workload).is_empty()
    });
}

/// Runs probe on the workload in COMMAND mode with `--trace`, and returns
/// the timeline, probe's stderr and the workload's account.
fn timeline(name: &str, args: &[&str], workload_args: &[&str]) -> (Json, String, Workload) {
    let path = report_path(&format!("{name}-timeline"));
    let path_arg = path.to_str().unwrap();
    let args: Vec<&str> = ["--trace", path_arg].into_iter().chain(args.iter().copied()).collect();
    let (_, run, output) = trace_command(name, &args, workload_args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let trace: Json = serde_json::from_str(&text).expect("the timeline is JSON");
    (trace, String::from_utf8_lossy(&output.stderr).into_owned(), run)
}

#[test]
fn the_timeline_has_a_slice_per_syscall_in_order_per_track() {
    let (trace, _, run) = timeline("timeline", &[], &["--getppid", "3000,5000", "--affinity", "20"]);
    let events = trace["traceEvents"].as_array().unwrap();
    for thread in run.doing("getppid") {
        let slices = events
            .iter()
            .filter(|e| e["ph"] == "X" && e["tid"] == thread.tid && e["name"] == "getppid")
            .count() as u64;
        assert_eq!(slices, thread.calls, "getppid slices of thread {}", thread.tid);
    }
    let mut last: HashMap<(u64, u64), f64> = HashMap::new();
    for event in events.iter().filter(|e| e["ph"] != "M") {
        let track = (event["pid"].as_u64().unwrap(), event["tid"].as_u64().unwrap());
        let ts = event["ts"].as_f64().unwrap();
        let before = last.insert(track, ts).unwrap_or(0.0);
        assert!(ts >= before, "track {track:?} goes back from {before} to {ts}");
    }
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    let mover = run.doing("affinity").next().unwrap();
    assert!(names.contains(&format!("workload ({})", mover.tid).as_str()), "{names:?}");
    assert!(names.contains(&"CPU 0") && names.contains(&"CPU 1"), "{names:?}");
    let migrations = events.iter().filter(|e| e["ph"] == "i" && e["args"]["tid"] == mover.tid).count() as u64;
    assert!(migrations >= mover.calls, "{migrations} migrations for {} moves", mover.calls);
    assert_eq!(trace["otherData"]["events_cut"], 0);
}

#[test]
fn the_timeline_stops_at_its_limit_and_says_so() {
    let (trace, stderr, _) = timeline("timeline-limit", &["--trace-limit", "500"], &["--getppid", "3000"]);
    let events = trace["traceEvents"].as_array().unwrap();
    assert_eq!(events.iter().filter(|e| e["ph"] != "M").count(), 500);
    let cut = trace["otherData"]["events_cut"].as_u64().unwrap();
    assert!(cut >= 2500, "{cut}");
    assert!(stderr.contains(&format!("{cut} later ones left out")), "{stderr}");
}

#[test]
fn a_port_in_use_is_one_line() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let mut probe = Running::spawn(
        Command::new(PROBE).args(["--prometheus", &address]).stdout(Stdio::null()).stderr(Stdio::piped()),
    );
    let status = wait_with_timeout(&mut probe, Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(probe.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is the port in use"), "{stderr}");
}
