//! What a slow call's report needs beyond its times. At the return of a
//! call as slow as `DETAIL_NS` asks (`--slow`'s, and the run's tail): its
//! registers and the top of its user stack (a `SlowDetail`, unwound and
//! symbolized in userspace); any other call pays one array lookup and one
//! comparison. Only with `--slow` (`SLOW_NS` non-zero), at each blocking
//! switch-out in a syscall: the kernel stack the thread blocked in. At each
//! wakeup of a thread in a traced call: who woke it (a `WakeEvent`, from
//! `sched_waking`, attached with `--slow` or tail details), and with
//! `--slow`, for a call that has already run the threshold, from where (the
//! wakeup's kernel stack).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf, bpf_probe_read_user_buf},
    macros::{map, raw_tracepoint},
    maps::{Array, StackTrace},
    programs::{tracing::StackIdContext, RawTracePointContext},
};
use probe_common::{
    table_index, CpuState, EventKind, InFlight, SlowDetail, WakeEvent, KERNEL_STACK_NOT_TAKEN,
    MAX_KERNEL_STACKS, MAX_SYSCALL_NR, NO_SYSCALL, REGS_WORDS, STACK_BYTES, WAKER_INTERRUPT, WAKER_TASK,
};

use crate::{
    cgroup::thread_passes,
    shared::{
        config, cpu, cpu_state, current_task_field, is_traced, now, reserve, send, task_ids, write_comm,
    },
    syscalls::CALLS_OFF_CPU,
};

/// `--slow`'s threshold in ns; 0: no details are taken. Set by the loader,
/// like the globals in `shared`.
#[unsafe(no_mangle)]
static SLOW_NS: u64 = 0;
/// Byte offset of `sp` in `pt_regs` (from BTF).
#[unsafe(no_mangle)]
static PT_REGS_SP_OFFSET: u32 = 0;
/// Byte offset of `stack` in `task_struct` (from BTF): the task's kernel
/// stack, which tells a wakeup in a task's context from one in an
/// interrupt's; 0: not told.
#[unsafe(no_mangle)]
static TASK_STACK_OFFSET: u32 = 0;
shared!(global SLOW_NS, PT_REGS_SP_OFFSET, TASK_STACK_OFFSET);

/// x86-64's `THREAD_SIZE` (a macro, so not in BTF) without KASAN, which
/// doubles it; the start-up check proves it on probe's own task.
const THREAD_SIZE: u64 = 16_384;

/// Kernel stacks by id. Without `BPF_F_REUSE_STACKID`, a stack whose hash
/// bucket is taken by another is not kept (its id is then 0 in the record)
/// rather than overwriting one a record already names.
#[map]
static KERNEL_STACKS: StackTrace = StackTrace::with_max_entries(MAX_KERNEL_STACKS, 0);
shared!(map KERNEL_STACKS);

/// Per syscall (indexed by `table_index`), the duration from which its
/// calls send their details: `--slow`'s threshold, or the run's tail as
/// userspace keeps it; 0: never.
#[map]
static DETAIL_NS: Array<u64> = Array::with_max_entries(MAX_SYSCALL_NR, 0);
shared!(map DETAIL_NS);

/// Whether a call of `nr` that took `duration_ns` sends its details.
#[inline(always)]
pub(crate) fn wants_detail(nr: u32, duration_ns: u64) -> bool {
    let from = DETAIL_NS.get(table_index(nr)).copied().unwrap_or(0);
    from != 0 && duration_ns >= from
}

#[inline(always)]
pub(crate) fn slow_ns() -> u64 {
    config(&SLOW_NS)
}

/// The current kernel stack's id in `KERNEL_STACKS` plus one; 0 if it
/// could not be kept.
#[inline(always)]
pub(crate) fn kernel_stack(ctx: &RawTracePointContext) -> u32 {
    ctx.get_stackid(&KERNEL_STACKS, 0).map_or(0, |id| id as u32 + 1)
}

/// Whether this program runs on the current task's kernel stack: in its
/// context (a syscall, a kernel thread, a fault), not on an interrupt's
/// stack, where the current task is only the one that was interrupted.
/// Always false when the loader gave no `task_struct.stack` offset. (An
/// interrupt of user code runs on the task's stack: userspace tells that
/// one by the interrupt entry in the wakeup's kernel stack.)
///
/// A function of its own with a frame of a few bytes: since Linux 6.13 a
/// tracing program's function whose frame is 64 bytes or more runs on a
/// per-CPU private stack, which is no task's (the start-up check calls
/// this same function in a syscall, and probe refuses `--slow` if it does
/// not find itself on probe's own stack there).
#[inline(never)]
pub(crate) fn on_task_stack() -> bool {
    let offset = config(&TASK_STACK_OFFSET);
    if offset == 0 {
        return false;
    }
    let base = current_task_field::<u64>(offset);
    let marker = 0u64;
    // The program's frame is on the stack it runs on; the address is only
    // compared (privileged programs may read pointers as numbers).
    let here = core::ptr::addr_of!(marker) as u64;
    here.wrapping_sub(base) < THREAD_SIZE
}

/// Sends what a slow call left behind: the thread's user registers, and as
/// much of its user stack as can be read from the stack pointer up. Sent
/// before the call's own record, so userspace has it when that comes; a
/// detail that does not fit is only counted lost, and the call is then
/// reported without it. The call's record then wakes the reader at once:
/// its stack can only be symbolized while its process lives.
#[inline(never)]
pub(crate) fn send_detail(ctx: &RawTracePointContext, state: *mut CpuState, call: &InFlight) {
    // SAFETY: this CPU's state; programs on one CPU do not run concurrently.
    unsafe { (*state).unsent = u32::MAX - 1 };
    let Some(mut entry) = reserve::<SlowDetail>() else {
        return;
    };
    let d = entry.as_mut_ptr();
    // SAFETY: every byte of the reserved record is written below: the
    // header, the registers (zeroed by the helper if unreadable) and the
    // stack (each failed read zeroes what it covers, and the first read
    // covers it all).
    unsafe {
        (*d).kind = EventKind::SlowDetail as u32;
        (*d).cpu = cpu();
        (*d).pid = call.pid;
        (*d).tid = call.tid;
        (*d).start_ns = call.start_ns;
        (*d)._pad = 0;
        // TP_PROTO(struct pt_regs *regs, long ret)
        let regs = &mut *(&raw mut (*d).regs).cast::<[u8; REGS_WORDS * 8]>();
        let _ = bpf_probe_read_kernel_buf(ctx.arg::<*const u8>(0), regs);
        let sp = (*d).regs.get((config(&PT_REGS_SP_OFFSET) / 8) as usize).copied().unwrap_or(0) as *const u8;
        let stack = &mut (*d).stack;
        // The stack's mapping may end less than STACK_BYTES above the
        // pointer (a main thread's, near its top): halve until the read
        // stays inside it. Constant sizes, for the verifier.
        (*d).stack_len = if bpf_probe_read_user_buf(sp, stack).is_ok() {
            STACK_BYTES as u32
        } else if bpf_probe_read_user_buf(sp, &mut stack[..STACK_BYTES / 2]).is_ok() {
            (STACK_BYTES / 2) as u32
        } else if bpf_probe_read_user_buf(sp, &mut stack[..STACK_BYTES / 4]).is_ok() {
            (STACK_BYTES / 4) as u32
        } else if bpf_probe_read_user_buf(sp, &mut stack[..STACK_BYTES / 8]).is_ok() {
            (STACK_BYTES / 8) as u32
        } else if bpf_probe_read_user_buf(sp, &mut stack[..STACK_BYTES / 16]).is_ok() {
            (STACK_BYTES / 16) as u32
        } else {
            0
        };
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

/// `sched_waking` runs in the waker's context, before the wakeup is done
/// (`sched_wakeup` may run later on the woken thread's CPU, in the
/// interrupt that carries a wakeup queued there), and only for a thread
/// that was asleep.
#[raw_tracepoint(tracepoint = "sched_waking")]
pub fn sched_waking(ctx: RawTracePointContext) -> u32 {
    match try_sched_waking(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sched_waking as SCHED_WAKING);

fn try_sched_waking(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(struct task_struct *p): runs as the waker, not as p.
    let (tid, pid) = task_ids(ctx.arg::<*const u8>(0))?;
    if pid == 0 || !is_traced(pid) || !thread_passes(tid) {
        return Ok(0);
    }
    // Only a sleep in a traced call can make one slow; such a call was
    // parked when its thread left the CPU. The thread is asleep: its call
    // stays until it runs again, after this.
    // SAFETY: a copy of the entry is read, under RCU like any map value.
    let Some(call) = (unsafe { CALLS_OFF_CPU.get(tid) }).copied() else {
        return Ok(0);
    };
    // Nor is the waker of a call that has not yet run as long as its
    // details are asked from sent: a pipe ping-pong's wakeups then cost a
    // lookup each, not a record (a call that gets that slow only in the
    // run queue after is reported without its waker).
    if !wants_detail(call.nr, now().wrapping_sub(call.start_ns)) {
        return Ok(0);
    }
    let started_ns = call.start_ns;
    let state = cpu_state()?;
    // A waker record that does not fit is counted lost; the slow call it
    // was for is then reported without its waker.
    send(state, &woken_by(ctx, state, u64::from(pid) << 32 | u64::from(tid), started_ns));
    Ok(0)
}

/// Who is waking thread `tid_pid` (`bpf_get_current_pid_tgid`'s layout:
/// a BPF function takes five arguments at most, the record's address
/// included), whose call began at `started_ns`: the
/// current task, unless this runs on an interrupt's stack; its syscall in
/// progress, if it is traced; the kernel stack of the wakeup, if the call
/// has already run `--slow`'s threshold. (The walk costs more than the rest
/// of the program several times over, at every wakeup of a pipe
/// ping-pong; a call that becomes slow only after its wakeup, in a run
/// queue, is reported without it.)
#[inline(never)]
fn woken_by(ctx: &RawTracePointContext, state: *mut CpuState, tid_pid: u64, started_ns: u64) -> WakeEvent {
    let waker = bpf_get_current_pid_tgid();
    let in_task = on_task_stack();
    // SAFETY: this CPU's state: its call is the current thread's, if any.
    let call = unsafe { (*state).call };
    let waker_nr = if in_task && call.start_ns != 0 { call.nr } else { NO_SYSCALL };
    let ts_ns = now();
    let slow_ns = slow_ns();
    let stack = match slow_ns != 0 && ts_ns.wrapping_sub(started_ns) >= slow_ns {
        true => kernel_stack(ctx),
        false => KERNEL_STACK_NOT_TAKEN,
    };
    let mut record = MaybeUninit::<WakeEvent>::uninit();
    let r = record.as_mut_ptr();
    // SAFETY: every field is written before the record is read.
    unsafe {
        (*r).kind = EventKind::WokenBy as u32;
        (*r).cpu = cpu();
        (*r).pid = (tid_pid >> 32) as u32;
        (*r).tid = tid_pid as u32;
        (*r).waker_pid = (waker >> 32) as u32;
        (*r).waker_tid = waker as u32;
        (*r).waker_nr = waker_nr;
        (*r).context = if in_task { WAKER_TASK } else { WAKER_INTERRUPT };
        (*r).kernel_stack = stack;
        (*r)._pad = 0;
        (*r).ts_ns = ts_ns;
        write_comm(&raw mut (*r).waker_comm, true);
        record.assume_init()
    }
}
