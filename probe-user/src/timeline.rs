//! `--trace FILE`: a timeline in the Chrome trace-event JSON format, which
//! Perfetto UI and `chrome://tracing` open. Each traced thread is a track,
//! named `comm (tid)` under its process, with a slice per syscall; each CPU
//! is a track under a pseudo-process "CPUs", with a slice per run of a traced
//! thread and an instant per migration onto it. With `--slow`, a flow arrow
//! goes from the syscall of a traced thread that woke another to the
//! syscall it woke it from. Events are written as they arrive, so memory
//! stays flat however long the trace.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use probe_common::{
    EventKind, Record, SchedEvent, SyscallEvent, WakeEvent, COMM_LEN, SYSCALL_NO_RETURN,
    SYSCALL_UNSEEN_ENTRY, WAKER_TASK,
};
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{json, Value};

use crate::{
    aggregate::World,
    output::{Flow, Interval, Sink},
    procfs::Proc,
    report::{syscall_name, Report},
};

/// The pseudo-process whose threads are the CPUs. Chrome's format wants
/// numbers, and no PID reaches this high (`PID_MAX_LIMIT` is 2^22).
const CPUS_PID: u64 = 1 << 30;

/// Where the timeline stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// After this many events.
    Events(u64),
    /// After this much time from the first event.
    Time(Duration),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Events(n) => write!(f, "{n} events"),
            Limit::Time(time) => write!(f, "{}", humantime::format_duration(*time)),
        }
    }
}

/// A traced thread's run on a CPU, until it leaves.
struct Run {
    pid: u32,
    tid: u32,
    start_ns: u64,
}

/// The timeline file being written.
pub struct Timeline {
    out: BufWriter<File>,
    path: PathBuf,
    limit: Option<Limit>,
    written: u64,
    cut: u64,
    first_ns: Option<u64>,
    /// Thread names as last written, by thread.
    names: FxHashMap<(u32, u32), String>,
    processes: FxHashSet<u32>,
    cpus: FxHashSet<u32>,
    runs: FxHashMap<u32, Run>,
    last_cpu: FxHashMap<u32, u32>,
    /// Flow arrows drawn so far: the next one's id.
    flows: u64,
    /// Whether an event was written (the next one needs a comma).
    started: bool,
    /// The first write error: the timeline stops there, the trace goes on.
    error: Option<io::Error>,
}

impl Timeline {
    /// Creates `path` and writes the file's head.
    pub fn create(path: &Path, limit: Option<Limit>) -> Result<Self> {
        let file = crate::output::file::create(path)
            .with_context(|| format!("cannot write the timeline to {}", path.display()))?;
        let mut out = BufWriter::new(file);
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")
            .with_context(|| format!("cannot write the timeline to {}", path.display()))?;
        let mut timeline = Self {
            out,
            path: path.to_owned(),
            limit,
            written: 0,
            cut: 0,
            first_ns: None,
            names: FxHashMap::default(),
            processes: FxHashSet::default(),
            cpus: FxHashSet::default(),
            runs: FxHashMap::default(),
            last_cpu: FxHashMap::default(),
            flows: 0,
            started: false,
            error: None,
        };
        timeline
            .metadata(json!({"ph": "M", "name": "process_name", "pid": CPUS_PID, "args": {"name": "CPUs"}}));
        Ok(timeline)
    }

    /// Adds a completed (or never-returning) syscall as a slice on its
    /// thread's track.
    fn syscall(&mut self, event: &SyscallEvent) {
        self.name_thread(event.pid, event.tid, &event.comm);
        if event.flags & SYSCALL_UNSEEN_ENTRY != 0 {
            // In progress when probe attached: only its return is known.
            let instant = json!({
                "ph": "i", "s": "t", "name": format!("{} returned (began before attach)", syscall_name(event.nr)),
                "pid": event.pid, "tid": event.tid, "ts": micros(event.start_ns), "args": {"ret": event.ret},
            });
            self.event(event.start_ns, instant);
            return;
        }
        let mut slice = json!({
            "ph": "X",
            "name": syscall_name(event.nr),
            "pid": event.pid,
            "tid": event.tid,
            "ts": micros(event.start_ns),
            "dur": micros(event.duration_ns),
        });
        if event.flags & SYSCALL_NO_RETURN == 0 {
            slice["args"] = json!({"ret": event.ret});
        }
        self.event(event.start_ns, slice);
    }

    /// An arrow from the waker's slice to the woken thread's, both at the
    /// waking: each binds to the syscall it falls in. Only between threads
    /// with tracks: an interrupt, or a thread outside the trace, has none.
    /// Written now, before those syscalls' slices (written when they
    /// return): the one place where a track's events are not in time
    /// order, which viewers sort.
    fn woken(&mut self, event: &WakeEvent) {
        if event.context != WAKER_TASK || !self.names.contains_key(&(event.waker_pid, event.waker_tid)) {
            return;
        }
        self.flows += 1;
        let ts = micros(event.ts_ns);
        let (id, pid, tid) = (self.flows, event.pid, event.tid);
        let (waker_pid, waker_tid) = (event.waker_pid, event.waker_tid);
        self.event(
            event.ts_ns,
            json!({"ph": "s", "id": id, "cat": "wakeup", "name": "wakeup", "pid": waker_pid, "tid": waker_tid, "ts": ts}),
        );
        self.event(
            event.ts_ns,
            json!({"ph": "f", "bp": "e", "id": id, "cat": "wakeup", "name": "wakeup", "pid": pid, "tid": tid, "ts": ts}),
        );
    }

    /// Follows the runs of traced threads on each CPU.
    fn sched(&mut self, event: &SchedEvent) {
        match EventKind::from_u32(event.kind) {
            Some(EventKind::SwitchIn) => {
                self.name_thread(event.pid, event.tid, &event.comm);
                let from = self.last_cpu.insert(event.tid, event.cpu);
                if let Some(from) = from.filter(|&from| from != event.cpu) {
                    let name =
                        format!("migration {from}→{} of {}", event.cpu, self.label(event.pid, event.tid));
                    let instant = json!({
                        "ph": "i", "s": "t", "name": name, "pid": CPUS_PID, "tid": self.cpu_track(event.cpu),
                        "ts": micros(event.ts_ns), "args": {"pid": event.pid, "tid": event.tid, "from": from, "to": event.cpu},
                    });
                    self.event(event.ts_ns, instant);
                }
                self.runs.insert(event.cpu, Run { pid: event.pid, tid: event.tid, start_ns: event.ts_ns });
            }
            Some(EventKind::SwitchOut) => {
                self.name_thread(event.pid, event.tid, &event.comm);
                self.last_cpu.insert(event.tid, event.cpu);
                let Some(run) = self.runs.remove(&event.cpu).filter(|run| run.tid == event.tid) else {
                    return;
                };
                let slice = json!({
                    "ph": "X", "name": self.label(run.pid, run.tid), "pid": CPUS_PID, "tid": self.cpu_track(event.cpu),
                    "ts": micros(run.start_ns), "dur": micros(event.ts_ns.saturating_sub(run.start_ns)),
                    "args": {"pid": run.pid, "tid": run.tid},
                });
                self.event(run.start_ns, slice);
            }
            _ => {}
        }
    }

    /// Ends the file (its metadata say what the limit cut) and flushes it;
    /// returns a line for stderr when events were cut.
    fn end(&mut self) -> Option<String> {
        let tail = json!({"events": self.written, "events_cut": self.cut, "limit": self.limit.map(|l| l.to_string())});
        if self.error.is_none() {
            if let Err(err) = write!(self.out, "\n],\"otherData\":{tail}}}\n").and_then(|()| self.out.flush())
            {
                self.stopped(err);
            }
        }
        if self.error.is_some() {
            return None;
        }
        (self.cut > 0).then(|| {
            format!(
                "probe: the timeline stopped at --trace-limit {}: {} events in {}, {} later ones left out",
                self.limit.map_or_else(String::new, |limit| limit.to_string()),
                self.written,
                self.path.display(),
                self.cut
            )
        })
    }

    fn label(&self, pid: u32, tid: u32) -> String {
        let name = self.names.get(&(pid, tid)).map_or("", String::as_str);
        format!("{name} ({tid})")
    }

    fn cpu_track(&mut self, cpu: u32) -> u64 {
        let track = CPUS_PID + u64::from(cpu);
        if self.cpus.insert(cpu) {
            self.metadata(json!({"ph": "M", "name": "thread_name", "pid": CPUS_PID, "tid": track, "args": {"name": format!("CPU {cpu}")}}));
            self.metadata(json!({"ph": "M", "name": "thread_sort_index", "pid": CPUS_PID, "tid": track, "args": {"sort_index": cpu}}));
        }
        track
    }

    /// Names a thread's track the first time it is seen (from /proc if the
    /// record carries no name) and again when its name changes.
    fn name_thread(&mut self, pid: u32, tid: u32, comm: &[u8; COMM_LEN]) {
        let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        let known = self.names.get(&(pid, tid));
        let name = match (end, known) {
            (0, Some(_)) => return,
            (0, None) => Proc.thread_name(pid, tid).unwrap_or_default(),
            (_, _) => crate::escape::visible_bytes(&comm[..end]),
        };
        if known == Some(&name) {
            return;
        }
        if self.processes.insert(pid) || (pid == tid && !name.is_empty()) {
            self.metadata(json!({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}));
        }
        self.metadata(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": format!("{name} ({tid})")}}));
        self.names.insert((pid, tid), name);
    }

    /// Writes a timed event, unless the limit is reached.
    fn event(&mut self, ts_ns: u64, event: Value) {
        let first = *self.first_ns.get_or_insert(ts_ns);
        let over = match self.limit {
            Some(Limit::Events(n)) => self.written >= n,
            Some(Limit::Time(time)) => ts_ns.saturating_sub(first) > time.as_nanos() as u64,
            None => false,
        };
        if over {
            self.cut += 1;
            return;
        }
        self.written += 1;
        self.write(&event);
    }

    /// Metadata (names) do not count against the limit.
    fn metadata(&mut self, event: Value) {
        self.write(&event);
    }

    fn write(&mut self, event: &Value) {
        if self.error.is_some() {
            return;
        }
        let separator: &[u8] = if self.started { b",\n" } else { b"" };
        self.started = true;
        let result = self
            .out
            .write_all(separator)
            .and_then(|()| serde_json::to_writer(&mut self.out, event).map_err(io::Error::from));
        if let Err(err) = result {
            self.stopped(err);
        }
    }

    /// The first write error (a full disk, say) stops the timeline, not
    /// the trace: said once, and the file is left as far as it got.
    fn stopped(&mut self, err: io::Error) {
        eprintln!("probe: the timeline in {} stopped: {err}; the trace goes on", self.path.display());
        self.error = Some(err);
    }
}

impl Sink for Timeline {
    fn follows_records(&self) -> bool {
        true
    }

    fn record(&mut self, record: &Record) {
        match record {
            Record::Syscall(event) => self.syscall(event),
            Record::Sched(event) => self.sched(event),
            Record::WokenBy(event) => self.woken(event),
            Record::IoUring(_) | Record::SlowDetail(_) | Record::Ran(_) => {}
        }
    }

    fn interval(&mut self, _interval: &Interval<'_>) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    fn finish(&mut self, _summary: &Report) -> Result<()> {
        if let Some(cut) = self.end() {
            eprintln!("{cut}");
        }
        Ok(())
    }
}

/// Chrome's timestamps are in microseconds; fractions keep nanoseconds.
fn micros(ns: u64) -> f64 {
    ns as f64 / 1e3
}
