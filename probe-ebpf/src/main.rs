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

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, generated,
    },
    macros::{map, raw_tracepoint, tracepoint, uprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    syscall_flags, Counter, EventKind, GoEvent, InFlight, IoRequest, IoUringEvent, LostCall, OffsetCheck,
    SchedEvent, SyscallEvent, COMM_LEN, COUNTER_SLOTS, IO_URING_ASYNC, MAX_ERRNO, MAX_IO_REQUESTS,
    MAX_LOST_KEYS, MAX_PARKED_CALLS, MAX_SYSCALL_NR, OP_NAME_LEN, SWITCH_EXITED, SWITCH_VOLUNTARY,
    SYSCALL_NO_RETURN,
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
/// Each CPU wakes the reader once it has sent this many records since its
/// last wakeup: a wakeup per record would cost more than the record, and so
/// would asking the ring buffer how full it is. The reader also polls on a
/// timer, for the records no wakeup announced.
#[unsafe(no_mangle)]
static WAKEUP_RECORDS: u32 = 0;
/// Byte offsets of `task_struct.pid` and `.tgid` in the running kernel.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u32 = 0;

/// Byte offsets of `runtime.g`'s `goid` and `startpc` in the traced Go
/// binary, from its DWARF.
#[unsafe(no_mangle)]
static GO_GOID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static GO_STARTPC_OFFSET: u32 = 0;

// Field offsets in the io_uring tracepoints' records, which change between
// kernels: the loader reads them from each tracepoint's format file.
#[unsafe(no_mangle)]
static IOU_SUBMIT_CTX: u32 = 0;
#[unsafe(no_mangle)]
static IOU_SUBMIT_REQ: u32 = 0;
#[unsafe(no_mangle)]
static IOU_SUBMIT_OPCODE: u32 = 0;
#[unsafe(no_mangle)]
static IOU_SUBMIT_OP_STR: u32 = 0;
#[unsafe(no_mangle)]
static IOU_ASYNC_REQ: u32 = 0;
#[unsafe(no_mangle)]
static IOU_COMPLETE_REQ: u32 = 0;
#[unsafe(no_mangle)]
static IOU_COMPLETE_RES: u32 = 0;
#[unsafe(no_mangle)]
static IOU_CREATE_CTX: u32 = 0;

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

/// What each CPU keeps between programs.
#[repr(C)]
struct CpuState {
    /// The syscall in flight on this CPU, if its thread has not left the
    /// CPU; `start_ns` is 0 when there is none. `sched_switch` empties it
    /// whenever a thread leaves, so a call found here at `sys_exit` is the
    /// current thread's: `sys_exit` need not ask who is running.
    call: InFlight,
    /// Records this CPU sent since it last woke the reader.
    unsent: u32,
    _pad: u32,
}

#[map]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// Syscalls whose thread left its CPU before they returned, by thread.
#[map]
static CALLS_OFF_CPU: HashMap<u32, InFlight> = HashMap::with_max_entries(MAX_PARKED_CALLS, 0);

/// io_uring requests of traced threads between submission and completion,
/// by request address.
#[map]
static IO_REQUESTS: HashMap<u64, IoRequest> = HashMap::with_max_entries(MAX_IO_REQUESTS, 0);

/// The thread that created each io_uring ring, by ring address: a SQPOLL
/// ring's kernel thread submits on its behalf.
#[map]
static IO_RING_OWNERS: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

/// Each opcode's name, as the kernel spells it, once seen.
#[map]
static IO_OP_NAMES: Array<[u8; OP_NAME_LEN]> = Array::with_max_entries(256, 0);

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

// `write_comm` writes names as two aligned words.
const _: () = assert!(core::mem::offset_of!(SyscallEvent, comm) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(SchedEvent, comm) % 8 == 0);

/// Fills a record's name field: the current task's name when `named`, else
/// zeros. Raw writes, because on the BPF target a zeroed byte array becomes
/// a call to a byte-by-byte `memset`, and aya's `bpf_get_current_comm`
/// zeroes its own buffer that way before copying it.
///
/// # Safety
/// `comm` is the name field of a record on the stack, 8-byte aligned.
#[inline(always)]
unsafe fn write_comm(comm: *mut [u8; COMM_LEN], named: bool) {
    // SAFETY: the helper writes at most COMM_LEN bytes into the field.
    if named && unsafe { generated::bpf_get_current_comm(comm.cast(), COMM_LEN as u32) } == 0 {
        return;
    }
    let words = comm.cast::<u64>();
    // SAFETY: the field is 16 bytes, 8-byte aligned; volatile, so that the
    // compiler does not merge the two stores back into a `memset`.
    unsafe {
        words.write_volatile(0);
        words.add(1).write_volatile(0);
    }
}

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

#[inline(always)]
fn cpu_state() -> Result<*mut CpuState, u32> {
    CPU_STATE.get_ptr_mut(0).ok_or(0u32)
}

/// Sends one record to userspace, or counts it lost and returns false.
/// `bpf_ringbuf_output` is one helper call where reserve and submit are two;
/// on the syscall path every call counts.
#[inline(always)]
fn send<T: 'static>(state: *mut CpuState, record: &T) -> bool {
    // SAFETY: this CPU's state; programs on one CPU do not run concurrently.
    let unsent = unsafe { &mut (*state).unsent };
    *unsent += 1;
    let wake = if *unsent >= config(&WAKEUP_RECORDS) {
        *unsent = 0;
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<T>(record, wake as u64).is_err() {
        bump(Counter::LostEvents);
        return false;
    }
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
/// CPU's state to `CALLS_OFF_CPU`, where `sys_exit` finds it on any CPU.
#[inline(always)]
fn park_call(ctx: &RawTracePointContext, state: *mut CpuState) {
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
fn sched_event(kind: EventKind, tid: u32, pid: u32, flags: u32, ts_ns: u64, named: bool) -> SchedEvent {
    let mut record = MaybeUninit::<SchedEvent>::uninit();
    let r = record.as_mut_ptr();
    // SAFETY: every field is written before the record is read.
    unsafe {
        (*r).kind = kind as u32;
        (*r).cpu = cpu();
        (*r).pid = pid;
        (*r).tid = tid;
        (*r).flags = flags;
        (*r)._pad = 0;
        (*r).ts_ns = ts_ns;
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

fn try_sched_switch(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(bool preempt, struct task_struct *prev,
    //          struct task_struct *next, unsigned int prev_state)
    // The tracepoint fires before the switch: prev is still current.
    let state = cpu_state()?;
    park_call(ctx, state);
    if config(&TRACE_SCHED) == 0 {
        return Ok(0);
    }
    let prev = bpf_get_current_pid_tgid();
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
        send(state, &sched_event(EventKind::SwitchOut, prev as u32, prev_pid, flags, now, true));
    }
    let (tid, pid) = task_ids(ctx.arg::<*const u8>(2))?;
    if pid != 0 && is_traced(pid) {
        send(state, &sched_event(EventKind::SwitchIn, tid, pid, 0, now, false));
    }
    Ok(0)
}

#[inline(always)]
fn woken(ctx: &RawTracePointContext, kind: EventKind) -> Result<u32, u32> {
    // TP_PROTO(struct task_struct *p): runs as the waker, not as p.
    let (tid, pid) = task_ids(ctx.arg::<*const u8>(0))?;
    if pid != 0 && is_traced(pid) {
        send(cpu_state()?, &sched_event(kind, tid, pid, 0, now(), false));
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

// The Go runtime, through uprobes on its functions in a traced Go binary.
// Each says what the thread (an M) runs now; userspace attributes the
// thread's syscalls to the goroutine it last ran, which is right because a
// thread's records arrive in the order they happened, and a goroutine keeps
// its thread from syscall entry to exit.

#[inline(always)]
fn go_event(kind: EventKind, goid: u64, start_pc: u64) -> Result<u32, u32> {
    let tid_pid = bpf_get_current_pid_tgid();
    let pid = (tid_pid >> 32) as u32;
    if !is_traced(pid) {
        return Ok(0);
    }
    let event =
        GoEvent { kind: kind as u32, cpu: cpu(), pid, tid: tid_pid as u32, goid, start_pc, ts_ns: now() };
    send(cpu_state()?, &event);
    Ok(0)
}

/// `func execute(gp *g, inheritTime bool)`: gp is about to run here.
#[uprobe]
pub fn go_execute(ctx: ProbeContext) -> u32 {
    match try_go_execute(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_go_execute(ctx: &ProbeContext) -> Result<u32, u32> {
    // Go's register ABI (1.17+ on amd64) passes the first argument in RAX.
    // SAFETY: the context is the thread's user registers.
    let gp = unsafe { (*ctx.regs).rax } as *const u8;
    // SAFETY: bpf_probe_read_user checks the address; a bad one is an error.
    let (goid, start_pc) = unsafe {
        (
            bpf_probe_read_user(gp.add(config(&GO_GOID_OFFSET) as usize).cast::<u64>()).map_err(|_| 0u32)?,
            bpf_probe_read_user(gp.add(config(&GO_STARTPC_OFFSET) as usize).cast::<u64>())
                .map_err(|_| 0u32)?,
        )
    };
    go_event(EventKind::GoExecute, goid, start_pc)
}

/// `func schedule()`: the thread's goroutine, if any, stopped running.
#[uprobe]
pub fn go_schedule(_ctx: ProbeContext) -> u32 {
    match go_event(EventKind::GoSchedule, 0, 0) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// `func goexit1()`: the thread's goroutine ends.
#[uprobe]
pub fn go_exit(_ctx: ProbeContext) -> u32 {
    match go_event(EventKind::GoExit, 0, 0) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// `func sysmon()`: the thread is the runtime's monitor from now on.
#[uprobe]
pub fn go_sysmon(_ctx: ProbeContext) -> u32 {
    match go_event(EventKind::GoSysmon, 0, 0) {
        Ok(ret) | Err(ret) => ret,
    }
}

// io_uring: a request is followed from `io_uring_submit_req` to
// `io_uring_complete`, keyed by its address, and charged to the thread that
// submitted it, whichever context completes it (an io-wq worker, an
// interrupt, the submitter's own task work).

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: &u32) -> Result<T, u32> {
    // SAFETY: read through bpf_probe_read_kernel at an offset inside the
    // record, from the tracepoint's format.
    unsafe { ctx.read_at::<T>(config(offset) as usize) }.map_err(|_| 0u32)
}

#[tracepoint]
pub fn io_uring_create(ctx: TracePointContext) -> u32 {
    match try_io_uring_create(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_io_uring_create(ctx: &TracePointContext) -> Result<u32, u32> {
    let tid_pid = bpf_get_current_pid_tgid();
    if !is_traced((tid_pid >> 32) as u32) {
        return Ok(0);
    }
    let ring: u64 = field(ctx, &IOU_CREATE_CTX)?;
    IO_RING_OWNERS.insert(ring, tid_pid, 0).map_err(|_| 0u32)?;
    Ok(0)
}

#[tracepoint]
pub fn io_uring_submit_req(ctx: TracePointContext) -> u32 {
    match try_io_uring_submit_req(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_io_uring_submit_req(ctx: &TracePointContext) -> Result<u32, u32> {
    let mut tid_pid = bpf_get_current_pid_tgid();
    if !is_traced((tid_pid >> 32) as u32) {
        return Ok(0);
    }
    let req: u64 = field(ctx, &IOU_SUBMIT_REQ)?;
    let opcode = u32::from(field::<u8>(ctx, &IOU_SUBMIT_OPCODE)?);
    // A SQPOLL ring's kernel thread ("iou-sqp-PID", a thread of the same
    // process) submits what the ring's creator queued.
    if bpf_get_current_comm().is_ok_and(|comm| comm.starts_with(b"iou-sqp-")) {
        let ring: u64 = field(ctx, &IOU_SUBMIT_CTX)?;
        // SAFETY: a value copied out at once.
        if let Some(&owner) = unsafe { IO_RING_OWNERS.get(ring) } {
            tid_pid = owner;
        }
    }
    let request =
        IoRequest { pid: (tid_pid >> 32) as u32, tid: tid_pid as u32, opcode, flags: 0, start_ns: now() };
    if IO_REQUESTS.insert(req, request, 0).is_err() {
        bump(Counter::IoUringFull);
    }
    if let Some(name) = IO_OP_NAMES.get_ptr_mut(opcode) {
        // SAFETY: an array slot; a name is written once per opcode, and a
        // race only writes the same bytes twice.
        if unsafe { (*name)[0] } == 0 {
            // A __data_loc field: the string's offset in the record in the
            // low 16 bits.
            let loc: u32 = field(ctx, &IOU_SUBMIT_OP_STR)?;
            // SAFETY: read through the helper, bounded by the slot.
            unsafe {
                let _ = aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(
                    ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize),
                    &mut *name,
                );
            }
        }
    }
    Ok(0)
}

#[tracepoint]
pub fn io_uring_queue_async_work(ctx: TracePointContext) -> u32 {
    let Ok(req) = field::<u64>(&ctx, &IOU_ASYNC_REQ) else {
        return 0;
    };
    if let Some(request) = IO_REQUESTS.get_ptr_mut(req) {
        // SAFETY: the request's entry; its flags are only set here.
        unsafe { (*request).flags |= IO_URING_ASYNC };
    }
    0
}

#[tracepoint]
pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
    match try_io_uring_complete(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_io_uring_complete(ctx: &TracePointContext) -> Result<u32, u32> {
    let req: u64 = field(ctx, &IOU_COMPLETE_REQ)?;
    // SAFETY: a value copied out at once.
    let request = unsafe { IO_REQUESTS.get(req) }.copied().ok_or(0u32)?;
    let _ = IO_REQUESTS.remove(req);
    let res: i32 = field(ctx, &IOU_COMPLETE_RES)?;
    let op_name = IO_OP_NAMES.get(request.opcode).copied().unwrap_or([0; OP_NAME_LEN]);
    let event = IoUringEvent {
        kind: EventKind::IoUring as u32,
        cpu: cpu(),
        pid: request.pid,
        tid: request.tid,
        opcode: request.opcode,
        flags: request.flags,
        res,
        _pad: 0,
        start_ns: request.start_ns,
        duration_ns: now().saturating_sub(request.start_ns),
        op_name,
    };
    send(cpu_state()?, &event);
    Ok(0)
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
