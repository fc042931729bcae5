//! Processes coming and going: a traced process's children are traced, and
//! what the programs keep per process or thread is given back when it exits.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{
    cgroup::inherit,
    shared::{config, is_traced, task_ids, FILTER_PIDS, TRACED},
    syscalls::CALLS_OFF_CPU,
};

/// Non-zero: a process leaves `TRACED` when its task is freed
/// (`sched_process_free`, attached then), after its last thread's final
/// switch; zero: when its last thread exits, which is all that can be done
/// without the `task_struct` offsets (`--no-sched` without following forks)
/// and loses that final switch, which no scheduler program watches then.
#[unsafe(no_mangle)]
static UNTRACE_AT_FREE: u8 = 0;
shared!(global UNTRACE_AT_FREE);

/// A thread that exits while a call of its is parked (killed mid-call)
/// gives the entry back, so that the map holds live threads only.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> u32 {
    let tid_pid = bpf_get_current_pid_tgid();
    let _ = CALLS_OFF_CPU.remove(tid_pid as u32);
    // TP_PROTO(struct task_struct *p, bool group_dead)
    if config(&FILTER_PIDS) != 0 && config(&UNTRACE_AT_FREE) == 0 && ctx.arg::<u64>(1) & 1 != 0 {
        let _ = TRACED.set((tid_pid >> 32) as u32, 0u8, 0);
    }
    0
}
shared!(program sched_process_exit as SCHED_PROCESS_EXIT);

/// A process that is gone leaves `TRACED`, so that a later process given
/// its PID is not traced by mistake. Not at its last thread's exit: that
/// thread's final switch comes after, and must still be seen (else the
/// dead thread would seem to run on). The kernel reaps a group leader last,
/// and frees it an RCU grace period after that: past the final switch of
/// every thread of the process (microseconds after its exit, where a grace
/// period takes milliseconds), and past the release of its PID, but far too
/// soon for the kernel's cyclic PID allocation to give that PID out again
/// on any realistic `pid_max`.
#[raw_tracepoint(tracepoint = "sched_process_free")]
pub fn sched_process_free(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_free(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sched_process_free as SCHED_PROCESS_FREE);

fn try_sched_process_free(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(struct task_struct *p), in RCU callback context.
    let (tid, pid) = task_ids(ctx.arg::<*const u8>(0))?;
    if tid == pid {
        TRACED.set(pid, 0u8, 0).map_err(|_| 0u32)?;
    }
    Ok(0)
}

/// A traced process's new child process is traced from its first
/// instruction (threads are traced anyway: they share the tgid). With
/// `--cgroup`, every new thread of the system starts with its creator's
/// cgroup verdict.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_fork(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sched_process_fork as SCHED_PROCESS_FORK);

fn try_sched_process_fork(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child),
    // as the parent.
    let tid_pid = bpf_get_current_pid_tgid();
    let child = ctx.arg::<*const u8>(1);
    inherit(tid_pid as u32, child)?;
    // Attached for --cgroup alone too, when every process is traced.
    let pid = (tid_pid >> 32) as u32;
    if config(&FILTER_PIDS) == 0 || !is_traced(pid) {
        return Ok(0);
    }
    // A new thread (it fires for those too) keeps its process's mark,
    // `TRACED_GO` included.
    let (_, child_pid) = task_ids(child)?;
    if child_pid != pid {
        TRACED.set(child_pid, 1u8, 0).map_err(|_| 0u32)?;
    }
    Ok(0)
}
