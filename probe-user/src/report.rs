//! Reports: what an interval or the whole run looked like, in the shape that
//! both outputs (text and JSON) print. The JSON field names are a contract
//! (README, "JSON schema"): add fields freely, rename none.

use std::collections::BTreeMap;

use probe_common::{errno_of, COMPAT_NR};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use syscalls::{Errno, Sysno};

use crate::{
    cgroup::{Cgroups, Container, Labels, Throttling},
    pipeline::SlowCallSeen,
    slow::{Explanation, FIRST_FLOOR_NS},
};

use crate::aggregate::{
    in_flight::{CallInFlight, ThreadState},
    sched::{Blamed, Holder, SchedStats},
    slowest::SlowCall,
    SyscallStats, Syscalls, Table, ThreadKey, ThreadStats,
};

/// Which report this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// What happened during the last `--interval`.
    Interval,
    /// Everything, once, at the end.
    Summary,
}

/// Events the kernel programs could not deliver, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Losses {
    /// Records dropped because the ring buffer was full.
    pub ring_buffer: u64,
    /// Syscalls lost because the map of calls parked off-CPU was full.
    pub in_flight_full: u64,
    /// Of `ring_buffer`, syscall records that the kernel could not count
    /// per thread either (its map of lost calls was full).
    pub uncounted: u64,
    /// Records userspace could not decode (a bug: please report it).
    pub undecodable: u64,
    /// io_uring requests not followed: the map of requests in flight was
    /// full.
    pub io_uring_full: u64,
}

impl Losses {
    /// All events lost, whatever the cause.
    pub fn total(&self) -> u64 {
        self.ring_buffer + self.in_flight_full + self.undecodable + self.io_uring_full
    }

    /// Whether every syscall count and errno is exact: records dropped from
    /// a full ring buffer are still counted in the kernel, only their
    /// latencies are missing.
    pub fn counts_exact(&self) -> bool {
        self.in_flight_full == 0 && self.uncounted == 0 && self.undecodable == 0
    }
}

/// One report, printed as a table or as one JSON line.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `"interval"` or `"summary"`.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Time since probe attached.
    pub elapsed_ns: u64,
    /// Time this report covers.
    pub span_ns: u64,
    /// Records received in that time.
    pub events: u64,
    /// Events lost since probe attached: never silent.
    pub lost_events: u64,
    /// `lost_events` by cause.
    pub lost: Losses,
    /// Whether syscall counts and errnos are exact despite any loss (only
    /// latencies are then sampled).
    pub counts_exact: bool,
    /// probe's own footprint: it must stay flat however long it runs.
    pub probe: Health,
    /// Exit status of the traced COMMAND, in the summary of COMMAND mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Threads, busiest first.
    pub threads: Vec<ThreadReport>,
    /// Processes that run the traced Go binary, in the summary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub go: Vec<GoProcessReport>,
    /// Their goroutines, most syscalls first, in the summary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub goroutines: Vec<GoroutineReport>,
    /// The processes of `threads`, in their order: where each runs.
    pub processes: Vec<ProcessReport>,
}

/// Where a process runs (README, "Containers and cgroups"): its cgroup
/// and what the cgroup's name says, `null` each when unknown: the cgroup
/// when the process was gone before a report showed it.
#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub cgroup: Option<String>,
    pub container: Option<Container>,
    pub pod_uid: Option<String>,
    pub pod_qos: Option<&'static str>,
    pub unit: Option<String>,
    /// Its cpu cgroup's CFS throttling when the report was made; `null`
    /// without a cpu controller or once the process is gone.
    pub throttling: Option<Throttling>,
    /// Its threads' run-queue wait in the span, added up (the scheduler's
    /// side of a throttled cgroup's wait).
    pub runq_wait_ns: u64,
}

/// A Go process: its runtime and what each of its threads is to it.
#[derive(Debug, Serialize)]
pub struct GoProcessReport {
    pub pid: u32,
    /// The Go version the binary was built with.
    pub version: String,
    /// GOMAXPROCS: `runtime.gomaxprocs` read from the process while it ran,
    /// else what the runtime would have chosen (`gomaxprocs_from`).
    pub gomaxprocs: Option<i32>,
    /// `"runtime"` or `"environment"`.
    pub gomaxprocs_from: &'static str,
    /// Every thread seen: the OS threads the runtime created (its Ms).
    pub threads: Vec<GoThreadReport>,
    /// Goroutines seen making syscalls (g0 and calls of no goroutine
    /// aside): those that made none are not seen.
    pub goroutines_seen: u64,
    /// The runtime's scheduler, as last read from the process's memory
    /// while it lived; else `sched_unavailable` says why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sched: Option<GoSchedReport>,
    /// Its goroutines by state, from the same read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutine_states: Option<GoroutineStatesReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sched_unavailable: Option<String>,
}

/// What `GODEBUG=schedtrace` prints, read from a running Go process.
#[derive(Clone, Debug, Serialize)]
pub struct GoSchedReport {
    /// How long before the report the read was made.
    pub age_ms: u64,
    pub gomaxprocs: i64,
    /// The CPUs the runtime found at its start.
    pub ncpu: i64,
    pub idle_procs: i64,
    /// Threads (Ms) the runtime made and has not freed.
    pub threads: i64,
    pub spinning_threads: i64,
    pub idle_threads: i64,
    /// Goroutines in the global run queue.
    pub runqueue: i64,
    pub ps: Vec<GoPReport>,
    /// The threads, as the runtime's list of Ms has them.
    pub ms: Vec<GoMReport>,
}

/// One P: a right to run Go code, held by at most one thread.
#[derive(Clone, Debug, Serialize)]
pub struct GoPReport {
    pub id: i64,
    /// `idle`, `running`, `syscall`, `gcstop` or `dead`.
    pub status: String,
    /// Goroutines in its local run queue, `runnext` not counted.
    pub runqueue: u64,
    /// Whether a goroutine waits in `runnext`, to run next.
    pub runnext: bool,
    pub schedtick: u64,
    pub syscalltick: u64,
    /// The thread that holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
}

/// One M: an OS thread of the runtime.
#[derive(Clone, Debug, Serialize)]
pub struct GoMReport {
    pub id: i64,
    pub tid: u32,
    /// What it is to the runtime, in a few words.
    pub role: String,
    /// The P it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p: Option<i64>,
    /// The goroutine it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goid: Option<u64>,
}

/// A process's goroutines by state, the runtime's own among them.
#[derive(Clone, Debug, Serialize)]
pub struct GoroutineStatesReport {
    pub total: u64,
    /// `running`, `runnable`, `syscall`, `waiting`, ...: the runtime's
    /// order.
    pub states: Vec<GoCount>,
    /// The waiting ones by the runtime's reason, most first.
    pub wait_reasons: Vec<GoCount>,
    /// Goroutines the runtime had, of which the first `read` were read
    /// (probe reads a bounded number each time).
    pub of: u64,
    pub read: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GoCount {
    pub name: String,
    pub count: u64,
}

impl GoSchedReport {
    /// schedtrace's line, in words: `GOMAXPROCS 2 of 2 CPUs: 1 idle P, 4
    /// threads (0 spinning, 1 idle), global run queue 0`.
    pub fn summary(&self) -> String {
        format!(
            "GOMAXPROCS {} of {} CPUs: {} idle P{}, {} threads ({} spinning, {} idle), global run queue {}",
            self.gomaxprocs,
            self.ncpu,
            self.idle_procs,
            if self.idle_procs == 1 { "" } else { "s" },
            self.threads,
            self.spinning_threads,
            self.idle_threads,
            self.runqueue
        )
    }
}

impl GoPReport {
    /// `P0   running  runq 3+next schedtick 38        syscalltick 3`: its
    /// columns, for the text summary and the live view alike.
    pub fn summary(&self) -> String {
        let queue = format!("{}{}", self.runqueue, if self.runnext { "+next" } else { "" });
        format!(
            "P{:<3} {:<8} runq {queue:<6} schedtick {:<9} syscalltick {}",
            self.id, self.status, self.schedtick, self.syscalltick
        )
    }
}

impl GoroutineStatesReport {
    /// `1,204 goroutines: 2 running, 5 runnable, 3 in syscall, 1,194
    /// waiting (chan receive 900, IO wait 290, select 4)`.
    pub fn summary(&self) -> String {
        let states: Vec<String> = self
            .states
            .iter()
            .map(|state| {
                let name = match state.name.as_str() {
                    "syscall" => "in syscall",
                    name => name,
                };
                let reasons = match state.name.as_str() {
                    "waiting" if !self.wait_reasons.is_empty() => {
                        let reasons: Vec<String> = self
                            .wait_reasons
                            .iter()
                            .map(|reason| format!("{} {}", reason.name, thousands(reason.count)))
                            .collect();
                        format!(" ({})", reasons.join(", "))
                    }
                    _ => String::new(),
                };
                format!("{} {name}{reasons}", thousands(state.count))
            })
            .collect();
        let read = match self.read < self.of {
            true => format!(" (the first {} of {} read)", thousands(self.read), thousands(self.of)),
            false => String::new(),
        };
        format!("{} goroutines{read}: {}", thousands(self.total), states.join(", "))
    }
}

/// A Go process as the tests of the outputs know it: GOMAXPROCS 2 of 4
/// CPUs, P0 running on the main thread with 2 goroutines queued and one in
/// `runnext`, P1 idle, sysmon on thread `pid + 2`, 10 goroutines waiting on
/// channel receives, read 250 ms before; or, without `sched`, one whose
/// scheduler was not read because it was gone.
#[cfg(test)]
pub fn go_process_example(pid: u32, sched: bool) -> GoProcessReport {
    let p = |id, status: &str, runqueue, runnext, tid| GoPReport {
        id,
        status: status.to_owned(),
        runqueue,
        runnext,
        schedtick: 9,
        syscalltick: 2,
        tid,
    };
    let m = |id, tid, role: &str| GoMReport { id, tid, role: role.to_owned(), p: None, goid: None };
    let count = |name: &str, count| GoCount { name: name.to_owned(), count };
    GoProcessReport {
        pid,
        version: "go1.19.8".to_owned(),
        gomaxprocs: Some(2),
        gomaxprocs_from: "runtime",
        threads: Vec::new(),
        goroutines_seen: 0,
        sched: sched.then(|| GoSchedReport {
            age_ms: 250,
            gomaxprocs: 2,
            ncpu: 4,
            idle_procs: 1,
            threads: 5,
            spinning_threads: 0,
            idle_threads: 2,
            runqueue: 3,
            ps: vec![p(0, "running", 2, true, Some(pid)), p(1, "idle", 0, false, None)],
            ms: vec![m(0, pid, "holds P0, runs goroutine 1"), m(1, pid + 2, "sysmon: the runtime's monitor")],
        }),
        goroutine_states: sched.then(|| GoroutineStatesReport {
            total: 10,
            states: vec![count("waiting", 10)],
            wait_reasons: vec![count("chan receive", 10)],
            of: 10,
            read: 10,
        }),
        sched_unavailable: (!sched).then(|| "the process is gone".to_owned()),
    }
}

/// `1204` as `1,204`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// One runtime thread.
#[derive(Debug, Serialize)]
pub struct GoThreadReport {
    pub tid: u32,
    /// What it does for the runtime, as of its latest record.
    pub role: String,
}

/// One goroutine's syscalls and the threads it ran on.
#[derive(Debug, Serialize)]
pub struct GoroutineReport {
    pub pid: u32,
    /// The runtime's goroutine id (0: the runtime's own scheduler stack).
    pub goid: u64,
    /// The function the goroutine was started with.
    pub start_fn: String,
    /// A read of the process's scheduler found it ended while the process
    /// lived.
    pub exited: bool,
    /// Same fields as a thread's.
    pub syscalls: Vec<SyscallReport>,
    /// The OS threads it ran on.
    pub threads: Vec<u32>,
    /// Runs that began on another thread than the previous run.
    pub moves: u64,
}

/// probe's own footprint when a report is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Resident memory of the probe process.
    pub rss_bytes: u64,
    /// Entries in the kernel map of calls parked off-CPU.
    pub calls_off_cpu: usize,
    /// Lost-call counters (thread, syscall, errno) taken from the kernel at
    /// the last turn of its two maps.
    pub lost_call_keys: usize,
}

/// One thread's syscalls.
#[derive(Debug, Serialize)]
pub struct ThreadReport {
    /// Thread id.
    pub tid: u32,
    /// Which thread with this tid in this process: 0 for the first, 1 for
    /// the next one the kernel gave the same tid after the first exited, ….
    pub generation: u32,
    /// Process id.
    pub pid: u32,
    /// Thread name.
    pub comm: String,
    /// The thread was seen to exit.
    pub exited: bool,
    /// Syscalls, most total time first.
    pub syscalls: Vec<SyscallReport>,
    /// The scheduler's view, unless `--no-sched`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sched: Option<SchedReport>,
    /// io_uring requests it submitted, per opcode, most first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_uring: Vec<IoUringReport>,
    /// The syscall it is in when the report is made, if any.
    pub in_flight: Option<InFlightReport>,
}

/// A syscall in progress when a report is made (README, "JSON schema").
#[derive(Debug, Serialize)]
pub struct InFlightReport {
    /// Syscall name.
    pub name: String,
    /// Syscall number (of the i386 table for a name marked `(i386)`).
    pub nr: u32,
    /// Its six argument registers, raw, in hex (`"0x3"`) as `/proc` and
    /// the kernel show them; `null` when the thread was on a CPU (`/proc`
    /// shows them only while it is off one).
    pub args: Option<Vec<String>>,
    /// When it began, on the kernel's monotonic clock; for a call that
    /// began before attach, the latest it can have begun.
    pub started_ns: u64,
    /// Time in it so far, when the report was made: a lower bound for a
    /// call that began before attach.
    pub age_ns: u64,
    /// `"blocked"`, `"runnable"` or `"on_cpu"`.
    pub state: ThreadState,
    /// It began before probe attached.
    pub started_before_attach: bool,
}

impl InFlightReport {
    fn new(call: &CallInFlight) -> Self {
        Self {
            name: syscall_name(call.nr),
            nr: call.nr & !COMPAT_NR,
            args: call.args.map(|args| args.iter().map(|arg| format!("{arg:#x}")).collect()),
            started_ns: call.started_ns,
            age_ns: call.age_ns,
            state: call.state,
            started_before_attach: call.before_attach,
        }
    }
}

/// One io_uring opcode's requests of one thread.
#[derive(Debug, Serialize)]
pub struct IoUringReport {
    /// The kernel's name: `NOP`, `READ`, `WRITE`, ….
    pub opcode: String,
    pub count: u64,
    /// Requests that completed with an error.
    pub errors: u64,
    /// Submission-to-completion quantiles and maximum.
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub max_ns: Option<u64>,
    /// Requests that went to an io-wq worker.
    #[serde(rename = "async")]
    pub offloaded: u64,
}

/// What the scheduler did to one thread (README, "Scheduler view").
#[derive(Debug, Serialize)]
pub struct SchedReport {
    /// Time running.
    pub on_cpu_ns: u64,
    /// Time asleep (not runnable).
    pub blocked_ns: u64,
    /// Time runnable, waiting for a CPU.
    pub runq_wait_ns: u64,
    /// Switches where the thread blocked.
    pub voluntary_switches: u64,
    /// Switches where it was preempted.
    pub involuntary_switches: u64,
    /// Runs that began on another CPU than the previous run.
    pub migrations: u64,
    /// Run-queue wait quantiles; `null` without a measured wait.
    pub runq_p50_ns: Option<u64>,
    pub runq_p99_ns: Option<u64>,
    pub runq_max_ns: Option<u64>,
    /// CPU the thread was last seen on.
    pub last_cpu: Option<u32>,
    /// on-CPU time per CPU, keyed by the CPU number as a string.
    pub cpus: BTreeMap<String, u64>,
    /// Migrations per CPU pair, most frequent first.
    pub migration_pairs: Vec<MigrationPair>,
    /// Whether scheduler records of this thread were dropped by the full
    /// ring buffer, or runs of it seen at one end only: its switch counts
    /// and migrations are still exact (the kernel counted them), but its
    /// times, run-queue quantiles and CPU pairs are a sample.
    pub sampled: bool,
    /// How many of its scheduler records were dropped.
    pub lost_records: u64,
    /// How many of its runs were seen at one end only (dropped, or a switch
    /// the kernel never reported).
    pub partial_runs: u64,
    /// Who held the CPU while it waited in run queues, on the CPU where
    /// each wait ended (README, "Who held the CPU"): the
    /// [`RUNQ_BLAME_SHOWN`] largest holders, most first, then the rest
    /// summed in one entry whose `holder` is `"other"`. The entries add up
    /// to its waits that ended in the span, each whole (`runq_wait_ns` has
    /// only the span's part of a wait, and waits still in progress).
    pub runq_blame: Vec<BlameEntry>,
}

/// Holders a thread's `runq_blame` names before it sums the rest.
pub const RUNQ_BLAME_SHOWN: usize = 8;

/// Who held a CPU while a thread waited for it, and for how long.
#[derive(Debug, Serialize)]
pub struct BlameEntry {
    /// `"thread"`; `"idle"`: no task (a CPU leaving idle for the woken
    /// thread); `"unknown"`: runs too many to keep during the wait;
    /// `"other"`: the holders not shown, summed.
    pub holder: &'static str,
    /// The thread's process and id; `null` but for a `"thread"`.
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    /// The thread's name at its latest run blamed, escaped; `null` but for
    /// a `"thread"`.
    pub comm: Option<String>,
    /// The container the thread's process runs in, when its cgroup names
    /// one; filled in by [`Report::place`].
    pub container: Option<Container>,
    pub ns: u64,
}

impl BlameEntry {
    /// The one place a holder becomes a report entry; its container comes
    /// later, from the cgroups read for the report ([`Report::place`]).
    fn new(holder: Holder, blamed: &Blamed) -> Self {
        let (kind, pid, tid, comm) = match holder {
            Holder::Thread { pid, tid } => {
                let comm =
                    crate::escape::visible_bytes(blamed.comm.split(|&b| b == 0).next().unwrap_or_default());
                ("thread", Some(pid), Some(tid), Some(comm))
            }
            Holder::Idle => ("idle", None, None, None),
            Holder::Unknown => ("unknown", None, None, None),
        };
        Self { holder: kind, pid, tid, comm, container: None, ns: blamed.ns }
    }

    /// How it reads in a sentence: `tid 123 (java) of pid 120`, `idle`.
    pub fn describe(&self) -> String {
        match (self.pid, self.tid, &self.comm) {
            (Some(pid), Some(tid), Some(comm)) => {
                let thread = match pid == tid {
                    true => format!("pid {pid} ({comm})"),
                    false => format!("tid {tid} ({comm}) of pid {pid}"),
                };
                match &self.container {
                    Some(container) => format!("{thread}, container {} {}", container.runtime, container.id),
                    None => thread,
                }
            }
            _ => self.holder.to_owned(),
        }
    }
}

/// The largest `shown` holders, most first, and the rest in one `"other"`.
pub fn blame_entries(blame: &FxHashMap<Holder, Blamed>, shown: usize) -> Vec<BlameEntry> {
    let mut holders: Vec<_> = blame.iter().filter(|(_, blamed)| blamed.ns > 0).collect();
    holders.sort_by(|a, b| b.1.ns.cmp(&a.1.ns).then(a.0.cmp(b.0)));
    let mut entries: Vec<_> =
        holders.iter().take(shown).map(|&(&holder, blamed)| BlameEntry::new(holder, blamed)).collect();
    let rest = holders.iter().skip(shown).fold(0, |sum: u64, (_, blamed)| sum.saturating_add(blamed.ns));
    if rest > 0 {
        entries.push(BlameEntry {
            holder: "other",
            pid: None,
            tid: None,
            comm: None,
            container: None,
            ns: rest,
        });
    }
    entries
}

/// Migrations from one CPU to another.
#[derive(Debug, Serialize)]
pub struct MigrationPair {
    /// The CPU of the previous run.
    pub from: u32,
    /// The CPU of the next run.
    pub to: u32,
    /// How many times.
    pub count: u64,
}

/// One syscall of one thread. Latency fields are `null` when no call was
/// timed (`exit` and `exit_group` never return).
#[derive(Debug, Serialize)]
pub struct SyscallReport {
    /// Syscall name (`syscall_N` for a number this architecture lacks),
    /// with ` (i386)` after a 32-bit one's.
    pub name: String,
    /// Syscall number, in the table of `abi`.
    pub nr: u32,
    /// `"x86_64"`, or `"i386"` for a 32-bit syscall (a 32-bit program, or
    /// `int $0x80`).
    pub abi: &'static str,
    /// Calls.
    pub count: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Failures by errno name.
    pub errnos: BTreeMap<String, u64>,
    /// Calls with a latency (all but those that never return or whose
    /// record was lost).
    pub timed: u64,
    /// Calls counted in the kernel whose records the full ring buffer
    /// dropped: in `count` and `errors`, not in the latencies.
    pub lost: u64,
    /// Sum of latencies.
    pub total_ns: u64,
    /// Latency extremes and quantiles.
    pub min_ns: Option<u64>,
    pub max_ns: Option<u64>,
    pub p50_ns: Option<u64>,
    pub p90_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// Where `total_ns` went: on a CPU, asleep, waiting for a CPU; they add
    /// up to it. `null` without scheduler events (`--no-sched`); calls made
    /// before the thread's first scheduler event count as split like the
    /// rest.
    pub on_cpu_ns: Option<u64>,
    pub blocked_ns: Option<u64>,
    pub runq_ns: Option<u64>,
    /// Calls that were in progress when probe attached, seen returning: in
    /// `count` and `errors`, not in the latencies, whose start is unknown.
    pub unfinished_at_attach: u64,
    /// The time they took at least, summed (from when each last blocked
    /// before attach, else from the attach).
    pub unfinished_at_attach_ns: u64,
    /// The slowest calls of the span (at most 3), slowest first: the calls
    /// behind the tail quantiles.
    pub slowest: Vec<SlowCallReport>,
    /// With `--slow`: where its time asleep went, the kernel functions it
    /// slept in, most first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wait_sites: Vec<WaitSiteReport>,
}

/// Where in the kernel a syscall slept, and for how long in all.
#[derive(Clone, Debug, Serialize)]
pub struct WaitSiteReport {
    /// The innermost two kernel functions below the scheduler's.
    pub site: String,
    pub blocked_ns: u64,
    /// Its share of the syscall's time asleep with a known site.
    pub share: f64,
}

/// One of a syscall's slowest calls.
#[derive(Clone, Debug, Serialize)]
pub struct SlowCallReport {
    pub duration_ns: u64,
    /// When it began (`CLOCK_MONOTONIC`, like the timeline's and the calls
    /// in flight's).
    pub started_ns: u64,
    /// Its return value, and the errno's name when it failed.
    pub ret: i64,
    pub errno: Option<String>,
    /// Where its time went; `null` without scheduler events.
    pub on_cpu_ns: Option<u64>,
    pub blocked_ns: Option<u64>,
    pub runq_ns: Option<u64>,
    /// Its stacks, waker and arguments, as its `slow_call` line had them
    /// (`--slow`), or as one of the run's slowest calls (from 1 ms).
    #[serde(flatten)]
    pub explanation: Option<Explanation>,
    /// Why a call long enough to send its details has none: `"dropped"`
    /// (a full ring buffer or explaining queue, or not explained yet), or
    /// `"floor_raised"`: too many calls of its syscall were slower, so
    /// details are taken from `details_from_ns` on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_details: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_from_ns: Option<u64>,
}

/// Context of a report that the table does not hold.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    /// Time since attach.
    pub elapsed_ns: u64,
    /// Time the table covers.
    pub span_ns: u64,
    /// Losses so far.
    pub lost: Losses,
    /// probe's footprint now.
    pub health: Health,
}

impl Report {
    /// Builds a report of `table`'s busiest `top` threads, then of up to
    /// `top` more with the oldest calls in progress (all of both with
    /// `None`): a thread stuck in a call makes no records, and would not
    /// show otherwise.
    pub fn new(kind: Kind, table: &Table, span: Span, top: Option<usize>) -> Self {
        let busiest = table.busiest();
        let shown = top.unwrap_or(busiest.len());
        let in_flight = table.in_flight();
        let mut threads: Vec<ThreadReport> = busiest
            .into_iter()
            .take(shown)
            .map(|(key, thread)| thread_report(table, key, thread, in_flight.get(&key)))
            .collect();
        let reported: FxHashSet<ThreadKey> = threads.iter().map(thread_key).collect();
        let mut waiting: Vec<(&ThreadKey, &CallInFlight)> =
            in_flight.iter().filter(|(key, _)| !reported.contains(key)).collect();
        waiting.sort_by(|a, b| b.1.age_ns.cmp(&a.1.age_ns).then(a.0.cmp(b.0)));
        threads.extend(waiting.into_iter().take(top.unwrap_or(usize::MAX)).map(|(&key, call)| {
            match table.get(key) {
                Some(thread) => thread_report(table, key, thread, Some(call)),
                None => idle_report(key, call),
            }
        }));
        Self {
            kind,
            elapsed_ns: span.elapsed_ns,
            span_ns: span.span_ns,
            events: table.events(),
            lost_events: span.lost.total(),
            lost: span.lost,
            counts_exact: span.lost.counts_exact(),
            probe: span.health,
            exit_code: None,
            threads,
            go: Vec::new(),
            goroutines: Vec::new(),
            processes: Vec::new(),
        }
    }

    /// Says where each process of its threads runs, from `cgroups`.
    pub fn place(&mut self, cgroups: &Cgroups) {
        let mut processes: Vec<ProcessReport> = Vec::new();
        let mut index: FxHashMap<u32, usize> = FxHashMap::default();
        for thread in &mut self.threads {
            // Who a thread waited behind, by container too: read once per
            // process and interval like the shown processes' own cgroups.
            let blamed = thread.sched.iter_mut().flat_map(|sched| sched.runq_blame.iter_mut());
            for entry in blamed {
                entry.container = entry.pid.and_then(|pid| cgroups.labels(pid)?.container.clone());
            }
            let i = *index.entry(thread.pid).or_insert_with(|| {
                processes.push(ProcessReport::new(thread.pid, cgroups));
                processes.len() - 1
            });
            processes[i].runq_wait_ns += thread.sched.as_ref().map_or(0, |sched| sched.runq_wait_ns);
        }
        self.processes = processes;
    }

    /// Each process's report, by pid.
    pub fn process(&self, pid: u32) -> Option<&ProcessReport> {
        self.processes.iter().find(|process| process.pid == pid)
    }
}

impl ProcessReport {
    fn new(pid: u32, cgroups: &Cgroups) -> Self {
        let labels = cgroups.labels(pid);
        let labels = labels.as_deref();
        Self {
            pid,
            cgroup: labels.map(|labels| labels.cgroup.clone()),
            container: labels.and_then(|labels| labels.container.clone()),
            pod_uid: labels.and_then(|labels| labels.pod_uid.clone()),
            pod_qos: labels.and_then(|labels| labels.pod_qos),
            unit: labels.and_then(|labels| labels.unit.clone()),
            throttling: cgroups.throttling(pid),
            runq_wait_ns: 0,
        }
    }

    /// What the text report and the live view show of it.
    pub fn brief(&self) -> String {
        self.labels().map_or_else(
            || "cgroup unknown (the process was gone before it was read)".to_owned(),
            |labels| labels.brief(),
        )
    }

    /// Its labels, if its cgroup is known.
    pub fn labels(&self) -> Option<Labels> {
        Some(Labels {
            cgroup: self.cgroup.clone()?,
            container: self.container.clone(),
            pod_uid: self.pod_uid.clone(),
            pod_qos: self.pod_qos,
            unit: self.unit.clone(),
        })
    }
}

/// One thread in full, for the live view's detail screen: its report and
/// each syscall's latencies in power-of-two buckets (see
/// [`Latencies::log2_buckets`](crate::aggregate::latency::Latencies::log2_buckets)),
/// by syscall number.
#[derive(Debug)]
pub struct ThreadDetail {
    pub thread: ThreadReport,
    pub buckets: BTreeMap<u32, Vec<(u64, u64)>>,
}

impl ThreadDetail {
    /// `key`'s thread in `table`, if it has a row there or a call in
    /// progress.
    pub fn new(table: &Table, key: ThreadKey) -> Option<Self> {
        let in_flight = table.in_flight().get(&key);
        let Some(stats) = table.get(key) else {
            return in_flight.map(|call| Self { thread: idle_report(key, call), buckets: BTreeMap::new() });
        };
        Some(Self {
            thread: thread_report(table, key, stats, in_flight),
            buckets: stats.syscalls.iter().map(|(&nr, call)| (nr, call.latency.log2_buckets())).collect(),
        })
    }
}

fn thread_key(thread: &ThreadReport) -> ThreadKey {
    ThreadKey::nth(thread.pid, thread.tid, thread.generation)
}

fn thread_report(
    table: &Table,
    key: ThreadKey,
    thread: &ThreadStats,
    in_flight: Option<&CallInFlight>,
) -> ThreadReport {
    ThreadReport {
        tid: key.tid(),
        generation: key.generation,
        pid: key.pid(),
        comm: thread.comm.clone(),
        exited: thread.exited,
        syscalls: syscall_reports(&thread.syscalls, Some((table, key))),
        sched: thread.sched.as_ref().map(sched_report),
        io_uring: io_uring_reports(thread),
        in_flight: in_flight.map(InFlightReport::new),
    }
}

/// A thread with no records in the span, only a call in progress.
fn idle_report(key: ThreadKey, call: &CallInFlight) -> ThreadReport {
    ThreadReport {
        tid: key.tid(),
        generation: key.generation,
        pid: key.pid(),
        comm: call.comm.clone(),
        exited: false,
        syscalls: Vec::new(),
        sched: None,
        io_uring: Vec::new(),
        in_flight: Some(InFlightReport::new(call)),
    }
}

fn io_uring_reports(thread: &ThreadStats) -> Vec<IoUringReport> {
    let mut rows: Vec<IoUringReport> = thread
        .io_uring
        .values()
        .map(|stats| IoUringReport {
            opcode: stats.name.clone(),
            count: stats.count,
            errors: stats.errors,
            p50_ns: stats.latency.quantile(0.50),
            p99_ns: stats.latency.quantile(0.99),
            max_ns: stats.latency.max(),
            offloaded: stats.offloaded,
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.opcode.cmp(&b.opcode)));
    rows
}

/// Syscall rows, most total time first; with thread `key` of `table`, their
/// wait sites named and their slowest calls explained, as `--slow` told.
pub fn syscall_reports(syscalls: &Syscalls, of: Option<(&Table, ThreadKey)>) -> Vec<SyscallReport> {
    let mut rows: Vec<_> = syscalls.iter().map(|(&nr, stats)| syscall_report(nr, stats, of)).collect();
    rows.sort_by(|a, b| (b.total_ns, b.count).cmp(&(a.total_ns, a.count)).then_with(|| a.name.cmp(&b.name)));
    rows
}

fn syscall_report(nr: u32, stats: &SyscallStats, of: Option<(&Table, ThreadKey)>) -> SyscallReport {
    // Scaled to the total, when some calls could not be split (made before
    // the thread's first scheduler event): the parts then add up to it.
    let split = (stats.split_ns > 0).then(|| {
        let scale = |ns: u64| (ns as u128 * stats.total_ns as u128 / stats.split_ns as u128) as u64;
        let (blocked, runq) = (scale(stats.blocked_ns), scale(stats.runq_ns));
        (stats.total_ns.max(blocked + runq), blocked, runq)
    });
    SyscallReport {
        name: syscall_name(nr),
        nr: nr & !COMPAT_NR,
        abi: abi(nr),
        count: stats.count,
        errors: stats.errors,
        errnos: stats.errnos.iter().map(|(&errno, &n)| (errno_name(errno), n)).collect(),
        timed: stats.latency.len(),
        lost: stats.lost,
        total_ns: stats.total_ns,
        min_ns: stats.latency.min(),
        max_ns: stats.latency.max(),
        p50_ns: stats.latency.quantile(0.50),
        p90_ns: stats.latency.quantile(0.90),
        p99_ns: stats.latency.quantile(0.99),
        on_cpu_ns: split.map(|(total, blocked, runq)| total - blocked - runq),
        blocked_ns: split.map(|(_, blocked, _)| blocked),
        runq_ns: split.map(|(_, _, runq)| runq),
        unfinished_at_attach: stats.unfinished_at_attach,
        unfinished_at_attach_ns: stats.unfinished_at_attach_ns,
        slowest: stats
            .slowest
            .calls()
            .iter()
            .map(|call| {
                let explanation = of.and_then(|(table, key)| table.explanation(key, nr, call.started_ns));
                let floor = of.and_then(|(table, _)| table.details_floor(nr));
                let (no_details, details_from_ns) = match (explanation, floor) {
                    (None, Some(floor)) if call.duration_ns >= FIRST_FLOOR_NS => {
                        match call.duration_ns < floor {
                            true => (Some("floor_raised"), Some(floor)),
                            false => (Some("dropped"), None),
                        }
                    }
                    _ => (None, None),
                };
                SlowCallReport {
                    explanation: explanation.cloned(),
                    no_details,
                    details_from_ns,
                    ..slow_call_report(call)
                }
            })
            .collect(),
        wait_sites: wait_sites(stats, &|site| {
            of.and_then(|(table, _)| table.site_name(site)).map(str::to_owned)
        }),
    }
}

/// Wait sites shown per syscall; JSON's are the same.
const WAIT_SITES: usize = 3;

/// A syscall's top wait sites, most time first, with their share of the
/// time asleep `--slow` saw a stack for.
fn wait_sites(stats: &SyscallStats, site_name: &dyn Fn(u32) -> Option<String>) -> Vec<WaitSiteReport> {
    let asleep: u64 = stats.wait_sites.values().sum();
    let mut sites: Vec<(u32, u64)> = stats.wait_sites.iter().map(|(&site, &ns)| (site, ns)).collect();
    sites.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sites
        .into_iter()
        .take(WAIT_SITES)
        .map(|(site, ns)| WaitSiteReport {
            site: match (site, site_name(site)) {
                (0, _) => "(kernel stack not kept)".to_owned(),
                (_, Some(name)) => name,
                (_, None) => "(kernel stack not found)".to_owned(),
            },
            blocked_ns: ns,
            share: ns as f64 / asleep.max(1) as f64,
        })
        .collect()
}

/// A `--slow` call, reported on its own as it returns.
#[derive(Clone, Debug, Serialize)]
pub struct SlowCallLine {
    /// Always `"slow_call"`, beside the reports' `"interval"` and `"summary"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub name: String,
    pub nr: u32,
    pub abi: &'static str,
    /// The goroutine that made it (0: the runtime's scheduler), in a Go
    /// program whose goroutines are followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutine: Option<u64>,
    #[serde(flatten)]
    pub call: SlowCallReport,
    /// Its stacks and waker, with the kernel programs' details.
    #[serde(flatten)]
    pub explanation: Option<Explanation>,
}

impl SlowCallLine {
    pub fn new(seen: &SlowCallSeen) -> Self {
        Self {
            kind: "slow_call",
            pid: seen.key.pid(),
            tid: seen.key.tid(),
            comm: seen.comm.clone(),
            name: syscall_name(seen.nr),
            nr: seen.nr & !COMPAT_NR,
            abi: abi(seen.nr),
            goroutine: seen.goroutine,
            call: slow_call_report(&seen.call),
            explanation: seen.explanation.clone(),
        }
    }
}

fn abi(nr: u32) -> &'static str {
    if nr & COMPAT_NR != 0 {
        "i386"
    } else {
        "x86_64"
    }
}

fn slow_call_report(call: &SlowCall) -> SlowCallReport {
    // The tracker keeps a split within its call.
    let split = call.split.map(|split| {
        let on_cpu = call.duration_ns.saturating_sub(split.blocked_ns + split.runq_ns);
        (on_cpu, split.blocked_ns, split.runq_ns)
    });
    SlowCallReport {
        duration_ns: call.duration_ns,
        started_ns: call.started_ns,
        ret: call.ret,
        errno: errno_of(call.ret).map(|errno| errno_name(errno as i32)),
        on_cpu_ns: split.map(|(on_cpu, _, _)| on_cpu),
        blocked_ns: split.map(|(_, blocked, _)| blocked),
        runq_ns: split.map(|(_, _, runq)| runq),
        explanation: None,
        no_details: None,
        details_from_ns: None,
    }
}

fn sched_report(stats: &SchedStats) -> SchedReport {
    let mut pairs: Vec<_> =
        stats.pairs.iter().map(|(&(from, to), &count)| MigrationPair { from, to, count }).collect();
    pairs.sort_by(|a, b| b.count.cmp(&a.count).then((a.from, a.to).cmp(&(b.from, b.to))));
    SchedReport {
        on_cpu_ns: stats.on_cpu_ns,
        blocked_ns: stats.blocked_ns,
        runq_wait_ns: stats.runq_wait_ns,
        voluntary_switches: stats.voluntary,
        involuntary_switches: stats.involuntary,
        migrations: stats.migrations,
        runq_p50_ns: stats.runq.quantile(0.50),
        runq_p99_ns: stats.runq.quantile(0.99),
        runq_max_ns: stats.runq.max(),
        last_cpu: stats.last_cpu,
        cpus: stats.cpus.iter().map(|(cpu, &ns)| (cpu.to_string(), ns)).collect(),
        migration_pairs: pairs,
        sampled: stats.sampled(),
        lost_records: stats.lost_records,
        partial_runs: stats.partial_runs,
        runq_blame: blame_entries(&stats.runq_blame, RUNQ_BLAME_SHOWN),
    }
}

/// The running architecture's name for syscall `nr`.
pub fn syscall_name(nr: u32) -> String {
    if nr & COMPAT_NR != 0 {
        // A 32-bit syscall: the i386 table's number, marked everywhere.
        let nr = nr & !COMPAT_NR;
        return match syscalls::x86::Sysno::new(nr as usize) {
            Some(sysno) => format!("{} (i386)", sysno.name()),
            None => format!("syscall_{nr} (i386)"),
        };
    }
    match Sysno::new(nr as usize) {
        Some(sysno) => sysno.name().to_owned(),
        None => format!("syscall_{nr}"),
    }
}

/// `ENOENT` for 2; the kernel-internal restart codes are named too.
pub fn errno_name(errno: i32) -> String {
    match Errno::new(errno).name() {
        Some(name) => name.to_owned(),
        None => format!("errno_{errno}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tests::{event, record};

    #[test]
    fn names_come_from_the_architecture_tables() {
        assert_eq!(syscall_name(Sysno::getppid.id() as u32), "getppid");
        assert_eq!(syscall_name(100_000), "syscall_100000");
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(512), "ERESTARTSYS");
        assert_eq!(errno_name(100_000), "errno_100000");
    }

    #[test]
    fn goroutine_states_read_as_one_line() {
        let count = |name: &str, count| GoCount { name: name.to_owned(), count };
        let states = GoroutineStatesReport {
            total: 1204,
            states: vec![
                count("running", 2),
                count("runnable", 5),
                count("syscall", 3),
                count("waiting", 1194),
            ],
            wait_reasons: vec![count("chan receive", 900), count("IO wait", 290), count("select", 4)],
            of: 1300,
            read: 1300,
        };
        assert_eq!(
            states.summary(),
            "1,204 goroutines: 2 running, 5 runnable, 3 in syscall, 1,194 waiting (chan receive 900, IO wait 290, select 4)"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut table = Table::default();
        let openat = Sysno::openat.id() as u32;
        record(&mut table, &event(5, openat, -2, 2000));
        record(&mut table, &event(5, openat, 3, 1000));
        let span = Span {
            elapsed_ns: 10,
            span_ns: 10,
            lost: Losses { ring_buffer: 1, in_flight_full: 2, ..Losses::default() },
            health: Health::default(),
        };
        let report = Report::new(Kind::Summary, &table, span, None);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["type"], "summary");
        assert_eq!(json["lost_events"], 3);
        let thread = &json["threads"][0];
        assert_eq!((thread["tid"].as_u64(), thread["pid"].as_u64()), (Some(5), Some(100)));
        assert_eq!(thread["comm"], "worker");
        let call = &thread["syscalls"][0];
        assert_eq!(call["name"], "openat");
        assert_eq!(call["nr"], openat);
        assert_eq!(call["count"], 2);
        assert_eq!(call["errors"], 1);
        assert_eq!(call["errnos"]["ENOENT"], 1);
        assert_eq!(call["total_ns"], 3000);
        assert_eq!(call["min_ns"], 1000);
        assert_eq!(call["max_ns"], 2000);
        for field in ["p50_ns", "p90_ns", "p99_ns"] {
            assert!(call[field].is_u64(), "{field}");
        }
    }

    #[test]
    fn calls_in_progress_have_the_documented_fields() {
        use crate::aggregate::in_flight::CallInFlight;
        let mut table = Table::default();
        record(&mut table, &event(5, 0, 0, 10));
        let call = CallInFlight {
            nr: 0,
            args: Some([3, 0x7ffd, 1, 0, 0, u64::MAX]),
            started_ns: 1_000,
            age_ns: 12_300_000_000,
            state: ThreadState::Blocked,
            before_attach: true,
            comm: "stuck".to_owned(),
        };
        table.set_in_flight([(ThreadKey::new(100, 6), call)].into_iter().collect());
        let span = Span { elapsed_ns: 1, span_ns: 1, lost: Losses::default(), health: Health::default() };
        let json = serde_json::to_value(Report::new(Kind::Summary, &table, span, None)).unwrap();
        assert_eq!(json["threads"][0]["in_flight"], serde_json::Value::Null);
        let call = &json["threads"][0]["syscalls"][0];
        assert_eq!((&call["unfinished_at_attach"], &call["unfinished_at_attach_ns"]), (&0.into(), &0.into()));
        let stuck = &json["threads"][1];
        assert_eq!(
            (&stuck["tid"], &stuck["comm"], &stuck["syscalls"]),
            (&6.into(), &"stuck".into(), &serde_json::json!([]))
        );
        assert_eq!(
            stuck["in_flight"],
            serde_json::json!({
                "name": "read", "nr": 0,
                "args": ["0x3", "0x7ffd", "0x1", "0x0", "0x0", "0xffffffffffffffff"],
                "started_ns": 1000, "age_ns": 12_300_000_000u64, "state": "blocked",
                "started_before_attach": true,
            })
        );
    }

    #[test]
    fn top_keeps_the_busiest_threads_and_syscalls_sort_by_time() {
        let mut table = Table::default();
        for _ in 0..3 {
            record(&mut table, &event(1, 0, 0, 10));
        }
        record(&mut table, &event(1, 1, 0, 1000));
        record(&mut table, &event(2, 0, 0, 10));
        let span = Span { elapsed_ns: 1, span_ns: 1, lost: Losses::default(), health: Health::default() };
        let report = Report::new(Kind::Interval, &table, span, Some(1));
        assert_eq!(report.threads.len(), 1);
        assert_eq!(report.threads[0].tid, 1);
        let names: Vec<_> = report.threads[0].syscalls.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["write", "read"]);
    }
}
