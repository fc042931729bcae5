//! Types shared by the kernel programs (`probe-ebpf`) and the loader (`probe`).
//!
//! Every record that crosses the ring buffer is `#[repr(C)]`, has no padding
//! (ring-buffer memory is not zeroed, so a hole would leak stale kernel bytes
//! and make decoding depend on garbage) and starts with an [`EventKind`] tag.
#![no_std]

/// Tags the record type at the start of every ring-buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`SyscallEvent`].
    Syscall = 1,
}

impl EventKind {
    /// Decodes a tag read from the ring buffer; unknown tags are `None`.
    pub fn from_u32(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Syscall),
            _ => None,
        }
    }
}

/// `SyscallEvent::flags`: the syscall does not return (`exit`, `exit_group`),
/// so the record counts the call but carries no latency.
pub const SYSCALL_NO_RETURN: u32 = 1;

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
    /// The thread's name when the syscall returned, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// What `sys_enter` keeps per thread until the matching `sys_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// `bpf_ktime_get_ns()` at `sys_enter`.
    pub start_ns: u64,
    /// Syscall number (`sys_exit` only has the return value at hand).
    pub nr: u32,
    /// Explicit padding, so that the map value has no hole.
    pub _pad: u32,
}

/// Indexes of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events dropped because the ring buffer was full.
    LostEvents = 0,
    /// Syscalls not timed because the in-flight map was full.
    InFlightFull = 1,
}

/// Number of slots in `COUNTERS`.
pub const COUNTER_SLOTS: u32 = 2;

impl SyscallEvent {
    /// Decodes one ring-buffer record; `None` unless it is exactly a
    /// `SyscallEvent` with the right tag.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length is checked and every bit pattern is a valid
        // `SyscallEvent` (integers and a byte array only).
        let event: Self = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        (EventKind::from_u32(event.kind) == Some(EventKind::Syscall)).then_some(event)
    }
}

/// Default capacity of the in-flight map: threads inside a syscall at once.
pub const DEFAULT_MAX_THREADS: u32 = 16_384;

/// Highest syscall number the `-e` filter can name, exclusive.
pub const MAX_SYSCALL_NR: u32 = 1024;

// The layouts are a contract between two compilers: pin them.
const _: () = assert!(core::mem::size_of::<SyscallEvent>() == 64);
const _: () = assert!(core::mem::align_of::<SyscallEvent>() == 8);
const _: () = assert!(core::mem::size_of::<InFlight>() == 16);
