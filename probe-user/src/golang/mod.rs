//! The Go view: which goroutine made each syscall of the followed Go
//! program, which OS threads (the runtime's Ms) each goroutine ran on, and
//! what each thread is to the runtime. The kernel reads the goroutine from
//! the thread's TLS at each syscall's entry and sends it with the call's
//! record (goroutine 0, `g0`, is the runtime itself: its scheduler, and
//! sysmon's thread): no uprobes, no cost at goroutine switches.
//!
//! What each thread is to the runtime, and the scheduler's state, are
//! read from the process's memory ([`scheduler`]).

pub mod binary;
pub mod dwarf;
mod memory;
pub mod scheduler;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use probe_common::{SyscallEvent, GOROUTINE_UNREAD, NO_GOROUTINE};
use rustc_hash::FxHashMap;

use crate::{
    aggregate::{RecentSyscalls, Syscalls, World},
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
    /// Where it started (`runtime.g.startpc`); 0 until a record brought it.
    start_pc: u64,
    syscalls: Syscalls,
    recent_syscalls: RecentSyscalls,
    threads: BTreeSet<u32>,
    last_thread: Option<u32>,
    /// Calls made on another thread than its previous call.
    moves: u64,
    exited: bool,
}

/// What a thread is to the runtime, as of its latest call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Thread {
    /// The goroutine of its latest call (0: the runtime's g0); `None` before
    /// any.
    goroutine: Option<u64>,
}

#[derive(Debug, Default)]
struct Process {
    threads: BTreeMap<u32, Thread>,
    /// Goroutines seen making calls.
    seen: u64,
    exited: Vec<u64>,
}

/// Goroutines and runtime threads of the traced processes that run the Go
/// binary.
#[derive(Debug)]
pub struct Goroutines {
    binary: GoBinary,
    processes: BTreeMap<u32, Process>,
    /// By process and goroutine id: a hash map, as every call of the
    /// program looks its goroutine up among the thousands a server starts.
    goroutines: FxHashMap<(u32, u64), Goroutine>,
    /// The pid, tid and goroutine of the latest call: a goroutine's calls
    /// come in runs on one thread, and the rows the run's first call set
    /// hold for the rest. Cleared when a goroutine is folded away.
    last_call: Option<(u32, u32, u64)>,
    scheduler: Scheduler,
}

impl Goroutines {
    pub fn new(binary: GoBinary) -> Self {
        Self {
            binary,
            processes: BTreeMap::new(),
            goroutines: FxHashMap::default(),
            last_call: None,
            scheduler: Scheduler::default(),
        }
    }

    /// Follows process `pid`, which runs the binary (or will, once it
    /// execs): its scheduler is read whether or not its goroutines are
    /// followed.
    pub fn watch(&mut self, pid: u32) {
        self.processes.entry(pid).or_default();
    }

    /// Counts a new thread of a followed process among its threads: one
    /// the runtime made (and counted) may never run before the program
    /// exits, and so never make a syscall.
    pub fn thread_created(&mut self, pid: u32, tid: u32) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.threads.entry(tid).or_default();
        }
    }

    /// Attributes a syscall record to the goroutine that made it.
    pub fn syscall(&mut self, event: &SyscallEvent) {
        if event.goid == NO_GOROUTINE {
            return;
        }
        let ids = (event.pid, event.tid, event.goid);
        let goroutine = match self.last_call == Some(ids) {
            true => self.goroutines.get_mut(&(event.pid, event.goid)),
            false => {
                self.last_call = Some(ids);
                Some(self.run_begins(event))
            }
        };
        let Some(goroutine) = goroutine else {
            return;
        };
        if event.go_start_pc != 0 {
            goroutine.start_pc = event.go_start_pc;
        }
        goroutine.recent_syscalls.row(&mut goroutine.syscalls, event.nr).record(event, None);
    }

    /// The goroutine of a call that begins a run of its calls on a thread,
    /// with its process's and thread's rows brought up to date.
    fn run_begins(&mut self, event: &SyscallEvent) -> &mut Goroutine {
        let process = self.processes.entry(event.pid).or_default();
        process.threads.entry(event.tid).or_default().goroutine = Some(event.goid);
        let goroutine = self.goroutines.entry((event.pid, event.goid)).or_insert_with(|| {
            if event.goid != 0 && event.goid != GOROUTINE_UNREAD {
                process.seen += 1;
            }
            Goroutine::default()
        });
        if goroutine.last_thread != Some(event.tid) {
            goroutine.threads.insert(event.tid);
            // g0 is one per thread, not one goroutine that moves; nor are
            // the calls no goroutine made.
            let moves = event.goid != 0 && event.goid != GOROUTINE_UNREAD;
            if moves && goroutine.last_thread.is_some() {
                goroutine.moves += 1;
            }
            goroutine.last_thread = Some(event.tid);
        }
        goroutine
    }

    /// Marks goroutine `goid` of process `pid` as ended; beyond the cap,
    /// the oldest ended one is folded into the process's row of them.
    fn exited(&mut self, pid: u32, goid: u64) {
        let (Some(process), Some(goroutine)) =
            (self.processes.get_mut(&pid), self.goroutines.get_mut(&(pid, goid)))
        else {
            return;
        };
        if goroutine.exited || goid == 0 || goid == GOROUTINE_UNREAD {
            return;
        }
        goroutine.exited = true;
        process.exited.push(goid);
        if process.exited.len() > MAX_EXITED_GOROUTINES {
            let oldest = process.exited.remove(0);
            self.fold(pid, oldest);
        }
    }

    /// Reads the scheduler of each live process when due (see
    /// [`scheduler::PERIOD`]); the last snapshot stays once it exits.
    pub fn refresh(&mut self, world: &dyn World) {
        let live: Vec<u32> = self.processes.keys().copied().filter(|&pid| world.process_alive(pid)).collect();
        let now = Instant::now();
        self.scheduler.read(self.binary.scheduler.as_deref(), live.into_iter(), now);
        let mut ended = Vec::new();
        for (pid, process) in &mut self.processes {
            // Only a snapshot this call read: an older one was merged when
            // it was read, and this runs after every drain.
            if let Some(snapshot) =
                self.scheduler.snapshot(*pid).ok().filter(|snapshot| snapshot.taken == now)
            {
                // Threads that made no syscall and started before the
                // trace are known from the runtime's list.
                for m in snapshot.sched.ms.iter().filter(|m| m.tid != 0) {
                    process.threads.entry(m.tid).or_default();
                }
                // A goroutine seen in a record was alive before this read:
                // not among its goroutines, it has ended (an older read
                // knows nothing of goroutines started since).
                if let Some(live) = snapshot.live.as_ref() {
                    ended.extend(self.goroutines.iter().filter_map(|(&(of, goid), goroutine)| {
                        let ended = of == *pid
                            && (1..GOROUTINE_UNREAD).contains(&goid)
                            && !goroutine.exited
                            && live.binary_search(&goid).is_err();
                        ended.then_some((of, goid))
                    }));
                }
            }
        }
        // Oldest first (ids grow), as the cap on ended ones folds them.
        ended.sort_unstable();
        for (pid, goid) in ended {
            self.exited(pid, goid);
        }
    }

    fn fold(&mut self, pid: u32, goid: u64) {
        let Some(gone) = self.goroutines.remove(&(pid, goid)) else {
            return;
        };
        self.last_call = None;
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
                    GOROUTINE_UNREAD => "[no goroutine: the runtime had not set the thread up]".to_owned(),
                    _ => match goroutine.start_pc {
                        0 => "[start not read: its first call's record was lost]".to_owned(),
                        pc => self
                            .binary
                            .start_function(pc.wrapping_sub(self.scheduler.bias(pid).unwrap_or(0)))
                            .map_or_else(|| format!("[no function at {pc:#x}]"), escape::visible),
                    },
                },
                exited: goroutine.exited,
                syscalls: syscall_reports(&goroutine.syscalls, None),
                threads: goroutine.threads.iter().copied().collect(),
                moves: goroutine.moves,
            })
            .collect();
        let calls = |g: &GoroutineReport| g.syscalls.iter().map(|call| call.count).sum::<u64>();
        goroutines.sort_by(|a, b| calls(b).cmp(&calls(a)).then((a.pid, a.goid).cmp(&(b.pid, b.goid))));
        (goroutines, self.processes())
    }

    /// The processes: their runtime as last read, and their threads.
    pub fn processes(&self) -> Vec<GoProcessReport> {
        let now = Instant::now();
        self.processes
            .iter()
            .map(|(&pid, process)| {
                let read = self.scheduler.snapshot(pid).ok();
                let (gomaxprocs, gomaxprocs_from) =
                    match read.and_then(|s| i32::try_from(s.sched.gomaxprocs).ok()) {
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
                    goroutines_seen: process.seen,
                    sched,
                    goroutine_states,
                    sched_unavailable,
                }
            })
            .collect()
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
    match thread.goroutine {
        Some(0) => "the runtime's own: only g0 made its calls".to_owned(),
        Some(GOROUTINE_UNREAD) => "not yet set up by the runtime".to_owned(),
        Some(goid) => format!("runs goroutines; last goroutine {goid}"),
        None => "made no syscall since probe attached".to_owned(),
    }
}
