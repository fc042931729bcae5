//! What the scheduler did to each thread, from its switch and wakeup events.
//!
//! A thread is always in one of three states, and the events move it:
//!
//! ```text
//!            SwitchIn                  SwitchOut (voluntary)
//!   ready ─────────────▶ on CPU ───────────────────────────▶ blocked
//!     ▲                    │ SwitchOut (preempted)              │
//!     └────────────────────┘◀──────────── Wakeup ───────────────┘
//! ```
//!
//! on-CPU time runs from SwitchIn to SwitchOut, blocked time from a
//! voluntary SwitchOut to the Wakeup, and run-queue wait from becoming ready
//! (Wakeup, or a preempting SwitchOut) to the next SwitchIn. A migration is a
//! SwitchIn on another CPU than the thread's previous run.
//!
//! Who held the CPU while a thread waited (`runq_blame`): every switch on a
//! CPU ends the run of the task that leaves it (a traced thread's
//! SwitchOut, another thread's `RanEvent`, or for the idle task a gap up to
//! the next record), so the tracker keeps each CPU's runs and, when a wait
//! ends with a SwitchIn on CPU c, blames the overlap of each run on c with
//! the wait. With `-p` the kernel sends the other threads' switch-outs
//! while any traced thread waits, so every switch on c during a wait is
//! seen. What is approximated: a thread moved to c while it waited is
//! blamed on c's runs for all of its wait, also for the time it was queued
//! on another CPU (no record says when it moved); and with `-p`, a switch
//! that raced the wakeup on another CPU by the nanoseconds of one atomic
//! add may be missed. Records the full ring buffer dropped (`lost_events`)
//! blame their time on the run before them.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;

use probe_common::{
    EventKind, RanEvent, SchedEvent, WakeEvent, COMM_LEN, KERNEL_STACK_NOT_TAKEN, NO_SYSCALL, SWITCH_EXITED,
    SWITCH_NEW_THREAD, SWITCH_VOLUNTARY, WAKER_INTERRUPT,
};

use super::{in_flight::ThreadState, latency::Latencies, Table, ThreadKey, World};

/// One thread's scheduling over some span of time.
#[derive(Clone, Debug, Default)]
pub struct SchedStats {
    /// Time running.
    pub on_cpu_ns: u64,
    /// Time asleep, not runnable.
    pub blocked_ns: u64,
    /// Time runnable but waiting for a CPU.
    pub runq_wait_ns: u64,
    /// Switches where the thread blocked.
    pub voluntary: u64,
    /// Switches where it was preempted while runnable.
    pub involuntary: u64,
    /// Moves between CPUs, as the kernel counts them
    /// (`se.nr_migrations`): also a move while it waited.
    pub migrations: u64,
    /// CPU of the latest SwitchIn or SwitchOut.
    pub last_cpu: Option<u32>,
    /// on-CPU time per CPU.
    pub cpus: BTreeMap<u32, u64>,
    /// Runs that began on another CPU than the previous one, per (from, to)
    /// CPU pair: the migrations that were seen as runs (fewer, when a thread
    /// was moved more than once while it waited). A run seen at one end
    /// only still counts: its CPU is that end's.
    pub pairs: BTreeMap<(u32, u32), u64>,
    /// Run-queue waits, ready to running.
    pub runq: Latencies,
    /// Scheduler records of the thread that the full ring buffer dropped
    /// (counted in the kernel): the switch counts above still hold them,
    /// but its times are a sample, not exact, when this is not 0.
    pub lost_records: u64,
    /// Runs seen at one end only: a switch-out after a switch-out (the
    /// switch onto the CPU never came) or a switch-in while running (the
    /// switch off never came), whether the record was dropped or the kernel
    /// never reported the switch. Their time on the CPU is unknown and not
    /// counted, so the times are a sample when this is not 0.
    pub partial_runs: u64,
    /// Who held the CPU during its run-queue waits, in ns (see the module's
    /// comment). A wait is blamed whole when it ends, in the interval it
    /// ends in (`runq_wait_ns` splits it at interval ends): over the whole
    /// trace the two add up but for the waits in progress at its end.
    pub runq_blame: FxHashMap<Holder, Blamed>,
}

/// Who held a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    /// A thread, traced or not.
    Thread { pid: u32, tid: u32 },
    /// No task: the CPU was idle (a wakeup's target CPU leaving idle).
    Idle,
    /// Runs the tracker no longer kept (more than `KEPT_RUNS` on the CPU
    /// during one wait).
    Unknown,
}

/// A holder's share of a thread's waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Blamed {
    pub ns: u64,
    /// The holder's name at its latest run blamed, raw.
    pub comm: [u8; COMM_LEN],
}

impl SchedStats {
    fn run(&mut self, cpu: u32, ns: u64) {
        self.on_cpu_ns = self.on_cpu_ns.saturating_add(ns);
        add(self.cpus.entry(cpu).or_default(), ns);
    }

    /// Adds a later span's statistics.
    pub fn merge(&mut self, other: &Self) {
        self.on_cpu_ns = self.on_cpu_ns.saturating_add(other.on_cpu_ns);
        self.blocked_ns = self.blocked_ns.saturating_add(other.blocked_ns);
        self.runq_wait_ns = self.runq_wait_ns.saturating_add(other.runq_wait_ns);
        self.voluntary += other.voluntary;
        self.involuntary += other.involuntary;
        self.migrations += other.migrations;
        self.last_cpu = other.last_cpu.or(self.last_cpu);
        for (&cpu, &ns) in &other.cpus {
            add(self.cpus.entry(cpu).or_default(), ns);
        }
        for (&pair, &n) in &other.pairs {
            *self.pairs.entry(pair).or_default() += n;
        }
        self.runq.merge(&other.runq);
        self.lost_records += other.lost_records;
        self.partial_runs += other.partial_runs;
        for (&holder, blamed) in &other.runq_blame {
            let mine = self.runq_blame.entry(holder).or_default();
            add(&mut mine.ns, blamed.ns);
            mine.comm = blamed.comm;
        }
    }

    /// Whether its times, run-queue waits and CPU pairs miss something.
    pub fn sampled(&self) -> bool {
        self.lost_records > 0 || self.partial_runs > 0
    }
}

/// Off-CPU spans a thread's next syscall records are split against.
const KEPT_SPANS: usize = 16;

/// A span a thread spent off the CPU: `(from, to, blocked)`; not blocked is
/// waiting in a run queue.
type OffSpan = (u64, u64, bool);

/// Who made a thread runnable (`WokenBy` records, sent with calls'
/// details).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waker {
    pub pid: u32,
    pub tid: u32,
    /// Its name, raw.
    pub comm: [u8; COMM_LEN],
    /// Its syscall in progress, if it was a traced one.
    pub nr: Option<u32>,
    /// The wakeup came from an interrupt: `pid`, `tid` and `comm` are the
    /// task it interrupted, not the waker.
    pub interrupt: bool,
    /// The wakeup's kernel stack (`KERNEL_STACKS` id plus one; 0: none).
    pub kernel_stack: u32,
    /// Whether the kernel programs took it: only for a call that had run
    /// `--slow`'s threshold when woken.
    pub stack_taken: bool,
}

impl Waker {
    pub fn new(event: &WakeEvent) -> Self {
        Self {
            pid: event.waker_pid,
            tid: event.waker_tid,
            comm: event.waker_comm,
            nr: (event.waker_nr != NO_SYSCALL).then_some(event.waker_nr),
            interrupt: event.context == WAKER_INTERRUPT,
            kernel_stack: match event.kernel_stack {
                KERNEL_STACK_NOT_TAKEN => 0,
                id => id,
            },
            stack_taken: event.kernel_stack != KERNEL_STACK_NOT_TAKEN,
        }
    }
}

/// A sleep of a thread in a syscall, with what it slept in and what woke
/// it (`--slow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sleep {
    pub from: u64,
    pub to: u64,
    /// The blocking switch-out's kernel stack (id plus one; 0: none).
    pub kernel_stack: u32,
    /// `None` when the wakeup was not seen with its waker.
    pub waker: Option<Waker>,
    /// How long it then waited for a CPU.
    pub runq_ns: u64,
}

impl Sleep {
    pub fn ns(&self) -> u64 {
        self.to - self.from
    }
}

/// Where a thread is, between events.
#[derive(Clone, Debug, Default)]
struct RunState {
    /// Running since (ns, CPU).
    running: Option<(u64, u32)>,
    /// Off CPU since (ns, voluntarily).
    off: Option<(u64, bool)>,
    /// Runnable since.
    ready: Option<u64>,
    /// CPU of its previous run.
    last_cpu: Option<u32>,
    /// The kernel's count of its migrations at its latest switch-out; `None`
    /// until one is seen, unless it was born after probe attached (then 0).
    migrations_seen: Option<u64>,
    /// How far its current time off the CPU (asleep, then waiting) has been
    /// charged: an interval that closes while the thread is off the CPU
    /// takes the part up to its end, and the next interval the rest.
    charged_to: u64,
    /// Its latest off-CPU spans, oldest first.
    off_spans: Vec<OffSpan>,
    /// With calls' details: the kernel stack of its latest blocking
    /// switch-out (`--slow`'s), and who woke it since.
    blocked_in: u32,
    woken_by: Option<Waker>,
    /// With calls' details: its latest sleeps, oldest first, as
    /// `off_spans`.
    sleeps: Vec<Sleep>,
    /// Found gone from /proc at the latest settle, its last switch not yet
    /// seen.
    gone: bool,
}

impl RunState {
    /// Keeps a sleep from `from` to `to`, then `runq_ns` in a run queue,
    /// with what was learnt of it: only a sleep whose stack (`--slow`) or
    /// waker (calls' details) was sent. Whether it kept one more.
    fn slept(&mut self, from: u64, to: u64, runq_ns: u64) -> bool {
        let waker = self.woken_by.take();
        if self.blocked_in == 0 && waker.is_none() {
            return false;
        }
        let full = self.sleeps.len() == KEPT_SPANS;
        if full {
            self.sleeps.remove(0);
        }
        self.sleeps.push(Sleep {
            from,
            to,
            kernel_stack: std::mem::take(&mut self.blocked_in),
            waker,
            runq_ns,
        });
        !full
    }

    fn off_cpu(&mut self, from: u64, to: u64, blocked: bool) {
        if to > from {
            if self.off_spans.len() == KEPT_SPANS {
                self.off_spans.remove(0);
            }
            self.off_spans.push((from, to, blocked));
        }
    }
}

/// How a syscall's time split: asleep, and waiting for a CPU; the rest was
/// on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub blocked_ns: u64,
    pub runq_ns: u64,
}

/// Runs kept per CPU at most: a wait longer than they cover blames the rest
/// on `Holder::Unknown`.
const KEPT_RUNS: usize = 1 << 16;

/// One task's time on a CPU, up to a switch.
#[derive(Clone, Copy, Debug)]
struct Run {
    from: u64,
    to: u64,
    holder: Holder,
    comm: [u8; COMM_LEN],
}

/// The runs on one CPU that a wait in progress may still be blamed on.
#[derive(Debug, Default)]
struct CpuRuns {
    /// The latest switch seen on the CPU, where the next run starts; 0
    /// before the first, whose task held the CPU since before any wait.
    last_switch: u64,
    /// Oldest first.
    runs: VecDeque<Run>,
    /// How many runs the latest pruning left: the next one is due at twice
    /// as many, so that its walk over the threads is paid rarely.
    pruned_to: usize,
}

/// Blames each run on `runs` that overlaps the wait from `from` to `to` for
/// its overlap, and what no kept run covers on `Holder::Unknown`.
fn blame(runs: Option<&CpuRuns>, from: u64, to: u64, stats: &mut SchedStats) {
    let mut covered = 0;
    for run in runs.into_iter().flat_map(|runs| runs.runs.iter().rev()).take_while(|run| run.to > from) {
        let overlap = run.to.min(to).saturating_sub(run.from.max(from));
        if overlap > 0 {
            let blamed = stats.runq_blame.entry(run.holder).or_default();
            add(&mut blamed.ns, overlap);
            blamed.comm = run.comm;
            covered = overlap.saturating_add(covered);
        }
    }
    let unknown = to.saturating_sub(from).saturating_sub(covered);
    if unknown > 0 {
        add(&mut stats.runq_blame.entry(Holder::Unknown).or_default().ns, unknown);
    }
}

/// The state of every thread seen, across intervals: spans that cross an
/// interval's end are charged to the interval each part falls in.
#[derive(Debug, Default)]
pub struct SchedTracker {
    /// Each CPU's runs, for `runq_blame`.
    cpu_runs: FxHashMap<u32, CpuRuns>,
    threads: FxHashMap<ThreadKey, RunState>,
    /// The traced thread each CPU last switched to, to repair a lost
    /// SwitchOut: the next SwitchIn on that CPU ends the run.
    on_cpu: FxHashMap<u32, ThreadKey>,
    /// Sleeps kept in all (at least: an exited thread's are not taken
    /// off), so that a syscall looks its thread up for them only when
    /// `--slow` sent any.
    sleeps_kept: usize,
    /// The thread whose latest syscall left it no off-CPU span, none
    /// applied since: its next syscall is split without a look-up (each
    /// change of a thread's state forgets it).
    spanless: Option<ThreadKey>,
}

impl SchedTracker {
    /// Moves thread `key` to its new state after `event`, charging what it
    /// did since its previous event to its statistics in `table`.
    pub fn apply(&mut self, key: ThreadKey, event: &SchedEvent, table: &mut Table) {
        self.spanless = None;
        let ts = event.ts_ns;
        match EventKind::from_u32(event.kind) {
            Some(EventKind::SwitchIn) => {
                self.end_lost_run(key, event.cpu, ts, table);
                // Time since the CPU's previous record that no record
                // claimed: the idle task's (any other task's switch-out is
                // sent while a traced thread waits).
                self.held(event.cpu, ts, Holder::Idle, [0; COMM_LEN]);
            }
            Some(EventKind::SwitchOut) => {
                let holder = Holder::Thread { pid: event.pid, tid: event.tid };
                self.held(event.cpu, ts, holder, event.comm);
            }
            _ => {}
        }
        let stats = table.sched_mut(key);
        let state = self.threads.entry(key).or_default();
        match EventKind::from_u32(event.kind) {
            Some(EventKind::SwitchOut) => {
                let voluntary = event.flags & SWITCH_VOLUNTARY != 0;
                if voluntary {
                    stats.voluntary += 1;
                } else {
                    stats.involuntary += 1;
                }
                match state.running.take() {
                    Some((since, cpu)) => stats.run(cpu, ts.saturating_sub(since)),
                    // It left a CPU it was last seen leaving: the switch
                    // that put it back never came. Dropped, or the kernel
                    // did not fire `sched_switch` at all (seen on this VM
                    // whenever the CPU was taken from one thread of the
                    // hypervisor's agent, for every tracer, ftrace too). The
                    // run's start is unknown, but where it ran is not.
                    None if state.off.is_some() => {
                        stats.partial_runs += 1;
                        if let Some(last) = state.last_cpu.filter(|&last| last != event.cpu) {
                            *stats.pairs.entry((last, event.cpu)).or_default() += 1;
                        }
                    }
                    // A run that began before probe attached has no known start.
                    None => {}
                }
                // The kernel counts the moves: none is missed for a lost
                // record, and those before attach are not probe's to count.
                // A thread created since made all of its moves in the trace,
                // though its WakeupNew, which says so first, may be lost.
                let new = event.flags & SWITCH_NEW_THREAD != 0;
                let seen = state.migrations_seen.or(new.then_some(0));
                if let Some(seen) = seen {
                    stats.migrations += event.nr_migrations.saturating_sub(seen);
                }
                state.migrations_seen = Some(event.nr_migrations.max(seen.unwrap_or(0)));
                state.off = Some((ts, voluntary));
                state.ready = (!voluntary).then_some(ts);
                state.blocked_in = event.kernel_stack;
                state.woken_by = None;
                state.charged_to = ts;
                state.last_cpu = Some(event.cpu);
                stats.last_cpu = Some(event.cpu);
                if self.on_cpu.get(&event.cpu) == Some(&key) {
                    self.on_cpu.remove(&event.cpu);
                }
                if event.flags & SWITCH_EXITED != 0 {
                    // Its last switch: nothing will move it again.
                    self.threads.remove(&key);
                }
            }
            Some(kind @ (EventKind::Wakeup | EventKind::WakeupNew)) => {
                // A thread born since attach: every move it makes is counted.
                if kind == EventKind::WakeupNew {
                    state.migrations_seen.get_or_insert(0);
                }
                // Wakeups of a running or already runnable thread change nothing.
                if state.running.is_none() && state.ready.is_none() {
                    let since = state.off.map_or(ts, |(off, _)| off);
                    state.ready = Some(ts.max(since));
                }
            }
            Some(EventKind::SwitchIn) => {
                // Still running: the switch that took it off the CPU never
                // came, and when that run ended is unknown.
                if state.running.is_some() {
                    stats.partial_runs += 1;
                }
                // What earlier intervals took of this time off the CPU is
                // theirs; this one gets the rest.
                let charged = state.charged_to;
                match (state.off.take(), state.ready) {
                    (Some((off, voluntary)), Some(ready)) => {
                        if voluntary {
                            add(&mut stats.blocked_ns, ready.saturating_sub(off.max(charged)));
                            state.off_cpu(off, ready, true);
                            self.sleeps_kept +=
                                usize::from(state.slept(off, ready, ts.saturating_sub(ready)));
                        }
                        wait(stats, ts.saturating_sub(ready), ts.saturating_sub(ready.max(charged)));
                        blame(self.cpu_runs.get(&event.cpu), ready, ts, stats);
                        state.off_cpu(ready, ts, false);
                    }
                    // The wakeup was not seen: all of it counts as blocked.
                    (Some((off, _)), None) => {
                        add(&mut stats.blocked_ns, ts.saturating_sub(off.max(charged)));
                        state.off_cpu(off, ts, true);
                        self.sleeps_kept += usize::from(state.slept(off, ts, 0));
                    }
                    // A new thread's first run.
                    (None, Some(ready)) => {
                        wait(stats, ts.saturating_sub(ready), ts.saturating_sub(ready.max(charged)));
                        blame(self.cpu_runs.get(&event.cpu), ready, ts, stats);
                    }
                    (None, None) => {}
                }
                state.ready = None;
                if let Some(last) = state.last_cpu.filter(|&last| last != event.cpu) {
                    *stats.pairs.entry((last, event.cpu)).or_default() += 1;
                }
                state.last_cpu = Some(event.cpu);
                stats.last_cpu = Some(event.cpu);
                state.running = Some((ts, event.cpu));
                self.on_cpu.insert(event.cpu, key);
            }
            // Other records are not scheduler events: `SchedEvent::decode`
            // refuses them.
            _ => {}
        }
    }

    /// A thread that is not traced (or the idle task, pid 0) left CPU
    /// `event.cpu`: it held it since the CPU's previous switch.
    pub fn ran(&mut self, event: &RanEvent) {
        let holder = match event.pid {
            0 => Holder::Idle,
            pid => Holder::Thread { pid, tid: event.tid },
        };
        self.held(event.cpu, event.ts_ns, holder, event.comm);
    }

    /// `holder` held `cpu` from its previous switch to `ts`.
    fn held(&mut self, cpu: u32, ts: u64, holder: Holder, comm: [u8; COMM_LEN]) {
        let cpu_runs = self.cpu_runs.entry(cpu).or_default();
        let from = cpu_runs.last_switch;
        cpu_runs.last_switch = cpu_runs.last_switch.max(ts);
        if ts <= from {
            return;
        }
        cpu_runs.runs.push_back(Run { from, to: ts, holder, comm });
        if cpu_runs.runs.len() <= (2 * cpu_runs.pruned_to).max(1024) {
            return;
        }
        // Only runs a wait in progress overlaps are kept.
        let oldest_wait = self
            .threads
            .values()
            .filter(|state| state.running.is_none())
            .filter_map(|state| state.ready)
            .min()
            .unwrap_or(ts);
        let cpu_runs = self.cpu_runs.get_mut(&cpu).expect("inserted above");
        while cpu_runs.runs.front().is_some_and(|run| run.to <= oldest_wait)
            || cpu_runs.runs.len() > KEPT_RUNS
        {
            cpu_runs.runs.pop_front();
        }
        cpu_runs.pruned_to = cpu_runs.runs.len();
    }

    /// The kernel counted `nr_migrations` moves of thread `key` by a
    /// switch-out whose record was dropped: the moves since the count last
    /// seen are its, even when no later switch-out of it is ever seen.
    pub fn migrated(&mut self, key: ThreadKey, nr_migrations: u64, table: &mut Table) {
        self.spanless = None;
        let Some(state) = self.threads.get_mut(&key) else {
            return;
        };
        if let Some(seen) = state.migrations_seen.filter(|&seen| nr_migrations > seen) {
            table.sched_mut(key).migrations += nr_migrations - seen;
            state.migrations_seen = Some(nr_migrations);
        }
    }

    /// `waker` is waking thread `key` (its `Wakeup` follows): kept for the
    /// sleep this ends, if the thread is asleep and not already being woken.
    pub fn woken_by(&mut self, key: ThreadKey, waker: Waker) {
        self.spanless = None;
        if let Some(state) = self.threads.get_mut(&key) {
            let asleep =
                state.running.is_none() && state.ready.is_none() && state.off.is_some_and(|(_, v)| v);
            if asleep && state.woken_by.is_none() {
                state.woken_by = Some(waker);
            }
        }
    }

    /// The sleeps of thread `key` between `start` and `end` (a syscall,
    /// with calls' details), with what it slept in and who woke it; they
    /// are forgotten then.
    #[inline]
    pub fn sleeps(&mut self, key: ThreadKey, start: u64, end: u64) -> Vec<Sleep> {
        if self.sleeps_kept == 0 {
            return Vec::new();
        }
        let Some(state) = self.threads.get_mut(&key).filter(|state| !state.sleeps.is_empty()) else {
            return Vec::new();
        };
        let within =
            state.sleeps.iter().filter(|sleep| sleep.from >= start && sleep.to <= end).copied().collect();
        let kept = state.sleeps.len();
        state.sleeps.retain(|sleep| sleep.to > end);
        self.sleeps_kept = self.sleeps_kept.saturating_sub(kept - state.sleeps.len());
        within
    }

    /// Thread `key`, unseen so far, has been asleep since `ts` (found so at
    /// attach): its time asleep is charged from then.
    pub fn asleep_since(&mut self, key: ThreadKey, ts: u64) {
        self.spanless = None;
        let state = self.threads.entry(key).or_default();
        state.off = Some((ts, true));
        state.charged_to = ts;
    }

    /// How much of a syscall of thread `key` from `start` to `end` it spent
    /// blocked and in a run queue, from the spans the scheduler events
    /// showed; `None` for a thread without scheduler events. The syscall
    /// record comes at the syscall's exit, after every span inside it.
    #[inline]
    pub fn split(&mut self, key: ThreadKey, start: u64, end: u64) -> Option<Split> {
        if self.spanless == Some(key) {
            return Some(Split::default());
        }
        let state = self.threads.get_mut(&key)?;
        let mut split = Split::default();
        for &(from, to, blocked) in &state.off_spans {
            let overlap = to.min(end).saturating_sub(from.max(start));
            if blocked {
                split.blocked_ns += overlap;
            } else {
                split.runq_ns += overlap;
            }
        }
        state.off_spans.retain(|&(_, to, _)| to > end);
        self.spanless = state.off_spans.is_empty().then_some(key);
        // Clocks of different CPUs may disagree by a little: never more
        // off-CPU time than the call took.
        let duration = end.saturating_sub(start);
        split.blocked_ns = split.blocked_ns.min(duration);
        split.runq_ns = split.runq_ns.min(duration - split.blocked_ns);
        Some(split)
    }

    /// A thread switched in on `cpu` ends the run of the traced thread that
    /// was there, if that thread's SwitchOut was lost (a full ring buffer):
    /// it is charged up to now and taken off the CPU, not charged forever.
    fn end_lost_run(&mut self, key: ThreadKey, cpu: u32, ts: u64, table: &mut Table) {
        let Some(previous) = self.on_cpu.remove(&cpu).filter(|&previous| previous != key) else {
            return;
        };
        let Some(state) = self.threads.get_mut(&previous) else {
            return;
        };
        if let Some((since, ran_on)) = state.running.filter(|&(_, ran_on)| ran_on == cpu) {
            table.sched_mut(previous).run(ran_on, ts.saturating_sub(since));
            state.running = None;
            state.off = Some((ts, false));
        }
    }

    /// Where thread `key` is now, as its latest event left it; `None` before
    /// its first event.
    pub fn state_now(&self, key: ThreadKey) -> Option<ThreadState> {
        let state = self.threads.get(&key)?;
        match (state.running, state.ready, state.off) {
            (Some(_), _, _) => Some(ThreadState::OnCpu),
            (None, Some(_), _) | (None, None, Some((_, false))) => Some(ThreadState::Runnable),
            (None, None, Some((_, true))) => Some(ThreadState::Blocked),
            (None, None, None) => None,
        }
    }

    /// Drops the state of threads that are gone although their last switch
    /// was never seen (lost to a full ring buffer), so that they are not
    /// charged as running forever and the tracker does not grow. A thread
    /// leaves /proc before its last switch, whose record may be on its way
    /// still (dropping the state then lost the whole last run of a thread
    /// that exited during a drain, and the moves that switch counted): it
    /// is dropped when found gone at two settles in a row.
    pub fn forget_dead(&mut self, world: &dyn World) {
        self.spanless = None;
        self.threads.retain(|key, state| {
            let alive = world.thread_alive(key.pid(), key.tid());
            let keep = alive || !state.gone;
            state.gone = !alive;
            keep
        });
        let threads = &self.threads;
        self.on_cpu.retain(|_, key| threads.contains_key(key));
    }

    /// Charges every thread's time up to `now` to `table`, which is about
    /// to close: a running thread its time on the CPU, a thread off it its
    /// time asleep and waiting so far. So no interval holds more than its
    /// span of any thread, and a thread that never changes state still
    /// shows its time every interval.
    pub fn charge_until(&mut self, now: u64, table: &mut Table) {
        self.spanless = None;
        // A thread found gone has ended: its last switch, when it comes,
        // charges what is left of its time.
        for (key, state) in self.threads.iter_mut().filter(|(_, state)| !state.gone) {
            if let Some((since, cpu)) = state.running.filter(|&(since, _)| since < now) {
                table.sched_mut(*key).run(cpu, now - since);
                state.running = Some((now, cpu));
            }
            let Some((off, voluntary)) = state.off.filter(|_| state.charged_to < now) else {
                continue;
            };
            let stats = table.sched_mut(*key);
            let charged = state.charged_to;
            match state.ready {
                // Asleep: it has not been woken yet.
                None => add(&mut stats.blocked_ns, now - off.max(charged)),
                Some(ready) => {
                    if voluntary {
                        add(&mut stats.blocked_ns, ready.saturating_sub(off.max(charged)));
                    }
                    add(&mut stats.runq_wait_ns, now.saturating_sub(ready.max(charged)));
                }
            }
            state.charged_to = now;
        }
    }
}

/// Adds nanoseconds, saturating: timestamps come from the kernel, and a
/// garbled one must not wrap a total around.
fn add(total: &mut u64, ns: u64) {
    *total = total.saturating_add(ns);
}

/// A run-queue wait of `whole` ns ended, of which `uncharged` were not
/// charged to earlier intervals: the quantiles are of whole waits.
fn wait(stats: &mut SchedStats, whole: u64, uncharged: u64) {
    add(&mut stats.runq_wait_ns, uncharged);
    stats.runq.record(whole);
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::COMM_LEN;

    fn ev(kind: EventKind, cpu: u32, ts_ns: u64, flags: u32) -> SchedEvent {
        let (pid, tid, nr_migrations, comm) = (1, 2, 0, [0; COMM_LEN]);
        SchedEvent { kind: kind as u32, cpu, pid, tid, flags, kernel_stack: 0, ts_ns, nr_migrations, comm }
    }

    fn replay(events: &[SchedEvent]) -> SchedStats {
        let mut tracker = SchedTracker::default();
        let mut table = Table::default();
        let key = ThreadKey::new(1, 2);
        for event in events {
            tracker.apply(key, event, &mut table);
        }
        table.sched_mut(key).clone()
    }

    #[test]
    fn a_syscall_is_split_by_the_spans_inside_it() {
        let mut tracker = SchedTracker::default();
        let mut table = Table::default();
        let key = ThreadKey::new(1, 2);
        let events = [
            ev(EventKind::SwitchIn, 0, 10, 0),
            // Blocks in the call at 100, woken at 150, runs again at 170.
            ev(EventKind::SwitchOut, 0, 100, SWITCH_VOLUNTARY),
            ev(EventKind::Wakeup, 1, 150, 0),
            ev(EventKind::SwitchIn, 0, 170, 0),
            // Preempted at 180, back at 185.
            ev(EventKind::SwitchOut, 0, 180, 0),
            ev(EventKind::SwitchIn, 1, 185, 0),
        ];
        for event in &events {
            tracker.apply(key, event, &mut table);
        }
        assert_eq!(tracker.split(key, 90, 200), Some(Split { blocked_ns: 50, runq_ns: 25 }));
        // The spans are used up: the next call, later, ran on the CPU.
        assert_eq!(tracker.split(key, 210, 220), Some(Split::default()));
        // Skewed clocks never make the parts exceed the call.
        tracker.apply(key, &ev(EventKind::SwitchOut, 1, 300, SWITCH_VOLUNTARY), &mut table);
        tracker.apply(key, &ev(EventKind::SwitchIn, 0, 400, 0), &mut table);
        assert_eq!(tracker.split(key, 350, 360), Some(Split { blocked_ns: 10, runq_ns: 0 }));
        assert_eq!(tracker.split(ThreadKey::new(9, 9), 0, 1), None);
    }

    #[test]
    fn sleep_wake_run_splits_blocked_runq_and_on_cpu() {
        use EventKind::*;
        let stats = replay(&[
            ev(SwitchIn, 0, 100, 0),
            ev(SwitchOut, 0, 150, SWITCH_VOLUNTARY),
            ev(Wakeup, 1, 1150, 0),
            ev(SwitchIn, 0, 1200, 0),
            ev(SwitchOut, 0, 1300, 0),
            ev(SwitchIn, 1, 1400, 0),
        ]);
        assert_eq!((stats.on_cpu_ns, stats.blocked_ns, stats.runq_wait_ns), (150, 1000, 150));
        assert_eq!((stats.voluntary, stats.involuntary), (1, 1));
        // The run on CPU 1 is seen; the migration is the kernel's to count.
        assert_eq!(stats.pairs, BTreeMap::from([((0, 1), 1)]));
        assert_eq!(stats.cpus, BTreeMap::from([(0, 150)]));
        assert_eq!(stats.last_cpu, Some(1));
        assert_eq!((stats.runq.len(), stats.runq.max()), (2, Some(100)));
    }

    #[test]
    fn unseen_beginnings_are_not_invented() {
        use EventKind::*;
        // Running when probe attached: no on-CPU time, and no migration
        // for the first run seen.
        let stats = replay(&[ev(SwitchOut, 0, 50, 0), ev(SwitchIn, 1, 80, 0)]);
        assert_eq!((stats.on_cpu_ns, stats.runq_wait_ns, stats.pairs.len()), (0, 30, 1));
        let stats = replay(&[ev(SwitchIn, 1, 80, 0)]);
        assert_eq!((stats.on_cpu_ns, stats.runq_wait_ns, stats.pairs.len(), stats.runq.len()), (0, 0, 0, 0));
    }

    #[test]
    fn a_run_whose_start_never_came_marks_the_times_a_sample() {
        use EventKind::*;
        // Preempted at 100, back on the CPU unseen, exits at 300.
        let stats = replay(&[
            ev(SwitchIn, 0, 10, 0),
            ev(SwitchOut, 0, 100, 0),
            ev(SwitchOut, 0, 300, SWITCH_VOLUNTARY | SWITCH_EXITED),
        ]);
        assert_eq!((stats.on_cpu_ns, stats.involuntary, stats.voluntary), (90, 1, 1));
        assert_eq!((stats.partial_runs, stats.lost_records), (1, 0));
        assert!(stats.sampled());
        // Back unseen on the other CPU: a move all the same.
        let moved = replay(&[ev(SwitchIn, 0, 10, 0), ev(SwitchOut, 0, 100, 0), ev(SwitchOut, 1, 300, 0)]);
        assert_eq!((moved.pairs, moved.partial_runs), (BTreeMap::from([((0, 1), 1)]), 1));
        // A thread first seen leaving (running since before attach) is not one.
        assert!(!replay(&[ev(SwitchOut, 0, 50, 0), ev(SwitchIn, 1, 80, 0)]).sampled());
    }

    #[test]
    fn a_run_whose_end_never_came_marks_the_times_a_sample() {
        use EventKind::*;
        // On CPU 0 from 10, off it unseen, back on CPU 1 at 200 until 250.
        let stats = replay(&[ev(SwitchIn, 0, 10, 0), ev(SwitchIn, 1, 200, 0), ev(SwitchOut, 1, 250, 0)]);
        assert_eq!((stats.on_cpu_ns, stats.partial_runs), (50, 1));
        assert_eq!(stats.pairs, BTreeMap::from([((0, 1), 1)]));
    }

    #[test]
    fn a_calls_longest_sleep_keeps_what_it_slept_in_and_who_woke_it() {
        use EventKind::*;
        let mut tracker = SchedTracker::default();
        let mut table = Table::default();
        let key = ThreadKey::new(1, 2);
        let waker = |tid| Waker {
            pid: 1,
            tid,
            comm: [0; COMM_LEN],
            nr: Some(1),
            interrupt: false,
            kernel_stack: 9,
            stack_taken: true,
        };
        let blocking =
            |ts, stack| SchedEvent { kernel_stack: stack, ..ev(SwitchOut, 0, ts, SWITCH_VOLUNTARY) };
        // In one call from 5 to 1000: asleep 10..30 in stack 4, woken by 7;
        // asleep 100..400 in stack 5, woken by 8 and 20 ns in the run queue.
        for (event, woken_by) in [
            (ev(SwitchIn, 0, 1, 0), None),
            (blocking(10, 4), None),
            (ev(Wakeup, 1, 30, 0), Some(waker(7))),
            (ev(SwitchIn, 0, 32, 0), None),
            (blocking(100, 5), None),
            (ev(Wakeup, 1, 400, 0), Some(waker(8))),
            // A second wakeup changes nothing.
            (ev(Wakeup, 1, 405, 0), Some(waker(6))),
            (ev(SwitchIn, 0, 420, 0), None),
        ] {
            // sched_waking comes before its wakeup.
            if let Some(waker) = woken_by {
                tracker.woken_by(key, waker);
            }
            tracker.apply(key, &event, &mut table);
        }
        let sleeps = tracker.sleeps(key, 5, 1000);
        let found: Vec<_> =
            sleeps.iter().map(|s| (s.ns(), s.kernel_stack, s.runq_ns, s.waker.map(|w| w.tid))).collect();
        assert_eq!(found, [(20, 4, 2, Some(7)), (300, 5, 20, Some(8))]);
        // Asked for once: the next call does not find this one's sleeps.
        assert_eq!(tracker.sleeps(key, 1000, 2000), []);
    }

    #[test]
    fn migrations_are_the_kernels_count_since_attach_whatever_was_lost() {
        use EventKind::*;
        let moved =
            |count: u64, ts_ns: u64| SchedEvent { nr_migrations: count, ..ev(SwitchOut, 0, ts_ns, 0) };
        // Moved 7 times before attach, then 3 more; one switch-out lost.
        let stats = replay(&[moved(7, 10), ev(SwitchIn, 1, 20, 0), moved(9, 30), moved(10, 50)]);
        assert_eq!(stats.migrations, 3);
        // A thread born since attach: all of its moves.
        let stats = replay(&[ev(WakeupNew, 0, 5, 0), ev(SwitchIn, 0, 6, 0), moved(2, 30)]);
        assert_eq!(stats.migrations, 2);
        // Also when its WakeupNew was dropped: its switch-outs say it is new.
        let new = |count: u64, ts_ns: u64| SchedEvent {
            nr_migrations: count,
            ..ev(SwitchOut, 0, ts_ns, SWITCH_VOLUNTARY | SWITCH_NEW_THREAD)
        };
        let stats = replay(&[ev(SwitchIn, 1, 6, 0), new(1, 30), ev(SwitchIn, 0, 40, 0), new(3, 50)]);
        assert_eq!(stats.migrations, 3);
    }

    #[test]
    fn moves_counted_by_a_dropped_last_switch_out_are_not_missed() {
        use EventKind::*;
        let mut tracker = SchedTracker::default();
        let mut table = Table::default();
        let key = ThreadKey::new(1, 2);
        let out = |count: u64, ts_ns: u64| SchedEvent { nr_migrations: count, ..ev(SwitchOut, 0, ts_ns, 0) };
        for event in [out(7, 10), ev(SwitchIn, 1, 20, 0), out(9, 30)] {
            tracker.apply(key, &event, &mut table);
        }
        // Its later switch-outs were dropped; the kernel kept the count of
        // the last one (12), then an older one's (10) comes too late.
        tracker.migrated(key, 12, &mut table);
        tracker.migrated(key, 10, &mut table);
        assert_eq!(table.sched_mut(key).migrations, 5);
    }

    #[test]
    fn new_threads_wait_from_wakeup_new_and_late_wakeups_are_ignored() {
        use EventKind::*;
        let stats = replay(&[
            ev(WakeupNew, 0, 10, 0),
            ev(SwitchIn, 1, 25, 0),
            ev(Wakeup, 0, 30, 0),
            ev(SwitchOut, 1, 40, SWITCH_VOLUNTARY),
            // Reordered across CPUs: the wakeup's stamp is before the switch.
            ev(Wakeup, 0, 39, 0),
            ev(SwitchIn, 1, 45, 0),
        ]);
        assert_eq!(stats.runq_wait_ns, 15 + 5);
        assert_eq!(stats.blocked_ns, 0);
        assert_eq!(stats.on_cpu_ns, 15);
    }

    #[test]
    fn a_lost_switch_out_ends_at_the_next_switch_in_on_that_cpu() {
        use EventKind::*;
        let mut tracker = SchedTracker::default();
        let mut table = Table::default();
        let (lost, next) = (ThreadKey::new(1, 2), ThreadKey::new(1, 3));
        tracker.apply(lost, &ev(SwitchIn, 0, 100, 0), &mut table);
        // Its SwitchOut at 300 was dropped; another thread runs at 300.
        tracker.apply(next, &ev(SwitchIn, 0, 300, 0), &mut table);
        tracker.charge_until(10_000, &mut table);
        assert_eq!(table.sched_mut(lost).on_cpu_ns, 200);
        assert_eq!(table.sched_mut(next).on_cpu_ns, 9_700);
    }

    #[test]
    fn waits_that_cross_an_interval_end_are_split_at_it() {
        use EventKind::*;
        let mut tracker = SchedTracker::default();
        let key = ThreadKey::new(1, 2);
        let (mut first, mut second, mut third) = (Table::default(), Table::default(), Table::default());
        tracker.apply(key, &ev(SwitchIn, 0, 50, 0), &mut first);
        // Asleep from 100; the interval closes at 500.
        tracker.apply(key, &ev(SwitchOut, 0, 100, SWITCH_VOLUNTARY), &mut first);
        tracker.charge_until(500, &mut first);
        // Woken at 700, running at 800; preempted at 900, the interval
        // closes at 1000, running again at 1300.
        tracker.apply(key, &ev(Wakeup, 1, 700, 0), &mut second);
        tracker.apply(key, &ev(SwitchIn, 0, 800, 0), &mut second);
        tracker.apply(key, &ev(SwitchOut, 0, 900, 0), &mut second);
        tracker.charge_until(1000, &mut second);
        tracker.apply(key, &ev(SwitchIn, 1, 1300, 0), &mut third);
        tracker.charge_until(1400, &mut third);
        let times = |table: &mut Table| {
            let stats = table.sched_mut(key);
            (stats.on_cpu_ns, stats.blocked_ns, stats.runq_wait_ns)
        };
        assert_eq!(times(&mut first), (50, 400, 0));
        assert_eq!(times(&mut second), (100, 200, 200));
        assert_eq!(times(&mut third), (100, 0, 300));
        // Each interval holds no more than its span; the quantiles are of
        // whole waits.
        let runq = &third.sched_mut(key).runq;
        assert_eq!((runq.len(), runq.max()), (1, Some(400)));
        assert_eq!(second.sched_mut(key).runq.max(), Some(100));
    }

    #[test]
    fn a_thread_gone_from_proc_is_charged_by_its_last_switch_if_it_comes() {
        use EventKind::*;
        let gone = crate::aggregate::tests::Listed::default();
        let mut tracker = SchedTracker::default();
        let (mut first, mut second) = (Table::default(), Table::default());
        let (key, lost) = (ThreadKey::new(1, 2), ThreadKey::new(1, 3));
        tracker.apply(key, &ev(SwitchIn, 0, 100, 0), &mut first);
        tracker.apply(lost, &ev(SwitchIn, 1, 100, 0), &mut first);
        // Both have left /proc when the interval closes at 500; one's last
        // switch, at 800, was still on its way.
        tracker.forget_dead(&gone);
        tracker.charge_until(500, &mut first);
        tracker.apply(key, &ev(SwitchOut, 0, 800, SWITCH_EXITED), &mut second);
        assert_eq!((first.sched_mut(key).on_cpu_ns, second.sched_mut(key).on_cpu_ns), (0, 700));
        // The other's never comes: found gone again, it is forgotten.
        tracker.forget_dead(&gone);
        assert!(tracker.state_now(lost).is_none());
    }

    #[test]
    fn a_wait_is_blamed_on_the_runs_of_the_cpu_where_it_ends() {
        use EventKind::*;
        let mut tracker = SchedTracker::default();
        let mut table = Table::default();
        let (waiter, traced) = (ThreadKey::new(1, 2), ThreadKey::new(1, 3));
        let other = |pid: u32, ts_ns: u64| RanEvent {
            kind: Ran as u32,
            cpu: 1,
            pid,
            tid: pid,
            ts_ns,
            comm: *b"rival\0\0\0\0\0\0\0\0\0\0\0",
        };
        // Thread 2 is preempted on CPU 0 at 50, moved unseen to CPU 1 and
        // runs there at 190: its wait is blamed on CPU 1's runs from 50. On
        // CPU 1, untraced thread 7 runs until 100, the idle task to 120,
        // traced thread 3 to 150, the idle task (its switch-out unsent: a
        // traced thread's switch-in ends it) to 190. Thread 2 is preempted
        // at 200 and waits behind untraced thread 9 until 300.
        tracker.apply(waiter, &ev(SwitchIn, 0, 10, 0), &mut table);
        tracker.apply(waiter, &ev(SwitchOut, 0, 50, 0), &mut table);
        tracker.ran(&other(7, 100));
        tracker.ran(&other(0, 120));
        tracker.apply(traced, &ev(SwitchIn, 1, 120, 0), &mut table);
        tracker.apply(traced, &SchedEvent { tid: 3, ..ev(SwitchOut, 1, 150, SWITCH_VOLUNTARY) }, &mut table);
        tracker.apply(waiter, &ev(SwitchIn, 1, 190, 0), &mut table);
        tracker.apply(waiter, &ev(SwitchOut, 1, 200, 0), &mut table);
        tracker.ran(&other(9, 300));
        tracker.apply(waiter, &ev(SwitchIn, 1, 300, 0), &mut table);
        let stats = table.sched_mut(waiter).clone();
        let ns = |holder| stats.runq_blame.get(&holder).map_or(0, |blamed| blamed.ns);
        assert_eq!(ns(Holder::Thread { pid: 7, tid: 7 }), 50);
        assert_eq!(ns(Holder::Idle), 20 + 40);
        assert_eq!(ns(Holder::Thread { pid: 1, tid: 3 }), 30);
        assert_eq!(ns(Holder::Thread { pid: 9, tid: 9 }), 100);
        assert_eq!(stats.runq_blame.values().map(|blamed| blamed.ns).sum::<u64>(), stats.runq_wait_ns);
        assert_eq!(&stats.runq_blame[&Holder::Thread { pid: 9, tid: 9 }].comm[..6], b"rival\0");
    }

    #[test]
    fn running_threads_are_charged_at_interval_ends() {
        use EventKind::*;
        let mut tracker = SchedTracker::default();
        let mut table = Table::default();
        let key = ThreadKey::new(1, 2);
        tracker.apply(key, &ev(SwitchIn, 0, 100, 0), &mut table);
        tracker.charge_until(600, &mut table);
        let mut first = table.sched_mut(key).clone();
        let mut next = Table::default();
        tracker.apply(key, &ev(SwitchOut, 0, 1000, 0), &mut next);
        let second = next.sched_mut(key).clone();
        assert_eq!((first.on_cpu_ns, second.on_cpu_ns), (500, 400));
        first.merge(&second);
        assert_eq!((first.on_cpu_ns, first.involuntary, first.cpus[&0]), (900, 1, 900));
    }
}
