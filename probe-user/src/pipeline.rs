//! The record pipeline: a record's one way from the ring buffer's bytes to
//! the tables. Each record is decoded once ([`Record::decode`]), given its
//! thread (tid generations), and applied: syscalls and io_uring requests to
//! the interval's table, scheduler events to the state machine, Go runtime
//! events to the goroutines. The event loop feeds it records, the kernel's
//! counts of dropped calls and the time; what exists and what threads are
//! called it asks of a [`World`], so it runs on synthetic record streams
//! without root or a kernel.

use std::mem;

use probe_common::{
    EventKind, InFlight, LostCall, Record, SlowDetail, SyscallEvent, LOST_MIGRATIONS, NO_GOROUTINE,
    SWITCH_EXITED, SYSCALL_NO_RETURN, SYSCALL_UNSEEN_ENTRY,
};
use rustc_hash::FxHashMap;

use crate::{
    aggregate::{
        in_flight::{CallAtAttach, CallInFlight, CallsAtAttach, ThreadState},
        sched::{SchedTracker, Sleep, Waker},
        slowest::SlowCall,
        Generations, Table, ThreadKey, World, MAX_EXITED_THREADS,
    },
    golang::Goroutines,
    slow::{DetailFloors, Explanation, KernelStacks},
};

/// Turns records into an interval's table and the run's total.
#[derive(Debug)]
pub struct Pipeline {
    interval: Table,
    total: Table,
    tracker: SchedTracker,
    generations: Generations,
    goroutines: Option<Goroutines>,
    undecodable: u64,
    /// The calls in progress at attach that have not returned.
    at_attach: CallsAtAttach,
    /// The calls in progress as last noted, for the interval about to close.
    in_flight: FxHashMap<ThreadKey, CallInFlight>,
    /// The previous note's calls: a call's arguments and its thread's name
    /// are read once.
    noted: FxHashMap<ThreadKey, CallInFlight>,
    /// `--slow`: calls that took at least this long are reported one by one.
    slow_ns: Option<u64>,
    /// Such calls since the last [`Pipeline::take_slow_calls`].
    slow_calls: Vec<SlowCallSeen>,
    /// Their details, by (thread, start), until their calls come.
    details: FxHashMap<(u32, u64), Box<SlowDetail>>,
    /// From how long calls send their details.
    floors: DetailFloors,
}

/// A call with its details, as it returned: one of `--slow`'s, or one of
/// the run's slowest of its thread and syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowCallSeen {
    /// One of `--slow`'s, reported on its own; else only explained for
    /// the tables' slowest calls.
    pub report: bool,
    pub key: ThreadKey,
    pub nr: u32,
    /// The thread's name, made visible.
    pub comm: String,
    pub call: SlowCall,
    /// The goroutine that made it, in the followed Go program
    /// (`GOROUTINE_UNREAD` where it could not be read).
    pub goroutine: Option<u64>,
    /// Its registers and user stack at its return; `None` when the kernel
    /// programs were not asked for them or their record was dropped.
    pub detail: Option<Box<SlowDetail>>,
    /// Its longest sleep, with what it slept in and who woke it.
    pub blocked: Option<Sleep>,
    /// The kernel stacks of that sleep and its wakeup, once read.
    pub kernel_stacks: KernelStacks,
    /// What the above say, once the event loop has had them explained.
    pub explanation: Option<Explanation>,
}

/// Details of slow calls waiting for their calls' records: one is sent
/// just before its call, so more than a few are those of dropped calls.
const PENDING_DETAILS: usize = 64;

impl Pipeline {
    /// A pipeline that also follows `goroutines`, for a traced Go program.
    pub fn new(goroutines: Option<Goroutines>) -> Self {
        Self {
            interval: Table::default(),
            total: Table::folding_processes(),
            tracker: SchedTracker::default(),
            generations: Generations::default(),
            goroutines,
            undecodable: 0,
            at_attach: CallsAtAttach::default(),
            in_flight: FxHashMap::default(),
            noted: FxHashMap::default(),
            slow_ns: None,
            slow_calls: Vec::new(),
            details: FxHashMap::default(),
            floors: DetailFloors::new(None, true),
        }
    }

    /// Has the calls that take at least `threshold` (`--slow`) reported one
    /// by one, explained; with `tail`, the run's slowest calls explained
    /// too.
    pub fn explain_calls(&mut self, threshold: Option<std::time::Duration>, tail: bool) {
        self.slow_ns = threshold.map(|threshold| u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX));
        self.floors = DetailFloors::new(self.slow_ns, tail);
    }

    /// Whether any call sends its details.
    pub fn wants_details(&self) -> bool {
        self.slow_ns.is_some() || self.floors.tail()
    }

    /// From how long the calls of each syscall are to send their details
    /// (`(table_index, ns)`), all of them: for the start.
    pub fn details_from(&self) -> Vec<(u32, u64)> {
        self.floors.all()
    }

    /// Keeps the explanation of `call`, back from `--slow`'s thread, with
    /// the slowest calls it is one of, in the interval and the run.
    pub fn explained(&mut self, call: &SlowCallSeen) {
        if let Some(explanation) = &call.explanation {
            let explanation = std::sync::Arc::new(explanation.clone());
            let started_ns = call.call.started_ns;
            self.interval.explain(call.key, call.nr, started_ns, explanation.clone());
            self.total.explain(call.key, call.nr, started_ns, explanation);
        }
    }

    /// Names the wait sites of the interval's syscalls (`--slow`'s kernel
    /// stacks) not named yet.
    pub fn name_wait_sites(&mut self, name: &mut dyn FnMut(u32) -> Option<String>) {
        self.interval.name_wait_sites(name);
    }

    /// The slow calls that returned since the last call, in their order.
    pub fn take_slow_calls(&mut self) -> Vec<SlowCallSeen> {
        mem::take(&mut self.slow_calls)
    }

    /// The trace began at `attached_ns` (the kernel's monotonic clock), with
    /// `calls` in progress (the scan of `/proc` at attach). A thread asleep
    /// in one of them is asleep from the attach on, as far as the scheduler
    /// view goes: it is charged that time, not the time before.
    pub fn attached(&mut self, attached_ns: u64, calls: Vec<CallAtAttach>, world: &dyn World) {
        for call in &calls {
            if world.thread_state(call.pid, call.tid).is_some_and(|state| matches!(state, 'S' | 'D')) {
                self.tracker.asleep_since(ThreadKey::new(call.pid, call.tid), attached_ns);
            }
        }
        self.at_attach = CallsAtAttach::new(attached_ns, calls);
    }

    /// Adds one record, whatever its bytes, and hands it decoded to
    /// `follow`, for the outputs that follow records (none follows a slow
    /// call's detail, which waits here for its call): by reference, as
    /// moving the record out costs every record a copy. A record that is
    /// not a known event of the right size is counted, never trusted.
    ///
    /// Records must come in ring-buffer order, which is the order the
    /// programs reserved them in: for any one thread it is the order things
    /// happened to it (a thread leaves one CPU before another can switch it
    /// in), where timestamps from different CPUs may disagree by more than a
    /// migration takes.
    pub fn ingest(&mut self, bytes: &[u8], follow: impl FnOnce(&Record)) {
        let Some(record) = Record::decode(bytes) else {
            self.undecodable += 1;
            return;
        };
        if let Record::SlowDetail(detail) = record {
            if self.details.len() == PENDING_DETAILS {
                self.details.clear();
            }
            self.details.insert((detail.tid, detail.start_ns), detail);
            return;
        }
        self.apply(&record);
        follow(&record);
    }

    fn apply(&mut self, record: &Record) {
        match record {
            Record::Syscall(event) if event.flags & SYSCALL_UNSEEN_ENTRY != 0 => self.returned_unseen(event),
            Record::Syscall(event) => {
                if let Some(goroutines) = &mut self.goroutines {
                    goroutines.syscall(event);
                }
                let key = self.generations.syscall(event.pid, event.tid);
                if event.flags & SYSCALL_NO_RETURN == 0 {
                    let end = event.start_ns.saturating_add(event.duration_ns);
                    // Counted with the call: one look-up of its thread and
                    // syscall.
                    let split = self.tracker.split(key, event.start_ns, end);
                    self.interval.record(key, event, split);
                    let slow = self.slow_ns.is_some_and(|slow_ns| event.duration_ns >= slow_ns);
                    let detail = match self.details.is_empty() {
                        true => None,
                        false => self.details.remove(&(event.tid, event.start_ns)),
                    };
                    // Under --slow's threshold, a call's details are kept
                    // only if it is one of the run's slowest so far; they
                    // count against the floors' budget.
                    let tail = detail.is_some() && !slow;
                    if tail {
                        self.floors.seen(event.nr);
                    }
                    let exemplar = tail
                        && self.interval.is_slowest(key, event.nr, event.start_ns)
                        && self.total.would_keep(key, event.nr, event.duration_ns);
                    // Only the programs of calls' details send what a
                    // sleep was in (--slow) and who woke it.
                    let sleeps = match self.wants_details() {
                        true => self.tracker.sleeps(key, event.start_ns, end),
                        false => Vec::new(),
                    };
                    if self.slow_ns.is_some() && !sleeps.is_empty() {
                        self.interval.record_wait_sites(key, event.nr, &sleeps);
                    }
                    let blocked =
                        sleeps.iter().filter(|_| slow || exemplar).max_by_key(|sleep| sleep.ns()).copied();
                    if slow || exemplar {
                        self.slow_calls.push(SlowCallSeen {
                            report: slow,
                            key,
                            nr: event.nr,
                            comm: self.known_comm(key).unwrap_or_default(),
                            call: SlowCall {
                                duration_ns: event.duration_ns,
                                started_ns: event.start_ns,
                                ret: event.ret,
                                split,
                            },
                            goroutine: (event.goid != NO_GOROUTINE).then_some(event.goid),
                            detail,
                            blocked,
                            kernel_stacks: KernelStacks::default(),
                            explanation: None,
                        });
                    }
                } else {
                    self.interval.record(key, event, None);
                    self.generations.exited(key);
                }
            }
            Record::Sched(event) => {
                let key = match EventKind::from_u32(event.kind) {
                    Some(EventKind::WakeupNew) => {
                        if let Some(goroutines) = &mut self.goroutines {
                            goroutines.thread_created(event.pid, event.tid);
                        }
                        self.generations.new_thread(event.pid, event.tid)
                    }
                    _ => self.generations.current(event.pid, event.tid),
                };
                self.interval.record_sched(key, &event.comm);
                self.tracker.apply(key, event, &mut self.interval);
                if event.flags & SWITCH_EXITED != 0 {
                    self.interval.mark_exited(key);
                    self.generations.exited(key);
                }
            }
            Record::WokenBy(event) => {
                let key = self.generations.current(event.pid, event.tid);
                self.tracker.woken_by(key, Waker::new(event));
            }
            Record::Ran(event) => self.tracker.ran(event),
            // Kept by `ingest`, without a copy of its 16 KiB.
            Record::SlowDetail(_) => {}
            Record::IoUring(event) => {
                let key = self.generations.current(event.pid, event.tid);
                self.interval.record_io_uring(key, event);
            }
        }
    }

    /// A call returned whose entry was not seen: one in progress at attach.
    /// It counts apart from the timed calls, with how long it took at
    /// least. One that returned before the trace began, or of a thread
    /// that made calls since (refused by seccomp at its entry, say: see
    /// [`CallsAtAttach::returned`]), is not counted.
    fn returned_unseen(&mut self, event: &SyscallEvent) {
        let key = self.generations.syscall(event.pid, event.tid);
        let made_calls = [&self.interval, &self.total].into_iter().any(|table| {
            let calls = table.get(key).map(|thread| thread.syscalls.values());
            calls.into_iter().flatten().any(|stats| stats.count > stats.unfinished_at_attach)
        });
        if let Some(lower_bound_ns) = self.at_attach.returned(event, made_calls) {
            self.interval.record_unfinished(key, event, lower_bound_ns);
        }
    }

    /// Notes the syscalls in progress at `now_ns` (the kernel's monotonic
    /// clock), for the interval about to close: the kernel's (`on_cpu`, in
    /// the per-CPU slots; `parked`, parked when their thread left its CPU,
    /// to which it may have come back since), and those in progress since
    /// before attach. Where each thread is comes from the scheduler's
    /// events, else from `world`, which also gives the arguments of a
    /// blocked thread's call, read once per call.
    pub fn note_in_flight(
        &mut self,
        on_cpu: &[InFlight],
        parked: &[InFlight],
        now_ns: u64,
        world: &dyn World,
    ) {
        // A thread that made calls since the attach is out of the call the
        // scan found (its return's record was lost, or the scan caught a
        // call the kernel saw begin): the interval that closes holds every
        // record since the previous note.
        let (generations, interval) = (&self.generations, &self.interval);
        self.at_attach.retain(|call| {
            let key = generations.current(call.pid, call.tid);
            interval.get(key).is_none_or(|thread| thread.syscalls.is_empty())
        });
        let mut calls = FxHashMap::default();
        let kernel = on_cpu.iter().map(|call| (call, true)).chain(parked.iter().map(|call| (call, false)));
        for (call, running) in kernel {
            let key = self.generations.current(call.pid, call.tid);
            let state = match running {
                true => Some(ThreadState::OnCpu),
                false => self.state_of(key, world),
            };
            // Gone since.
            let Some(state) = state else {
                continue;
            };
            let before = self
                .noted
                .get(&key)
                .filter(|before| (before.started_ns, before.nr) == (call.start_ns, call.nr));
            let args = match before.and_then(|before| before.args) {
                Some(args) => Some(args),
                None if state == ThreadState::OnCpu => None,
                None => world
                    .syscall_args(call.pid, call.tid)
                    .filter(|&(nr, _)| nr == call.nr)
                    .map(|(_, args)| args),
            };
            let comm = match before {
                Some(before) => before.comm.clone(),
                None => self.comm(key, world),
            };
            let started_ns = call.start_ns;
            let age_ns = now_ns.saturating_sub(started_ns);
            calls.insert(
                key,
                CallInFlight { nr: call.nr, args, started_ns, age_ns, state, before_attach: false, comm },
            );
        }
        let mut over = Vec::new();
        for call in self.at_attach.iter() {
            let key = self.generations.current(call.pid, call.tid);
            // The kernel's is the thread's latest call.
            if calls.contains_key(&key) {
                continue;
            }
            // Gone.
            let Some(state) = self.state_of(key, world) else {
                over.push((call.pid, call.tid));
                continue;
            };
            // Blocked in another call: this one returned unseen (its
            // record lost, or not sent: with -e, unwanted).
            if state == ThreadState::Blocked
                && world.syscall_args(call.pid, call.tid).is_some_and(|(nr, _)| nr != call.nr)
            {
                over.push((call.pid, call.tid));
                continue;
            }
            let comm = self.known_comm(key).unwrap_or_else(|| call.comm.clone());
            calls.insert(
                key,
                CallInFlight {
                    nr: call.nr,
                    args: Some(call.args),
                    started_ns: call.started_ns,
                    age_ns: now_ns.saturating_sub(call.started_ns),
                    state,
                    before_attach: true,
                    comm,
                },
            );
        }
        self.at_attach.retain(|call| !over.contains(&(call.pid, call.tid)));
        self.noted.clone_from(&calls);
        self.in_flight = calls;
    }

    /// Where thread `key` is: from its scheduler events, else `/proc`;
    /// `None` once it is gone.
    fn state_of(&self, key: ThreadKey, world: &dyn World) -> Option<ThreadState> {
        match self.tracker.state_now(key) {
            Some(state) => Some(state),
            None => world.thread_state(key.pid(), key.tid()).map(ThreadState::from_letter),
        }
    }

    /// A thread's name as its records gave it.
    fn known_comm(&self, key: ThreadKey) -> Option<String> {
        [&self.interval, &self.total]
            .into_iter()
            .filter_map(|table| table.get(key))
            .map(|thread| &thread.comm)
            .find(|comm| !comm.is_empty())
            .cloned()
    }

    fn comm(&self, key: ThreadKey, world: &dyn World) -> String {
        self.known_comm(key).or_else(|| world.thread_name(key.pid(), key.tid())).unwrap_or_default()
    }

    /// Adds the calls the kernel counted without records (their records
    /// were dropped). Done often, so that the kernel's map of them is
    /// emptied of exited threads quickly.
    pub fn add_lost_calls(&mut self, calls: &[(LostCall, u64)], world: &dyn World) {
        // A thread has several keys (syscalls, errnos): ask about it once.
        let mut dead_threads: FxHashMap<(u32, u32), bool> = FxHashMap::default();
        for &(call, count) in calls {
            // Counted since the last read, so most likely by the thread
            // that has these ids now.
            let key = self.generations.current(call.pid, call.tid);
            if call.nr == LOST_MIGRATIONS {
                self.tracker.migrated(key, count, &mut self.interval);
            }
            self.interval.record_lost(key, &call, count);
            // A dead thread's row can be folded away; its ids are left to
            // the scheduler's and the syscalls' own signs of a new thread.
            let dead = *dead_threads
                .entry((call.pid, call.tid))
                .or_insert_with(|| !world.thread_alive(call.pid, call.tid));
            if dead {
                self.interval.mark_exited(key);
            }
        }
        // Threads that come and go by the thousand would otherwise pile up in
        // the interval's table until its report: fold the dead ones now. Only
        // then: finding the dead asks about every row.
        if self.interval.rows() > MAX_EXITED_THREADS {
            self.interval.retire_dead(world);
        }
    }

    /// Brings the interval up to `now_ns` (the kernel's monotonic clock)
    /// before it closes: every thread is charged its time so far, on the CPU
    /// or off it.
    pub fn settle(&mut self, now_ns: u64, world: &dyn World) {
        self.tracker.forget_dead(world);
        self.tracker.charge_until(now_ns, &mut self.interval);
    }

    /// Closes the current interval: folds it into the run's total and
    /// returns it, its unnamed threads named.
    pub fn close_interval(&mut self, world: &dyn World) -> Table {
        let mut interval = mem::take(&mut self.interval);
        // Only the run's slowest calls are explained: an interval's slowest
        // that were not among them have no details, and need no reason.
        if self.floors.tail() {
            self.total.details_from = Some(self.floors.clone());
        }
        interval.set_in_flight(mem::take(&mut self.in_flight));
        interval.name_unnamed(world);
        self.total.merge(&interval, world);
        self.total.retire_dead(world);
        self.read_go_schedulers(world);
        interval
    }

    /// Reads the schedulers of the traced Go processes, when due.
    pub fn read_go_schedulers(&mut self, world: &dyn World) {
        if let Some(goroutines) = &mut self.goroutines {
            goroutines.refresh(world);
        }
    }

    /// Raises the floors of the syscalls whose details came faster than
    /// the budget over the `seconds` since the last call; returns the
    /// entries that changed, for the kernel's array.
    pub fn raise_detail_floors(&mut self, seconds: f64) -> Vec<(u32, u64)> {
        self.floors.raise(seconds)
    }

    /// The run so far, up to the last closed interval.
    pub fn total(&self) -> &Table {
        &self.total
    }

    /// The goroutines of a traced Go program.
    pub fn goroutines(&self) -> Option<&Goroutines> {
        self.goroutines.as_ref()
    }

    /// Records that could not be decoded (a bug: please report it).
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::{sched::Split, tests::Listed, ThreadKey},
        report::{Kind, Report, Span},
    };
    use probe_common::{IoUringEvent, SchedEvent, SyscallEvent, COMM_LEN, SWITCH_VOLUNTARY};
    use proptest::prelude::*;

    fn bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: the bytes of a padding-free `#[repr(C)]` record.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn name(text: &str) -> [u8; COMM_LEN] {
        let mut comm = [0; COMM_LEN];
        comm[..text.len()].copy_from_slice(text.as_bytes());
        comm
    }

    fn syscall_record(tid: u32, nr: u32, flags: u32, start_ns: u64, duration_ns: u64) -> Vec<u8> {
        let comm = if flags & SYSCALL_NO_RETURN != 0 { name("worker") } else { [0; COMM_LEN] };
        let (kind, cpu, pid, ret) = (EventKind::Syscall as u32, 0, 1, 0);
        bytes(&SyscallEvent {
            kind,
            cpu,
            pid,
            tid,
            nr,
            flags,
            ret,
            start_ns,
            duration_ns,
            comm,
            goid: probe_common::NO_GOROUTINE,
            go_start_pc: 0,
        })
    }

    fn syscall(tid: u32, nr: u32, start_ns: u64, duration_ns: u64) -> Vec<u8> {
        syscall_record(tid, nr, 0, start_ns, duration_ns)
    }

    fn exit(tid: u32, ts_ns: u64) -> Vec<u8> {
        syscall_record(tid, 60, SYSCALL_NO_RETURN, ts_ns, 0)
    }

    fn sched(kind: EventKind, tid: u32, cpu: u32, flags: u32, ts_ns: u64) -> Vec<u8> {
        let comm = if kind == EventKind::SwitchOut { name("worker") } else { [0; COMM_LEN] };
        let nr_migrations = 0;
        bytes(&SchedEvent {
            kind: kind as u32,
            cpu,
            pid: 1,
            tid,
            flags,
            kernel_stack: 0,
            ts_ns,
            nr_migrations,
            comm,
        })
    }

    fn feed(pipeline: &mut Pipeline, records: &[Vec<u8>]) {
        for record in records {
            pipeline.ingest(record, |_| {});
        }
    }

    const NOBODY: Listed = Listed(Vec::new());

    /// Thread 2 runs, blocks in read (nr 0) at 100, is woken at 150 and
    /// runs at 170; the read returns at 180.
    fn blocked_read() -> [Vec<u8>; 5] {
        use EventKind::*;
        [
            sched(SwitchIn, 2, 0, 0, 10),
            sched(SwitchOut, 2, 0, SWITCH_VOLUNTARY, 100),
            sched(Wakeup, 2, 1, 0, 150),
            sched(SwitchIn, 2, 1, 0, 170),
            syscall(2, 0, 90, 90),
        ]
    }

    #[test]
    fn slow_calls_come_out_one_by_one_with_their_split_and_name() {
        let mut pipeline = Pipeline::new(None);
        pipeline.explain_calls(Some(std::time::Duration::from_nanos(80)), false);
        // A fast getppid (39) before the read, a just-too-fast one after.
        feed(&mut pipeline, &[syscall(2, 39, 20, 5)]);
        feed(&mut pipeline, &blocked_read());
        feed(&mut pipeline, &[syscall(2, 39, 185, 79)]);
        let slow = pipeline.take_slow_calls();
        assert_eq!(slow.len(), 1, "{slow:?}");
        assert_eq!((slow[0].key, slow[0].nr, slow[0].comm.as_str()), (ThreadKey::new(1, 2), 0, "worker"));
        let call = slow[0].call;
        assert_eq!((call.duration_ns, call.started_ns), (90, 90));
        assert_eq!(call.split, Some(Split { blocked_ns: 50, runq_ns: 20 }));
        assert!(pipeline.take_slow_calls().is_empty());
    }

    fn detail(tid: u32, start_ns: u64) -> Vec<u8> {
        // SAFETY: all of a `SlowDetail`'s fields are integers, for which
        // zero is a value.
        let mut detail: Box<SlowDetail> = unsafe { Box::new_zeroed().assume_init() };
        (detail.kind, detail.pid, detail.tid, detail.start_ns) =
            (EventKind::SlowDetail as u32, 1, tid, start_ns);
        bytes(&*detail)
    }

    #[test]
    fn without_slow_a_calls_details_are_kept_while_it_is_among_the_runs_slowest() {
        let mut pipeline = Pipeline::new(None);
        let world = Listed(vec![(1, 2)]);
        // Three reads with their details: each is among the slowest so far.
        for (start, duration) in [(0, 50), (100, 40), (200, 30)] {
            feed(&mut pipeline, &[detail(2, start), syscall(2, 0, start, duration)]);
        }
        let kept = pipeline.take_slow_calls();
        assert_eq!(kept.iter().map(|call| call.call.started_ns).collect::<Vec<_>>(), [0, 100, 200]);
        assert!(kept.iter().all(|call| !call.report && call.detail.is_some()), "{kept:?}");
        pipeline.close_interval(&world);
        // In the next interval, one slower than the run's third and one not:
        // the interval would keep both, the run only the first.
        feed(&mut pipeline, &[detail(2, 300), syscall(2, 0, 300, 35)]);
        feed(&mut pipeline, &[detail(2, 400), syscall(2, 0, 400, 20)]);
        let kept = pipeline.take_slow_calls();
        assert_eq!(kept.iter().map(|call| call.call.started_ns).collect::<Vec<_>>(), [300]);
    }

    #[test]
    fn a_blocking_call_is_split_by_the_scheduler_events_inside_it() {
        let mut pipeline = Pipeline::new(None);
        feed(&mut pipeline, &blocked_read());
        let interval = pipeline.close_interval(&Listed(vec![(1, 2)]));
        let thread = interval.get(ThreadKey::new(1, 2)).unwrap();
        let read = &thread.syscalls[&0];
        assert_eq!((read.count, read.split_ns, read.blocked_ns, read.runq_ns), (1, 90, 50, 20));
        let sched = thread.sched.as_ref().unwrap();
        assert_eq!((sched.voluntary, sched.pairs.len(), sched.blocked_ns), (1, 1, 50));
        assert_eq!(thread.comm, "worker");
    }

    #[test]
    fn a_call_after_calls_without_time_off_the_cpu_is_split_by_its_own() {
        use EventKind::*;
        let mut pipeline = Pipeline::new(None);
        // Two getppids (110) on the CPU, then the read that blocks.
        let [switch_in, rest @ ..] = blocked_read();
        feed(&mut pipeline, &[switch_in, syscall(2, 110, 20, 5), syscall(2, 110, 40, 5)]);
        feed(&mut pipeline, &rest);
        // And one more on the CPU after it.
        feed(&mut pipeline, &[syscall(2, 110, 190, 5), sched(SwitchOut, 2, 1, 0, 200)]);
        let interval = pipeline.close_interval(&Listed(vec![(1, 2)]));
        let thread = interval.get(ThreadKey::new(1, 2)).unwrap();
        let (getppid, read) = (&thread.syscalls[&110], &thread.syscalls[&0]);
        assert_eq!((getppid.count, getppid.split_ns, getppid.blocked_ns, getppid.runq_ns), (3, 15, 0, 0));
        assert_eq!((read.count, read.split_ns, read.blocked_ns, read.runq_ns), (1, 90, 50, 20));
    }

    #[test]
    fn a_reused_tid_after_exit_is_a_new_thread() {
        use EventKind::*;
        let mut pipeline = Pipeline::new(None);
        feed(
            &mut pipeline,
            &[
                syscall(5, 39, 1, 10),
                exit(5, 20),
                // Its last switch, after the exit call: still the first thread's.
                sched(SwitchOut, 5, 0, SWITCH_EXITED, 30),
                // The kernel gives tid 5 to a new thread.
                sched(WakeupNew, 5, 0, 0, 40),
                sched(SwitchIn, 5, 0, 0, 45),
                syscall(5, 39, 50, 10),
                syscall(5, 39, 70, 10),
            ],
        );
        let interval = pipeline.close_interval(&NOBODY);
        let first = interval.get(ThreadKey::nth(1, 5, 0)).unwrap();
        let second = interval.get(ThreadKey::nth(1, 5, 1)).unwrap();
        assert!(first.exited && !second.exited);
        assert_eq!((first.syscalls[&39].count, second.syscalls[&39].count), (1, 2));
        assert_eq!(first.sched.as_ref().unwrap().voluntary, 0);
        assert_eq!(second.sched.as_ref().unwrap().runq_wait_ns, 5);
        // Without the scheduler view, a syscall after the exit call is the
        // sign of a new thread.
        let mut pipeline = Pipeline::new(None);
        feed(&mut pipeline, &[syscall(7, 39, 1, 1), exit(7, 2), syscall(7, 39, 3, 1)]);
        let interval = pipeline.close_interval(&NOBODY);
        assert_eq!(interval.rows(), 2);
    }

    #[test]
    fn intervals_add_up_to_the_total() {
        let mut pipeline = Pipeline::new(None);
        let world = Listed(vec![(1, 2), (1, 3)]);
        let mut intervals = Vec::new();
        for round in 0..5u64 {
            for call in 0..(round + 1) * 10 {
                pipeline.ingest(&syscall(2 + (call % 2) as u32, 39, round * 1000 + call, 7), |_| {});
            }
            intervals.push(pipeline.close_interval(&world));
        }
        let summed: u64 = intervals.iter().map(Table::events).sum();
        assert_eq!(summed, pipeline.total().events());
        assert_eq!(pipeline.total().events(), 150);
        let calls: u64 = pipeline.total().iter().map(|(_, thread)| thread.syscalls[&39].count).sum();
        assert_eq!(calls, 150);
    }

    #[test]
    fn lost_calls_count_for_the_thread_and_fold_the_dead() {
        let mut pipeline = Pipeline::new(None);
        pipeline.ingest(&syscall(2, 257, 1, 5), |_| {});
        let lost = LostCall { pid: 1, tid: 2, nr: 257, errno: 2 };
        let gone = LostCall { pid: 1, tid: 9, nr: 0, errno: 0 };
        pipeline.add_lost_calls(
            &[(lost, 10), (LostCall { errno: 0, ..lost }, 5), (gone, 3)],
            &Listed(vec![(1, 2)]),
        );
        let interval = pipeline.close_interval(&Listed(vec![(1, 2)]));
        let thread = interval.get(ThreadKey::new(1, 2)).unwrap();
        let openat = &thread.syscalls[&257];
        assert_eq!((openat.count, openat.errors, openat.lost, openat.latency.len()), (16, 10, 15, 1));
        assert!(!thread.exited);
        assert!(interval.get(ThreadKey::new(1, 9)).unwrap().exited);
        // Lost calls are not records received.
        assert_eq!(interval.events(), 1);
    }

    #[test]
    fn a_thread_asleep_at_attach_is_charged_its_sleep_from_the_attach() {
        use EventKind::*;
        let mut pipeline = Pipeline::new(None);
        let world = Listed(vec![(1, 2)]);
        let read = CallAtAttach { pid: 1, tid: 2, nr: 0, args: [0; 6], started_ns: 10, comm: String::new() };
        pipeline.attached(1000, vec![read], &world);
        pipeline.settle(3000, &world);
        let first = pipeline.close_interval(&world);
        assert_eq!(first.get(ThreadKey::new(1, 2)).unwrap().sched.as_ref().unwrap().blocked_ns, 2000);
        // Woken at 3500, running at 3600.
        feed(&mut pipeline, &[sched(Wakeup, 2, 0, 0, 3500), sched(SwitchIn, 2, 0, 0, 3600)]);
        pipeline.settle(4000, &world);
        let second = pipeline.close_interval(&world);
        let sched = second.get(ThreadKey::new(1, 2)).unwrap().sched.clone().unwrap();
        assert_eq!((sched.blocked_ns, sched.runq_wait_ns, sched.on_cpu_ns), (500, 100, 400));
    }

    #[test]
    fn threads_no_record_named_are_named_by_the_world() {
        use EventKind::*;
        let mut pipeline = Pipeline::new(None);
        pipeline.ingest(&sched(SwitchIn, 4, 0, 0, 10), |_| {});
        let interval = pipeline.close_interval(&Listed(vec![(1, 4)]));
        assert_eq!(interval.get(ThreadKey::new(1, 4)).unwrap().comm, "live");
    }

    #[test]
    fn io_uring_records_reach_their_tables() {
        let mut pipeline = Pipeline::new(None);
        let mut op_name = [0; probe_common::OP_NAME_LEN];
        op_name[..3].copy_from_slice(b"NOP");
        let io = IoUringEvent {
            kind: EventKind::IoUring as u32,
            cpu: 0,
            pid: 1,
            tid: 2,
            opcode: 0,
            flags: 0,
            res: 0,
            _pad: 0,
            start_ns: 1,
            duration_ns: 2,
            op_name,
        };
        let mut followed = None;
        pipeline.ingest(&bytes(&io), |record| followed = Some(record.clone()));
        assert_eq!(followed, Some(Record::IoUring(io)));
        let interval = pipeline.close_interval(&NOBODY);
        let thread = interval.get(ThreadKey::new(1, 2)).unwrap();
        assert_eq!((thread.io_uring[&0].count, thread.io_uring[&0].name.as_str()), (1, "NOP"));
        assert_eq!(pipeline.undecodable(), 0);
    }

    #[test]
    fn calls_in_progress_are_shown_and_those_from_before_attach_count_apart_when_they_return() {
        use EventKind::*;
        let mut pipeline = Pipeline::new(None);
        // The scan at attach (1000): thread 2 in a read since 400 at the
        // latest.
        let read = CallAtAttach {
            pid: 1,
            tid: 2,
            nr: 0,
            args: [3, 64, 1, 0, 0, 0],
            started_ns: 400,
            comm: "r".into(),
        };
        pipeline.attached(1000, vec![read], &NOBODY);
        let world = Listed(vec![(1, 1), (1, 2), (1, 3), (1, 4)]);
        // The kernel's: thread 3 on a CPU in getppid since 1500, thread 4
        // in a futex since 1200, asleep by its scheduler events.
        let on_cpu = [InFlight { start_ns: 1500, nr: 110, tid: 3, pid: 1, ..Default::default() }];
        let parked = [InFlight { start_ns: 1200, nr: 202, tid: 4, pid: 1, ..Default::default() }];
        feed(
            &mut pipeline,
            &[sched(SwitchIn, 4, 0, 0, 1100), sched(SwitchOut, 4, 0, SWITCH_VOLUNTARY, 1250)],
        );
        pipeline.note_in_flight(&on_cpu, &parked, 2000, &world);
        let interval = pipeline.close_interval(&world);
        let span = Span { elapsed_ns: 1, span_ns: 1, lost: Default::default(), health: Default::default() };
        // No thread made a call: all three still show, the oldest call first,
        // up to N after the N busiest.
        let report = Report::new(Kind::Interval, &interval, span, Some(1));
        let tids: Vec<u32> = report.threads.iter().map(|thread| thread.tid).collect();
        assert_eq!(tids, [4, 2], "{report:?}");
        let all = Report::new(Kind::Interval, &interval, span, None);
        let calls: Vec<_> =
            all.threads.iter().map(|thread| (thread.tid, thread.in_flight.as_ref().unwrap())).collect();
        let (_, reading) = calls.iter().find(|(tid, _)| *tid == 2).unwrap();
        assert_eq!(
            (reading.name.as_str(), reading.age_ns, reading.started_before_attach),
            ("read", 1600, true)
        );
        assert_eq!(
            (reading.state, reading.args.as_ref().unwrap()[1].as_str()),
            (ThreadState::Blocked, "0x40")
        );
        let (_, running) = calls.iter().find(|(tid, _)| *tid == 3).unwrap();
        assert_eq!(
            (running.state, running.age_ns, running.started_before_attach),
            (ThreadState::OnCpu, 500, false)
        );
        let (_, waiting) = calls.iter().find(|(tid, _)| *tid == 4).unwrap();
        assert_eq!((waiting.name.as_str(), waiting.state), ("futex", ThreadState::Blocked));

        // The read returns at 5000: counted, at least 4600, out of the
        // latencies. Thread 3's getppid returns, and then a call of its
        // returns without an entry (refused by seccomp): not one from
        // before the attach.
        let unseen = |tid, nr, at| syscall_record(tid, nr, SYSCALL_UNSEEN_ENTRY, at, 0);
        feed(&mut pipeline, &[unseen(2, 0, 5000), syscall(3, 110, 1500, 3600), unseen(3, 39, 5200)]);
        pipeline.note_in_flight(&[], &parked, 6000, &world);
        let interval = pipeline.close_interval(&world);
        let read = &interval.get(ThreadKey::new(1, 2)).unwrap().syscalls[&0];
        assert_eq!((read.count, read.unfinished_at_attach, read.unfinished_at_attach_ns), (1, 1, 4600));
        assert_eq!((read.latency.len(), read.total_ns), (0, 0));
        assert!(!interval.get(ThreadKey::new(1, 3)).unwrap().syscalls.contains_key(&39));
        // Only the futex is still in progress.
        let keys: Vec<ThreadKey> = interval.in_flight().keys().copied().collect();
        assert_eq!(keys, [ThreadKey::new(1, 4)]);
        assert_eq!(pipeline.total().in_flight().len(), 1);
    }

    #[test]
    fn a_call_from_before_attach_is_over_when_its_thread_is_gone_or_in_another() {
        /// Threads 2 and 3 live, blocked in syscall 7.
        struct InPoll;
        impl World for InPoll {
            fn thread_alive(&self, _pid: u32, tid: u32) -> bool {
                tid == 2 || tid == 3
            }
            fn process_alive(&self, _pid: u32) -> bool {
                true
            }
            fn thread_name(&self, _pid: u32, _tid: u32) -> Option<String> {
                None
            }
            fn thread_state(&self, pid: u32, tid: u32) -> Option<char> {
                self.thread_alive(pid, tid).then_some('S')
            }
            fn syscall_args(&self, pid: u32, tid: u32) -> Option<(u32, [u64; 6])> {
                self.thread_alive(pid, tid).then_some((7, [0; 6]))
            }
        }
        let mut pipeline = Pipeline::new(None);
        let call =
            |tid, nr| CallAtAttach { pid: 1, tid, nr, args: [0; 6], started_ns: 10, comm: String::new() };
        // 2 is still in its poll; 3 left its read (its return not seen:
        // with -e, say); 4 is gone.
        pipeline.attached(100, vec![call(2, 7), call(3, 0), call(4, 7)], &NOBODY);
        pipeline.note_in_flight(&[], &[], 1000, &InPoll);
        let interval = pipeline.close_interval(&InPoll);
        let keys: Vec<ThreadKey> = interval.in_flight().keys().copied().collect();
        assert_eq!(keys, [ThreadKey::new(1, 2)]);
        assert_eq!(pipeline.at_attach.iter().count(), 1);
    }

    fn tagged(kind: EventKind, len: usize, body: &[u8]) -> Vec<u8> {
        let mut record = (kind as u32).to_ne_bytes().to_vec();
        record.extend(body.iter().copied().cycle().take(len.saturating_sub(4)));
        record.resize(len, 0);
        record
    }

    /// Whatever the ring buffer holds, the pipeline and the reports built
    /// from it neither panic nor lose count of what they refused.
    fn ingest_and_report(records: &[Vec<u8>]) -> Pipeline {
        let mut pipeline = Pipeline::new(None);
        feed(&mut pipeline, records);
        let span = Span { elapsed_ns: 1, span_ns: 1, lost: Default::default(), health: Default::default() };
        let interval = pipeline.close_interval(&NOBODY);
        serde_json::to_string(&Report::new(Kind::Interval, &interval, span, Some(3))).unwrap();
        let report = Report::new(Kind::Summary, pipeline.total(), span, None);
        crate::output::render_text(&report).unwrap();
        pipeline
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..64)) {
            let pipeline = ingest_and_report(&records);
            let valid = records.iter().filter(|record| Record::decode(record).is_some()).count();
            prop_assert_eq!(pipeline.undecodable() as usize, records.len() - valid);
        }

        #[test]
        fn well_tagged_records_with_random_fields_never_panic(
            bodies in prop::collection::vec((1u32..=10, prop::sample::select(vec![0usize, 4, 40, 47, 48, 56, 64, 65]), prop::collection::vec(any::<u8>(), 1..64)), 0..64),
        ) {
            let records: Vec<_> = bodies
                .iter()
                .map(|(kind, len, body)| tagged(EventKind::from_u32(*kind).unwrap_or(EventKind::Syscall), *len, body))
                .collect();
            ingest_and_report(&records);
        }

        #[test]
        fn scheduler_events_in_any_order_never_panic(
            events in prop::collection::vec((2u32..=5, 0u32..4, 0u32..2, 0u32..4, any::<u64>()), 0..200),
        ) {
            let records: Vec<_> = events
                .iter()
                .map(|&(kind, tid, cpu, flags, ts)| {
                    let kind = EventKind::from_u32(kind).unwrap();
                    sched(kind, tid, cpu, flags & (SWITCH_VOLUNTARY | SWITCH_EXITED), ts)
                })
                .collect();
            let pipeline = ingest_and_report(&records);
            prop_assert_eq!(pipeline.undecodable(), 0);
        }
    }
}
