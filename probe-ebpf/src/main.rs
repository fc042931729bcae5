//! probe's kernel programs: time every syscall of the traced threads between
//! `raw_syscalls:sys_enter` and `sys_exit`, follow them through the
//! scheduler (`sched_switch`, `sched_wakeup`, `sched_wakeup_new`), and stream
//! one record per event to userspace through a ring buffer.
//!
//! Raw tracepoints are used because they need no tracefs and cost about half
//! of classic tracepoints on the syscall path, which every traced thread pays.
//! Their arguments are the tracepoints' `TP_PROTO`; the `task_struct` fields
//! they point to sit at offsets the loader finds in the kernel's BTF.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    syscall_flags, Counter, EventKind, InFlight, LostCall, OffsetCheck, SchedEvent, SyscallEvent, COMM_LEN,
    COUNTER_SLOTS, MAX_ERRNO, MAX_LOST_KEYS, MAX_PARKED_CALLS, MAX_SYSCALL_NR, SWITCH_EXITED,
    SWITCH_VOLUNTARY, SYSCALL_NO_RETURN,
};

/// `TASK_DEAD` in a task's state (include/linux/sched.h): its last switch.
const TASK_DEAD: u32 = 0x80;

// Read-only configuration, set by the loader with `override_global` before
// the programs are verified, so that branches on them are cheap or pruned.

/// probe's own tgid: never traced, or it would observe its own reading.
#[unsafe(no_mangle)]
static SELF_PID: u32 = 0;
/// Non-zero: trace only the tgids set in `TRACED`; zero: the whole system.
#[unsafe(no_mangle)]
static FILTER_PIDS: u8 = 0;
/// Non-zero: trace only the syscalls flagged `WANTED` in `SYSCALL_FLAGS`.
#[unsafe(no_mangle)]
static FILTER_SYSCALLS: u8 = 0;
/// Non-zero: `sched_switch` and the wakeups send scheduler events; zero:
/// `sched_switch` only parks the calls of threads that leave their CPU.
#[unsafe(no_mangle)]
static TRACE_SCHED: u8 = 0;
/// Wake the reader only once this many bytes wait in `EVENTS`: a wakeup per
/// record would cost more than the record. The reader also polls on a timer.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;
/// Byte offsets of `task_struct.pid` and `.tgid` in the running kernel.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u32 = 0;

/// `TRACED[tgid] != 0`: the process is traced, when `FILTER_PIDS` is set.
/// An array lookup is inlined by the verifier, where a hash lookup would
/// cost a helper call on every syscall of the system; a byte per PID lets
/// programs on several CPUs add forked children without atomics. The loader
/// sizes it to `pid_max`.
#[map]
static TRACED: Array<u8> = Array::with_max_entries(1, 0);

/// `syscall_flags` per syscall number.
#[map]
static SYSCALL_FLAGS: Array<u8> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

/// The syscall in flight on this CPU, if its thread has not left the CPU.
#[map]
static CALL_ON_CPU: PerCpuArray<InFlight> = PerCpuArray::with_max_entries(1, 0);

/// Syscalls whose thread left its CPU before they returned, by thread.
#[map]
static CALLS_OFF_CPU: HashMap<u32, InFlight> = HashMap::with_max_entries(MAX_PARKED_CALLS, 0);

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

/// Completed syscalls and scheduler events, to userspace. The loader sets
/// the size.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// What `check_offsets` read from probe's own task, for the loader to compare.
#[map]
static OFFSET_CHECK: Array<OffsetCheck> = Array::with_max_entries(1, 0);

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
    if config(&FILTER_PIDS) == 0 {
        return true;
    }
    matches!(TRACED.get(pid), Some(&traced) if traced != 0)
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

/// Sends one record to userspace, or counts it lost and returns false.
#[inline(always)]
fn send<T: 'static>(record: T) -> bool {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        bump(Counter::LostEvents);
        return false;
    };
    entry.write(record);
    let wake = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config(&WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake as u64);
    true
}

#[inline(always)]
fn cpu() -> u32 {
    // SAFETY: a helper without side effects.
    unsafe { bpf_get_smp_processor_id() }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without side effects.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn emit(tid_pid: u64, call: InFlight, flags: u8, ret: i64, duration_ns: u64) {
    let named = flags & (syscall_flags::NO_RETURN | syscall_flags::RENAMES) != 0;
    let sent = send(SyscallEvent {
        kind: EventKind::Syscall as u32,
        cpu: cpu(),
        pid: (tid_pid >> 32) as u32,
        tid: tid_pid as u32,
        nr: call.nr,
        flags: if flags & syscall_flags::NO_RETURN != 0 { SYSCALL_NO_RETURN } else { 0 },
        ret,
        start_ns: call.start_ns,
        duration_ns,
        comm: match named {
            true => bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
            false => [0; COMM_LEN],
        },
    });
    if !sent {
        count_lost(tid_pid, call.nr, ret);
    }
}

/// Counts a syscall whose record was dropped, so that its count and errno
/// stay exact. Only the thread itself counts its calls, and it runs on one
/// CPU at a time: the increment needs no atomics.
#[inline(never)]
fn count_lost(tid_pid: u64, nr: u32, ret: i64) {
    let errno = if (-MAX_ERRNO..0).contains(&ret) { -ret as u32 } else { 0 };
    let key = LostCall { pid: (tid_pid >> 32) as u32, tid: tid_pid as u32, nr, errno };
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

fn try_sys_enter(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let tid_pid = bpf_get_current_pid_tgid();
    if !is_traced((tid_pid >> 32) as u32) {
        return Ok(0);
    }
    // TP_PROTO(struct pt_regs *regs, long id)
    let nr = ctx.arg::<i64>(1) as u32;
    let flags = flags_of(nr);
    if config(&FILTER_SYSCALLS) != 0 && flags & syscall_flags::WANTED == 0 {
        return Ok(0);
    }
    let call = InFlight { start_ns: now(), nr, tid: tid_pid as u32 };
    if flags & syscall_flags::NO_RETURN != 0 {
        emit(tid_pid, call, flags, 0, 0);
        return Ok(0);
    }
    let slot = CALL_ON_CPU.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: this CPU's slot; the slot's previous call, if any, was parked
    // when its thread left the CPU, or completed.
    unsafe { *slot = call };
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
    let tid = tid_pid as u32;
    let slot = CALL_ON_CPU.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: this CPU's slot.
    let on_cpu = unsafe { *slot };
    let call = if on_cpu.start_ns != 0 && on_cpu.tid == tid {
        // SAFETY: as above.
        unsafe { (*slot).start_ns = 0 };
        on_cpu
    } else {
        // The thread left its CPU during the call, or the call was never
        // timed: a syscall in flight when probe attached is not invented.
        if !is_traced((tid_pid >> 32) as u32) {
            return Ok(0);
        }
        // SAFETY: only this thread touches its own entry.
        let parked = unsafe { CALLS_OFF_CPU.get(tid) }.copied().ok_or(0u32)?;
        let _ = CALLS_OFF_CPU.remove(tid);
        parked
    };
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret = ctx.arg::<i64>(1);
    emit(tid_pid, call, flags_of(call.nr), ret, now() - call.start_ns);
    Ok(0)
}

/// A thread that exits while a call of its is parked (killed mid-call)
/// gives the entry back, so that the map holds live threads only; a process
/// that is gone leaves `TRACED`, so that a later process given its PID is
/// not traced by mistake.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> u32 {
    let tid_pid = bpf_get_current_pid_tgid();
    let _ = CALLS_OFF_CPU.remove(tid_pid as u32);
    // TP_PROTO(struct task_struct *p, bool group_dead)
    if config(&FILTER_PIDS) != 0 && ctx.arg::<u64>(1) & 1 != 0 {
        let _ = TRACED.set((tid_pid >> 32) as u32, 0u8, 0);
    }
    0
}

/// A traced process's new child process is traced from its first
/// instruction (threads are traced anyway: they share the tgid).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_fork(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_process_fork(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child),
    // as the parent.
    if !is_traced((bpf_get_current_pid_tgid() >> 32) as u32) {
        return Ok(0);
    }
    let (_, child_pid) = task_ids(ctx.arg::<*const u8>(1))?;
    TRACED.set(child_pid, 1u8, 0).map_err(|_| 0u32)?;
    Ok(0)
}

/// Moves the call of a thread that leaves its CPU mid-syscall from the
/// CPU's slot to `CALLS_OFF_CPU`, where `sys_exit` finds it on any CPU.
#[inline(always)]
fn park_call(ctx: &RawTracePointContext, tid: u32) {
    let Some(slot) = CALL_ON_CPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let call = unsafe { *slot };
    if call.start_ns == 0 || call.tid != tid {
        return;
    }
    // SAFETY: as above.
    unsafe { (*slot).start_ns = 0 };
    if CALLS_OFF_CPU.insert(tid, call, 0).is_err() && bump(Counter::InFlightFull) == 1 {
        warn!(ctx, "parked-call map full: calls of blocked threads are lost");
    }
}

/// Reads a task's `(tid, tgid)` at the offsets the loader found in BTF.
#[inline(always)]
fn task_ids(task: *const u8) -> Result<(u32, u32), u32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an
    // error, not a fault.
    unsafe {
        let tid = bpf_probe_read_kernel(task.add(config(&TASK_PID_OFFSET) as usize).cast::<u32>())
            .map_err(|_| 0u32)?;
        let tgid = bpf_probe_read_kernel(task.add(config(&TASK_TGID_OFFSET) as usize).cast::<u32>())
            .map_err(|_| 0u32)?;
        Ok((tid, tgid))
    }
}

#[inline(always)]
fn sched_event(
    kind: EventKind,
    tid: u32,
    pid: u32,
    flags: u32,
    ts_ns: u64,
    comm: [u8; COMM_LEN],
) -> SchedEvent {
    SchedEvent { kind: kind as u32, cpu: cpu(), pid, tid, flags, _pad: 0, ts_ns, comm }
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> u32 {
    match try_sched_switch(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_switch(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(bool preempt, struct task_struct *prev,
    //          struct task_struct *next, unsigned int prev_state)
    // The tracepoint fires before the switch: prev is still current.
    let prev = bpf_get_current_pid_tgid();
    park_call(ctx, prev as u32);
    if config(&TRACE_SCHED) == 0 {
        return Ok(0);
    }
    let now = now();
    let prev_pid = (prev >> 32) as u32;
    // pid 0 is the idle task: not a thread anyone traces.
    if prev_pid != 0 && is_traced(prev_pid) {
        let preempt = ctx.arg::<u64>(0) & 1 != 0;
        let prev_state = ctx.arg::<u64>(3) as u32;
        // The kernel's own rule for nvcsw: it blocked, not preempted.
        let mut flags = if !preempt && prev_state != 0 { SWITCH_VOLUNTARY } else { 0 };
        if prev_state & TASK_DEAD != 0 {
            flags |= SWITCH_EXITED;
        }
        let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        send(sched_event(EventKind::SwitchOut, prev as u32, prev_pid, flags, now, comm));
    }
    let (tid, pid) = task_ids(ctx.arg::<*const u8>(2))?;
    if pid != 0 && is_traced(pid) {
        send(sched_event(EventKind::SwitchIn, tid, pid, 0, now, [0; COMM_LEN]));
    }
    Ok(0)
}

#[inline(always)]
fn woken(ctx: &RawTracePointContext, kind: EventKind) -> Result<u32, u32> {
    // TP_PROTO(struct task_struct *p): runs as the waker, not as p.
    let (tid, pid) = task_ids(ctx.arg::<*const u8>(0))?;
    if pid != 0 && is_traced(pid) {
        send(sched_event(kind, tid, pid, 0, now(), [0; COMM_LEN]));
    }
    Ok(0)
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> u32 {
    match woken(&ctx, EventKind::Wakeup) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: RawTracePointContext) -> u32 {
    match woken(&ctx, EventKind::WakeupNew) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// Attached only while probe starts: reads probe's own task at the BTF
/// offsets, so that the loader can compare with the helper's answer and
/// refuse a wrong layout instead of reporting wrong threads.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn check_offsets(_ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 != config(&SELF_PID) {
        return 0;
    }
    // SAFETY: a helper without side effects.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if let (Ok((pid, tgid)), Some(slot)) = (task_ids(task), OFFSET_CHECK.get_ptr_mut(0)) {
        // SAFETY: a map slot only this program writes.
        unsafe { *slot = OffsetCheck { pid_tgid, pid, tgid } };
    }
    0
}

/// The benchmarks' floor (`probe --bench-floor`): attached to the same
/// tracepoints as the real programs, it returns at once, so that it costs
/// what any program there costs.
#[raw_tracepoint]
pub fn floor(_ctx: RawTracePointContext) -> u32 {
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
