//! The scheduler: which traced thread leaves or gets a CPU, and when it
//! becomes runnable. `sched_switch` also parks the call of a thread that
//! leaves its CPU mid-syscall, whether or not scheduler events are sent.
//! While a traced thread waits in a run queue, the threads that are not
//! traced say when they leave a CPU too (`RanEvent`): who held the CPUs.

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    mem::MaybeUninit,
};

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use probe_common::{
    EventKind, LostCall, RanEvent, SchedEvent, LOST_INVOLUNTARY_SWITCH, LOST_MIGRATIONS, LOST_SWITCH_IN,
    LOST_VOLUNTARY_SWITCH, LOST_WAKEUP, SWITCH_EXITED, SWITCH_NEW_THREAD, SWITCH_VOLUNTARY,
};

use crate::{
    cgroup::{leaving_thread_passes, thread_passes},
    shared::{
        config, cpu, cpu_state, current_ids, current_task, flush_batch, is_traced, now, send, task_field,
        task_ids, write_comm, Refused, FILTER_PIDS,
    },
    slow::{kernel_stack, slow_ns},
    syscalls::{count_lost, keep_lost_max, park_call},
};

/// `TASK_DEAD` in a task's state (include/linux/sched.h): its last switch.
const TASK_DEAD: u32 = 0x80;

/// Non-zero: `sched_switch` and the wakeups send scheduler events; zero:
/// `sched_switch` only parks the calls of threads that leave their CPU.
/// Set by the loader, like the globals in `shared`.
#[unsafe(no_mangle)]
static TRACE_SCHED: u8 = 0;
shared!(global TRACE_SCHED);

/// Byte offset of `se.nr_migrations` in `task_struct` (from BTF).
#[unsafe(no_mangle)]
static TASK_MIGRATIONS_OFFSET: u32 = 0;
/// Byte offset of `start_time` in `task_struct` (from BTF): when the task
/// was created, on the clock of `bpf_ktime_get_ns()`.
#[unsafe(no_mangle)]
static TASK_START_TIME_OFFSET: u32 = 0;
/// `CLOCK_MONOTONIC` just before the programs were loaded: a thread created
/// since then is one the trace has seen from its first move.
#[unsafe(no_mangle)]
static LOADED_NS: u64 = 0;
shared!(global TASK_MIGRATIONS_OFFSET, TASK_START_TIME_OFFSET, LOADED_NS);

/// `WAITING[tid] != 0`: traced thread `tid` is waiting for a CPU (woken or
/// preempted, not yet switched in nor blocked again), with `-p` only. A
/// set, not a count alone: a thread woken twice, or woken while still on
/// its CPU (the kernel's `ttwu_runnable`, whose switch-in never comes), is
/// one waiter, and a thread already waiting when probe attached is none.
/// A byte per tid, as `TRACED`: the verifier inlines an array lookup where
/// a hash map costs a helper call (about 250 ns a wakeup on this VM). No
/// atomics: every event of one task (its wakeup, switches, moves) happens
/// under its run queue's lock, so two never race on its byte. The loader
/// sizes it to `pid_max` with `-p`.
#[map]
static WAITING: Array<u8> = Array::with_max_entries(1, 0);
shared!(map WAITING);

/// How many threads `WAITING` holds: while it is not 0, the threads that
/// are not traced send their switch-outs. One count for all CPUs, not one
/// per CPU: a thread may be moved to another CPU while it waits, and the
/// CPU where its wait ends, whose every run during the wait userspace
/// blames, is not known until then. A per-CPU count would need
/// `sched_migrate_task` too and would still miss the runs on the CPU it
/// moves to from before the move. A switch with no traced waiter anywhere
/// costs one load more.
#[map]
static WAITERS: Array<u64> = Array::with_max_entries(1, 0);

/// With `-p`: traced thread `tid` waits for a CPU from now on (`waiting`),
/// or got one or blocked. A wait's mark comes before its timestamp is
/// taken: a switch on another CPU that read the count just before it went
/// up can only be nanoseconds older than the wait's start (see
/// `aggregate::sched`).
#[inline(always)]
fn mark_waiting(tid: u32, waiting: bool) {
    if config(&FILTER_PIDS) == 0 {
        return;
    }
    if let Some(mark) = WAITING.get_ptr_mut(tid) {
        // SAFETY: the thread's own byte; its events are serialized (above).
        unsafe {
            if (*mark != 0) != waiting {
                *mark = u8::from(waiting);
                add_waiters(if waiting { 1 } else { u64::MAX });
            }
        }
    }
}

#[inline(always)]
fn add_waiters(delta: u64) {
    if let Some(count) = WAITERS.get_ptr_mut(0) {
        // SAFETY: the map's value lives as long as the map; programs on
        // every CPU change it, hence the atomic add (wrapping: -1 is
        // u64::MAX). The intrinsic, because the BPF target offers no
        // `AtomicU64::fetch_add`; its result unused, it is one `lock add`.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, delta) };
    }
}

/// Whether the switch-outs of threads that are not traced are wanted: in
/// whole-system mode (probe's own, the only ones), or while a traced thread
/// waits.
#[inline(always)]
fn others_wanted() -> bool {
    config(&FILTER_PIDS) == 0 || WAITERS.get(0).is_some_and(|&count| count != 0)
}

#[inline(always)]
fn sched_event(
    kind: EventKind,
    tid: u32,
    pid: u32,
    flags: u32,
    kernel_stack: u32,
    ts_ns: u64,
    current: Option<*const u8>,
) -> SchedEvent {
    let mut record = MaybeUninit::<SchedEvent>::uninit();
    let r = record.as_mut_ptr();
    // SAFETY: every field is written before the record is read.
    unsafe {
        (*r).kind = kind as u32;
        (*r).cpu = cpu();
        (*r).pid = pid;
        (*r).tid = tid;
        (*r).flags = flags;
        (*r).kernel_stack = kernel_stack;
        (*r).ts_ns = ts_ns;
        // Only a SwitchOut runs as the thread it is about (`current`, its
        // task).
        (*r).nr_migrations = match current {
            Some(task) => task_field::<u64>(task, config(&TASK_MIGRATIONS_OFFSET)),
            None => 0,
        };
        write_comm(&raw mut (*r).comm, current.is_some());
        record.assume_init()
    }
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> u32 {
    match try_sched_switch(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sched_switch as SCHED_SWITCH);

fn try_sched_switch(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(bool preempt, struct task_struct *prev,
    //          struct task_struct *next, unsigned int prev_state)
    // The tracepoint fires before the switch: prev is still current.
    let state = cpu_state()?;
    // The leaving thread's calls come before its switch-out, and a CPU's
    // records wait no longer than its next switch.
    flush_batch(state, Refused::Count);
    let in_call = park_call(ctx, state);
    if config(&TRACE_SCHED) == 0 {
        return Ok(0);
    }
    // One helper call for the leaving task's fields.
    let task = current_task();
    let (prev_tid, prev_pid) = current_ids(task);
    let now = now();
    let next = task_ids(ctx.arg::<*const u8>(2));
    // pid 0 is the idle task: not a thread anyone traces.
    let next_traced = matches!(next, Ok((tid, pid)) if pid != 0 && is_traced(pid) && thread_passes(tid));
    if prev_pid != 0 && is_traced(prev_pid) && leaving_thread_passes(prev_tid) {
        let preempt = ctx.arg::<u64>(0) & 1 != 0;
        let prev_state = ctx.arg::<u64>(3) as u32;
        // The kernel's own rule for nvcsw: it blocked, not preempted.
        let mut flags = if !preempt && prev_state != 0 { SWITCH_VOLUNTARY } else { 0 };
        if prev_state & TASK_DEAD != 0 {
            flags |= SWITCH_EXITED;
        }
        mark_waiting(prev_tid, flags & SWITCH_VOLUNTARY == 0);
        // Said by every switch-out, not only by the thread's WakeupNew:
        // that record may be dropped, and then its moves before the first
        // switch-out seen would pass for moves made before the trace.
        if task_field::<u64>(task, config(&TASK_START_TIME_OFFSET)) >= config(&LOADED_NS) {
            flags |= SWITCH_NEW_THREAD;
        }
        let lost =
            if flags & SWITCH_VOLUNTARY != 0 { LOST_VOLUNTARY_SWITCH } else { LOST_INVOLUNTARY_SWITCH };
        // With --slow, what a call blocks in: a stack walk per blocking
        // switch, so only when asked.
        let stack =
            if in_call && flags & SWITCH_VOLUNTARY != 0 && slow_ns() != 0 { kernel_stack(ctx) } else { 0 };
        let out = sched_event(EventKind::SwitchOut, prev_tid, prev_pid, flags, stack, now, Some(task));
        if !send(state, &out) {
            count_lost(LostCall { pid: prev_pid, tid: prev_tid, nr: lost, errno: 0 });
            let migrations = LostCall { pid: prev_pid, tid: prev_tid, nr: LOST_MIGRATIONS, errno: 0 };
            keep_lost_max(migrations, out.nr_migrations);
        }
    } else if (prev_pid != 0 || !next_traced) && others_wanted() {
        // Who held the CPU up to now. The idle task's time before a traced
        // thread's switch-in needs no record: the SwitchIn ends it. A
        // dropped one is counted in `LostEvents` only.
        let _ = send(state, &ran_event(prev_pid, prev_tid, now));
    }
    let (tid, pid) = next?;
    if next_traced {
        mark_waiting(tid, false);
        if !send(state, &sched_event(EventKind::SwitchIn, tid, pid, 0, 0, now, None)) {
            count_lost(LostCall { pid, tid, nr: LOST_SWITCH_IN, errno: 0 });
        }
    }
    Ok(0)
}

/// The current task (`tid` of process `pid`), not traced, leaves its CPU
/// at `ts_ns`.
#[inline(always)]
fn ran_event(pid: u32, tid: u32, ts_ns: u64) -> RanEvent {
    let mut record = MaybeUninit::<RanEvent>::uninit();
    let r = record.as_mut_ptr();
    // SAFETY: every field is written before the record is read.
    unsafe {
        (*r).kind = EventKind::Ran as u32;
        (*r).cpu = cpu();
        (*r).pid = pid;
        (*r).tid = tid;
        (*r).ts_ns = ts_ns;
        write_comm(&raw mut (*r).comm, true);
        record.assume_init()
    }
}

#[inline(always)]
fn woken(ctx: &RawTracePointContext, kind: EventKind) -> Result<u32, u32> {
    // TP_PROTO(struct task_struct *p): runs as the waker, not as p.
    let (tid, pid) = task_ids(ctx.arg::<*const u8>(0))?;
    if pid == 0 || !is_traced(pid) || !thread_passes(tid) {
        return Ok(0);
    }
    mark_waiting(tid, true);
    if !send(cpu_state()?, &sched_event(kind, tid, pid, 0, 0, now(), None)) {
        count_lost(LostCall { pid, tid, nr: LOST_WAKEUP, errno: 0 });
    }
    Ok(0)
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> u32 {
    match woken(&ctx, EventKind::Wakeup) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sched_wakeup as SCHED_WAKEUP);

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: RawTracePointContext) -> u32 {
    match woken(&ctx, EventKind::WakeupNew) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sched_wakeup_new as SCHED_WAKEUP_NEW);
