//! Syscalls: each traced call is timed from `sys_enter` to `sys_exit` and
//! sent as one record. A call stays in its CPU's state while its thread
//! runs; `sched_switch` parks it in `CALLS_OFF_CPU` (`park_call`) when the
//! thread leaves its CPU, where `sys_exit` finds it on any CPU.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    syscall_flags, Counter, EventKind, InFlight, LostCall, SyscallEvent, MAX_ERRNO, MAX_LOST_KEYS,
    MAX_PARKED_CALLS, MAX_SYSCALL_NR, SYSCALL_NO_RETURN,
};

use crate::shared::{bump, config, cpu, cpu_state, is_traced, now, send, write_comm, CpuState};

/// Non-zero: trace only the syscalls flagged `WANTED` in `SYSCALL_FLAGS`.
/// Set by the loader, like the globals in `shared`.
#[unsafe(no_mangle)]
static FILTER_SYSCALLS: u8 = 0;
shared!(global FILTER_SYSCALLS);

/// `syscall_flags` per syscall number.
#[map]
static SYSCALL_FLAGS: Array<u8> = Array::with_max_entries(MAX_SYSCALL_NR, 0);
shared!(map SYSCALL_FLAGS);

/// Syscalls whose thread left its CPU before they returned, by thread.
#[map]
pub(crate) static CALLS_OFF_CPU: HashMap<u32, InFlight> = HashMap::with_max_entries(MAX_PARKED_CALLS, 0);
shared!(map CALLS_OFF_CPU);

/// Syscalls whose records did not fit in `EVENTS`, counted per
/// (thread, syscall, errno). Two maps take turns: the programs count into
/// the one `LOST_CALLS_ACTIVE` names, while userspace empties the other,
/// which no program has touched since the previous turn; so nothing is
/// counted into an entry that is being read and removed. Allocated as they
/// fill: only written while records are lost, and then they may need many
/// entries.
#[map]
static LOST_CALLS_0: HashMap<LostCall, u64> = HashMap::with_max_entries(MAX_LOST_KEYS, BPF_F_NO_PREALLOC);
#[map]
static LOST_CALLS_1: HashMap<LostCall, u64> = HashMap::with_max_entries(MAX_LOST_KEYS, BPF_F_NO_PREALLOC);
/// Which of `LOST_CALLS_0` and `LOST_CALLS_1` the programs count into.
#[map]
static LOST_CALLS_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);
shared!(map LOST_CALLS_0, LOST_CALLS_1, LOST_CALLS_ACTIVE);

#[inline(always)]
fn emit(state: *mut CpuState, call: &InFlight, ret: i64, duration_ns: u64) {
    let flags = call.flags as u8;
    let mut record = MaybeUninit::<SyscallEvent>::uninit();
    let r = record.as_mut_ptr();
    // SAFETY: every field is written before the record is read.
    let record = unsafe {
        (*r).kind = EventKind::Syscall as u32;
        (*r).cpu = cpu();
        (*r).pid = call.pid;
        (*r).tid = call.tid;
        (*r).nr = call.nr;
        (*r).flags = if flags & syscall_flags::NO_RETURN != 0 { SYSCALL_NO_RETURN } else { 0 };
        (*r).ret = ret;
        (*r).start_ns = call.start_ns;
        (*r).duration_ns = duration_ns;
        write_comm(&raw mut (*r).comm, flags & (syscall_flags::NO_RETURN | syscall_flags::RENAMES) != 0);
        record.assume_init()
    };
    if !send(state, &record) {
        count_lost(call, ret);
    }
}

/// Counts a syscall whose record was dropped, so that its count and errno
/// stay exact. Only the thread itself counts its calls, and it runs on one
/// CPU at a time: the increment needs no atomics.
#[inline(never)]
fn count_lost(call: &InFlight, ret: i64) {
    let errno = if (-MAX_ERRNO..0).contains(&ret) { -ret as u32 } else { 0 };
    let key = LostCall { pid: call.pid, tid: call.tid, nr: call.nr, errno };
    let lost = match LOST_CALLS_ACTIVE.get(0) {
        Some(&1) => &LOST_CALLS_1,
        _ => &LOST_CALLS_0,
    };
    if let Some(count) = lost.get_ptr_mut(key) {
        // SAFETY: see above.
        unsafe { *count += 1 };
    } else if lost.insert(key, 1, 0).is_err() {
        bump(Counter::LostUncounted);
    }
}

#[inline(always)]
fn flags_of(nr: u32) -> u8 {
    SYSCALL_FLAGS.get(nr).copied().unwrap_or(0)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> u32 {
    match try_sys_enter(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sys_enter as SYS_ENTER);

fn try_sys_enter(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let tid_pid = bpf_get_current_pid_tgid();
    let pid = (tid_pid >> 32) as u32;
    if !is_traced(pid) {
        return Ok(0);
    }
    // TP_PROTO(struct pt_regs *regs, long id)
    let nr = ctx.arg::<i64>(1) as u32;
    let flags = flags_of(nr);
    if config(&FILTER_SYSCALLS) != 0 && flags & syscall_flags::WANTED == 0 {
        return Ok(0);
    }
    let call = InFlight { start_ns: now(), nr, tid: tid_pid as u32, pid, flags: u32::from(flags) };
    let state = cpu_state()?;
    if flags & syscall_flags::NO_RETURN != 0 {
        emit(state, &call, 0, 0);
        return Ok(0);
    }
    // SAFETY: this CPU's state; its previous call, if any, was parked when
    // its thread left the CPU, or completed.
    unsafe { (*state).call = call };
    Ok(0)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> u32 {
    match try_sys_exit(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sys_exit as SYS_EXIT);

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let state = cpu_state()?;
    // SAFETY: this CPU's state.
    let on_cpu = unsafe { &mut (*state).call };
    let call = if on_cpu.start_ns != 0 {
        let call = *on_cpu;
        on_cpu.start_ns = 0;
        call
    } else {
        // The thread left its CPU during the call, or the call was never
        // timed: a syscall in flight when probe attached is not invented.
        let tid_pid = bpf_get_current_pid_tgid();
        if !is_traced((tid_pid >> 32) as u32) {
            return Ok(0);
        }
        let tid = tid_pid as u32;
        // SAFETY: only this thread touches its own entry.
        let parked = unsafe { CALLS_OFF_CPU.get(tid) }.copied().ok_or(0u32)?;
        let _ = CALLS_OFF_CPU.remove(tid);
        parked
    };
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret = ctx.arg::<i64>(1);
    emit(state, &call, ret, now() - call.start_ns);
    Ok(0)
}

/// Moves the call of a thread that leaves its CPU mid-syscall from the
/// CPU's state to `CALLS_OFF_CPU`, where `sys_exit` finds it on any CPU.
#[inline(always)]
pub(crate) fn park_call(ctx: &RawTracePointContext, state: *mut CpuState) {
    // SAFETY: this CPU's state.
    let on_cpu = unsafe { &mut (*state).call };
    if on_cpu.start_ns == 0 {
        return;
    }
    let call = *on_cpu;
    on_cpu.start_ns = 0;
    if CALLS_OFF_CPU.insert(call.tid, call, 0).is_err() && bump(Counter::InFlightFull) == 1 {
        warn!(ctx, "parked-call map full: calls of blocked threads are lost");
    }
}
