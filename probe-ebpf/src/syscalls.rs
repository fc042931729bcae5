//! Syscalls: each traced call is timed from `sys_enter` to `sys_exit` and
//! sent as one record. A call stays in its CPU's state while its thread
//! runs; `sched_switch` parks it in `CALLS_OFF_CPU` (`park_call`) when the
//! thread leaves its CPU, where `sys_exit` finds it on any CPU. A call
//! whose entry was not seen (in progress when probe attached) is sent at its
//! exit, flagged `SYSCALL_UNSEEN_ENTRY`, when the loader asks for it.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    errno_of, syscall_flags, table_index, Counter, CpuState, EventKind, InFlight, LostCall, SyscallEvent,
    COMPAT_FLAGS_BASE, COMPAT_NR, MAX_LOST_KEYS, MAX_PARKED_CALLS, MAX_SYSCALL_NR, NO_GOROUTINE,
    SYSCALL_NO_RETURN, SYSCALL_UNSEEN_ENTRY, TRACED_GO,
};

use crate::{
    cgroup::{current_passes, thread_passes},
    golang::goroutine,
    shared::{
        add_to_batch, bump, config, cpu, cpu_state, current_ids, current_task, flush_batch, is_traced, now,
        send, task_field, traced, write_comm, Refused,
    },
    slow::{send_detail, wants_detail},
};

/// Non-zero: trace only the syscalls flagged `WANTED` in `SYSCALL_FLAGS`.
/// Set by the loader, like the globals in `shared`.
#[unsafe(no_mangle)]
static FILTER_SYSCALLS: u8 = 0;
/// Non-zero: a traced call that returns without a seen entry is sent,
/// flagged `SYSCALL_UNSEEN_ENTRY` (`--pid` and whole-system traces, whose
/// threads may be mid-call when probe attaches; not a COMMAND, whose only
/// such call is probe's own gate before the exec).
#[unsafe(no_mangle)]
static REPORT_UNSEEN: u8 = 0;
/// Byte offset of `pt_regs.orig_ax`, the syscall number, in the running
/// kernel (from BTF): how `sys_exit` names a call whose entry it did not see.
#[unsafe(no_mangle)]
static SYSCALL_NR_OFFSET: u32 = 0;
/// Byte offset of `thread_info.status` in `task_struct` (from BTF), where
/// `TS_COMPAT` says a syscall is a 32-bit one; 0: not looked at.
#[unsafe(no_mangle)]
static TASK_STATUS_OFFSET: u32 = 0;
shared!(global FILTER_SYSCALLS, REPORT_UNSEEN, SYSCALL_NR_OFFSET, TASK_STATUS_OFFSET);

/// `TS_COMPAT` in `thread_info.status` (arch/x86/include/asm/thread_info.h):
/// a macro, so not in BTF.
const TS_COMPAT: u32 = 0x0002;

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

/// Readies both lost-call maps on the CPU it runs on: run there by
/// userspace (`BPF_PROG_TEST_RUN`) before any program is attached, not
/// attached itself. These maps take their elements from the kernel's
/// per-CPU caches (`bpf_mem_alloc`), which start with 4 and are refilled by
/// an irq_work, so only once interrupts are on again. `sched_switch` runs
/// with interrupts off and may add up to 19 keys in one run when the ring
/// buffer refuses a batch (its 16 calls, the switch-out, the thread's
/// migrations, the switch-in): in its first such run on a CPU, every insert
/// past the fourth failed (-ENOMEM) and left its calls uncounted. The
/// insert here has the kernel refill this CPU's cache (to 52, and again
/// whenever an allocation leaves fewer than 32); the removal gives the
/// element back.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn warm_lost_calls(_ctx: RawTracePointContext) -> u32 {
    // No traced thread has pid 0 (the idle task), and the maps are not
    // read before the programs are attached: the key is never seen.
    let key = LostCall { pid: 0, tid: 0, nr: 0, errno: 0 };
    for lost in [&LOST_CALLS_0, &LOST_CALLS_1] {
        if lost.insert(key, 0, BPF_NOEXIST.into()).is_ok() {
            let _ = lost.remove(key);
        }
    }
    0
}
shared!(program warm_lost_calls as WARM_LOST_CALLS);

#[inline(always)]
fn emit(state: *mut CpuState, call: &InFlight, ret: i64, duration_ns: u64) {
    let flags = call.flags as u8;
    // SAFETY: every field is written.
    let fill = |r: *mut SyscallEvent| unsafe {
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
        (*r).goid = call.goid;
        (*r).go_start_pc = call.go_start_pc;
    };
    add_to_batch(state, fill);
}

/// The key a syscall whose record was dropped is counted under.
#[inline(always)]
pub(crate) fn lost_key(event: &SyscallEvent) -> LostCall {
    LostCall { pid: event.pid, tid: event.tid, nr: event.nr, errno: errno_of(event.ret).unwrap_or(0) }
}

/// Sends this CPU's batch of syscall records: run by userspace on each CPU
/// before it reads the ring buffer for an interval, so that no record
/// waits in a batch longer than an interval.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn flush_syscalls(_ctx: RawTracePointContext) -> u32 {
    if let Ok(state) = cpu_state() {
        flush_batch(state, Refused::Keep);
    }
    0
}
shared!(program flush_syscalls as FLUSH_SYSCALLS);

/// The lost-call map the programs count into now.
#[inline(always)]
fn active_lost_calls() -> &'static HashMap<LostCall, u64> {
    match LOST_CALLS_ACTIVE.get(0) {
        Some(&1) => &LOST_CALLS_1,
        _ => &LOST_CALLS_0,
    }
}

/// Counts an event of `key` whose record was dropped (a syscall, or a
/// scheduler event: see `LostCall`), so that its count stays exact.
/// Only the thread itself counts its calls and switches (a batch holds
/// the calls of the thread on the CPU, and is sent or counted before it
/// leaves), and it runs on one CPU at a time: the increment needs no
/// atomics (wakeups, counted by their wakers, only mark a thread's times
/// as sampled). Called only after the dropped record was counted
/// (`Counter::LostEvents`): userspace skips reading the maps while that
/// count stands still.
#[inline(never)]
pub(crate) fn count_lost(key: LostCall) {
    let lost = active_lost_calls();
    if let Some(count) = lost.get_ptr_mut(key) {
        // SAFETY: see above.
        unsafe { *count += 1 };
    } else if lost.insert(key, 1, 0).is_err() {
        bump(Counter::LostUncounted);
    }
}

/// Keeps `value` under `key` in the active lost-call map if it is more than
/// the value there (`LOST_MIGRATIONS`: a count the kernel keeps, not one of
/// records). Only the thread itself writes its key, as in `count_lost`.
#[inline(never)]
pub(crate) fn keep_lost_max(key: LostCall, value: u64) {
    let lost = active_lost_calls();
    if let Some(kept) = lost.get_ptr_mut(key) {
        // SAFETY: see above.
        unsafe { *kept = (*kept).max(value) };
    } else if lost.insert(key, value, 0).is_err() {
        bump(Counter::LostUncounted);
    }
}

/// `SYSCALL_FLAGS` of syscall `nr`.
#[inline(always)]
fn flags_of(nr: u32) -> u8 {
    SYSCALL_FLAGS.get(table_index(nr)).copied().unwrap_or(0)
}

/// `COMPAT_NR` when the current syscall is a 32-bit one (`in_ia32_syscall()`:
/// `TS_COMPAT` in the thread's `thread_info.status`, set by every 32-bit
/// entry, `int $0x80` from a 64-bit program included), else 0: its number is
/// then one of the i386 table, not x86-64's. One read of `task`, the current
/// task; skipped when the loader found no `thread_info.status` (offset 0).
#[inline(always)]
pub(crate) fn compat_bit(task: *const u8) -> u32 {
    let offset = config(&TASK_STATUS_OFFSET);
    if offset == 0 {
        return 0;
    }
    if task_field::<u32>(task, offset) & TS_COMPAT != 0 {
        COMPAT_NR
    } else {
        0
    }
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> u32 {
    match try_sys_enter(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sys_enter as SYS_ENTER);

fn try_sys_enter(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let task = current_task();
    let (tid, pid) = current_ids(task);
    let traced = traced(pid);
    if traced == 0 {
        return Ok(0);
    }
    // TP_PROTO(struct pt_regs *regs, long id)
    let nr = ctx.arg::<i64>(1) as u32 | compat_bit(task);
    let flags = flags_of(nr);
    if config(&FILTER_SYSCALLS) != 0 && flags & syscall_flags::WANTED == 0 {
        return Ok(0);
    }
    // Last: the cgroup check costs a helper call per cgroup.
    if !current_passes(tid) {
        return Ok(0);
    }
    let state = cpu_state()?;
    let (goid, go_start_pc) = if traced == TRACED_GO { goroutine(state, tid) } else { (NO_GOROUTINE, 0) };
    let call = InFlight { start_ns: now(), nr, tid, pid, flags: u32::from(flags), goid, go_start_pc };
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
        // timed (unwanted with -e, or in progress when probe attached).
        let tid_pid = bpf_get_current_pid_tgid();
        // The cgroup verdict sys_enter left, not a new check: then the calls
        // of every thread outside the cgroups cost an array read here, not
        // a helper call and the map lookup below.
        if !is_traced((tid_pid >> 32) as u32) || !thread_passes(tid_pid as u32) {
            return Ok(0);
        }
        let report_unseen = config(&REPORT_UNSEEN) != 0;
        // With -e, most calls that come here are unwanted ones, which
        // sys_enter let go: when the number will be needed anyway, they
        // are told apart by it, before the map lookup.
        // A number beyond any table (rt_sigreturn's) says nothing: the
        // call may still be parked.
        let mut nr = u32::MAX;
        if report_unseen && config(&FILTER_SYSCALLS) != 0 {
            if let Ok(read) = syscall_nr(ctx) {
                if flags_of(read) & syscall_flags::WANTED == 0 {
                    return Ok(0);
                }
                nr = read;
            }
        }
        let tid = tid_pid as u32;
        // SAFETY: only this thread touches its own entry.
        match unsafe { CALLS_OFF_CPU.get(tid) }.copied() {
            Some(parked) => {
                let _ = CALLS_OFF_CPU.remove(tid);
                parked
            }
            None => {
                if report_unseen {
                    unseen_entry(ctx, state, tid_pid, nr);
                }
                return Ok(0);
            }
        }
    };
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret = ctx.arg::<i64>(1);
    let duration_ns = now() - call.start_ns;
    let detail = wants_detail(call.nr, duration_ns);
    if detail {
        send_detail(ctx, state, &call);
    }
    emit(state, &call, ret, duration_ns);
    // Its detail waits in userspace for it: not for a batch to fill.
    if detail {
        flush_batch(state, Refused::Keep);
    }
    Ok(0)
}

/// The syscall number of the current thread's call, from its registers
/// (the raw tracepoint's `regs`): `sys_exit` has no other at hand. An
/// error for a number beyond any syscall table (`rt_sigreturn` sets it to
/// -1).
#[inline(always)]
fn syscall_nr(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let regs = ctx.arg::<*const u8>(0);
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an
    // error, not a fault.
    let nr = unsafe { bpf_probe_read_kernel(regs.add(config(&SYSCALL_NR_OFFSET) as usize).cast::<u64>()) }
        .map_err(|_| 0u32)?;
    if nr >= u64::from(COMPAT_FLAGS_BASE) {
        return Err(0);
    }
    Ok(nr as u32 | compat_bit(current_task()))
}

/// Sends a call that returns without a seen entry: in progress when probe
/// attached (or its entry lost), so it has no start, only an end. `nr` is
/// its number if already read, else `u32::MAX`. A record that does not fit
/// is only counted lost (`LostEvents`): such a call must not enter the
/// exact counts as an ordinary one.
#[inline(never)]
fn unseen_entry(ctx: &RawTracePointContext, state: *mut CpuState, tid_pid: u64, nr: u32) {
    let nr = match nr {
        u32::MAX => match syscall_nr(ctx) {
            Ok(nr) => nr,
            Err(_) => return,
        },
        nr => nr,
    };
    let flags = flags_of(nr);
    if config(&FILTER_SYSCALLS) != 0 && flags & syscall_flags::WANTED == 0 {
        return;
    }
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret = ctx.arg::<i64>(1);
    // A new thread's first return, from the clone that made it: it never
    // entered that call.
    if ret == 0 && flags & syscall_flags::FORKS != 0 {
        return;
    }
    let mut record = MaybeUninit::<SyscallEvent>::uninit();
    let r = record.as_mut_ptr();
    // SAFETY: every field is written before the record is read.
    let record = unsafe {
        (*r).kind = EventKind::Syscall as u32;
        (*r).cpu = cpu();
        (*r).pid = (tid_pid >> 32) as u32;
        (*r).tid = tid_pid as u32;
        (*r).nr = nr;
        (*r).flags = SYSCALL_UNSEEN_ENTRY;
        (*r).ret = ret;
        (*r).start_ns = now();
        (*r).duration_ns = 0;
        // Named: the thread may have made no other call yet.
        write_comm(&raw mut (*r).comm, true);
        // Its goroutine at entry was not read.
        (*r).goid = NO_GOROUTINE;
        (*r).go_start_pc = 0;
        record.assume_init()
    };
    flush_batch(state, Refused::Keep);
    send(state, &record);
}

/// Moves the call of a thread that leaves its CPU mid-syscall from the
/// CPU's state to `CALLS_OFF_CPU`, where `sys_exit` finds it on any CPU.
/// Whether it had one.
#[inline(always)]
pub(crate) fn park_call(ctx: &RawTracePointContext, state: *mut CpuState) -> bool {
    // SAFETY: this CPU's state.
    let on_cpu = unsafe { &mut (*state).call };
    if on_cpu.start_ns == 0 {
        return false;
    }
    let call = *on_cpu;
    on_cpu.start_ns = 0;
    if CALLS_OFF_CPU.insert(call.tid, call, 0).is_err() && bump(Counter::InFlightFull) == 1 {
        warn!(ctx, "parked-call map full: calls of blocked threads are lost");
    }
    true
}
