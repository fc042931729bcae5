//! What several features use: the configuration the loader sets, the maps
//! every program may touch (`TRACED`, `CPU_STATE`, `EVENTS`, `COUNTERS`),
//! and the helpers around them.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated,
    },
    macros::map,
    maps::{ring_buf::RingBufEntry, Array, PerCpuArray, RingBuf},
};
use probe_common::{
    Counter, CpuState, EventKind, RanEvent, SchedEvent, SyscallBatch, SyscallEvent, BATCH_EVENTS,
    BATCH_HEADER, COMM_LEN, COUNTER_SLOTS,
};

use crate::syscalls::{count_lost, lost_key};

// Read-only configuration, set by the loader with `override_global` before
// the programs are verified, so that branches on them are cheap or pruned.
// The features' own settings sit with them (`FILTER_SYSCALLS` in `syscalls`,
// `TRACE_SCHED` in `sched`, the Go and io_uring offsets in theirs).

/// probe's own tgid: never traced, or it would observe its own reading.
#[unsafe(no_mangle)]
pub(crate) static SELF_PID: u32 = 0;
/// Non-zero: trace only the tgids set in `TRACED`; zero: the whole system.
#[unsafe(no_mangle)]
pub(crate) static FILTER_PIDS: u8 = 0;
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
shared!(global SELF_PID, FILTER_PIDS, WAKEUP_RECORDS, TASK_PID_OFFSET, TASK_TGID_OFFSET);

/// `TRACED[tgid] != 0`: the process is traced, when `FILTER_PIDS` is set.
/// An array lookup is inlined by the verifier, where a hash lookup would
/// cost a helper call on every syscall of the system; a byte per PID lets
/// programs on several CPUs add forked children without atomics. The loader
/// sizes it to `pid_max`.
#[map]
pub(crate) static TRACED: Array<u8> = Array::with_max_entries(1, 0);
shared!(map TRACED);

/// What each CPU keeps between programs (`CpuState`). Userspace reads the
/// calls in flight on each CPU from it.
#[map]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);
shared!(map CPU_STATE);

/// Completed syscalls and scheduler events, to userspace. The loader sets
/// the size.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
shared!(map EVENTS);

/// A CPU's syscall records not yet sent (`SyscallBatch`), and whether a
/// program is adding one or sending them (`adding`). Only programs that
/// run as a task add to the batch or send it: `sys_enter`, `sys_exit` and
/// `sched_switch`, which cannot run within one another on a CPU
/// (preemption is off in them, interrupts too in `sched_switch`); and
/// `flush_syscalls`, which userspace runs on the CPU in an interrupt (an
/// IPI) that may land in the middle of `sys_exit`: it then leaves the batch
/// alone. A program in an interrupt (a wakeup) never touches it.
#[repr(C)]
struct Batch {
    records: SyscallBatch,
    adding: u64,
}

#[map]
static SYSCALL_BATCH: PerCpuArray<Batch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
shared!(map COUNTERS);

// `write_comm` writes names as two aligned words.
const _: () = assert!(core::mem::offset_of!(SyscallEvent, comm) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(SchedEvent, comm) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(RanEvent, comm) % 8 == 0);

/// Fills a record's name field: the current task's name when `named`, else
/// zeros. Raw writes, because on the BPF target a zeroed byte array becomes
/// a call to a byte-by-byte `memset`, and aya's `bpf_get_current_comm`
/// zeroes its own buffer that way before copying it.
///
/// # Safety
/// `comm` is the name field of a record on the stack, 8-byte aligned.
#[inline(always)]
pub(crate) unsafe fn write_comm(comm: *mut [u8; COMM_LEN], named: bool) {
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
pub(crate) fn config<T: Copy>(global: &T) -> T {
    // SAFETY: the globals are plain integers; the volatile read keeps the
    // compiler from folding in the placeholder value the loader overrides.
    unsafe { core::ptr::read_volatile(global) }
}

#[inline(always)]
pub(crate) fn is_traced(pid: u32) -> bool {
    traced(pid) != 0
}

/// `TRACED[pid]` (`TRACED_GO` for the followed Go program), 1 for any
/// process of a whole-system trace, 0 for one not traced.
#[inline(always)]
pub(crate) fn traced(pid: u32) -> u8 {
    if pid == config(&SELF_PID) {
        return 0;
    }
    if config(&FILTER_PIDS) == 0 {
        return 1;
    }
    TRACED.get(pid).copied().unwrap_or(0)
}

/// Adds one to a counter and returns the new value on this CPU.
#[inline(always)]
pub(crate) fn bump(counter: Counter) -> u64 {
    bump_by(counter, 1)
}

/// Adds `events` to a per-CPU counter; returns its new value.
#[inline(always)]
pub(crate) fn bump_by(counter: Counter, events: u64) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        Some(slot) => {
            // SAFETY: per-CPU slot; programs on one CPU do not run concurrently.
            unsafe {
                *slot += events;
                *slot
            }
        }
        None => 0,
    }
}

#[inline(always)]
pub(crate) fn cpu_state() -> Result<*mut CpuState, u32> {
    CPU_STATE.get_ptr_mut(0).ok_or(0u32)
}

/// Sends one record to userspace, or counts it lost and returns false.
/// `bpf_ringbuf_output` is one helper call where reserve and submit are two;
/// on the syscall path every call counts.
#[inline(always)]
pub(crate) fn send<T: 'static>(state: *mut CpuState, record: &T) -> bool {
    if EVENTS.output::<T>(record, wake_flag(state, 1)).is_err() {
        bump(Counter::LostEvents);
        return false;
    }
    true
}

/// Counts `records` more sent by this CPU, and says whether they wake the
/// reader. (`flush_syscalls`, in an interrupt, may count in the middle of
/// another program's count: a wakeup early or late, no record lost.)
#[inline(always)]
fn wake_flag(state: *mut CpuState, records: u32) -> u64 {
    // SAFETY: this CPU's state; programs on one CPU do not run concurrently.
    let unsent = unsafe { &mut (*state).unsent };
    *unsent = unsent.saturating_add(records);
    let wake = if *unsent >= config(&WAKEUP_RECORDS) {
        *unsent = 0;
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    wake as u64
}

/// Fills the next syscall record of this CPU's batch with `fill`, then
/// sends the batch if it is full. A full batch the ring buffer refuses
/// keeps its older calls for the next send and counts the newest lost:
/// one lost-call update per run, as before batching (a loop over the
/// batch here made the verifier take 340 ms over the programs).
#[inline(always)]
pub(crate) fn add_to_batch(state: *mut CpuState, fill: impl FnOnce(*mut SyscallEvent)) {
    let Some(batch) = SYSCALL_BATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's batch; `adding` keeps flush_syscalls out of it,
    // and the volatile writes keep the compiler from moving the fill
    // outside of them.
    unsafe {
        core::ptr::write_volatile(&raw mut (*batch).adding, 1);
        let count = (*batch).records.count as usize;
        if count < BATCH_EVENTS {
            fill((*batch).records.events.as_mut_ptr().add(count));
            (*batch).records.count = count as u32 + 1;
            if count + 1 == BATCH_EVENTS && !send_batch(state, batch) {
                (*batch).records.count = count as u32;
                bump(Counter::LostEvents);
                count_lost(lost_key(&(*batch).records.events[count]));
            }
        } else {
            // Not reached: a full batch is sent, or loses its newest call.
            // Were it reached, the call would be lost with no key to count
            // it under: said, not hidden.
            bump(Counter::LostEvents);
            bump(Counter::LostUncounted);
        }
        core::ptr::write_volatile(&raw mut (*batch).adding, 0);
    }
}

/// What a flush does with a batch the ring buffer refuses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Keeps it for the CPU's next send: for a flush that only hurries the
    /// records (an interval's end, a slow call's details), where counting
    /// them would cost a loop in the program's verification, and in an
    /// interrupt, interrupts off, the lost-call maps' cold element caches.
    Keep,
    /// Counts its calls lost: before a record that must come after them (a
    /// thread's switch-out after its calls).
    Count,
}

/// Sends this CPU's batch of syscall records, if any, unless the program
/// it interrupts is adding to the batch or sending it.
#[inline(always)]
pub(crate) fn flush_batch(state: *mut CpuState, refused: Refused) {
    if let Some(batch) = SYSCALL_BATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's batch, which `adding` keeps for one program at
        // a time (see `Batch`).
        unsafe {
            if core::ptr::read_volatile(&raw const (*batch).adding) == 0 {
                core::ptr::write_volatile(&raw mut (*batch).adding, 1);
                if !send_batch(state, batch) && refused == Refused::Count {
                    count_batch_lost(&mut (*batch).records);
                }
                core::ptr::write_volatile(&raw mut (*batch).adding, 0);
            }
        }
    }
}

/// Counts every call of a batch the ring buffer refused lost, call by
/// call, and empties it.
#[inline(never)]
fn count_batch_lost(records: &mut SyscallBatch) {
    let count = (records.count as usize).min(BATCH_EVENTS);
    bump_by(Counter::LostEvents, count as u64);
    for event in records.events.iter().take(count) {
        count_lost(lost_key(event));
    }
    records.count = 0;
}

/// Sends the batch, if any, and empties it; whether it went (or was
/// empty). One the ring buffer refuses is left as it is.
///
/// # Safety
/// `batch` is this CPU's, and nothing adds to it meanwhile.
// Not inlined: sys_exit sends from three places.
#[inline(never)]
unsafe fn send_batch(state: *mut CpuState, batch: *mut Batch) -> bool {
    // SAFETY: see above.
    let records = unsafe { &mut (*batch).records };
    let count = records.count as usize;
    if count == 0 {
        return true;
    }
    let count = count.min(BATCH_EVENTS);
    records.kind = EventKind::SyscallBatch as u32;
    let len = BATCH_HEADER + count * core::mem::size_of::<SyscallEvent>();
    // The compiler makes the sum an `or`, whose bound the verifier loses:
    // bounded again where the compiler cannot drop it.
    let len = core::hint::black_box(len).min(core::mem::size_of::<SyscallBatch>());
    // SAFETY: the first `len` bytes of the batch, all written.
    let bytes = unsafe { core::slice::from_raw_parts((records as *const SyscallBatch).cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, wake_flag(state, count as u32)).is_err() {
        return false;
    }
    records.count = 0;
    true
}

/// Reserves room for one record to fill in place (one too big for the
/// program's stack), or counts it lost and returns `None`. The caller
/// submits it without waking the reader: the record that follows it does.
#[inline(always)]
pub(crate) fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        bump(Counter::LostEvents);
    }
    entry
}

#[inline(always)]
pub(crate) fn cpu() -> u32 {
    // SAFETY: a helper without side effects.
    unsafe { bpf_get_smp_processor_id() }
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: a helper without side effects.
    unsafe { bpf_ktime_get_ns() }
}

/// The current task, as a BTF pointer whose fields [`task_field`] reads:
/// several fields for one helper call.
#[inline(always)]
pub(crate) fn current_task() -> *const u8 {
    // SAFETY: a helper without side effects.
    unsafe { bpf_get_current_task_btf() as *const u8 }
}

/// The field at byte `offset` (found by the loader in BTF) of `task`, from
/// [`current_task`]. A BTF pointer: the verifier checks the load against
/// task_struct's layout and turns it into a plain load, where
/// `bpf_probe_read_kernel` would cost a helper call (about 70 ns on this
/// VM).
#[inline(always)]
pub(crate) fn task_field<T: Copy>(task: *const u8, offset: u32) -> T {
    // SAFETY: the task outlives the program; the caller's offset is a
    // field of type T, from BTF.
    unsafe { core::ptr::read_volatile(task.add(offset as usize).cast::<T>()) }
}

/// The field of the current task at byte `offset`.
#[inline(always)]
pub(crate) fn current_task_field<T: Copy>(offset: u32) -> T {
    task_field(current_task(), offset)
}

/// The current thread's `(tid, tgid)`, read from `task` (the current
/// task): on the syscall path, where the task is needed anyway, one helper
/// call fewer than `bpf_get_current_pid_tgid`. Without the offsets (the
/// loader reads and checks them only when some program reads other tasks:
/// not with `--no-sched` on the whole system), the helper tells; the
/// verifier keeps only the branch the loader's offsets take.
#[inline(always)]
pub(crate) fn current_ids(task: *const u8) -> (u32, u32) {
    if config(&TASK_TGID_OFFSET) == 0 {
        let tid_tgid = bpf_get_current_pid_tgid();
        return (tid_tgid as u32, (tid_tgid >> 32) as u32);
    }
    (task_field(task, config(&TASK_PID_OFFSET)), task_field(task, config(&TASK_TGID_OFFSET)))
}

/// Reads a task's `(tid, tgid)` at the offsets the loader found in BTF.
#[inline(always)]
pub(crate) fn task_ids(task: *const u8) -> Result<(u32, u32), u32> {
    let (tid_at, tgid_at) = (config(&TASK_PID_OFFSET), config(&TASK_TGID_OFFSET));
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an
    // error, not a fault.
    unsafe {
        // Side by side in task_struct: one helper call reads both (the
        // verifier keeps only the branch the loader's offsets take).
        if tgid_at == tid_at + 4 {
            let ids =
                bpf_probe_read_kernel(task.add(tid_at as usize).cast::<[u32; 2]>()).map_err(|_| 0u32)?;
            return Ok((ids[0], ids[1]));
        }
        let tid = bpf_probe_read_kernel(task.add(tid_at as usize).cast::<u32>()).map_err(|_| 0u32)?;
        let tgid = bpf_probe_read_kernel(task.add(tgid_at as usize).cast::<u32>()).map_err(|_| 0u32)?;
        Ok((tid, tgid))
    }
}
