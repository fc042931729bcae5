//! Prometheus / OpenMetrics export (`--prometheus`): what every process
//! (and, with `--prometheus-threads`, every thread) has done since probe
//! started, as counters and latency histograms, kept bounded on a busy
//! host; each latency bucket carries the slowest call known in it as an
//! OpenMetrics exemplar. [`server`] serves it over HTTP.

pub mod server;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use probe_common::errno_of;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{exemplar::Exemplar, MetricType},
};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    aggregate::{sched::SchedStats, SyscallStats, Table, ThreadKey, ThreadStats},
    cgroup::{self, Throttling},
    clock::WallClock,
    golang::Goroutines,
    output::{Flow, Interval, Sink},
    report::{errno_name, syscall_name, GoProcessReport, GoSchedReport, Report},
};

/// Upper bounds of the latency buckets, in seconds: 1 µs to 10 s in steps
/// of 1, 2.5 and 5, which tells a cached `read` from a disk read from a
/// network wait.
const BUCKETS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Series of threads beyond the `--prometheus-threads` cap are added up
/// under this `tid` label, per process; processes beyond
/// `--prometheus-processes`, under this `comm`.
const OTHER: &str = "other";

/// What the export keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Process series of their own; the rest go into comm="other".
    pub processes: usize,
    /// Process series per PID (labels pid, comm) rather than per name.
    pub by_pid: bool,
    /// Threads with series of their own; 0: per-process series only.
    pub threads: usize,
    /// How long the series of a process or thread stay after it is gone
    /// (threads: also after it went quiet), so that a last scrape sees its
    /// final counts.
    pub grace: Duration,
}

/// The bucket of `BUCKETS` (or the `+Inf` one) a latency falls in.
fn bucket_of(ns: u64) -> usize {
    let seconds = ns as f64 / 1e9;
    BUCKETS.partition_point(|&upper| upper < seconds)
}

/// One syscall's counts and latency histogram.
#[derive(Clone, Debug, Default)]
struct SyscallSeries {
    count: u64,
    errnos: BTreeMap<i32, u64>,
    sum_ns: u64,
    /// Per bucket of `BUCKETS`, then the `+Inf` one; not cumulative.
    buckets: [u64; BUCKETS.len() + 1],
    /// Per bucket, the slowest call known in it: of the calls the
    /// aggregates keep one by one (each thread's slowest of each interval),
    /// so the upper buckets have theirs, and the crowded lower ones one
    /// of their slowest threads' at least.
    exemplars: [Option<SlowExemplar>; BUCKETS.len() + 1],
}

impl SyscallSeries {
    /// Adds thread `key`'s calls of an interval; `wall` dates its slowest.
    fn add(&mut self, stats: &SyscallStats, key: ThreadKey, wall: WallClock) {
        self.count += stats.count;
        for (&errno, &n) in &stats.errnos {
            *self.errnos.entry(errno).or_default() += n;
        }
        self.sum_ns = self.sum_ns.saturating_add(stats.total_ns);
        for (ns, n) in stats.latency.values() {
            self.buckets[bucket_of(ns)] += n;
        }
        for call in stats.slowest.calls() {
            let kept = &mut self.exemplars[bucket_of(call.duration_ns)];
            // A tie keeps the earlier call: a bucket's exemplar only ever
            // moves to a later one, as Prometheus wants (it drops an
            // exemplar older than the last it stored for the series).
            if kept.is_none_or(|kept| call.duration_ns > kept.duration_ns) {
                *kept = Some(SlowExemplar {
                    duration_ns: call.duration_ns,
                    // When it returned, not when it began: a later
                    // interval's call then has the later time, even one
                    // that began before the call it replaces.
                    ended: wall.at(call.started_ns.saturating_add(call.duration_ns)),
                    pid: key.pid(),
                    tid: key.tid(),
                    errno: errno_of(call.ret),
                });
            }
        }
    }
}

/// A slow call, as an exemplar of its bucket.
#[derive(Clone, Copy, Debug)]
struct SlowExemplar {
    duration_ns: u64,
    /// Dated once, when it is kept: a scrape sends the same exemplar again
    /// (which Prometheus recognizes as such) until a slower call takes its
    /// place.
    ended: SystemTime,
    pid: u32,
    tid: u32,
    errno: Option<u32>,
}

impl SlowExemplar {
    /// Labels that find the call: its thread (the thread's name is left
    /// out: it is the thread's own to choose, any length, and OpenMetrics
    /// caps an exemplar's labels at 128 characters, which these numbers and
    /// errno names stay far below), and its errno if it failed.
    fn labels(&self) -> Labels {
        let mut labels = vec![("pid", self.pid.to_string()), ("tid", self.tid.to_string())];
        if let Some(errno) = self.errno {
            labels.push(("errno", errno_name(errno as i32)));
        }
        labels
    }

    fn exemplar(&self) -> Exemplar<Labels, f64> {
        Exemplar::new(self.labels(), self.duration_ns as f64 / 1e9, Some(self.ended))
    }
}

/// Everything one label set has done.
#[derive(Debug)]
struct Series {
    comm: String,
    /// Where its process runs (`container`, `pod_uid`, `unit`), as last
    /// read, for a series of one process.
    place: Labels,
    syscalls: FxHashMap<u32, SyscallSeries>,
    sched: Option<SchedStats>,
    last_active: Instant,
    /// When the process or thread was found gone.
    gone_since: Option<Instant>,
    /// Age of its oldest syscall in progress when the latest interval
    /// closed (a lower bound for one that began before attach); 0 for none.
    oldest_in_flight_ns: u64,
}

impl Series {
    fn new(now: Instant) -> Self {
        Self {
            comm: String::new(),
            place: Labels::new(),
            syscalls: FxHashMap::default(),
            sched: None,
            last_active: now,
            gone_since: None,
            oldest_in_flight_ns: 0,
        }
    }

    fn add(&mut self, thread: &ThreadStats, key: ThreadKey, wall: WallClock, now: Instant) {
        for (&nr, stats) in &thread.syscalls {
            self.syscalls.entry(nr).or_default().add(stats, key, wall);
        }
        if let Some(sched) = &thread.sched {
            self.sched.get_or_insert_with(SchedStats::default).merge(sched);
        }
        self.last_active = now;
    }

    /// Whether the series should go: gone, or (`quiet`) silent, for longer
    /// than `grace`.
    fn expired(&self, now: Instant, grace: Duration, quiet: bool) -> bool {
        let since = if quiet { Some(self.last_active) } else { self.gone_since };
        since.is_some_and(|since| now.duration_since(since) > grace)
    }
}

/// probe's own totals: what it received, lost and cost.
#[derive(Clone, Copy, Debug, Default)]
struct ProbeTotals {
    pub events: u64,
    pub lost_events: u64,
    pub bpf_run_ns: Option<u64>,
    pub cpu_ns: u64,
}

/// The series: per process, per tracked thread, and the threads beyond
/// the cap per process.
#[derive(Debug)]
pub struct Store {
    limits: Limits,
    processes: FxHashMap<ProcessKey, Series>,
    /// Each process's name (its main thread's), as last seen, for the
    /// processes of the interval at hand.
    names: FxHashMap<u32, String>,
    /// Where each process of the interval at hand runs, as labels.
    places: FxHashMap<u32, Labels>,
    threads: FxHashMap<ThreadKey, Series>,
    others: FxHashMap<u32, Series>,
    totals: ProbeTotals,
    /// The live Go processes' schedulers, as last read.
    go: Vec<GoProcessReport>,
    /// The throttling of the cgroups of the processes with series of
    /// their own, as the last interval read it, labelled by cgroup.
    throttling: Vec<(Labels, Throttling)>,
}

/// Whose a process series is: one process, all the processes of a name
/// in one place (container, pod, unit), or those beyond
/// `Limits::processes`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ProcessKey {
    Pid(u32),
    Name(String, Labels),
    Other,
}

/// Where a thread's counts go.
enum Slot {
    Own,
    Other,
    Nowhere,
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            processes: FxHashMap::default(),
            names: FxHashMap::default(),
            places: FxHashMap::default(),
            threads: FxHashMap::default(),
            others: FxHashMap::default(),
            totals: ProbeTotals::default(),
            go: Vec::new(),
            throttling: Vec::new(),
        }
    }

    /// Adds an interval's table (its slowest calls dated by `wall`), then
    /// drops the series of what is gone (per `alive`, asked only of the
    /// series the interval did not touch) once their grace period is over.
    fn add_interval(
        &mut self,
        table: &Table,
        totals: ProbeTotals,
        now: Instant,
        wall: WallClock,
        alive: impl Fn(u32, Option<u32>) -> bool,
    ) {
        self.totals = totals;
        // A process is named after its main thread, else any of its own.
        self.names.clear();
        let comms = table.iter().map(|(key, thread)| (key.pid(), key.tid(), &thread.comm));
        let in_flight = table.in_flight().iter().map(|(key, call)| (key.pid(), key.tid(), &call.comm));
        for (pid, tid, comm) in comms.chain(in_flight) {
            if !comm.is_empty() && (tid == pid || !self.names.contains_key(&pid)) {
                self.names.insert(pid, comm.clone());
            }
        }
        for (key, thread) in table.iter() {
            let process_key = self.process_key(key.pid());
            let name = self.names.get(&key.pid()).cloned().unwrap_or_default();
            let process = self.processes.entry(process_key).or_insert_with(|| Series::new(now));
            process.add(thread, key, wall, now);
            process.gone_since = None;
            if let Some(place) = self.places.get(&key.pid()) {
                process.place.clone_from(place);
            }
            if !name.is_empty() {
                process.comm = name;
            }
            let slot = match self.limits.threads {
                0 => Slot::Nowhere,
                cap if self.threads.contains_key(&key) || self.threads.len() < cap => Slot::Own,
                _ => Slot::Other,
            };
            let series = match slot {
                Slot::Own => self.threads.entry(key).or_insert_with(|| Series::new(now)),
                Slot::Other => self.others.entry(key.pid()).or_insert_with(|| Series::new(now)),
                Slot::Nowhere => continue,
            };
            series.add(thread, key, wall, now);
            if thread.exited && matches!(slot, Slot::Own) {
                series.gone_since.get_or_insert(now);
            }
            if series.comm.is_empty() || matches!(slot, Slot::Own) {
                series.comm.clone_from(&thread.comm);
            }
        }
        // The calls in progress as the interval closed: a process whose
        // threads are all stuck in calls has no records, and still a series.
        for series in self.processes.values_mut() {
            series.oldest_in_flight_ns = 0;
        }
        for (key, call) in table.in_flight() {
            let process_key = self.process_key(key.pid());
            let name = self.names.get(&key.pid()).cloned().unwrap_or_default();
            let process = self.processes.entry(process_key).or_insert_with(|| Series::new(now));
            process.gone_since = None;
            // A process stuck in calls is not quiet.
            process.last_active = now;
            if !name.is_empty() {
                process.comm = name;
            }
            process.oldest_in_flight_ns = process.oldest_in_flight_ns.max(call.age_ns);
        }
        let grace = self.limits.grace;
        for (key, series) in &mut self.processes {
            // A process series goes when its process does; a name's (and
            // the rest's) when no process of it did anything for a while.
            let gone = match key {
                ProcessKey::Pid(pid) => !alive(*pid, None),
                ProcessKey::Name(..) | ProcessKey::Other => now.duration_since(series.last_active) > grace,
            };
            if series.last_active != now && series.gone_since.is_none() && gone {
                series.gone_since = Some(now);
            }
        }
        for (key, series) in &mut self.threads {
            if series.last_active != now && series.gone_since.is_none() && !alive(key.pid(), Some(key.tid()))
            {
                series.gone_since = Some(now);
            }
        }
        self.processes.retain(|_, series| !series.expired(now, grace, false));
        // A quiet thread gives its place to a busier one.
        self.threads
            .retain(|_, series| !series.expired(now, grace, false) && !series.expired(now, grace, true));
        let processes = &self.processes;
        let by_pid = self.limits.by_pid;
        // Threads beyond the cap are per process ID, whatever the processes'.
        self.others.retain(|pid, series| match by_pid {
            true => processes.contains_key(&ProcessKey::Pid(*pid)),
            false => !series.expired(now, grace, true),
        });
    }

    /// The series process `pid`'s counts go to: its own, its name's, or,
    /// beyond the cap of new series, the rest's.
    fn process_key(&self, pid: u32) -> ProcessKey {
        let key = match self.limits.by_pid {
            true => ProcessKey::Pid(pid),
            false => ProcessKey::Name(
                self.names.get(&pid).cloned().unwrap_or_default(),
                self.places.get(&pid).cloned().unwrap_or_default(),
            ),
        };
        match self.processes.contains_key(&key) || self.processes.len() < self.limits.processes {
            true => key,
            false => ProcessKey::Other,
        }
    }

    /// Processes with series.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }
}

/// The metrics as an output: each interval goes into the store the
/// endpoint serves.
pub struct Export(pub Arc<Mutex<Store>>);

impl Sink for Export {
    fn interval(&mut self, interval: &Interval<'_>) -> anyhow::Result<Flow> {
        let totals = ProbeTotals {
            events: interval.total.events(),
            lost_events: interval.span.lost.total(),
            bpf_run_ns: interval.cost.bpf_ns,
            cpu_ns: interval.cost.cpu_ns,
        };
        let world = interval.world;
        // `/proc` and the cgroups are read without the lock, which holds
        // the scrapes off.
        let pids: FxHashSet<u32> = interval
            .table
            .iter()
            .map(|(key, _)| key.pid())
            .chain(interval.table.in_flight().keys().map(|key| key.pid()))
            .collect();
        let places: FxHashMap<u32, Labels> = pids
            .iter()
            .filter_map(|&pid| Some((pid, place_labels(&*interval.cgroups.labels(pid)?))))
            .collect();
        let mut store = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        store.places = places;
        store.add_interval(interval.table, totals, Instant::now(), WallClock::now(), |pid, tid| match tid {
            Some(tid) => world.thread_alive(pid, tid),
            None => world.process_alive(pid),
        });
        // A process gone has no scheduler now.
        store.go = interval.goroutines.map(Goroutines::processes).unwrap_or_default();
        store.go.retain(|process| world.process_alive(process.pid));
        // Cgroups only of processes with series of their own: as many at
        // most.
        let own: Vec<(u32, Labels)> = pids
            .into_iter()
            .filter(|&pid| store.process_key(pid) != ProcessKey::Other)
            .map(|pid| (pid, store.places.get(&pid).cloned().unwrap_or_default()))
            .collect();
        drop(store);
        let mut seen = FxHashSet::default();
        let throttling = own
            .into_iter()
            .filter_map(|(pid, place)| {
                let throttling = interval.cgroups.throttling(pid)?;
                let labels = with(&vec![("cgroup", throttling.cgroup.clone())], &place);
                seen.insert(throttling.cgroup.clone()).then_some((labels, throttling))
            })
            .collect();
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).throttling = throttling;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, _summary: &Report) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The store as a collector: encoded from its state at each scrape.
#[derive(Clone, Debug)]
pub struct Metrics(pub Arc<Mutex<Store>>);

type Labels = Vec<(&'static str, String)>;

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let store = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let processes: Vec<(Labels, &Series)> = store
            .processes
            .iter()
            .map(|(key, series)| {
                let labels = match key {
                    ProcessKey::Pid(pid) => {
                        with(&vec![("pid", pid.to_string()), ("comm", series.comm.clone())], &series.place)
                    }
                    ProcessKey::Name(name, place) => with(&vec![("comm", name.clone())], place),
                    ProcessKey::Other => vec![("comm", OTHER.to_owned())],
                };
                (labels, series)
            })
            .collect();
        encode_series(&mut encoder, "probe", &processes)?;
        family(
            &mut encoder,
            "probe_oldest_syscall_in_flight_seconds",
            "Age of the process's oldest syscall in progress when the last interval closed (at least: for a call that began before probe attached, a lower bound); 0 when none.",
            processes.iter().map(|(labels, series)| (labels.clone(), Value::GaugeSeconds(series.oldest_in_flight_ns))),
        )?;
        if store.limits.threads > 0 {
            let own = store.threads.iter().map(|(key, series)| (key.pid(), key.tid().to_string(), series));
            let others = store.others.iter().map(|(&pid, series)| (pid, OTHER.to_owned(), series));
            let threads: Vec<(Labels, &Series)> = own
                .chain(others)
                .map(|(pid, tid, series)| {
                    (vec![("pid", pid.to_string()), ("tid", tid), ("comm", series.comm.clone())], series)
                })
                .collect();
            encode_series(&mut encoder, "probe_thread", &threads)?;
        }
        encode_go(&mut encoder, &store.go)?;
        encode_throttling(&mut encoder, &store.throttling)?;
        encode_health(&mut encoder, &store)
    }
}

/// The labels of a process series that say where it runs: those its
/// cgroup's name gives.
fn place_labels(labels: &cgroup::Labels) -> Labels {
    let container = labels.container.as_ref().map(|container| ("container", container.id.clone()));
    let pod = labels.pod_uid.as_ref().map(|uid| ("pod_uid", uid.clone()));
    let unit = labels.unit.as_ref().map(|unit| ("unit", unit.clone()));
    container.into_iter().chain(pod).chain(unit).collect()
}

/// The CFS throttling of the cgroups of the processes with series.
fn encode_throttling(
    encoder: &mut DescriptorEncoder,
    cgroups: &[(Labels, Throttling)],
) -> Result<(), std::fmt::Error> {
    let each = |value: fn(&Throttling) -> Option<Value<'static>>| {
        cgroups.iter().filter_map(move |(labels, throttling)| Some((labels.clone(), value(throttling)?)))
    };
    family(
        encoder,
        "probe_cgroup_cpu_periods",
        "CFS enforcement periods in which the cgroup had runnable threads (its cpu.stat nr_periods).",
        each(|t| Some(Value::Count(t.periods))),
    )?;
    family(
        encoder,
        "probe_cgroup_cpu_throttled_periods",
        "Of them, periods in which the cgroup used up its quota and was throttled (nr_throttled).",
        each(|t| Some(Value::Count(t.throttled_periods))),
    )?;
    family(
        encoder,
        "probe_cgroup_cpu_throttled_seconds",
        "Time the cgroup's threads spent throttled (throttled_time, throttled_usec).",
        each(|t| Some(Value::Seconds(t.throttled_ns))),
    )?;
    family(
        encoder,
        "probe_cgroup_cpu_quota_seconds",
        "The cgroup's CPU time per period (absent: no quota of its own).",
        each(|t| Some(Value::GaugeSeconds(t.quota_us? * 1000))),
    )?;
    family(
        encoder,
        "probe_cgroup_cpu_period_seconds",
        "The cgroup's CFS enforcement period.",
        each(|t| Some(Value::GaugeSeconds(t.period_us? * 1000))),
    )
}

/// A Go scheduler gauge: its name after `probe_go_`, its help, its value.
type GoGauge = (&'static str, &'static str, fn(&GoSchedReport) -> i64);

const GO_GAUGES: [GoGauge; 6] = [
    ("gomaxprocs", "GOMAXPROCS, read from the runtime.", |s| s.gomaxprocs),
    ("idle_procs", "Ps idle (schedtrace's idleprocs).", |s| s.idle_procs),
    ("threads", "Threads (Ms) the runtime made and has not freed.", |s| s.threads),
    ("spinning_threads", "Threads spinning: looking for work.", |s| s.spinning_threads),
    ("idle_threads", "Threads parked for want of work.", |s| s.idle_threads),
    ("global_runqueue", "Goroutines in the global run queue.", |s| s.runqueue),
];

/// The live Go processes' schedulers as gauges, labelled by pid (and p,
/// state or wait reason), as last read.
fn encode_go(encoder: &mut DescriptorEncoder, go: &[GoProcessReport]) -> Result<(), std::fmt::Error> {
    let pid = |process: &GoProcessReport| vec![("pid", process.pid.to_string())];
    let gauge = |value: i64| Value::Gauge(value.max(0) as u64);
    let read: Vec<_> = go.iter().filter_map(|process| Some((process, process.sched.as_ref()?))).collect();
    for (name, help, value) in GO_GAUGES {
        let samples = read.iter().map(|(process, sched)| (pid(process), gauge(value(sched))));
        family(encoder, &format!("probe_go_{name}"), help, samples)?;
    }
    family(
        encoder,
        "probe_go_snapshot_age_seconds",
        "Age of the read of the runtime these gauges come from, when the last interval closed.",
        read.iter().map(|(process, sched)| (pid(process), Value::GaugeSeconds(sched.age_ms * 1_000_000))),
    )?;
    family(
        encoder,
        "probe_go_p_runqueue",
        "Goroutines in a P's local run queue, runnext included.",
        read.iter().flat_map(|(process, sched)| {
            sched.ps.iter().map(|p| {
                (
                    with(&pid(process), &[("p", p.id.to_string())]),
                    Value::Gauge(p.runqueue + u64::from(p.runnext)),
                )
            })
        }),
    )?;
    let states = go.iter().filter_map(|process| Some((process, process.goroutine_states.as_ref()?)));
    family(
        encoder,
        "probe_go_goroutines",
        "Goroutines by state (the runtime's own among them).",
        states.clone().flat_map(|(process, states)| {
            states.states.iter().map(|state| {
                (with(&pid(process), &[("state", state.name.clone())]), Value::Gauge(state.count))
            })
        }),
    )?;
    family(
        encoder,
        "probe_go_goroutines_waiting",
        "Waiting goroutines by the runtime's wait reason.",
        states.flat_map(|(process, states)| {
            states.wait_reasons.iter().map(|reason| {
                (with(&pid(process), &[("reason", reason.name.clone())]), Value::Gauge(reason.count))
            })
        }),
    )
}

/// A counter, a gauge or a histogram, encoded from values at hand.
enum Value<'a> {
    /// A counter of things.
    Count(u64),
    /// A counter of time.
    Seconds(u64),
    Gauge(u64),
    /// A gauge of time.
    GaugeSeconds(u64),
    Histogram(&'a SyscallSeries),
}

impl EncodeMetric for Value<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Value::Count(count) => encoder.encode_counter::<NoLabelSet, _, u64>(count, None),
            Value::Seconds(ns) => encoder.encode_counter::<NoLabelSet, _, u64>(&(*ns as f64 / 1e9), None),
            Value::Gauge(value) => encoder.encode_gauge(&(*value as i64)),
            Value::GaugeSeconds(ns) => encoder.encode_gauge(&(*ns as f64 / 1e9)),
            Value::Histogram(series) => {
                let mut buckets: Vec<(f64, u64)> = BUCKETS.iter().copied().zip(series.buckets).collect();
                buckets.push((f64::INFINITY, series.buckets[BUCKETS.len()]));
                let count = series.buckets.iter().sum();
                // Indexed as `buckets`. Only OpenMetrics has exemplars: the
                // classic text converted from it drops them.
                let exemplars: HashMap<usize, Exemplar<Labels, f64>> = (series.exemplars.iter().enumerate())
                    .filter_map(|(bucket, kept)| Some((bucket, kept.as_ref()?.exemplar())))
                    .collect();
                encoder.encode_histogram(series.sum_ns as f64 / 1e9, count, &buckets, Some(&exemplars))
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Value::Count(_) | Value::Seconds(_) => MetricType::Counter,
            Value::Gauge(_) | Value::GaugeSeconds(_) => MetricType::Gauge,
            Value::Histogram(_) => MetricType::Histogram,
        }
    }
}

/// Writes one metric family: its descriptor, then a sample per label set.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, Value<'a>)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, value) in samples {
        value.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn with(labels: &Labels, more: &[(&'static str, String)]) -> Labels {
    labels.iter().cloned().chain(more.iter().cloned()).collect()
}

/// A scheduler counter: its name after `_sched_`, its help, its value.
struct SchedCounter {
    name: &'static str,
    help: &'static str,
    value: fn(&SchedStats) -> Value<'static>,
}

const SCHED_COUNTERS: [SchedCounter; 8] = [
    SchedCounter {
        name: "on_cpu_seconds",
        help: "Time running on a CPU.",
        value: |s| Value::Seconds(s.on_cpu_ns),
    },
    SchedCounter {
        name: "blocked_seconds",
        help: "Time asleep, not runnable.",
        value: |s| Value::Seconds(s.blocked_ns),
    },
    SchedCounter {
        name: "runq_wait_seconds",
        help: "Time runnable, waiting for a CPU.",
        value: |s| Value::Seconds(s.runq_wait_ns),
    },
    SchedCounter {
        name: "voluntary_switches",
        help: "Context switches where the thread blocked.",
        value: |s| Value::Count(s.voluntary),
    },
    SchedCounter {
        name: "involuntary_switches",
        help: "Context switches where the thread was preempted.",
        value: |s| Value::Count(s.involuntary),
    },
    SchedCounter {
        name: "migrations",
        help: "Runs that began on another CPU than the previous run.",
        value: |s| Value::Count(s.migrations),
    },
    SchedCounter {
        name: "lost_records",
        help: "Scheduler records the full ring buffer dropped: while this grows, the time counters are a sample (the switch and migration counters stay exact).",
        value: |s| Value::Count(s.lost_records),
    },
    SchedCounter {
        name: "partial_runs",
        help: "Runs seen at one end only (a dropped record, or a switch the kernel never reported): while this grows, the time counters are a sample.",
        value: |s| Value::Count(s.partial_runs),
    },
];

/// The syscall and scheduler families of one kind of series.
fn encode_series(
    encoder: &mut DescriptorEncoder,
    prefix: &str,
    series: &[(Labels, &Series)],
) -> Result<(), std::fmt::Error> {
    let calls = || {
        series.iter().flat_map(|(labels, series)| {
            series
                .syscalls
                .iter()
                .map(move |(&nr, call)| (with(labels, &[("syscall", syscall_name(nr))]), call))
        })
    };
    family(
        encoder,
        &format!("{prefix}_syscalls"),
        "Syscalls made, failed or not.",
        calls().map(|(labels, call)| (labels, Value::Count(call.count))),
    )?;
    family(
        encoder,
        &format!("{prefix}_syscall_errors"),
        "Syscalls that returned an error, by errno.",
        calls().flat_map(|(labels, call)| {
            call.errnos
                .iter()
                .map(move |(&errno, &n)| (with(&labels, &[("errno", errno_name(errno))]), Value::Count(n)))
        }),
    )?;
    family(
        encoder,
        &format!("{prefix}_syscall_latency_seconds"),
        "Time from syscall entry to exit, of the calls that returned.",
        calls().map(|(labels, call)| (labels, Value::Histogram(call))),
    )?;
    let scheduled =
        || series.iter().filter_map(|(labels, series)| Some((labels.clone(), series.sched.as_ref()?)));
    for counter in SCHED_COUNTERS {
        let samples = scheduled().map(|(labels, sched)| (labels, (counter.value)(sched)));
        family(encoder, &format!("{prefix}_sched_{}", counter.name), counter.help, samples)?;
    }
    Ok(())
}

fn encode_health(encoder: &mut DescriptorEncoder, store: &Store) -> Result<(), std::fmt::Error> {
    let health = store.totals;
    let one = |value: Value<'static>| [(Labels::new(), value)];
    family(
        encoder,
        "probe_events",
        "Records received from the kernel programs.",
        one(Value::Count(health.events)),
    )?;
    family(
        encoder,
        "probe_lost_events",
        "Events the kernel programs could not deliver.",
        one(Value::Count(health.lost_events)),
    )?;
    if let Some(ns) = health.bpf_run_ns {
        family(encoder, "probe_bpf_run_seconds", "Time probe's BPF programs ran.", one(Value::Seconds(ns)))?;
    }
    family(
        encoder,
        "probe_cpu_seconds",
        "CPU time of the probe process.",
        one(Value::Seconds(health.cpu_ns)),
    )?;
    family(
        encoder,
        "probe_traced_processes",
        "Processes with series.",
        one(Value::Gauge(store.processes() as u64)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{
        in_flight::{CallInFlight, ThreadState},
        tests::{event, record},
        ThreadKey,
    };
    use prometheus_client::{encoding::text::encode, registry::Registry};

    fn scrape(store: &Arc<Mutex<Store>>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Metrics(store.clone())));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    fn stuck(age_ns: u64) -> CallInFlight {
        CallInFlight {
            nr: 0,
            args: None,
            started_ns: 1,
            age_ns,
            state: ThreadState::Blocked,
            before_attach: true,
            comm: "stuck".to_owned(),
        }
    }

    #[test]
    fn a_go_processs_scheduler_is_a_set_of_gauges_by_pid_and_p() {
        let limits = Limits { processes: 100, by_pid: true, threads: 0, grace: Duration::ZERO };
        let store = Arc::new(Mutex::new(Store::new(limits)));
        store.lock().unwrap().go = vec![crate::report::go_process_example(42, true)];
        let text = scrape(&store);
        for line in [
            "probe_go_gomaxprocs{pid=\"42\"} 2",
            "probe_go_global_runqueue{pid=\"42\"} 3",
            "probe_go_snapshot_age_seconds{pid=\"42\"} 0.25",
            "probe_go_p_runqueue{pid=\"42\",p=\"0\"} 3",
            "probe_go_p_runqueue{pid=\"42\",p=\"1\"} 0",
            "probe_go_idle_threads{pid=\"42\"} 2",
            "probe_go_goroutines{pid=\"42\",state=\"waiting\"} 10",
            "probe_go_goroutines_waiting{pid=\"42\",reason=\"chan receive\"} 10",
        ] {
            assert!(text.contains(line), "no {line} in {text}");
        }
    }

    #[test]
    fn a_process_stuck_in_calls_has_its_oldest_as_a_gauge_until_it_is_gone() {
        let limits = Limits { processes: 100, by_pid: true, threads: 0, grace: Duration::ZERO };
        let store = Arc::new(Mutex::new(Store::new(limits)));
        // No records at all: its threads are all blocked.
        let mut table = Table::default();
        let calls =
            [(ThreadKey::new(7, 7), stuck(2_500_000_000)), (ThreadKey::new(7, 8), stuck(12_500_000_000))];
        table.set_in_flight(calls.into_iter().collect());
        let now = Instant::now();
        store
            .lock()
            .unwrap()
            .add_interval(&table, ProbeTotals::default(), now, WallClock::now(), |_, _| true);
        let text = scrape(&store);
        assert!(text.contains("# TYPE probe_oldest_syscall_in_flight_seconds gauge"), "{text}");
        assert!(
            text.contains("probe_oldest_syscall_in_flight_seconds{pid=\"7\",comm=\"stuck\"} 12.5"),
            "{text}"
        );
        // Its calls returned: 0; then it is gone, and so are its series.
        let later = now + Duration::from_secs(1);
        store.lock().unwrap().add_interval(
            &Table::default(),
            ProbeTotals::default(),
            later,
            WallClock::now(),
            |_, _| true,
        );
        assert!(
            scrape(&store).contains("probe_oldest_syscall_in_flight_seconds{pid=\"7\",comm=\"stuck\"} 0.0")
        );
        for seconds in [2, 3] {
            let then = now + Duration::from_secs(seconds);
            store.lock().unwrap().add_interval(
                &Table::default(),
                ProbeTotals::default(),
                then,
                WallClock::now(),
                |_, _| false,
            );
        }
        assert!(!scrape(&store).contains("pid=\"7\""), "{}", scrape(&store));
    }

    /// The bucket line of `le` in `text`, split at its exemplar: the line
    /// up to it, the exemplar's labels and value, and its timestamp.
    fn bucket<'a>(text: &'a str, le: &str) -> (&'a str, &'a str, f64) {
        let line = text
            .lines()
            .find(|line| line.starts_with("probe_syscall_latency_seconds_bucket{") && line.contains(le))
            .unwrap_or_else(|| panic!("no bucket {le}: {text}"));
        let Some((sample, exemplar)) = line.split_once(" # ") else {
            return (line, "", 0.0);
        };
        let (exemplar, timestamp) = exemplar.rsplit_once(' ').unwrap();
        (sample, exemplar, timestamp.parse().unwrap())
    }

    #[test]
    fn each_bucket_carries_its_slowest_call_as_an_exemplar() {
        let limits = Limits { processes: 100, by_pid: true, threads: 0, grace: Duration::from_secs(60) };
        let store = Arc::new(Mutex::new(Store::new(limits)));
        let wall = WallClock::now();
        let interval = |calls: &[(u32, i64, u64, u64)]| {
            let mut table = Table::default();
            for &(tid, ret, ms, start_ns) in calls {
                let mut call = event(tid, 0, ret, ms * 1_000_000);
                call.start_ns = start_ns;
                record(&mut table, &call);
            }
            store.lock().unwrap().add_interval(
                &table,
                ProbeTotals::default(),
                Instant::now(),
                wall,
                |_, _| true,
            );
            scrape(&store)
        };
        let seconds = |ns: u64| wall.at(ns).duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        // 30 ms (interrupted) and 40 ms share the 50 ms bucket; 200 ms is
        // alone in the 250 ms one; 1 µs has the first bucket.
        let text = interval(&[
            (101, -4, 30, 5_000_000_000),
            (102, 0, 40, 6_000_000_000),
            (101, 0, 200, 7_000_000_000),
            (103, 0, 0, 8_000_000_000),
        ]);
        let (sample, exemplar, timestamp) = bucket(&text, "le=\"0.05\"");
        assert!(sample.ends_with(" 3"), "{sample}");
        assert_eq!(exemplar, "{pid=\"100\",tid=\"102\"} 0.04");
        assert!((timestamp - seconds(6_040_000_000)).abs() < 1e-3, "ends when it returned: {timestamp}");
        assert_eq!(bucket(&text, "le=\"0.25\"").1, "{pid=\"100\",tid=\"101\"} 0.2");
        assert_eq!(bucket(&text, "le=\"0.000001\"").1, "{pid=\"100\",tid=\"103\"} 0.0");
        assert_eq!(bucket(&text, "le=\"0.1\"").1, "", "no call of its own in the 100 ms bucket");
        // A later interval: a slower failed call takes the 50 ms bucket, a
        // faster one does not take the 250 ms one.
        let text = interval(&[(104, -4, 45, 9_000_000_000), (105, 0, 150, 10_000_000_000)]);
        assert_eq!(bucket(&text, "le=\"0.05\"").1, "{pid=\"100\",tid=\"104\",errno=\"EINTR\"} 0.045");
        assert_eq!(bucket(&text, "le=\"0.25\"").1, "{pid=\"100\",tid=\"101\"} 0.2");
        assert!((bucket(&text, "le=\"0.25\"").2 - seconds(7_200_000_000)).abs() < 1e-3);
    }

    #[test]
    fn exemplar_labels_stay_within_the_128_characters_of_openmetrics() {
        let longest = (1..4096).max_by_key(|&errno| errno_name(errno).len()).unwrap();
        let call = SlowExemplar {
            duration_ns: 1,
            ended: SystemTime::now(),
            pid: u32::MAX,
            tid: u32::MAX,
            errno: Some(longest as u32),
        };
        let length: usize =
            call.labels().iter().map(|(name, value)| name.len() + value.chars().count()).sum();
        assert!(length <= 128, "{length}: {:?}", call.labels());
    }
}
