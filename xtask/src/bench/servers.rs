//! The server workloads of `cargo xtask bench`: redis, nginx and a Go
//! HTTP server, each under load from its own clients on loopback, with
//! throughput (requests/s) and the clients' p99 latency as the cost of
//! each tracer. Every server, load generator and tracer started here is
//! killed when it is dropped, on error too: none outlives the bench.
//!
//! Nothing is pinned: on a small machine the clients, the server and the
//! tracer share its CPUs, as they would on a busy host.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{
    build_go, kill, median, probe_numbers, start_probe, stop_rusage, Paths, Sample, Started, Tracer,
};
use crate::command::{self, run};

/// The tracers a server runs under, in each round's order.
const TRACERS: [Tracer; 7] = [
    Tracer::Untraced,
    Tracer::Floor,
    Tracer::ProbePid,
    Tracer::ProbeSystem,
    Tracer::ProbePrometheus,
    Tracer::Bpftrace,
    Tracer::PerfTrace,
];

/// Concurrent clients, each with a kept-alive connection of its own.
const CLIENTS: usize = 20;

/// The servers, each with its load generator.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    Redis,
    Nginx,
    GoHttp,
}

const SERVERS: [Server; 3] = [Server::Redis, Server::Nginx, Server::GoHttp];

impl Server {
    /// The loads it reports, one table each: redis-benchmark measures SET,
    /// then GET.
    fn loads(self) -> &'static [&'static str] {
        match self {
            Server::Redis => &["redis SET (redis-benchmark -c 20 -t set,get)", "redis GET (same runs)"],
            Server::Nginx => &["nginx, a 1 KiB static file (wrk -c 20, keep-alive)"],
            Server::GoHttp => &["Go net/http server (Go client, 20 kept-alive connections)"],
        }
    }
}

/// One load's numbers as its clients measured them.
struct Load {
    rps: f64,
    p99_ms: f64,
}

/// One run of one load under one tracer.
struct ServerSample {
    load: Load,
    /// probe's own numbers, when probe traced (only their probe fields).
    probe: Option<Sample>,
}

/// The servers' programs and settings.
struct Setup<'a> {
    paths: &'a Paths,
    /// Scratch space: nginx's configuration, root and logs.
    dir: PathBuf,
    go_server: PathBuf,
    go_load: PathBuf,
    /// How long each load runs (redis-benchmark: about).
    duration: Duration,
    /// Requests per redis-benchmark test, for about `duration` untraced.
    redis_requests: u64,
}

/// Runs every server under every tracer, `rounds` times, interleaved, and
/// returns the medians, which it prints.
pub(super) fn bench(root: &Path, paths: &Paths, rounds: usize, duration: Duration) -> Result<Value> {
    install_servers()?;
    let dir = root.join("target/bench/servers");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(dir.join("www"))?;
    // A 1 KiB page, as small as a static asset gets.
    std::fs::write(dir.join("www/small.html"), "x".repeat(1024))?;
    let mut setup = Setup {
        paths,
        dir,
        go_server: build_go(root, "http/server", "go-http-server")?,
        go_load: build_go(root, "http/load", "go-http-load")?,
        duration,
        redis_requests: 0,
    };
    setup.redis_requests = redis_requests(&setup)?;
    let mut samples: BTreeMap<(&str, Tracer), Vec<ServerSample>> = BTreeMap::new();
    for round in 1..=rounds {
        eprintln!("xtask: servers round {round} of {rounds}");
        for server in SERVERS {
            for tracer in TRACERS {
                let measured = measure(&setup, server, tracer)
                    .with_context(|| format!("{} under {}", server.loads()[0], tracer.name()))?;
                for (name, sample) in server.loads().iter().zip(measured) {
                    samples.entry((name, tracer)).or_default().push(sample);
                }
            }
        }
    }
    let table = summarize(&samples);
    print_table(&table);
    Ok(table)
}

/// Installs the servers and their load generators from Debian's packages
/// when missing. A service that installing one starts (under systemd,
/// without a policy-rc.d that forbids it) is stopped and disabled: the bench
/// starts its own, and no server is left running system-wide.
fn install_servers() -> Result<()> {
    let services = [("redis-server", "redis-server"), ("nginx", "nginx")];
    let fresh: Vec<&str> =
        services.iter().filter(|(program, _)| !command::on_path(program)).map(|&(_, unit)| unit).collect();
    command::install_missing(&[
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("nginx", "nginx"),
        ("wrk", "wrk"),
    ])?;
    if !fresh.is_empty() && Path::new("/run/systemd/system").is_dir() {
        run(Command::new("systemctl").args(["disable", "--now"]).args(&fresh))?;
    }
    Ok(())
}

/// A child killed and reaped when dropped, unless stopped first.
struct Guard(Option<Child>);

impl Guard {
    fn spawn(command: &mut Command) -> Result<Self> {
        Ok(Self(Some(command.spawn().with_context(|| format!("cannot start {command:?}"))?)))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("a guard holds its child until stopped")
    }

    /// Sends `signal` and reaps the child: its resource usage.
    fn stop(mut self, signal: i32) -> Result<libc::rusage> {
        stop_rusage(&mut self.0.take().expect("a guard holds its child until stopped"), signal)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            kill(&mut child);
        }
    }
}

/// A loopback port free now, for a server to listen on.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `server` on a free loopback port and waits until it accepts
/// connections.
fn start_server(setup: &Setup, server: Server) -> Result<(Guard, u16)> {
    let port = free_port()?;
    let mut command = match server {
        Server::Redis => {
            let mut command = Command::new("redis-server");
            command.args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
            command
        }
        Server::Nginx => {
            let conf = setup.dir.join("nginx.conf");
            let dir = setup.dir.display();
            // One process, in the foreground: its PID is the server's.
            std::fs::write(
                &conf,
                format!(
                    "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
                     events {{ worker_connections 1024; }}\n\
                     http {{ access_log off; keepalive_requests 10000000; \
                     server {{ listen 127.0.0.1:{port}; root {dir}/www; }} }}\n"
                ),
            )?;
            let mut command = Command::new("nginx");
            command.arg("-p").arg(&setup.dir).arg("-c").arg(&conf).arg("-e").arg(setup.dir.join("error.log"));
            command
        }
        Server::GoHttp => {
            let mut command = Command::new(&setup.go_server);
            command.arg(format!("127.0.0.1:{port}"));
            command
        }
    };
    let mut guard = Guard::spawn(command.stdout(Stdio::null()).stderr(Stdio::null()))?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while TcpStream::connect(address).is_err() {
        if let Some(status) = guard.child().try_wait()? {
            bail!("{command:?} exited before it listened: {status}");
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{command:?} did not listen on {address} within 10 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok((guard, port))
}

/// Requests per redis-benchmark test for about half the duration each
/// (it runs SET, then GET, and takes no duration), from a short run.
fn redis_requests(setup: &Setup) -> Result<u64> {
    let (_server, port) = start_server(setup, Server::Redis)?;
    let loads = redis_load(port, 20_000)?;
    let rps = loads.iter().map(|load| load.rps).sum::<f64>() / loads.len() as f64;
    Ok((rps * setup.duration.as_secs_f64() / 2.0).max(1000.0) as u64)
}

/// How much fewer requests redis-benchmark sends under `tracer`: perf trace
/// cuts redis's throughput 3 to 8 times here, so a quarter of the requests
/// keeps its run about as long as the others' (the syscall workloads'
/// twentieth made it a fraction of a second, mostly connecting).
fn redis_divisor(tracer: Tracer) -> u64 {
    match tracer {
        Tracer::PerfTrace => 4,
        _ => 1,
    }
}

/// Runs `server` under `tracer` once: its loads as its clients saw them.
fn measure(setup: &Setup, server: Server, tracer: Tracer) -> Result<Vec<ServerSample>> {
    let (server_guard, port) = start_server(setup, server)?;
    let pid = server_guard.pid();
    let paths = setup.paths;
    let probe = |args: &[&str]| {
        let mut command = Command::new(&paths.probe);
        command.args(["--json", "-o"]).arg(&paths.report).args(args);
        command
    };
    let traced = match tracer {
        Tracer::Untraced => Traced::None,
        Tracer::Floor => Traced::probe(probe(&["--bench-floor"]), false)?,
        Tracer::ProbePid => Traced::probe(probe(&["-p", &pid.to_string()]), true)?,
        Tracer::ProbeSystem => Traced::probe(probe(&[]), true)?,
        Tracer::ProbePrometheus => Traced::probe(probe(&["--prometheus", "127.0.0.1:0"]), true)?,
        Tracer::Bpftrace => Traced::bpftrace()?,
        Tracer::PerfTrace => {
            let guard = Guard::spawn(
                Command::new("perf")
                    .args(["trace", "-s", "-o", "/dev/null", "-p", &pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
            // perf trace says nothing when it has attached: give it time to.
            thread::sleep(Duration::from_secs(1));
            Traced::Other(guard)
        }
        _ => bail!("{} does not trace the servers", tracer.name()),
    };
    let loads = match server {
        Server::Redis => redis_load(port, setup.redis_requests / redis_divisor(tracer))?,
        Server::Nginx => wrk_load(port, setup.duration)?,
        Server::GoHttp => go_load(setup, port)?,
    };
    let numbers = traced.stop(paths)?;
    drop(server_guard);
    Ok(loads.into_iter().map(|load| ServerSample { load, probe: numbers.clone() }).collect())
}

/// The tracer running beside a server.
enum Traced {
    None,
    /// probe, whose numbers are read when it stops, if `numbers`; with its
    /// CPU time when it said it traces, and its scraper when it serves
    /// metrics.
    Probe {
        guard: Guard,
        numbers: bool,
        start_ns: f64,
        scraper: Option<Scraper>,
    },
    /// bpftrace, with the thread that reads its output to the end.
    Bpftrace {
        guard: Guard,
        drain: thread::JoinHandle<()>,
    },
    Other(Guard),
}

impl Traced {
    fn probe(mut command: Command, numbers: bool) -> Result<Self> {
        let Started { child, start_ns, metrics, .. } = start_probe(&mut command)?;
        let guard = Guard(Some(child));
        let scraper = metrics.map(|address| Scraper::start(&address)).transpose()?;
        Ok(Traced::Probe { guard, numbers, start_ns, scraper })
    }

    /// bpftrace's per-thread histogram of every call on the machine (the
    /// syscall workloads' script without its PID filter, beside probe on the
    /// whole system), once it says it has attached: BEGIN runs after every
    /// probe is.
    fn bpftrace() -> Result<Self> {
        let program = "BEGIN { printf(\"attached\\n\"); } \
             tracepoint:raw_syscalls:sys_enter { @start[tid] = nsecs; } \
             tracepoint:raw_syscalls:sys_exit /@start[tid]/ { @ns[tid] = hist(nsecs - @start[tid]); delete(@start[tid]); }";
        let mut guard = Guard::spawn(
            Command::new("bpftrace").args(["-q", "-e", program]).stdout(Stdio::piped()).stderr(Stdio::null()),
        )?;
        let mut stdout = BufReader::new(guard.child().stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "attached" {
            bail!("bpftrace did not attach: {line}");
        }
        let drain = thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        Ok(Traced::Bpftrace { guard, drain })
    }

    /// Stops the tracer; probe's numbers, when it measured them.
    fn stop(self, paths: &Paths) -> Result<Option<Sample>> {
        match self {
            Traced::None => Ok(None),
            Traced::Probe { guard, numbers, start_ns, scraper } => {
                let scrapes = scraper.map(Scraper::stop);
                let usage = guard.stop(libc::SIGINT)?;
                if scrapes == Some(0) {
                    bail!("probe --prometheus answered no scrape");
                }
                if !numbers {
                    return Ok(None);
                }
                let mut sample = Sample::default();
                probe_numbers(paths, &mut sample, start_ns, &usage)?;
                Ok(Some(sample))
            }
            Traced::Bpftrace { guard, drain } => {
                guard.stop(libc::SIGINT)?;
                let _ = drain.join();
                Ok(None)
            }
            Traced::Other(guard) => {
                guard.stop(libc::SIGINT)?;
                Ok(None)
            }
        }
    }
}

/// Scrapes probe's metrics once a second, as a scraper with a short
/// interval would, counting the answers with status 200.
struct Scraper {
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(url: &str) -> Result<Self> {
        let address: SocketAddr = url
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .and_then(|address| address.parse().ok())
            .with_context(|| format!("probe serves metrics at {url}, not http://ADDRESS/metrics"))?;
        let (stop, scrapes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let thread = {
            let (stop, scrapes) = (stop.clone(), scrapes.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if scrape(address).unwrap_or(false) {
                        scrapes.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_secs(1));
                }
            })
        };
        Ok(Self { stop, scrapes, thread: Some(thread) })
    }

    /// Stops scraping: how many scrapes were answered.
    fn stop(mut self) -> usize {
        self.halt();
        self.scrapes.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One scrape: whether it was answered with status 200.
fn scrape(address: SocketAddr) -> Result<bool> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: probe\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(response.starts_with(b"HTTP/1.0 200") || response.starts_with(b"HTTP/1.1 200"))
}

/// Runs `command` to its end: its stdout.
fn output_of(command: &mut Command) -> Result<String> {
    let output =
        command.stderr(Stdio::piped()).output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// redis-benchmark's SET, then GET, `requests` each.
fn redis_load(port: u16, requests: u64) -> Result<Vec<Load>> {
    let csv = output_of(Command::new("redis-benchmark").args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-c",
        &CLIENTS.to_string(),
        "-t",
        "set,get",
        "-n",
        &requests.to_string(),
        "--csv",
    ]))?;
    redis_csv(&csv)
}

/// The SET and GET lines of redis-benchmark's CSV: a header line, then a
/// line per test.
fn redis_csv(csv: &str) -> Result<Vec<Load>> {
    let mut lines =
        csv.lines().map(|line| line.split(',').map(|cell| cell.trim_matches('"')).collect::<Vec<_>>());
    let header = lines.next().context("redis-benchmark printed nothing")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|&cell| cell == name)
            .with_context(|| format!("redis-benchmark's CSV has no {name}"))
    };
    let (test, rps, p99) = (column("test")?, column("rps")?, column("p99_latency_ms")?);
    let mut loads = BTreeMap::new();
    for line in lines {
        let number = |at: usize| -> Result<f64> {
            line.get(at)
                .and_then(|cell| cell.parse().ok())
                .with_context(|| format!("redis-benchmark: {line:?}"))
        };
        loads.insert(line.get(test).copied().unwrap_or(""), Load { rps: number(rps)?, p99_ms: number(p99)? });
    }
    ["SET", "GET"]
        .into_iter()
        .map(|name| loads.remove(name).with_context(|| format!("redis-benchmark reported no {name}")))
        .collect()
}

/// wrk on the static file for `duration`, with its latency distribution.
fn wrk_load(port: u16, duration: Duration) -> Result<Vec<Load>> {
    let text = output_of(
        Command::new("wrk")
            // One thread per CPU would be wrk's advice; two keep it beside
            // the server on a small machine.
            .args(["-t", "2", "-c", &CLIENTS.to_string(), "-d"])
            .arg(format!("{}s", duration.as_secs().max(1)))
            .args(["--latency", &format!("http://127.0.0.1:{port}/small.html")]),
    )?;
    if let Some(line) = text.lines().find(|line| line.contains("Non-2xx") || line.contains("Socket errors")) {
        bail!("wrk saw errors: {}", line.trim());
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::trim))
            .with_context(|| format!("wrk printed no {prefix:?}: {text}"))
    };
    let rps: f64 = field("Requests/sec:")?.parse().context("wrk's Requests/sec")?;
    let p99 = field("99%")?;
    Ok(vec![Load { rps, p99_ms: wrk_ms(p99).with_context(|| format!("wrk's 99% latency: {p99}"))? }])
}

/// A wrk latency ("850.00us", "1.23ms", "2.01s") in milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let value: f64 = text[..split].parse().ok()?;
    let scale = match &text[split..] {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        _ => return None,
    };
    Some(value * scale)
}

/// The Go load generator (`xtask/go/http/load`) for `duration`.
fn go_load(setup: &Setup, port: u16) -> Result<Vec<Load>> {
    let text = output_of(
        Command::new(&setup.go_load)
            .arg(format!("http://127.0.0.1:{port}/"))
            .arg(CLIENTS.to_string())
            .arg(format!("{}ms", setup.duration.as_millis())),
    )?;
    let report: Value =
        serde_json::from_str(text.trim()).with_context(|| format!("the Go load said {text}"))?;
    if report["errors"].as_u64() != Some(0) {
        bail!("the Go load saw errors: {text}");
    }
    let number =
        |key: &str| report[key].as_f64().with_context(|| format!("no {key} in the Go load's {text}"));
    Ok(vec![Load { rps: number("rps")?, p99_ms: number("p99_ns")? / 1e6 }])
}

/// Medians per load and tracer, and the losses relative to untraced.
fn summarize(samples: &BTreeMap<(&str, Tracer), Vec<ServerSample>>) -> Value {
    let loads: Vec<&str> = SERVERS.iter().flat_map(|server| server.loads().iter().copied()).collect();
    let tables: Vec<Value> = loads
        .into_iter()
        .filter(|&name| samples.keys().any(|&(load, _)| load == name))
        .map(|name| {
            let of = |tracer| samples.get(&(name, tracer)).map_or(&[][..], Vec::as_slice);
            let values = |tracer, field: fn(&ServerSample) -> Option<f64>| -> Vec<f64> {
                of(tracer).iter().filter_map(field).collect()
            };
            let med = |tracer, field| median(values(tracer, field)).unwrap_or(f64::NAN);
            let range = |tracer, field| {
                values(tracer, field)
                    .into_iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
            };
            let rps = |tracer| med(tracer, |s: &ServerSample| Some(s.load.rps));
            let loss = |tracer| 100.0 * (1.0 - rps(tracer) / rps(Tracer::Untraced));
            let rows: Vec<Value> = TRACERS
                .iter()
                .filter(|&&tracer| !of(tracer).is_empty())
                .map(|&tracer| {
                    let (rps_min, rps_max) = range(tracer, |s| Some(s.load.rps));
                    let (p99_min, p99_max) = range(tracer, |s| Some(s.load.p99_ms));
                    let probe = |field: fn(&Sample) -> Option<f64>| {
                        median(of(tracer).iter().filter_map(|s| s.probe.as_ref().and_then(field)).collect())
                    };
                    json!({
                        "tracer": tracer.name(),
                        "rps": rps(tracer),
                        "rps_min": rps_min,
                        "rps_max": rps_max,
                        "loss_pct": loss(tracer),
                        "loss_vs_floor": loss(tracer) / loss(Tracer::Floor),
                        "loss_vs_bpftrace": loss(tracer) / loss(Tracer::Bpftrace),
                        "p99_ms": med(tracer, |s| Some(s.load.p99_ms)),
                        "p99_ms_min": p99_min,
                        "p99_ms_max": p99_max,
                        "events_per_s": probe(|s| s.events_per_s),
                        "lost_events": probe(|s| s.lost),
                        "cpu_ns_per_event": probe(|s| s.cpu_ns_per_event),
                    })
                })
                .collect();
            json!({"workload": name, "unit": "requests/s; p99 latency in ms", "rows": rows})
        })
        .collect();
    Value::Array(tables)
}

fn print_table(tables: &Value) {
    let cell = |value: &Value, format: &dyn Fn(f64) -> String| {
        value.as_f64().filter(|v| v.is_finite()).map_or("-".to_owned(), format)
    };
    for table in tables.as_array().into_iter().flatten() {
        println!();
        println!("{} ({})", table["workload"].as_str().unwrap_or(""), table["unit"].as_str().unwrap_or(""));
        println!(
            "| {:<30} | {:>9} | {:>13} | {:>7} | {:>7} | {:>10} | {:>7} | {:>13} | {:>8} | {:>9} | {:>9} |",
            "tracer",
            "req/s",
            "min–max",
            "loss",
            "÷ floor",
            "÷ bpftrace",
            "p99 ms",
            "min–max",
            "events/s",
            "lost",
            "cpu ns/ev"
        );
        println!("|{}|", ["---"; 11].join("|"));
        for row in table["rows"].as_array().into_iter().flatten() {
            let range = |min: &str, max: &str, format: &dyn Fn(f64) -> String| {
                format!("{}–{}", cell(&row[min], format), cell(&row[max], format))
            };
            println!(
                "| {:<30} | {:>9} | {:>13} | {:>7} | {:>7} | {:>10} | {:>7} | {:>13} | {:>8} | {:>9} | {:>9} |",
                row["tracer"].as_str().unwrap_or(""),
                cell(&row["rps"], &|v| format!("{v:.0}")),
                range("rps_min", "rps_max", &|v| format!("{v:.0}")),
                cell(&row["loss_pct"], &|v| format!("{v:.1}%")),
                cell(&row["loss_vs_floor"], &|v| format!("{v:.2}")),
                cell(&row["loss_vs_bpftrace"], &|v| format!("{v:.2}")),
                cell(&row["p99_ms"], &|v| format!("{v:.2}")),
                range("p99_ms_min", "p99_ms_max", &|v| format!("{v:.2}")),
                cell(&row["events_per_s"], &|v| format!("{:.2}M", v / 1e6)),
                cell(&row["lost_events"], &|v| format!("{v:.0}")),
                cell(&row["cpu_ns_per_event"], &|v| format!("{v:.0}")),
            );
        }
    }
    println!();
    println!(
        "(floor, probe without --pid and bpftrace's histogram trace the whole system, the clients too; \
         perf trace -s follows the server's PID; probe --prometheus is scraped once a second)"
    );
}

#[cfg(test)]
mod tests {
    use super::{redis_csv, wrk_ms};

    #[test]
    fn wrk_latencies_are_read_in_milliseconds() {
        assert_eq!(wrk_ms("639.00us"), Some(0.639));
        assert_eq!(wrk_ms("9.99ms"), Some(9.99));
        assert_eq!(wrk_ms("1.50s"), Some(1500.0));
        assert_eq!(wrk_ms("2.00m"), Some(120_000.0));
        assert_eq!(wrk_ms("12"), None);
        assert_eq!(wrk_ms("1.0h"), None);
    }

    #[test]
    fn redis_benchmark_csv_gives_set_then_get() {
        // redis-benchmark 7.0's output, GET first to check the order.
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"GET\",\"16866.25\",\"0.856\",\"0.080\",\"0.383\",\"3.903\",\"7.135\",\"26.959\"\n\
                   \"SET\",\"26462.03\",\"0.492\",\"0.096\",\"0.367\",\"0.839\",\"4.079\",\"8.143\"\n";
        let loads = redis_csv(csv).unwrap();
        let numbers: Vec<(f64, f64)> = loads.iter().map(|load| (load.rps, load.p99_ms)).collect();
        assert_eq!(numbers, [(26462.03, 4.079), (16866.25, 7.135)]);
        assert!(redis_csv("\"test\",\"rps\",\"p99_latency_ms\"\n\"SET\",\"1\",\"2\"\n").is_err());
    }
}
