//! Exports: the Prometheus endpoint scraped over HTTP and parsed as
//! OpenMetrics text, and the `--trace` timeline parsed as JSON, both
//! against the workload's own account.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use base64::Engine;
use common::{
    fdinfo_values,
    metrics::{free_port, scrape, PROMETHEUS_ACCEPT},
    report_path, trace_command, wait_until_tracing, wait_with_timeout, workload, Running, Trace, Workload,
    PROBE,
};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::Value as Json;

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
    let _probe = serve(port, &["-e", "getppid", "--prometheus-threads", "100", "--prometheus-pids"]);
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
    let _probe = serve(
        port,
        &[
            "-e",
            "getppid",
            "--prometheus-threads",
            &cap.to_string(),
            "--prometheus-grace",
            "3s",
            "--prometheus-pids",
        ],
    );
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
#[test]
fn a_fork_storm_keeps_the_scrape_small() {
    // 2,000 short processes of one name, and a few of others: by default a
    // series per name, at most --prometheus-processes of them. The cap
    // leaves room for the kernel threads and daemons that switch in the
    // first interval, which take the first places (a cap of 5 went to
    // them on a busier machine, and `true` to "other"). Only the calls
    // that start and end a process: the rest of the machine's calls, a
    // test runner's among them, once took the scrape past the bound below
    // with no process series too many.
    let port = free_port();
    let _probe =
        serve(port, &["--prometheus-processes", "40", "--prometheus-grace", "1h", "-e", "execve,exit_group"]);
    let storm = "i=0; while [ $i -lt 2000 ]; do /bin/true; i=$((i+1)); done; /bin/echo >/dev/null; /bin/ls >/dev/null";
    assert!(Command::new("sh").args(["-c", storm]).status().unwrap().success());
    let done = |samples: &[Sample]| {
        let exits = find(samples, "probe_syscalls_total", &[("comm", "true"), ("syscall", "exit_group")]);
        exits.first().is_some_and(|sample| value(sample) == 2000.0)
    };
    let samples = scrape_until(port, "2000 exit_group of comm=true", done);
    // Every process of a name is one series, and no pid label.
    assert!(samples.iter().all(|sample| sample.labels.get("pid").is_none()), "pid labels by default");
    let names: std::collections::BTreeSet<String> =
        samples.iter().filter_map(|sample| sample.labels.get("comm").map(|comm| comm.to_string())).collect();
    assert!(names.len() <= 40 + 1, "{names:?}");
    // The whole scrape stays small however many processes came and went
    // (a series of its own for each would be some 10 MB).
    let body = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(body.len() < 512 * 1024, "{} bytes", body.len());
}

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
    // Slices and instants in time order on each track. (A wakeup's flow
    // arrow is written when it happens, before the slices it binds to end
    // and are written: viewers sort by time.)
    let mut last: HashMap<(u64, u64), f64> = HashMap::new();
    for event in events.iter().filter(|e| !["M", "s", "f"].contains(&e["ph"].as_str().unwrap())) {
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
    assert!(stderr.contains("the port is in use"), "{stderr}");
}

/// Starts `command` (a probe with `--prometheus`) and reads its stderr
/// until it traces: the address it serves metrics at, from its line
/// "probe: serving metrics at URL", and the rest of its stderr.
fn start_serving(command: &mut Command) -> (Running, String, BufReader<std::process::ChildStderr>) {
    let mut probe = Running::spawn(command.stdout(Stdio::null()).stderr(Stdio::piped()));
    let mut stderr = BufReader::new(probe.stderr.take().unwrap());
    let mut said = String::new();
    let mut url = None;
    while !said.contains("probe: tracing") {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "probe ended: {said}");
        if let Some(at) = line.trim().strip_prefix("probe: serving metrics at ") {
            url = Some(at.to_owned());
        }
        said.push_str(&line);
    }
    (probe, url.unwrap_or_else(|| panic!("no address said: {said}")), stderr)
}

/// An agent that does not take 4xx for errors, with a deadline per request.
fn agent(tls: Option<&[u8]>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)));
    if let Some(der) = tls {
        let root = ureq::tls::Certificate::from_der(der).to_owned();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![root])))
                .build(),
        );
    }
    config.build().new_agent()
}

/// Status, content type and body of a GET of `url`, with `headers`.
fn get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let header =
        |name| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let content_type = header("content-type");
    let status = response.status().as_u16();
    (status, content_type, response.body_mut().read_to_string().unwrap())
}

/// The sample lines of an exposition, in order.
fn sample_lines(body: &str) -> Vec<&str> {
    body.lines().filter(|line| !line.starts_with('#')).collect()
}

/// A raw HTTP/1.1 exchange: the request as given, the whole answer until
/// the server closes.
fn exchange(address: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_bound_port_is_said() {
    let (_probe, url, _) =
        start_serving(Command::new(PROBE).args(["--prometheus", "127.0.0.1:0", "-i", "200ms"]));
    let port: u16 = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{url}"));
    assert_ne!(port, 0);
    assert!(find(&scrape(port), "probe_events_total", &[]).len() == 1);
}

#[test]
fn an_address_of_another_machine_is_said_so() {
    // TEST-NET-1: bound, never reached.
    let output = Command::new(PROBE).args(["--prometheus", "192.0.2.1:9464"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "probe: cannot serve metrics on 192.0.2.1:9464: is that an address of this machine?\n"
    );
}

#[test]
fn metrics_are_read_with_get_or_head_only() {
    let port = free_port();
    let _probe = serve(port, &[]);
    let address = format!("127.0.0.1:{port}");
    for method in ["POST", "PUT", "DELETE", "TRACE", "OPTIONS", "FOO"] {
        let answer = exchange(
            &address,
            &format!(
                "{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{method}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nallow: get, head\r\n"), "{method}: {answer}");
    }
    let answer = exchange(&address, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .and_then(|length| length.parse().ok())
        .unwrap_or_else(|| panic!("no length: {head}"));
    assert!(length > 100, "{head}");
    assert_eq!(body, "", "a HEAD answer has no body");
    let answer = exchange(&address, "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
}

#[test]
fn the_format_follows_accept() {
    let port = free_port();
    // One interval for the whole test: every scrape is of the same rendering.
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["--prometheus", &format!("127.0.0.1:{port}"), "-i", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_until_tracing(&mut probe);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let agent = agent(None);
    let (status, content_type, openmetrics) = get(&agent, &url, &[("Accept", PROMETHEUS_ACCEPT)]);
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(openmetrics.contains("# TYPE probe_events counter\n"), "{openmetrics}");
    // curl, promtool, older scrapers: the classic text.
    for accept in
        [None, Some("*/*"), Some("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;q=0.1")]
    {
        let headers: Vec<(&str, &str)> = accept.map(|accept| ("Accept", accept)).into_iter().collect();
        let (status, content_type, text) = get(&agent, &url, &headers);
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8", "{accept:?}");
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# HELP probe_events_total Records received from the kernel programs.\n"));
        assert!(text.contains("# TYPE probe_events_total counter\nprobe_events_total "), "{text}");
        assert!(!text.contains("# TYPE probe_events counter"));
        assert_eq!(sample_lines(&text), sample_lines(&openmetrics), "the same samples in both formats");
        let samples =
            Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("the text parses").samples;
        let events = find(&samples, "probe_events_total", &[]);
        assert!(matches!(events[0].value, Value::Counter(_)), "{events:?}");
    }
    let (_, content_type, draft) =
        get(&agent, &url, &[("Accept", "application/openmetrics-text;version=0.0.1")]);
    assert_eq!(content_type, "application/openmetrics-text; version=0.0.1; charset=utf-8");
    assert_eq!(draft, openmetrics);
}

/// The kernel's BPF statistics add two clock reads to every run of every
/// BPF program on the machine: the metrics have them turned on, and serve
/// probe_bpf_run_seconds_total, only with --bpf-stats. The kernel's own
/// count of the runs of probe's programs (their fds' `run_cnt`) says
/// whether they were on.
#[test]
fn bpf_statistics_are_on_only_when_asked_for() {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap();
    assert_eq!(sysctl.trim(), "0", "kernel.bpf_stats_enabled is on: turn it off to run this test");
    for asked in [false, true] {
        let address = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--prometheus", address.as_str(), "-i", "100ms"];
        if asked {
            args.push("--bpf-stats");
        }
        let mut probe =
            Running::spawn(Command::new(PROBE).args(&args).stdout(Stdio::null()).stderr(Stdio::piped()));
        wait_until_tracing(&mut probe);
        thread::sleep(Duration::from_millis(500));
        let runs: u64 = fdinfo_values(probe.id(), "run_cnt").iter().sum();
        let (status, _, text) = get(&agent(None), &format!("http://{address}/metrics"), &[]);
        assert_eq!(status, 200);
        if asked {
            assert!(runs > 0, "--bpf-stats, and the kernel counted no run of probe's programs");
            assert!(text.contains("\nprobe_bpf_run_seconds_total "), "{text}");
        } else {
            assert_eq!(runs, 0, "the kernel's statistics were on without --bpf-stats");
            assert!(!text.contains("probe_bpf_run_seconds"), "{text}");
        }
    }
}

/// Twenty scrapers in a loop while a workload makes 3 million getppid,
/// with 3.5 MB of series to render (a thousand threads of their own): when
/// the endpoint rendered every scrape on the event loop, probe lost three
/// quarters of the storm's records to them.
#[test]
fn twenty_scrapers_cost_the_trace_no_record() {
    const STORM: u64 = 3_000_000;
    const SCRAPERS: usize = 20;
    let port = free_port();
    let report = report_path("scrapers");
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["--prometheus", &format!("127.0.0.1:{port}"), "-i", "200ms", "-e", "getppid"])
            .args(["--prometheus-threads", "5000", "--json", "-o"])
            .arg(&report)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let _stderr = wait_until_tracing(&mut probe);
    let url = format!("http://127.0.0.1:{port}/metrics");
    run_workload(&["--threads", "1000"]);
    let series = scrape_until(port, "a thousand threads' series", |samples| {
        find(samples, "probe_thread_syscalls_total", &[]).len() >= 1000
    });
    let stop = Arc::new(AtomicBool::new(false));
    let scrapers: Vec<_> = (0..SCRAPERS)
        .map(|_| {
            let (stop, url) = (stop.clone(), url.clone());
            std::thread::spawn(move || {
                let agent = agent(None);
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let (status, _, body) = get(&agent, &url, &[("Accept", PROMETHEUS_ACCEPT)]);
                    assert_eq!(status, 200);
                    assert!(body.ends_with("# EOF\n"));
                    latencies.push(start.elapsed());
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let run = run_workload(&["--getppid", &STORM.to_string()]);
    let storm = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let latencies: Vec<Vec<Duration>> = scrapers.into_iter().map(|s| s.join().unwrap()).collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(probe.id() as i32, libc::SIGINT) };
    assert!(wait_with_timeout(&mut probe, Duration::from_secs(10)).success());
    let trace = Trace::read(&report);
    std::fs::remove_file(&report).unwrap();
    let mut all: Vec<Duration> = latencies.iter().flatten().copied().collect();
    all.sort();
    eprintln!(
        "{} scrapes of {} samples by {SCRAPERS} scrapers around a {:.1} s storm: median {:?}, slowest {:?}; {} records, {} lost",
        all.len(),
        series.len(),
        storm.as_secs_f64(),
        all[all.len() / 2],
        all[all.len() - 1],
        trace.summary["events"],
        trace.summary["lost_events"]
    );
    assert!(latencies.iter().all(|scraper| !scraper.is_empty()), "a scraper was never answered");
    assert!(all[all.len() - 1] < Duration::from_secs(5), "{:?}", all[all.len() - 1]);
    assert_eq!(trace.summary["lost_events"], 0, "the scrapers cost the trace records");
    let thread = &run.threads[0];
    assert_eq!(thread.calls, STORM);
    assert_eq!(trace.syscall(thread.tid, "getppid")["count"], STORM, "the storm's count");
}

/// `probe --prometheus` on `port`, `-e getppid`, at most `descriptors`
/// open (all if None), serving and tracing.
fn serve_with(port: u16, descriptors: Option<u64>) -> (Running, BufReader<std::process::ChildStderr>) {
    let mut command = Command::new(PROBE);
    command.args(["--prometheus", &format!("127.0.0.1:{port}"), "-i", "200ms", "-e", "getppid"]);
    if let Some(descriptors) = descriptors {
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: descriptors, rlim_max: descriptors };
                match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
    let (probe, _, stderr) = start_serving(&mut command);
    (probe, stderr)
}

/// `count` connections to `address` that never send a whole request: some
/// send nothing, some half a request head.
fn hold(address: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let mut stream = TcpStream::connect(address).unwrap();
            if i % 2 == 1 {
                stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
            }
            stream
        })
        .collect()
}

/// Stops probe with SIGINT; what else it said on stderr.
fn stop(mut probe: Running, stderr: BufReader<std::process::ChildStderr>) -> Vec<String> {
    assert!(probe.try_wait().unwrap().is_none(), "probe ended");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(probe.id() as i32, libc::SIGINT) };
    assert!(wait_with_timeout(&mut probe, Duration::from_secs(10)).success());
    stderr.lines().map(Result::unwrap).collect()
}

#[test]
fn held_connections_cannot_keep_a_scraper_out() {
    // Descriptors for probe's own (about 50) and a few connections; far
    // fewer than the connections held.
    const HELD: usize = 300;
    let port = free_port();
    let (probe, stderr) = serve_with(port, Some(80));
    let address = format!("127.0.0.1:{port}");
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", probe.id())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().to_owned()
    };
    let rss_before = rss();
    let held = hold(&address, HELD);
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let (status, _, body) = get(&agent(None), &format!("http://{address}/metrics"), &[]);
    let latency = start.elapsed();
    assert_eq!(status, 200);
    assert!(body.contains("probe_events_total"));
    eprintln!(
        "a scrape past {HELD} held connections: {latency:?}; probe's RSS {rss_before} before, {} with them",
        rss()
    );
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    // Every held connection is closed by the endpoint: at once for a newer
    // one, or when its head is late.
    let deadline = Instant::now() + Duration::from_secs(15);
    for mut stream in held {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut [0; 512]) {
            Ok(0) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a held connection still open after 15 s: {other:?}"),
        }
    }
    // Still serving, and nothing to say about it.
    assert_eq!(get(&agent(None), &format!("http://{address}/metrics"), &[]).0, 200);
    let said = stop(probe, stderr);
    assert!(said.iter().all(|line| !line.contains("cannot accept")), "{said:?}");
}

#[test]
fn out_of_descriptors_the_endpoint_waits_and_says_so_once() {
    // The lowest descriptor number free once probe serves: with a limit one
    // above it, `accept` fails for any second connection.
    let port = free_port();
    let (probe, stderr) = serve_with(port, None);
    std::thread::sleep(Duration::from_millis(500));
    let mut open: Vec<u64> = std::fs::read_dir(format!("/proc/{}/fd", probe.id()))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    open.sort();
    let free = (0..).zip(&open).find(|(n, fd)| n != *fd).map_or(open.len() as u64, |(n, _)| n);
    drop((probe, stderr));
    let port = free_port();
    let (probe, stderr) = serve_with(port, Some(free + 1));
    let address = format!("127.0.0.1:{port}");
    let held = hold(&address, 50);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let start = Instant::now();
        let (status, _, body) = get(&agent(None), &format!("http://{address}/metrics"), &[]);
        assert_eq!(status, 200);
        assert!(body.contains("probe_events_total"));
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }
    drop(held);
    let said = stop(probe, stderr);
    let lines: Vec<&String> = said.iter().filter(|line| line.contains("cannot accept")).collect();
    assert_eq!(lines.len(), 1, "{said:?}");
    assert!(lines[0].contains("Too many open files") && lines[0].contains("(said once)"), "{said:?}");
}

/// A self-signed certificate for 127.0.0.1, its key, and a web config with
/// `extra` in `directory`; the certificate's DER.
fn tls_files(directory: &Path, extra: &str) -> Vec<u8> {
    std::fs::create_dir_all(directory).unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    std::fs::write(directory.join("probe.crt"), certified.cert.pem()).unwrap();
    std::fs::write(directory.join("probe.key"), certified.signing_key.serialize_pem()).unwrap();
    // Paths relative to the file, as exporter-toolkit reads them.
    let config = format!("tls_server_config:\n  cert_file: probe.crt\n  key_file: probe.key\n{extra}");
    std::fs::write(directory.join("web.yml"), config).unwrap();
    certified.cert.der().to_vec()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[test]
fn tls_and_basic_auth_from_a_web_config() {
    let directory = std::env::temp_dir().join(format!("probe-test-web-{}", std::process::id()));
    let hash = bcrypt::hash("s3cret", 10).unwrap();
    let der = tls_files(&directory, &format!("basic_auth_users:\n  prometheus: {hash}\n"));
    let config = directory.join("web.yml");
    let (_probe, url, _) = start_serving(
        Command::new(PROBE).args(["--prometheus", "127.0.0.1:0", "-i", "200ms", "--web-config"]).arg(&config),
    );
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let agent = agent(Some(&der));
    let timed = |headers: &[(&str, &str)]| {
        let start = Instant::now();
        let answer = get(&agent, &url, headers);
        (answer, start.elapsed())
    };
    let right = basic("prometheus", "s3cret");
    let ((status, content_type, body), first) =
        timed(&[("Authorization", &right), ("Accept", PROMETHEUS_ACCEPT)]);
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(body.contains("probe_events_total") && body.ends_with("# EOF\n"));
    let (_, again) = timed(&[("Authorization", &right)]);
    let mut wrong_times = Vec::new();
    for (credentials, what) in [
        (Some(basic("prometheus", "wrong")), "a wrong password"),
        (Some(basic("nobody", "s3cret")), "an unknown user"),
        (Some("Bearer abc".to_owned()), "another scheme"),
        (None, "no credentials"),
    ] {
        let headers: Vec<(&str, &str)> = credentials.iter().map(|c| ("Authorization", c.as_str())).collect();
        let mut response = agent.get(&url).header("Accept", "text/plain");
        for (name, value) in &headers {
            response = response.header(*name, *value);
        }
        let start = Instant::now();
        let response = response.call().unwrap();
        wrong_times.push((what, start.elapsed()));
        assert_eq!(response.status().as_u16(), 401, "{what}");
        let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        assert!(challenge.as_deref().is_some_and(|c| c.starts_with("Basic")), "{what}: {challenge:?}");
    }
    eprintln!("right password: {first:?} first, {again:?} again (remembered); refused: {wrong_times:?}");
    // Plain HTTP on the TLS port: refused, and told why.
    let plain = url.replace("https://", "http://");
    let (status, _, body) = get(&agent, &plain, &[("Authorization", &right)]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("HTTPS"), "{body}");
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_bad_web_config_is_one_line() {
    let directory = std::env::temp_dir().join(format!("probe-test-bad-web-{}", std::process::id()));
    tls_files(&directory, "");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(directory.join("other.key"), other.signing_key.serialize_pem()).unwrap();
    let cases = [
        ("missing.yml", None, "cannot read the web config"),
        ("syntax.yml", Some("tls_server_config: [\n"), "line"),
        ("unknown.yml", Some("tls_server_config:\n  cert_fil: probe.crt\n"), "unknown field `cert_fil`"),
        (
            "nocert.yml",
            Some("tls_server_config:\n  cert_file: absent.crt\n  key_file: probe.key\n"),
            "cannot read tls_server_config.cert_file",
        ),
        (
            "notpem.yml",
            Some("tls_server_config:\n  cert_file: web.yml\n  key_file: probe.key\n"),
            "no PEM certificate",
        ),
        (
            "mismatch.yml",
            Some("tls_server_config:\n  cert_file: probe.crt\n  key_file: other.key\n"),
            "cannot use the certificate with the key",
        ),
        (
            "plain.yml",
            Some("basic_auth_users:\n  prometheus: s3cret\n"),
            "basic_auth_users.prometheus is not a bcrypt hash",
        ),
    ];
    for (name, text, expected) in cases {
        let path = directory.join(name);
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let output = Command::new(PROBE)
            .args(["--prometheus", "127.0.0.1:0", "--web-config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.starts_with("probe: ") && stderr.contains(expected), "{name}: {stderr}");
    }
    std::fs::remove_dir_all(&directory).unwrap();
}

/// Sleeps of known lengths, each in a latency bucket of its own (le 0.05,
/// 0.25 and 0.5 s), far from the bounds: the workload's slowest calls.
const SLEEPS_MS: [u64; 3] = [30, 150, 350];
const SLEEP_BUCKETS: [&str; 3] = ["0.05", "0.25", "0.5"];

/// One bucket's exemplar: its labels, value and timestamp (seconds).
#[derive(Debug)]
struct Exemplar {
    labels: HashMap<String, String>,
    value: f64,
    timestamp: f64,
}

/// The exemplars on process `pid`'s `clock_nanosleep` latency buckets in
/// an OpenMetrics exposition, by bucket bound.
fn sleep_exemplars(openmetrics: &str, pid: &str) -> BTreeMap<String, Exemplar> {
    let label = |labels: &str, name: &str| {
        let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
        Some(labels[start..][..labels[start..].find('"')?].to_owned())
    };
    openmetrics
        .lines()
        .filter(|line| line.starts_with("probe_syscall_latency_seconds_bucket{"))
        .filter(|line| {
            line.contains(&format!("pid=\"{pid}\"")) && line.contains("syscall=\"clock_nanosleep\"")
        })
        .filter_map(|line| {
            let (sample, exemplar) = line.split_once(" # {")?;
            let (labels, rest) = exemplar.split_once("} ")?;
            let (value, timestamp) = rest.split_once(' ')?;
            let labels = labels
                .split(',')
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap();
                    (name.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            let exemplar =
                Exemplar { labels, value: value.parse().unwrap(), timestamp: timestamp.parse().unwrap() };
            Some((label(sample, "le")?, exemplar))
        })
        .collect()
}

fn unix_seconds(time: std::time::SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Runs the sleeps under `probe --prometheus` (clock_nanosleep only, a
/// series per process): probe, the workload's pid and sleeper's tid, and
/// the wall-clock time before and after the workload.
fn sleeps_under_probe(port: u16) -> (Running, String, String, f64, f64) {
    let probe = serve(port, &["-e", "clock_nanosleep", "--prometheus-pids"]);
    let before = unix_seconds(std::time::SystemTime::now());
    let sleeps = SLEEPS_MS.map(|ms| ms.to_string()).join(",");
    let run = run_workload(&["--sleeps", &sleeps]);
    let after = unix_seconds(std::time::SystemTime::now());
    let sleeper = run.doing("sleeps").next().expect("a sleeping thread").tid.to_string();
    (probe, run.pid.to_string(), sleeper, before, after)
}

/// Checks that `exemplars` (by bucket bound) are the sleeps, made by
/// `sleeper` of process `pid` between `before` and `after`.
fn assert_sleep_exemplars(
    exemplars: &BTreeMap<String, Exemplar>,
    pid: &str,
    sleeper: &str,
    (before, after): (f64, f64),
) {
    for (ms, le) in SLEEPS_MS.into_iter().zip(SLEEP_BUCKETS) {
        let exemplar = exemplars.get(le).unwrap_or_else(|| panic!("no exemplar on le={le}: {exemplars:?}"));
        let slept = exemplar.value * 1000.0;
        assert!((ms as f64..ms as f64 + 10.0).contains(&slept), "the {ms} ms sleep: {exemplar:?}");
        let expected: HashMap<String, String> =
            [("pid", pid), ("tid", sleeper)].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
        assert_eq!(exemplar.labels, expected, "the {ms} ms sleep");
        // Dated when it returned, on the wall clock.
        assert!(
            (before - 0.05..after + 0.05).contains(&exemplar.timestamp),
            "the {ms} ms sleep at {} not within {before}..{after}",
            exemplar.timestamp
        );
    }
}

#[test]
fn latency_buckets_carry_the_slowest_calls_as_exemplars() {
    let port = free_port();
    let (_probe, pid, sleeper, before, after) = sleeps_under_probe(port);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let agent = agent(None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (openmetrics, exemplars) = loop {
        let (status, _, openmetrics) = get(&agent, &url, &[("Accept", "application/openmetrics-text")]);
        assert_eq!(status, 200);
        let exemplars = sleep_exemplars(&openmetrics, &pid);
        if SLEEP_BUCKETS.iter().all(|le| exemplars.contains_key(*le)) || Instant::now() > deadline {
            break (openmetrics, exemplars);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_sleep_exemplars(&exemplars, &pid, &sleeper, (before, after));
    // The sleeps have their buckets' exemplars, at most one a bucket.
    let buckets = openmetrics.lines().filter(|line| {
        line.starts_with("probe_syscall_latency_seconds_bucket{")
            && line.contains(&format!("pid=\"{pid}\""))
            && line.contains(" # {")
    });
    assert!(buckets.count() >= SLEEPS_MS.len());
    // The classic text has none.
    let (_, content_type, text) = get(&agent, &url, &[]);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(text.contains(&format!("pid=\"{pid}\"")), "{text}");
    assert!(!text.contains(" # {"), "an exemplar in the classic text");
}

/// Debian's Prometheus server scraping probe on `target` every second,
/// with its data and log in a directory of its own, which goes with it.
struct Prometheus {
    server: Running,
    /// The port of its web API.
    web: u16,
    directory: PathBuf,
}

impl Prometheus {
    fn start(target: u16, flags: &[&str]) -> Self {
        let directory =
            std::env::temp_dir().join(format!("probe-test-prometheus-{}-{target}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        let config = directory.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: probe\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let web = free_port();
        let log = std::fs::File::create(directory.join("prometheus.log")).unwrap();
        let server = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", directory.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is missing: run the tests with `cargo xtask test`, which installs it");
        Self { server: Running(server), web, directory }
    }

    /// The `data` of its answer to `GET /api/v1/ENDPOINT` with `params`;
    /// None while it is starting, or if the answer is an error.
    fn api(&self, endpoint: &str, params: &[(&str, &str)]) -> Option<Json> {
        let mut request = ureq::get(&format!("http://127.0.0.1:{}/api/v1/{endpoint}", self.web));
        for (name, value) in params {
            request = request.query(*name, *value);
        }
        let body = request.call().ok()?.body_mut().read_to_string().ok()?;
        let answer: Json = serde_json::from_str(&body).ok()?;
        (answer["status"] == "success").then(|| answer["data"].clone())
    }

    /// The series of the instant vector `promql` evaluates to now, as
    /// (labels, value); none while it is starting.
    fn query(&self, promql: &str) -> Vec<(Json, f64)> {
        let Some(data) = self.api("query", &[("query", promql)]) else { return Vec::new() };
        let series = data["result"].as_array().cloned().unwrap_or_default();
        series
            .into_iter()
            .filter_map(|series| {
                let value = series["value"][1].as_str()?.parse().ok()?;
                Some((series["metric"].clone(), value))
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.directory.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

#[test]
fn prometheus_stores_the_exemplars() {
    let port = free_port();
    let (_probe, pid, sleeper, before, after) = sleeps_under_probe(port);
    let prometheus = Prometheus::start(port, &["--enable-feature=exemplar-storage"]);
    let query = format!("probe_syscall_latency_seconds_bucket{{pid=\"{pid}\",syscall=\"clock_nanosleep\"}}");
    let (start, end) = ((before - 60.0).to_string(), (after + 600.0).to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exemplars = loop {
        let answer =
            prometheus.api("query_exemplars", &[("query", &query), ("start", &start), ("end", &end)]);
        let exemplars: BTreeMap<String, Exemplar> = answer
            .iter()
            .flat_map(|data| data.as_array().cloned().unwrap_or_default())
            .filter_map(|series| {
                let le = series["seriesLabels"]["le"].as_str()?.to_owned();
                // The latest, should Prometheus have several.
                let exemplar = series["exemplars"].as_array()?.last()?.clone();
                let labels = exemplar["labels"].as_object()?;
                let labels =
                    labels.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
                let value = exemplar["value"].as_str()?.parse().ok()?;
                Some((le, Exemplar { labels, value, timestamp: exemplar["timestamp"].as_f64()? }))
            })
            .collect();
        if SLEEP_BUCKETS.iter().all(|le| exemplars.contains_key(*le)) || Instant::now() > deadline {
            break exemplars;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!exemplars.is_empty(), "Prometheus stored no exemplar; its log:\n{}", prometheus.log());
    assert_sleep_exemplars(&exemplars, &pid, &sleeper, (before, after));
}

/// The bucket of `bounds` (upper bounds, ascending, +Inf last) that
/// `seconds` falls in, as Prometheus counts: le is inclusive.
fn bucket_index(bounds: &[f64], seconds: f64) -> usize {
    bounds.partition_point(|&le| le < seconds)
}

/// Prometheus itself scrapes probe and answers PromQL: each workload
/// thread's counter is the count the thread made, and `histogram_quantile`
/// over its latency buckets lands in the bucket of probe's own p99 (from
/// its JSON summary), or in one beside it.
#[test]
fn prometheus_queries_agree_with_the_workload_and_probes_own_p99() {
    let port = free_port();
    let report = report_path("prometheus-query");
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["--prometheus", &format!("127.0.0.1:{port}"), "-i", "200ms"])
            .args(["-e", "getppid,clock_nanosleep", "--prometheus-pids", "--prometheus-threads", "100"])
            .args(["--json", "-o"])
            .arg(&report)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let _stderr = wait_until_tracing(&mut probe);
    let prometheus = Prometheus::start(port, &[]);
    // getppid: a storm, mostly in the lowest buckets; clock_nanosleep:
    // 1 ms sleeps, late by what the scheduler adds.
    let run = run_workload(&["--getppid", "20000,5000", "--sleep", "100x1"]);
    let pid = run.pid.to_string();
    let workers: Vec<&common::Thread> =
        run.threads.iter().filter(|t| ["getppid", "clock_nanosleep"].contains(&t.syscall.as_str())).collect();
    assert_eq!(workers.len(), 3, "{:?}", run.threads);
    let selector = |thread: &common::Thread| {
        format!("{{pid=\"{pid}\",tid=\"{}\",syscall=\"{}\"}}", thread.tid, thread.syscall)
    };
    // Once Prometheus has scraped the interval after the workload's end,
    // every counter is final.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counters = loop {
        let counters: Vec<Vec<f64>> = workers
            .iter()
            .map(|thread| {
                let query = format!("probe_thread_syscalls_total{}", selector(thread));
                prometheus.query(&query).into_iter().map(|(_, value)| value).collect()
            })
            .collect();
        let done = counters.iter().zip(&workers).all(|(values, thread)| values == &[thread.calls as f64]);
        if done || Instant::now() > deadline {
            break counters;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for (values, thread) in counters.iter().zip(&workers) {
        assert_eq!(
            values,
            &[thread.calls as f64],
            "Prometheus's count of thread {}'s {}; its log:\n{}",
            thread.tid,
            thread.syscall,
            prometheus.log()
        );
    }
    let storm: u64 = run.doing("getppid").map(|t| t.calls).sum();
    let process = prometheus.query(&format!("probe_syscalls_total{{pid=\"{pid}\",syscall=\"getppid\"}}"));
    assert_eq!(process.iter().map(|(_, value)| *value).collect::<Vec<_>>(), [storm as f64]);
    // Asked while probe serves: once it is gone, its series are stale.
    let quantiles: Vec<(Vec<f64>, f64)> = workers
        .iter()
        .map(|thread| {
            let buckets =
                prometheus.query(&format!("probe_thread_syscall_latency_seconds_bucket{}", selector(thread)));
            let mut bounds: Vec<f64> =
                buckets.iter().map(|(labels, _)| labels["le"].as_str().unwrap().parse().unwrap()).collect();
            bounds.sort_by(f64::total_cmp);
            assert_eq!(bounds.last(), Some(&f64::INFINITY), "{buckets:?}");
            let quantile = prometheus.query(&format!(
                "histogram_quantile(0.99, probe_thread_syscall_latency_seconds_bucket{})",
                selector(thread)
            ));
            let &[(_, p99)] = &quantile[..] else { panic!("no quantile: {quantile:?}") };
            (bounds, p99)
        })
        .collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(probe.id() as i32, libc::SIGINT) };
    assert!(wait_with_timeout(&mut probe, Duration::from_secs(10)).success());
    let trace = Trace::read(&report);
    std::fs::remove_file(&report).unwrap();
    for (thread, (bounds, prometheus_p99)) in workers.iter().zip(quantiles) {
        let p99 = trace.syscall(thread.tid, &thread.syscall)["p99_ns"].as_f64().unwrap() / 1e9;
        let (theirs, ours) = (bucket_index(&bounds, prometheus_p99), bucket_index(&bounds, p99));
        eprintln!(
            "thread {} {}: histogram_quantile(0.99) {prometheus_p99} s (bucket {theirs}), probe's p99 {p99} s (bucket {ours})",
            thread.tid, thread.syscall
        );
        assert!(
            theirs.abs_diff(ours) <= 1,
            "thread {} {}: Prometheus's p99 {prometheus_p99} s, probe's {p99} s, buckets {bounds:?}",
            thread.tid,
            thread.syscall
        );
    }
}

/// `promtool check metrics`, Prometheus's own linter, has nothing to say
/// of the classic text of a scrape with every kind of series probe makes
/// for a workload running: per process and thread, errnos, histograms,
/// the in-flight gauge.
#[test]
fn promtool_finds_nothing_to_fix_in_a_scrape() {
    let port = free_port();
    let _probe = serve(port, &["--prometheus-pids", "--prometheus-threads", "20"]);
    let workload = Running::spawn(
        Command::new(workload())
            .args(["--getppid", "5000", "--enoent", "20", "--sleep", "30x100"])
            .stdout(Stdio::null()),
    );
    let pid = workload.id().to_string();
    let pid = pid.as_str();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let agent = agent(None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (status, content_type, text) = get(&agent, &url, &[]);
        assert_eq!((status, content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
        let samples = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap().samples;
        let has = |metric| !find(&samples, metric, &[("pid", pid)]).is_empty();
        let kinds = [
            "probe_syscall_errors_total",
            "probe_thread_syscall_latency_seconds_count",
            "probe_oldest_syscall_in_flight_seconds",
        ];
        if kinds.into_iter().all(has) {
            break text;
        }
        assert!(Instant::now() < deadline, "no series of the workload after 10 s: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool is missing: run the tests with `cargo xtask test`, which installs Debian's prometheus",
        );
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.is_empty(), "promtool check metrics ({}): {said}", output.status);
}

#[test]
fn a_daemon_serving_metrics_reports_slow_calls_too() {
    let (trace, workload, output) = trace_command(
        "export-slow",
        &["--prometheus", "127.0.0.1:0", "--slow", "20ms"],
        &["--sleeps", "30", "--spin", "300"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("serving metrics at"), "{stderr}");
    let sleeper = workload.doing("sleeps").next().unwrap();
    let slow: Vec<&Json> = (trace.slow_calls.iter())
        .filter(|call| call["tid"] == sleeper.tid && call["name"] == "clock_nanosleep")
        .collect();
    assert_eq!(slow.len(), 1, "{:#?}", trace.slow_calls);
    assert!(
        slow[0]["user_stack"]["frames"].as_array().is_some_and(|frames| !frames.is_empty()),
        "{}",
        slow[0]
    );
}
