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

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use probe_common::{EventKind, SchedEvent, SWITCH_EXITED, SWITCH_VOLUNTARY};

use super::{latency::Latencies, Table, ThreadKey, World};

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
    /// SwitchIns on another CPU than the one it last ran on.
    pub migrations: u64,
    /// CPU of the latest SwitchIn or SwitchOut.
    pub last_cpu: Option<u32>,
    /// on-CPU time per CPU.
    pub cpus: BTreeMap<u32, u64>,
    /// Migrations per (from, to) CPU pair.
    pub pairs: BTreeMap<(u32, u32), u64>,
    /// Run-queue waits, ready to running.
    pub runq: Latencies,
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
    }
}

/// Off-CPU spans a thread's next syscall records are split against.
const KEPT_SPANS: usize = 16;

/// A span a thread spent off the CPU: `(from, to, blocked)`; not blocked is
/// waiting in a run queue.
type OffSpan = (u64, u64, bool);

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
    /// Its latest off-CPU spans, oldest first.
    off_spans: Vec<OffSpan>,
}

impl RunState {
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

/// The state of every thread seen, across intervals: spans that cross an
/// interval's end are charged to the interval each part falls in.
#[derive(Debug, Default)]
pub struct SchedTracker {
    threads: FxHashMap<ThreadKey, RunState>,
    /// The traced thread each CPU last switched to, to repair a lost
    /// SwitchOut: the next SwitchIn on that CPU ends the run.
    on_cpu: FxHashMap<u32, ThreadKey>,
}

impl SchedTracker {
    /// Moves thread `key` to its new state after `event`, charging what it
    /// did since its previous event to its statistics in `table`.
    pub fn apply(&mut self, key: ThreadKey, event: &SchedEvent, table: &mut Table) {
        let ts = event.ts_ns;
        if EventKind::from_u32(event.kind) == Some(EventKind::SwitchIn) {
            self.end_lost_run(key, event.cpu, ts, table);
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
                // A run that began before probe attached has no known start.
                if let Some((since, cpu)) = state.running.take() {
                    stats.run(cpu, ts.saturating_sub(since));
                }
                state.off = Some((ts, voluntary));
                state.ready = (!voluntary).then_some(ts);
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
            // Wakeups of a running or already runnable thread change nothing.
            Some(EventKind::Wakeup | EventKind::WakeupNew)
                if state.running.is_none() && state.ready.is_none() =>
            {
                let since = state.off.map_or(ts, |(off, _)| off);
                state.ready = Some(ts.max(since));
            }
            Some(EventKind::SwitchIn) => {
                match (state.off.take(), state.ready) {
                    (Some((off, voluntary)), Some(ready)) => {
                        if voluntary {
                            add(&mut stats.blocked_ns, ready.saturating_sub(off));
                            state.off_cpu(off, ready, true);
                        }
                        wait(stats, ts.saturating_sub(ready));
                        state.off_cpu(ready, ts, false);
                    }
                    // The wakeup was not seen: all of it counts as blocked.
                    (Some((off, _)), None) => {
                        add(&mut stats.blocked_ns, ts.saturating_sub(off));
                        state.off_cpu(off, ts, true);
                    }
                    // A new thread's first run.
                    (None, Some(ready)) => wait(stats, ts.saturating_sub(ready)),
                    (None, None) => {}
                }
                state.ready = None;
                if let Some(last) = state.last_cpu.filter(|&last| last != event.cpu) {
                    stats.migrations += 1;
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

    /// How much of a syscall of thread `key` from `start` to `end` it spent
    /// blocked and in a run queue, from the spans the scheduler events
    /// showed; `None` for a thread without scheduler events. The syscall
    /// record comes at the syscall's exit, after every span inside it.
    pub fn split(&mut self, key: ThreadKey, start: u64, end: u64) -> Option<Split> {
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

    /// Drops the state of threads that are gone although their last switch
    /// was never seen (lost to a full ring buffer), so that they are not
    /// charged as running forever and the tracker does not grow.
    pub fn forget_dead(&mut self, world: &dyn World) {
        self.threads.retain(|key, _| world.thread_alive(key.pid, key.tid));
        let threads = &self.threads;
        self.on_cpu.retain(|_, key| threads.contains_key(key));
    }

    /// Charges the running threads' time up to `now` to `table`, so that a
    /// thread that never leaves its CPU still shows its time every interval.
    pub fn charge_running(&mut self, now: u64, table: &mut Table) {
        for (key, state) in &mut self.threads {
            if let Some((since, cpu)) = state.running.filter(|&(since, _)| since < now) {
                table.sched_mut(*key).run(cpu, now - since);
                state.running = Some((now, cpu));
            }
        }
    }
}

/// Adds nanoseconds, saturating: timestamps come from the kernel, and a
/// garbled one must not wrap a total around.
fn add(total: &mut u64, ns: u64) {
    *total = total.saturating_add(ns);
}

fn wait(stats: &mut SchedStats, ns: u64) {
    add(&mut stats.runq_wait_ns, ns);
    stats.runq.record(ns);
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::COMM_LEN;

    fn ev(kind: EventKind, cpu: u32, ts_ns: u64, flags: u32) -> SchedEvent {
        SchedEvent { kind: kind as u32, cpu, pid: 1, tid: 2, flags, _pad: 0, ts_ns, comm: [0; COMM_LEN] }
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
        assert_eq!(stats.migrations, 1);
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
        assert_eq!((stats.on_cpu_ns, stats.runq_wait_ns, stats.migrations), (0, 30, 1));
        let stats = replay(&[ev(SwitchIn, 1, 80, 0)]);
        assert_eq!((stats.on_cpu_ns, stats.runq_wait_ns, stats.migrations, stats.runq.len()), (0, 0, 0, 0));
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
        tracker.charge_running(10_000, &mut table);
        assert_eq!(table.sched_mut(lost).on_cpu_ns, 200);
        assert_eq!(table.sched_mut(next).on_cpu_ns, 9_700);
    }

    #[test]
    fn running_threads_are_charged_at_interval_ends() {
        use EventKind::*;
        let mut tracker = SchedTracker::default();
        let mut table = Table::default();
        let key = ThreadKey::new(1, 2);
        tracker.apply(key, &ev(SwitchIn, 0, 100, 0), &mut table);
        tracker.charge_running(600, &mut table);
        let mut first = table.sched_mut(key).clone();
        let mut next = Table::default();
        tracker.apply(key, &ev(SwitchOut, 0, 1000, 0), &mut next);
        let second = next.sched_mut(key).clone();
        assert_eq!((first.on_cpu_ns, second.on_cpu_ns), (500, 400));
        first.merge(&second);
        assert_eq!((first.on_cpu_ns, first.involuntary, first.cpus[&0]), (900, 1, 900));
    }
}
