//! The scheduler: which traced thread leaves or gets a CPU, and when it
//! becomes runnable. `sched_switch` also parks the call of a thread that
//! leaves its CPU mid-syscall, whether or not scheduler events are sent.

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext};
use probe_common::{
    EventKind, LostCall, SchedEvent, LOST_INVOLUNTARY_SWITCH, LOST_MIGRATIONS, LOST_SWITCH_IN,
    LOST_VOLUNTARY_SWITCH, LOST_WAKEUP, SWITCH_EXITED, SWITCH_NEW_THREAD, SWITCH_VOLUNTARY,
};

use crate::{
    cgroup::{leaving_thread_passes, thread_passes},
    shared::{config, cpu, cpu_state, current_task_field, is_traced, now, send, task_ids, write_comm},
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

#[inline(always)]
fn sched_event(
    kind: EventKind,
    tid: u32,
    pid: u32,
    flags: u32,
    kernel_stack: u32,
    ts_ns: u64,
    named: bool,
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
        // Only a SwitchOut runs as the thread it is about.
        (*r).nr_migrations =
            if named { current_task_field::<u64>(config(&TASK_MIGRATIONS_OFFSET)) } else { 0 };
        write_comm(&raw mut (*r).comm, named);
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
    let in_call = park_call(ctx, state);
    if config(&TRACE_SCHED) == 0 {
        return Ok(0);
    }
    let prev = bpf_get_current_pid_tgid();
    let now = now();
    let prev_pid = (prev >> 32) as u32;
    // pid 0 is the idle task: not a thread anyone traces.
    if prev_pid != 0 && is_traced(prev_pid) && leaving_thread_passes(prev as u32) {
        let preempt = ctx.arg::<u64>(0) & 1 != 0;
        let prev_state = ctx.arg::<u64>(3) as u32;
        // The kernel's own rule for nvcsw: it blocked, not preempted.
        let mut flags = if !preempt && prev_state != 0 { SWITCH_VOLUNTARY } else { 0 };
        if prev_state & TASK_DEAD != 0 {
            flags |= SWITCH_EXITED;
        }
        // Said by every switch-out, not only by the thread's WakeupNew:
        // that record may be dropped, and then its moves before the first
        // switch-out seen would pass for moves made before the trace.
        if current_task_field::<u64>(config(&TASK_START_TIME_OFFSET)) >= config(&LOADED_NS) {
            flags |= SWITCH_NEW_THREAD;
        }
        let lost =
            if flags & SWITCH_VOLUNTARY != 0 { LOST_VOLUNTARY_SWITCH } else { LOST_INVOLUNTARY_SWITCH };
        // With --slow, what a call blocks in: a stack walk per blocking
        // switch, so only when asked.
        let stack =
            if in_call && flags & SWITCH_VOLUNTARY != 0 && slow_ns() != 0 { kernel_stack(ctx) } else { 0 };
        let out = sched_event(EventKind::SwitchOut, prev as u32, prev_pid, flags, stack, now, true);
        if !send(state, &out) {
            count_lost(LostCall { pid: prev_pid, tid: prev as u32, nr: lost, errno: 0 });
            let migrations = LostCall { pid: prev_pid, tid: prev as u32, nr: LOST_MIGRATIONS, errno: 0 };
            keep_lost_max(migrations, out.nr_migrations);
        }
    }
    let (tid, pid) = task_ids(ctx.arg::<*const u8>(2))?;
    if pid != 0
        && is_traced(pid)
        && thread_passes(tid)
        && !send(state, &sched_event(EventKind::SwitchIn, tid, pid, 0, 0, now, false))
    {
        count_lost(LostCall { pid, tid, nr: LOST_SWITCH_IN, errno: 0 });
    }
    Ok(0)
}

#[inline(always)]
fn woken(ctx: &RawTracePointContext, kind: EventKind) -> Result<u32, u32> {
    // TP_PROTO(struct task_struct *p): runs as the waker, not as p.
    let (tid, pid) = task_ids(ctx.arg::<*const u8>(0))?;
    if pid == 0 || !is_traced(pid) || !thread_passes(tid) {
        return Ok(0);
    }
    if !send(cpu_state()?, &sched_event(kind, tid, pid, 0, 0, now(), false)) {
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
