//! probe's kernel programs: time every syscall of the traced threads between
//! `raw_syscalls:sys_enter` and `sys_exit` and stream one record per
//! completed syscall to userspace through a ring buffer.
//!
//! Raw tracepoints are used because they need no tracefs and cost about half
//! of classic tracepoints on the syscall path, which every traced thread pays.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    Counter, EventKind, InFlight, SyscallEvent, COMM_LEN, COUNTER_SLOTS, DEFAULT_MAX_THREADS,
    MAX_SYSCALL_NR, SYSCALL_NO_RETURN,
};

// Read-only configuration, set by the loader with `override_global` before
// the programs are verified, so that branches on them are cheap or pruned.

/// probe's own tgid: never traced, or it would observe its own reading.
#[unsafe(no_mangle)]
static SELF_PID: u32 = 0;
/// Non-zero: trace only the tgids in `TRACED`; zero: the whole system.
#[unsafe(no_mangle)]
static FILTER_PIDS: u8 = 0;
/// Non-zero: trace only the syscalls marked in `SYSCALLS`.
#[unsafe(no_mangle)]
static FILTER_SYSCALLS: u8 = 0;
/// `exit` and `exit_group` never reach `sys_exit`: they are counted at entry.
#[unsafe(no_mangle)]
static EXIT_NR: u32 = u32::MAX;
#[unsafe(no_mangle)]
static EXIT_GROUP_NR: u32 = u32::MAX;
/// Wake the reader only once this many bytes wait in `EVENTS`: a wakeup per
/// record would cost more than the record. The reader also polls on a timer.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// Traced tgids, when `FILTER_PIDS` is set.
#[map]
static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// `SYSCALLS[nr] != 0`: syscall `nr` is traced, when `FILTER_SYSCALLS` is set.
#[map]
static SYSCALLS: Array<u8> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

/// Per thread: the syscall it is in, from `sys_enter` to `sys_exit`.
#[map]
static IN_FLIGHT: HashMap<u32, InFlight> = HashMap::with_max_entries(DEFAULT_MAX_THREADS, 0);

/// Completed syscalls, to userspace. The loader sets the size.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU counters indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
fn config<T: Copy>(global: &T) -> T {
    // SAFETY: the globals are plain integers; the volatile read keeps the
    // compiler from folding in the placeholder value the loader overrides.
    unsafe { core::ptr::read_volatile(global) }
}

#[inline(always)]
fn is_traced(pid: u32) -> bool {
    if pid == config(&SELF_PID) {
        return false;
    }
    config(&FILTER_PIDS) == 0 || TRACED.get_ptr(pid).is_some()
}

#[inline(always)]
fn is_wanted(nr: u32) -> bool {
    if config(&FILTER_SYSCALLS) == 0 {
        return true;
    }
    matches!(SYSCALLS.get(nr), Some(&wanted) if wanted != 0)
}

/// Adds one to a counter and returns the new value on this CPU.
#[inline(always)]
fn bump(counter: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        Some(slot) => {
            // SAFETY: per-CPU slot; programs on one CPU do not run concurrently.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    }
}

#[inline(always)]
fn emit(tid_pid: u64, nr: u32, flags: u32, ret: i64, start_ns: u64, duration_ns: u64) {
    let Some(mut entry) = EVENTS.reserve::<SyscallEvent>(0) else {
        bump(Counter::LostEvents);
        return;
    };
    entry.write(SyscallEvent {
        kind: EventKind::Syscall as u32,
        // SAFETY: a helper without side effects.
        cpu: unsafe { bpf_get_smp_processor_id() },
        pid: (tid_pid >> 32) as u32,
        tid: tid_pid as u32,
        nr,
        flags,
        ret,
        start_ns,
        duration_ns,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    });
    let wake = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config(&WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake as u64);
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> u32 {
    match try_sys_enter(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sys_enter(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let tid_pid = bpf_get_current_pid_tgid();
    if !is_traced((tid_pid >> 32) as u32) {
        return Ok(0);
    }
    // TP_PROTO(struct pt_regs *regs, long id)
    let nr = ctx.arg::<i64>(1) as u32;
    if !is_wanted(nr) {
        return Ok(0);
    }
    // SAFETY: a helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    if nr == config(&EXIT_NR) || nr == config(&EXIT_GROUP_NR) {
        emit(tid_pid, nr, SYSCALL_NO_RETURN, 0, now, 0);
        return Ok(0);
    }
    let tid = tid_pid as u32;
    let call = InFlight {
        start_ns: now,
        nr,
        _pad: 0,
    };
    // Overwriting the thread's own slot in place is much cheaper than a
    // hash insert; only a thread's first syscall inserts.
    if let Some(slot) = IN_FLIGHT.get_ptr_mut(tid) {
        // SAFETY: only this thread touches its slot, and it is not running
        // anything else right now.
        unsafe { *slot = call };
    } else if IN_FLIGHT.insert(tid, call, 0).is_err() && bump(Counter::InFlightFull) == 1 {
        warn!(
            ctx,
            "in-flight map full: syscalls of new threads go untimed"
        );
    }
    Ok(0)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> u32 {
    match try_sys_exit(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let tid_pid = bpf_get_current_pid_tgid();
    // A thread not traced at entry has no slot, and a syscall already in
    // flight when probe attached has none either: it is not invented.
    let Some(slot) = IN_FLIGHT.get_ptr_mut(tid_pid as u32) else {
        return Ok(0);
    };
    // SAFETY: only this thread touches its slot.
    let call = unsafe { *slot };
    if call.start_ns == 0 {
        return Ok(0);
    }
    // SAFETY: as above.
    unsafe { (*slot).start_ns = 0 };
    // SAFETY: a helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret = ctx.arg::<i64>(1);
    emit(tid_pid, call.nr, 0, ret, call.start_ns, now - call.start_ns);
    Ok(0)
}

/// A thread that exits gives its in-flight slot back, so that the map holds
/// live threads only.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> u32 {
    let _ = IN_FLIGHT.remove(bpf_get_current_pid_tgid() as u32);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
