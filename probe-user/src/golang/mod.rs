//! The Go view: which goroutine made each syscall of a traced Go program,
//! which OS threads (the runtime's Ms) each goroutine ran on, and what each
//! thread is to the runtime. The kernel sends a record when a thread starts
//! running a goroutine (`runtime.execute`), goes back to the scheduler
//! (`runtime.schedule`), ends a goroutine (`runtime.goexit1`) or becomes the
//! monitor (`runtime.sysmon`); a thread's syscall belongs to the goroutine
//! it last started, or to the runtime itself (goroutine 0, `g0`) when it is
//! in the scheduler. What each thread is to the runtime, and the scheduler's
//! state, are read from the process's memory ([`scheduler`]).

pub mod binary;
pub mod dwarf;
mod memory;
pub mod scheduler;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use probe_common::{EventKind, GoEvent, SyscallEvent};
use rustc_hash::FxHashMap;

use crate::{
    aggregate::{SyscallStats, World},
    escape, procfs,
    report::{syscall_reports, GoProcessReport, GoThreadReport, GoroutineReport},
};
use binary::GoBinary;
use scheduler::Scheduler;

/// Exited goroutines kept one by one per process; the rest are added up in
/// one row, so that a server that starts a goroutine per request does not
/// grow probe without bound.
const MAX_EXITED_GOROUTINES: usize = 1024;

/// The goroutine id of the row of folded exited goroutines (real ids start
/// at 1, and 0 is the runtime's own g0).
const FOLDED_GOID: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Goroutine {
    start_pc: u64,
    syscalls: FxHashMap<u32, SyscallStats>,
    threads: BTreeSet<u32>,
    last_thread: Option<u32>,
    /// Runs that began on another thread than the previous run.
    moves: u64,
    exited: bool,
}

/// What a thread is to the runtime, as of its latest record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Thread {
    /// The goroutine it runs (0: the scheduler); `None` before any record.
    goroutine: Option<u64>,
    sysmon: bool,
}

#[derive(Debug, Default)]
struct Process {
    threads: BTreeMap<u32, Thread>,
    started: u64,
    exited: Vec<u64>,
    gomaxprocs: Option<i32>,
}

/// Goroutines and runtime threads of the traced processes that run the Go
/// binary.
#[derive(Debug)]
pub struct Goroutines {
    binary: GoBinary,
    processes: BTreeMap<u32, Process>,
    goroutines: BTreeMap<(u32, u64), Goroutine>,
    scheduler: Scheduler,
}

impl Goroutines {
    pub fn new(binary: GoBinary) -> Self {
        Self {
            binary,
            processes: BTreeMap::new(),
            goroutines: BTreeMap::new(),
            scheduler: Scheduler::default(),
        }
    }

    /// Follows process `pid`, which runs the binary (or will, once it
    /// execs): its scheduler is read whether or not its goroutines are
    /// followed.
    pub fn watch(&mut self, pid: u32) {
        self.processes.entry(pid).or_default();
    }

    /// Follows a runtime record.
    pub fn apply(&mut self, event: &GoEvent) {
        let process = self.processes.entry(event.pid).or_default();
        let thread = process.threads.entry(event.tid).or_default();
        match EventKind::from_u32(event.kind) {
            Some(EventKind::GoExecute) => {
                thread.goroutine = Some(event.goid);
                let goroutine = self.goroutines.entry((event.pid, event.goid)).or_insert_with(|| {
                    process.started += 1;
                    Goroutine::default()
                });
                goroutine.start_pc = event.start_pc;
                goroutine.threads.insert(event.tid);
                if goroutine.last_thread.is_some_and(|last| last != event.tid) {
                    goroutine.moves += 1;
                }
                goroutine.last_thread = Some(event.tid);
            }
            Some(EventKind::GoSchedule) => thread.goroutine = Some(0),
            Some(EventKind::GoExit) => {
                let Some(goid) = thread.goroutine.filter(|&goid| goid != 0) else {
                    return;
                };
                if let Some(goroutine) = self.goroutines.get_mut(&(event.pid, goid)) {
                    goroutine.exited = true;
                    process.exited.push(goid);
                }
                if process.exited.len() > MAX_EXITED_GOROUTINES {
                    let oldest = process.exited.remove(0);
                    self.fold(event.pid, oldest);
                }
            }
            Some(EventKind::GoSysmon) => thread.sysmon = true,
            _ => {}
        }
    }

    /// Counts a new thread of a followed process among its threads: one
    /// the runtime made (and counted) may never run before the program
    /// exits, and so never make a syscall or hit a uprobe.
    pub fn thread_created(&mut self, pid: u32, tid: u32) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.threads.entry(tid).or_default();
        }
    }

    /// The goroutine thread `tid` of process `pid` runs now (0: the
    /// runtime's scheduler); `None` before the runtime said.
    pub fn goroutine_of(&self, pid: u32, tid: u32) -> Option<u64> {
        self.processes.get(&pid)?.threads.get(&tid)?.goroutine
    }

    /// Attributes a syscall record to the goroutine its thread runs.
    pub fn syscall(&mut self, event: &SyscallEvent) {
        let Some(process) = self.processes.get_mut(&event.pid) else {
            return;
        };
        let thread = process.threads.entry(event.tid).or_default();
        let Some(goid) = thread.goroutine else {
            return;
        };
        let goroutine = self.goroutines.entry((event.pid, goid)).or_default();
        goroutine.threads.insert(event.tid);
        goroutine.syscalls.entry(event.nr).or_default().record(event);
    }

    /// Reads the scheduler of each live process when due (see
    /// [`scheduler::PERIOD`]); the last snapshot stays once it exits.
    pub fn refresh(&mut self, world: &dyn World) {
        let live = self.processes.keys().copied().filter(|&pid| world.process_alive(pid));
        self.scheduler.read(self.binary.scheduler.as_deref(), live, Instant::now());
        for (pid, process) in &mut self.processes {
            if let Ok(snapshot) = self.scheduler.snapshot(*pid) {
                process.gomaxprocs = i32::try_from(snapshot.sched.gomaxprocs).ok();
                // Threads that made no syscall and started before the
                // trace are known from the runtime's list.
                for m in snapshot.sched.ms.iter().filter(|m| m.tid != 0) {
                    process.threads.entry(m.tid).or_default();
                }
            }
        }
    }

    fn fold(&mut self, pid: u32, goid: u64) {
        let Some(gone) = self.goroutines.remove(&(pid, goid)) else {
            return;
        };
        let folded = self.goroutines.entry((pid, FOLDED_GOID)).or_default();
        folded.exited = true;
        folded.threads.extend(gone.threads);
        folded.moves += gone.moves;
        for (nr, stats) in &gone.syscalls {
            folded.syscalls.entry(*nr).or_default().merge(stats);
        }
    }

    /// The goroutines, busiest (most syscalls) first, and the processes.
    pub fn report(&self) -> (Vec<GoroutineReport>, Vec<GoProcessReport>) {
        let mut goroutines: Vec<GoroutineReport> = self
            .goroutines
            .iter()
            .map(|(&(pid, goid), goroutine)| GoroutineReport {
                pid,
                goid,
                start_fn: match goid {
                    0 => "[runtime: scheduler, g0]".to_owned(),
                    FOLDED_GOID => "[exited goroutines]".to_owned(),
                    _ => self
                        .binary
                        .start_function(
                            goroutine.start_pc.wrapping_sub(self.scheduler.bias(pid).unwrap_or(0)),
                        )
                        .map_or_else(|| "?".to_owned(), escape::visible),
                },
                exited: goroutine.exited,
                syscalls: syscall_reports(&goroutine.syscalls, None),
                threads: goroutine.threads.iter().copied().collect(),
                moves: goroutine.moves,
            })
            .collect();
        let calls = |g: &GoroutineReport| g.syscalls.iter().map(|call| call.count).sum::<u64>();
        goroutines.sort_by(|a, b| calls(b).cmp(&calls(a)).then((a.pid, a.goid).cmp(&(b.pid, b.goid))));
        let now = Instant::now();
        let processes = self
            .processes
            .iter()
            .map(|(&pid, process)| {
                let alive = self
                    .goroutines
                    .range((pid, 1)..(pid, FOLDED_GOID))
                    .filter(|(_, goroutine)| !goroutine.exited)
                    .count();
                let (gomaxprocs, gomaxprocs_from) = match process.gomaxprocs {
                    Some(value) => (Some(value), "runtime"),
                    None => (gomaxprocs_from_environment(pid), "environment"),
                };
                let (sched, goroutine_states, sched_unavailable) = match self.scheduler.report(pid, now) {
                    Ok((sched, states)) => (Some(sched), Some(states), None),
                    Err(why) => (None, None, Some(why)),
                };
                GoProcessReport {
                    pid,
                    version: self.binary.version.clone(),
                    gomaxprocs,
                    gomaxprocs_from,
                    threads: process
                        .threads
                        .iter()
                        .map(|(&tid, thread)| GoThreadReport {
                            tid,
                            role: self.scheduler.role(pid, tid).unwrap_or_else(|| role(thread)),
                        })
                        .collect(),
                    goroutines_started: process.started,
                    goroutines_alive: alive as u64,
                    sched,
                    goroutine_states,
                    sched_unavailable,
                }
            })
            .collect();
        (goroutines, processes)
    }
}

/// What the runtime would have chosen for a process whose memory could not
/// be read (it exited first): `GOMAXPROCS` from its environment, else the
/// CPUs it may run on. A COMMAND inherits probe's environment and CPUs.
fn gomaxprocs_from_environment(pid: u32) -> Option<i32> {
    let value = procfs::environment_variable(pid, "GOMAXPROCS")
        .or_else(|| std::env::var("GOMAXPROCS").ok().map(String::into_bytes));
    match value.and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.trim().parse::<i32>().ok()) {
        Some(n) if n > 0 => Some(n),
        _ => std::thread::available_parallelism().ok().map(|n| n.get() as i32),
    }
}

/// What a thread does for the runtime, in a few words.
fn role(thread: &Thread) -> String {
    match (thread.sysmon, thread.goroutine) {
        (true, _) => "sysmon: the runtime's monitor, runs no goroutines".to_owned(),
        (false, Some(0)) => "idle: in the scheduler, looking for work".to_owned(),
        (false, Some(goid)) => format!("runs goroutines; last goroutine {goid}"),
        // sysmon, for one, never calls what the uprobes watch once started.
        (false, None) => "no runtime event seen since probe attached".to_owned(),
    }
}
