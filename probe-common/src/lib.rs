//! Types shared by the kernel programs (`probe-ebpf`) and the loader (`probe`).
//!
//! Every record that crosses the ring buffer is `#[repr(C)]`, has no padding
//! (ring-buffer memory is not zeroed, so a hole would leak stale kernel bytes
//! and make decoding depend on garbage) and starts with an [`EventKind`] tag.
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

pub mod names;

/// Tags the record type at the start of every ring-buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`SyscallEvent`].
    Syscall = 1,
    /// A [`SchedEvent`]: the thread left its CPU.
    SwitchOut = 2,
    /// A [`SchedEvent`]: the thread got a CPU.
    SwitchIn = 3,
    /// A [`SchedEvent`]: the thread became runnable (`sched_wakeup`).
    Wakeup = 4,
    /// A [`SchedEvent`]: a new thread became runnable (`sched_wakeup_new`).
    WakeupNew = 5,
    // 6 to 9 were the Go runtime's uprobes' records: goroutines now come
    // with each syscall record.
    /// An [`IoUringEvent`]: a request completed.
    IoUring = 10,
    /// A [`SlowDetail`]: what a call of `--slow`'s left behind at its
    /// return, sent just before its [`SyscallEvent`].
    SlowDetail = 11,
    /// A [`WakeEvent`]: who is waking a thread (`sched_waking`), with
    /// `--slow`; the [`EventKind::Wakeup`] follows.
    WokenBy = 12,
    /// A [`RanEvent`]: a thread that is not traced (or the idle task) left
    /// a CPU while a traced thread waited in a run queue.
    Ran = 13,
    /// A [`SyscallBatch`]: several [`SyscallEvent`]s of one CPU, in order.
    SyscallBatch = 14,
}

impl EventKind {
    /// Decodes a tag read from the ring buffer; unknown tags are `None`.
    pub fn from_u32(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Syscall),
            2 => Some(Self::SwitchOut),
            3 => Some(Self::SwitchIn),
            4 => Some(Self::Wakeup),
            5 => Some(Self::WakeupNew),
            10 => Some(Self::IoUring),
            11 => Some(Self::SlowDetail),
            12 => Some(Self::WokenBy),
            13 => Some(Self::Ran),
            14 => Some(Self::SyscallBatch),
            _ => None,
        }
    }
}

/// `SyscallEvent::flags`: the syscall does not return (`exit`, `exit_group`),
/// so the record counts the call but carries no latency.
pub const SYSCALL_NO_RETURN: u32 = 1;

/// `SyscallEvent::flags`: the call returned, but its entry was not seen (it
/// was in progress when probe attached, or its entry's record was lost).
/// `start_ns` is then the time it returned, `duration_ns` 0, and `nr` was
/// read from the thread's registers at the exit.
pub const SYSCALL_UNSEEN_ENTRY: u32 = 2;

/// Length of a task's `comm`, the kernel's `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// One completed syscall of a traced thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEvent {
    /// Always [`EventKind::Syscall`].
    pub kind: u32,
    /// CPU the syscall returned on.
    pub cpu: u32,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Syscall number of the running architecture.
    pub nr: u32,
    /// `SYSCALL_*` flags.
    pub flags: u32,
    /// Raw return value: `-4095..=-1` is `-errno`.
    pub ret: i64,
    /// `bpf_ktime_get_ns()` at `sys_enter`.
    pub start_ns: u64,
    /// Time from `sys_enter` to `sys_exit`; 0 with [`SYSCALL_NO_RETURN`].
    pub duration_ns: u64,
    /// The thread's name when the syscall returned, NUL-padded; zeros
    /// (reading it costs a third of the record) except for calls that never
    /// return or may rename the thread: see [`syscall_flags`].
    pub comm: [u8; COMM_LEN],
    /// The goroutine that made the call, read from its thread at
    /// `sys_enter` (0: the runtime's own g0); [`NO_GOROUTINE`] outside the
    /// followed Go program, [`GOROUTINE_UNREAD`] where it could not be read.
    pub goid: u64,
    /// The pc the goroutine was started at (`runtime.g.startpc`); 0 when
    /// not read (the thread's previous call on this CPU was the same
    /// goroutine's, whose start userspace already has).
    pub go_start_pc: u64,
}

/// Syscall records a CPU gathers before it sends them as one
/// [`SyscallBatch`]: a ring-buffer record costs a helper call (about 50 ns
/// on the test VM) whatever its size.
pub const BATCH_EVENTS: usize = 16;

/// Syscall records of one CPU, in the order their calls returned, sent as
/// one ring-buffer record of `8 + count * 80` bytes (only the first `count`
/// events). A CPU sends its batch when it is full, before any other record
/// of the thread leaving the CPU (`sched_switch`), with a slow call's, and
/// when userspace asks for it (each interval, and at the end).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallBatch {
    /// Always [`EventKind::SyscallBatch`].
    pub kind: u32,
    /// Events in `events`, at most [`BATCH_EVENTS`].
    pub count: u32,
    pub events: [SyscallEvent; BATCH_EVENTS],
}

/// Bytes before a [`SyscallBatch`]'s events.
pub const BATCH_HEADER: usize = core::mem::offset_of!(SyscallBatch, events);

/// The records one ring-buffer entry holds, each as the bytes
/// [`Record::decode`] takes: a batch's events one by one, in order; any
/// other entry as it is (a batch whose count does not match its size too,
/// for `decode` to refuse).
#[cfg(feature = "user")]
pub fn entry_records(entry: &[u8]) -> impl Iterator<Item = &[u8]> {
    const EVENT: usize = core::mem::size_of::<SyscallEvent>();
    let tag = entry.get(..4).map(|tag| u32::from_ne_bytes([tag[0], tag[1], tag[2], tag[3]]));
    let count = entry.get(4..8).map(|count| u32::from_ne_bytes([count[0], count[1], count[2], count[3]]));
    let events = match (tag, count) {
        (Some(tag), Some(count))
            if tag == EventKind::SyscallBatch as u32
                && (count as usize) <= BATCH_EVENTS
                && entry.len() == BATCH_HEADER + count as usize * EVENT =>
        {
            Some(&entry[BATCH_HEADER..])
        }
        _ => None,
    };
    let whole = match events {
        Some(_) => None,
        None => Some(entry),
    };
    events.into_iter().flat_map(|events| events.chunks_exact(EVENT)).chain(whole)
}

/// `SyscallEvent::goid` of a process that is not the followed Go program.
pub const NO_GOROUTINE: u64 = u64::MAX;

/// `SyscallEvent::goid` of a call of the followed Go program whose
/// goroutine could not be read (before the runtime set up the thread's
/// TLS, or a page the kernel could not read without faulting).
pub const GOROUTINE_UNREAD: u64 = u64::MAX - 1;

/// `TRACED[pid]` of a traced process that runs the followed Go program
/// (any other non-zero value: traced).
pub const TRACED_GO: u8 = 2;

/// `SchedEvent::flags` of a [`EventKind::SwitchOut`]: the thread gave up its
/// CPU itself (it blocked), as the kernel counts `nvcsw`; otherwise it was
/// preempted while runnable (`nivcsw`).
pub const SWITCH_VOLUNTARY: u32 = 1;

/// `SchedEvent::flags` of a [`EventKind::SwitchOut`]: the thread's last
/// switch, it has exited.
pub const SWITCH_EXITED: u32 = 2;

/// `SchedEvent::flags` of a [`EventKind::SwitchOut`]: the thread was created
/// after the programs were loaded, so every move the kernel counted for it
/// is one of the trace's, even when its `WakeupNew` record was dropped.
pub const SWITCH_NEW_THREAD: u32 = 4;

/// The kernel's largest errno; `-4095..=-1` returns are errors.
pub const MAX_ERRNO: i64 = 4095;

/// The errno a syscall's return value `ret` reports (`-errno`), if any.
#[inline(always)]
pub fn errno_of(ret: i64) -> Option<u32> {
    (-MAX_ERRNO..0).contains(&ret).then_some(-ret as u32)
}

/// One scheduler event of a traced thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedEvent {
    /// [`EventKind::SwitchOut`], `SwitchIn`, `Wakeup` or `WakeupNew`.
    pub kind: u32,
    /// CPU the event happened on (for a wakeup: the waker's CPU).
    pub cpu: u32,
    /// Process id (tgid) of the thread the event is about.
    pub pid: u32,
    /// Thread id of the thread the event is about.
    pub tid: u32,
    /// `SWITCH_*` flags.
    pub flags: u32,
    /// In a voluntary `SwitchOut` with `--slow`: what the thread blocked
    /// on, its kernel stack's id in `KERNEL_STACKS` plus one; 0 otherwise.
    pub kernel_stack: u32,
    /// `bpf_ktime_get_ns()` of the event.
    pub ts_ns: u64,
    /// In a `SwitchOut`: the kernel's count of the thread's moves between
    /// CPUs so far (`task_struct.se.nr_migrations`), which a lost record
    /// cannot falsify; 0 otherwise.
    pub nr_migrations: u64,
    /// The thread's name, in a `SwitchOut` (the only event that runs as the
    /// thread itself); zeros otherwise.
    pub comm: [u8; COMM_LEN],
}

/// A thread that is not traced left CPU `cpu` at `ts_ns` while a traced
/// thread waited in a run queue (or in whole-system mode, where only probe
/// itself is not traced): it held the CPU since the CPU's previous switch,
/// so userspace can say who a traced thread waited behind. pid and tid 0:
/// the idle task, sent only when the next task is not traced either (a
/// traced one's `SwitchIn` already ends the idle time).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RanEvent {
    /// Always [`EventKind::Ran`].
    pub kind: u32,
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    /// `bpf_ktime_get_ns()` of the switch.
    pub ts_ns: u64,
    /// Its name.
    pub comm: [u8; COMM_LEN],
}

/// `WakeEvent::context`: the waker ran in a task's context (a syscall, a
/// kernel thread, or a fault), so it is the waker.
pub const WAKER_TASK: u32 = 0;
/// `WakeEvent::context`: the wakeup came from an interrupt (a timer, a
/// device) or a softirq on the interrupt's stack: the task that was
/// interrupted is not the waker, and only the kernel stack tells what was.
pub const WAKER_INTERRUPT: u32 = 1;

/// `WakeEvent::waker_nr` when the waker was not in a syscall.
pub const NO_SYSCALL: u32 = u32::MAX;

/// A traced thread is being woken, and who does it (`sched_waking`, which
/// runs as the waker). Sent with `--slow`, before the `SchedEvent` `Wakeup`
/// of the same wakeup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeEvent {
    /// Always [`EventKind::WokenBy`].
    pub kind: u32,
    /// The waker's CPU.
    pub cpu: u32,
    /// The thread woken, and its process.
    pub pid: u32,
    pub tid: u32,
    /// The task that ran the wakeup, and its process; with
    /// [`WAKER_INTERRUPT`], the one that was interrupted.
    pub waker_pid: u32,
    pub waker_tid: u32,
    /// The waker's syscall in progress (`COMPAT_NR` marks an i386 one), or
    /// [`NO_SYSCALL`].
    pub waker_nr: u32,
    /// [`WAKER_TASK`] or [`WAKER_INTERRUPT`].
    pub context: u32,
    /// The wakeup's kernel stack: its id in `KERNEL_STACKS` plus one; 0
    /// when it could not be kept; [`KERNEL_STACK_NOT_TAKEN`] when the woken
    /// call had not yet run `--slow`'s threshold.
    pub kernel_stack: u32,
    /// Explicit padding, so that the record has no hole.
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the waking.
    pub ts_ns: u64,
    /// The waker's name.
    pub waker_comm: [u8; COMM_LEN],
}

/// Words of `pt_regs` a [`SlowDetail`] carries: x86-64's whole struct
/// (the loader checks the kernel's size in BTF).
pub const REGS_WORDS: usize = 21;

/// Bytes of user stack, from the stack pointer up, a [`SlowDetail`]
/// carries: enough for a DWARF unwinder to walk the frames of the usual
/// programs (perf's default is 8 KiB).
pub const STACK_BYTES: usize = 16_384;

/// What a call of `--slow`'s left behind at its return, for userspace to
/// unwind, symbolize and decode: the thread's user registers (a syscall
/// changes none but the return value's, so they are those of its entry)
/// and the top of its user stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowDetail {
    /// Always [`EventKind::SlowDetail`].
    pub kind: u32,
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    /// The call's `start_ns`, which its [`SyscallEvent`] carries too.
    pub start_ns: u64,
    /// Bytes of `stack` read: the most of `STACK_BYTES`, halved until the
    /// read stayed inside the stack's mapping; 0 if none could be read.
    pub stack_len: u32,
    /// Explicit padding, so that the record has no hole.
    pub _pad: u32,
    /// The thread's `struct pt_regs` at the return, raw: the loader finds
    /// each register's place in BTF.
    pub regs: [u64; REGS_WORDS],
    /// The user stack from the stack pointer up.
    pub stack: [u8; STACK_BYTES],
}

/// Capacity of `KERNEL_STACKS`: distinct kernel stacks (blocking sites and
/// wakeup paths) kept for `--slow`. One seen again costs no entry.
pub const MAX_KERNEL_STACKS: u32 = 16_384;

/// A [`WakeEvent`]'s `kernel_stack` when the wakeup's stack was not taken:
/// a walk costs microseconds at every wakeup, so it is taken only for a
/// call already as slow as `--slow` asks when it is woken.
pub const KERNEL_STACK_NOT_TAKEN: u32 = u32::MAX;

/// What the start-up check program read from probe's own task, to prove
/// that the `task_struct` offsets found in BTF are right before any result
/// depends on them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffsetCheck {
    /// `bpf_get_current_pid_tgid()`: the truth.
    pub pid_tgid: u64,
    /// `pid` read at its offset.
    pub pid: u32,
    /// `tgid` read at its offset.
    pub tgid: u32,
    /// Non-zero: the program found itself on probe's task's kernel stack,
    /// as `--slow` tells a wakeup in a task from one in an interrupt.
    pub on_task_stack: u32,
    /// Explicit padding, so that the record has no hole.
    pub _pad: u32,
}

/// A syscall in flight: what `sys_enter` keeps for `sys_exit`.
///
/// It sits in a per-CPU slot while its thread stays on the CPU, which is
/// nearly always; only when the thread leaves the CPU mid-syscall does
/// `sched_switch` park it in a hash map keyed by thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// `bpf_ktime_get_ns()` at `sys_enter`; 0 when the slot is free.
    pub start_ns: u64,
    /// Syscall number (`sys_exit` only has the return value at hand).
    pub nr: u32,
    /// The thread making the call, and its process: `sys_exit` then needs
    /// no helper call to name them.
    pub tid: u32,
    pub pid: u32,
    /// `SYSCALL_FLAGS[nr]`, looked up once.
    pub flags: u32,
    /// `SyscallEvent::goid` and `go_start_pc`, read at entry.
    pub goid: u64,
    pub go_start_pc: u64,
}

/// What each CPU keeps between programs (the per-CPU `CPU_STATE`), which
/// userspace also reads: its `call` is the syscall in progress on the CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// The syscall in flight on this CPU, if its thread has not left the
    /// CPU; `start_ns` is 0 when there is none. `sched_switch` empties it
    /// whenever a thread leaves, so a call found here at `sys_exit` is the
    /// current thread's: `sys_exit` need not ask who is running.
    pub call: InFlight,
    /// Records this CPU sent since it last woke the reader.
    pub unsent: u32,
    /// The thread of the latest call of the followed Go program on this
    /// CPU, and its goroutine: a goroutine's next call on the same thread
    /// and CPU need not read its start again.
    pub go_tid: u32,
    pub go_goid: u64,
}

/// `SYSCALL_FLAGS[nr]` bits: what the kernel programs do with syscall `nr`.
pub mod syscall_flags {
    /// Traced when `-e` names syscalls.
    pub const WANTED: u8 = 1;
    /// Never returns (`exit`, `exit_group`): recorded at entry.
    pub const NO_RETURN: u8 = 2;
    /// May rename the thread (`execve`, `prctl`): its record carries `comm`.
    pub const RENAMES: u8 = 4;
    /// Makes a thread or process (`clone`, `fork`, ...): the new one's
    /// first return from it (0) has no entry, and is not a call in progress
    /// at attach.
    pub const FORKS: u8 = 8;
}

/// Indexes of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events dropped because the ring buffer was full.
    LostEvents = 0,
    /// Syscalls lost because the map of calls parked off-CPU was full.
    InFlightFull = 1,
    /// Syscall records dropped that `LOST_CALLS` could not count either
    /// (it was full): only then are counts no longer exact.
    LostUncounted = 2,
    /// io_uring requests not followed because the map of requests in
    /// flight was full.
    IoUringFull = 3,
}

/// Number of slots in `COUNTERS`.
pub const COUNTER_SLOTS: u32 = 4;

/// `IoUringEvent::flags`: the request went to an io-wq worker.
pub const IO_URING_ASYNC: u32 = 1;

/// Length of an io_uring opcode's name as the kernel spells it.
pub const OP_NAME_LEN: usize = 16;

/// One completed io_uring request of a traced thread: submitted by it (or by
/// the ring's SQPOLL thread for it), completed by whichever context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoUringEvent {
    /// Always [`EventKind::IoUring`].
    pub kind: u32,
    /// CPU the request completed on.
    pub cpu: u32,
    /// Process and thread charged: the submitter.
    pub pid: u32,
    pub tid: u32,
    /// The kernel's opcode number.
    pub opcode: u32,
    /// `IO_URING_*` flags.
    pub flags: u32,
    /// The completion's result: `-errno` on failure.
    pub res: i32,
    /// Explicit padding, so that the record has no hole.
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` at submission.
    pub start_ns: u64,
    /// Submission to completion.
    pub duration_ns: u64,
    /// The opcode's name (`READ`, `NOP`, …) from the kernel, NUL-padded.
    pub op_name: [u8; OP_NAME_LEN],
}

/// An io_uring request in flight, by request address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRequest {
    pub pid: u32,
    pub tid: u32,
    pub opcode: u32,
    pub flags: u32,
    pub start_ns: u64,
}

/// Capacity of the map of io_uring requests in flight.
pub const MAX_IO_REQUESTS: u32 = 16_384;

/// Key of `LOST_CALLS`: the syscalls whose records the ring buffer had no
/// room for are counted by thread, syscall and errno, so that userspace
/// still gets every count exact; only their latencies are missing. Dropped
/// scheduler records are counted there too, by thread, under the `nr`s
/// `LOST_*` (beyond any syscall number): switches stay exact, and the
/// thread's scheduler times are known to be a sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LostCall {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Syscall number.
    pub nr: u32,
    /// The errno it failed with; 0 when it succeeded.
    pub errno: u32,
}

/// `LostCall::nr` of a dropped voluntary `SwitchOut`.
pub const LOST_VOLUNTARY_SWITCH: u32 = 0x8000_0000;
/// `LostCall::nr` of a dropped involuntary `SwitchOut`.
pub const LOST_INVOLUNTARY_SWITCH: u32 = 0x8000_0001;
/// `LostCall::nr` of a dropped `SwitchIn`.
pub const LOST_SWITCH_IN: u32 = 0x8000_0002;
/// `LostCall::nr` of a dropped `Wakeup` or `WakeupNew`.
pub const LOST_WAKEUP: u32 = 0x8000_0003;
/// `LostCall::nr` whose value is not a count but the kernel's count of the
/// thread's migrations at its latest dropped `SwitchOut`: when its last
/// switch-outs are dropped, its migrations stay exact all the same.
pub const LOST_MIGRATIONS: u32 = 0x8000_0004;

/// Capacity of `LOST_CALLS`: (thread, syscall, errno) combinations.
pub const MAX_LOST_KEYS: u32 = 1 << 20;

/// A ring-buffer record, decoded: the one place a record's tag is read.
/// A new record kind is a struct above, a variant here and its arm in
/// [`Record::decode`]. Userspace's only: a slow call's detail is boxed,
/// so that the other records, one per event, stay small.
#[cfg(feature = "user")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Syscall(SyscallEvent),
    Sched(SchedEvent),
    IoUring(IoUringEvent),
    SlowDetail(alloc::boxed::Box<SlowDetail>),
    WokenBy(WakeEvent),
    Ran(RanEvent),
}

#[cfg(feature = "user")]
impl Record {
    /// Decodes one ring-buffer record, whatever its bytes: `None` unless it
    /// starts with a known tag and has exactly its type's size.
    #[inline]
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let tag = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
        Some(match EventKind::from_u32(tag)? {
            EventKind::Syscall => Self::Syscall(read_record(bytes)?),
            EventKind::SwitchOut | EventKind::SwitchIn | EventKind::Wakeup | EventKind::WakeupNew => {
                Self::Sched(read_record(bytes)?)
            }
            EventKind::IoUring => Self::IoUring(read_record(bytes)?),
            EventKind::SlowDetail => Self::SlowDetail(alloc::boxed::Box::new(read_record(bytes)?)),
            EventKind::WokenBy => Self::WokenBy(read_record(bytes)?),
            EventKind::Ran => Self::Ran(read_record(bytes)?),
            // Unpacked by `entry_records` before it gets here.
            EventKind::SyscallBatch => return None,
        })
    }
}

/// Reads a record type from exactly its size in bytes.
///
/// Only for the padding-free `#[repr(C)]` records of this crate, made of
/// integers and byte arrays, for which every bit pattern is a valid value.
#[cfg(feature = "user")]
fn read_record<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked, the read is unaligned, and every bit
    // pattern is a valid `T` (see above).
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Capacity of the map of parked calls: threads blocked in a syscall at once.
pub const MAX_PARKED_CALLS: u32 = 65_536;

/// Most cgroups `--cgroup` takes: one `bpf_current_task_under_cgroup` each
/// in every check of a thread, so a few.
pub const MAX_CGROUPS: u32 = 8;

/// Syscall numbers `SYSCALL_FLAGS` covers, exclusive: x86-64's below
/// `COMPAT_FLAGS_BASE`, the i386 table's from there.
pub const MAX_SYSCALL_NR: u32 = 1024;

/// Where the i386 table's syscalls start in `SYSCALL_FLAGS` (both tables
/// have fewer than 512 numbers).
pub const COMPAT_FLAGS_BASE: u32 = 512;

/// Syscall `nr`'s index in the per-syscall arrays (`SYSCALL_FLAGS`,
/// `DETAIL_NS`): the i386 table's (`COMPAT_NR`) from `COMPAT_FLAGS_BASE`.
#[inline(always)]
pub const fn table_index(nr: u32) -> u32 {
    if nr & COMPAT_NR != 0 {
        (nr & !COMPAT_NR) + COMPAT_FLAGS_BASE
    } else {
        nr
    }
}

/// Set in a syscall number (`InFlight::nr`, `SyscallEvent::nr`,
/// `LostCall::nr`) made through a 32-bit entry: the number is the i386
/// table's. Below the `LOST_*` numbers, above any syscall's.
pub const COMPAT_NR: u32 = 0x4000_0000;

// The layouts are a contract between two compilers: pin them.
const _: () = assert!(core::mem::size_of::<SyscallEvent>() == 80);
const _: () = assert!(core::mem::size_of::<SyscallBatch>() == BATCH_HEADER + 80 * BATCH_EVENTS);
const _: () = assert!(BATCH_HEADER == 8);
const _: () = assert!(core::mem::align_of::<SyscallEvent>() == 8);
const _: () = assert!(core::mem::size_of::<InFlight>() == 40);
const _: () = assert!(core::mem::size_of::<CpuState>() == 56);
const _: () = assert!(core::mem::offset_of!(CpuState, call) == 0);
const _: () = assert!(core::mem::size_of::<SchedEvent>() == 56);
const _: () = assert!(core::mem::align_of::<SchedEvent>() == 8);
const _: () = assert!(core::mem::size_of::<IoUringEvent>() == 64);
const _: () = assert!(core::mem::size_of::<IoRequest>() == 24);
const _: () = assert!(core::mem::size_of::<OffsetCheck>() == 24);
const _: () = assert!(core::mem::size_of::<LostCall>() == 16);
const _: () = assert!(core::mem::size_of::<WakeEvent>() == 64);
const _: () = assert!(core::mem::size_of::<RanEvent>() == 40);
const _: () = assert!(core::mem::size_of::<SlowDetail>() == 32 + 8 * REGS_WORDS + STACK_BYTES);

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    fn bytes<T>(value: &T) -> &[u8] {
        // SAFETY: reading the bytes of a padding-free `#[repr(C)]` value.
        unsafe { core::slice::from_raw_parts((value as *const T).cast(), core::mem::size_of::<T>()) }
    }

    #[test]
    fn records_decode_by_tag_and_size_only() {
        let syscall = SyscallEvent {
            kind: EventKind::Syscall as u32,
            cpu: 1,
            pid: 2,
            tid: 3,
            nr: 4,
            flags: 0,
            ret: -2,
            start_ns: 5,
            duration_ns: 6,
            comm: [b'x'; COMM_LEN],
            goid: 7,
            go_start_pc: 8,
        };
        assert_eq!(Record::decode(bytes(&syscall)), Some(Record::Syscall(syscall)));
        assert_eq!(Record::decode(&bytes(&syscall)[1..]), None);
        assert_eq!(Record::decode(&bytes(&syscall)[..64]), None);

        let mut switch = SchedEvent {
            kind: EventKind::SwitchIn as u32,
            cpu: 1,
            pid: 2,
            tid: 3,
            flags: 0,
            kernel_stack: 0,
            ts_ns: 7,
            nr_migrations: 0,
            comm: [0; COMM_LEN],
        };
        assert_eq!(Record::decode(bytes(&switch)), Some(Record::Sched(switch)));
        switch.kind = 99;
        assert_eq!(Record::decode(bytes(&switch)), None);
        // A scheduler record's size under the syscall tag is refused.
        switch.kind = EventKind::Syscall as u32;
        assert_eq!(Record::decode(bytes(&switch)), None);
    }

    #[test]
    fn a_batch_is_its_events_in_order_and_nothing_else_is_split() {
        let event = |nr| SyscallEvent {
            kind: EventKind::Syscall as u32,
            cpu: 0,
            pid: 2,
            tid: 3,
            nr,
            flags: 0,
            ret: 0,
            start_ns: u64::from(nr),
            duration_ns: 1,
            comm: [0; COMM_LEN],
            goid: NO_GOROUTINE,
            go_start_pc: 0,
        };
        let mut batch =
            SyscallBatch { kind: EventKind::SyscallBatch as u32, count: 3, events: [event(0); BATCH_EVENTS] };
        for (nr, slot) in batch.events.iter_mut().enumerate() {
            *slot = event(nr as u32);
        }
        let sent = &bytes(&batch)[..BATCH_HEADER + 3 * 80];
        let records: alloc::vec::Vec<_> = entry_records(sent).map(Record::decode).collect();
        assert_eq!(records, [0, 1, 2].map(|nr| Some(Record::Syscall(event(nr)))));

        // A count that does not match the size: the entry as it is, which
        // no record decodes from.
        batch.count = 4;
        let records: alloc::vec::Vec<_> = entry_records(&bytes(&batch)[..BATCH_HEADER + 3 * 80]).collect();
        assert_eq!(records.len(), 1);
        assert_eq!(Record::decode(records[0]), None);
        batch.count = BATCH_EVENTS as u32 + 1;
        assert_eq!(entry_records(bytes(&batch)).count(), 1);

        let single = event(7);
        assert_eq!(entry_records(bytes(&single)).collect::<alloc::vec::Vec<_>>(), [bytes(&single)]);
        assert_eq!(entry_records(&[]).count(), 1);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` integers without padding (sizes asserted above).
    unsafe impl aya::Pod for super::OffsetCheck {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LostCall {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InFlight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CpuState {}
}
