//! The names by which the loader finds what the kernel programs define.
//!
//! aya finds a global by the identifier of its `#[unsafe(no_mangle)]`
//! static, a map by the identifier of its `#[map]` static, and a program by
//! its function's name: a name spelled differently on the two sides is only
//! found out when probe loads. So the loader uses these constants, and
//! `probe-ebpf` checks at compile time (its `shared!` macro, with [`same`])
//! that each item is spelled as its constant here: a rename on one side only
//! does not build.
//!
//! Only what the loader looks up is here; the maps the programs keep to
//! themselves (`IO_REQUESTS`, ...) are not.

/// Read-only globals, set by the loader with `EbpfLoader::override_global`
/// before the programs are verified.
pub mod global {
    /// probe's own tgid, never traced.
    pub const SELF_PID: &str = "SELF_PID";
    /// Non-zero: trace only the tgids set in [`super::map::TRACED`].
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    /// Non-zero: trace only the syscalls flagged `WANTED` in
    /// [`super::map::SYSCALL_FLAGS`].
    pub const FILTER_SYSCALLS: &str = "FILTER_SYSCALLS";
    /// Non-zero: the scheduler programs send scheduler events.
    pub const TRACE_SCHED: &str = "TRACE_SCHED";
    /// Non-zero: a traced syscall that returns without a seen entry (in
    /// progress when probe attached) is sent, flagged `SYSCALL_UNSEEN_ENTRY`.
    pub const REPORT_UNSEEN: &str = "REPORT_UNSEEN";
    /// Byte offset of `pt_regs.orig_ax` (the syscall number) in the running
    /// kernel.
    pub const SYSCALL_NR_OFFSET: &str = "SYSCALL_NR_OFFSET";
    /// Records each CPU sends before it wakes the reader.
    pub const WAKEUP_RECORDS: &str = "WAKEUP_RECORDS";
    /// Non-zero: processes leave `TRACED` when freed, after their final
    /// switch ([`super::program::SCHED_PROCESS_FREE`] is attached).
    pub const UNTRACE_AT_FREE: &str = "UNTRACE_AT_FREE";
    /// Byte offset of `thread_info.status` in `task_struct` (32-bit
    /// syscalls); 0: not looked at.
    pub const TASK_STATUS_OFFSET: &str = "TASK_STATUS_OFFSET";
    /// Byte offset of `se.nr_migrations` in `task_struct`.
    pub const TASK_MIGRATIONS_OFFSET: &str = "TASK_MIGRATIONS_OFFSET";
    /// Byte offset of `start_time` (when the task was created) in
    /// `task_struct`.
    pub const TASK_START_TIME_OFFSET: &str = "TASK_START_TIME_OFFSET";
    /// `CLOCK_MONOTONIC` just before the programs were loaded.
    pub const LOADED_NS: &str = "LOADED_NS";
    /// Byte offset of `task_struct.pid` in the running kernel.
    pub const TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
    /// Byte offset of `task_struct.tgid` in the running kernel.
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// Byte offset of `runtime.g.goid` in the followed Go program.
    pub const GO_GOID_OFFSET: &str = "GO_GOID_OFFSET";
    /// Byte offset of `runtime.g.startpc` in the followed Go program.
    pub const GO_STARTPC_OFFSET: &str = "GO_STARTPC_OFFSET";
    /// Where the followed Go program keeps a thread's `g`, from the
    /// thread's FS base (an `i64`: -8 without cgo).
    pub const GO_TLS_OFFSET: &str = "GO_TLS_OFFSET";
    /// The followed Go program's executable: its device (the kernel's
    /// encoding) and inode.
    pub const GO_EXE_DEV: &str = "GO_EXE_DEV";
    pub const GO_EXE_INO: &str = "GO_EXE_INO";
    /// Byte offset of `thread.fsbase` in `task_struct`.
    pub const TASK_FSBASE_OFFSET: &str = "TASK_FSBASE_OFFSET";
    /// Byte offsets of `linux_binprm.file`, `file.f_inode`, `inode.i_ino`,
    /// `inode.i_sb` and `super_block.s_dev`: which executable an exec runs.
    pub const BINPRM_FILE_OFFSET: &str = "BINPRM_FILE_OFFSET";
    pub const FILE_INODE_OFFSET: &str = "FILE_INODE_OFFSET";
    pub const INODE_INO_OFFSET: &str = "INODE_INO_OFFSET";
    pub const INODE_SB_OFFSET: &str = "INODE_SB_OFFSET";
    pub const SB_DEV_OFFSET: &str = "SB_DEV_OFFSET";
    /// Offset of `ctx` in the `io_uring_submit_req` record.
    pub const IOU_SUBMIT_CTX: &str = "IOU_SUBMIT_CTX";
    /// Offset of `req` in the `io_uring_submit_req` record.
    pub const IOU_SUBMIT_REQ: &str = "IOU_SUBMIT_REQ";
    /// Offset of `opcode` in the `io_uring_submit_req` record.
    pub const IOU_SUBMIT_OPCODE: &str = "IOU_SUBMIT_OPCODE";
    /// Offset of `op_str` (a `__data_loc` field) in the
    /// `io_uring_submit_req` record.
    pub const IOU_SUBMIT_OP_STR: &str = "IOU_SUBMIT_OP_STR";
    /// Offset of `req` in the `io_uring_queue_async_work` record.
    pub const IOU_ASYNC_REQ: &str = "IOU_ASYNC_REQ";
    /// Offset of `req` in the `io_uring_complete` record.
    pub const IOU_COMPLETE_REQ: &str = "IOU_COMPLETE_REQ";
    /// Offset of `res` in the `io_uring_complete` record.
    pub const IOU_COMPLETE_RES: &str = "IOU_COMPLETE_RES";
    /// Offset of `ctx` in the `io_uring_create` record.
    pub const IOU_CREATE_CTX: &str = "IOU_CREATE_CTX";
    /// `--slow`'s threshold in ns; 0: no details are taken.
    pub const SLOW_NS: &str = "SLOW_NS";
    /// Offset of `sp` in `pt_regs`: where a slow call's user stack starts.
    pub const PT_REGS_SP_OFFSET: &str = "PT_REGS_SP_OFFSET";
    /// Offset of `stack` in `task_struct`: the task's kernel stack.
    pub const TASK_STACK_OFFSET: &str = "TASK_STACK_OFFSET";
    pub const FILTER_CGROUPS: &str = "FILTER_CGROUPS";
}

/// Maps the loader sizes, fills or reads.
pub mod map {
    /// The ring buffer of records to userspace; the loader sets its size.
    pub const EVENTS: &str = "EVENTS";
    /// Traced tgids (a byte per PID); the loader sizes it to `pid_max`.
    pub const TRACED: &str = "TRACED";
    /// Traced threads waiting for a CPU (a byte per tid), with `-p`; the
    /// loader sizes it to `pid_max` then.
    pub const WAITING: &str = "WAITING";
    /// Per-CPU counters, indexed by `Counter`.
    pub const COUNTERS: &str = "COUNTERS";
    /// `syscall_flags` per syscall number.
    pub const SYSCALL_FLAGS: &str = "SYSCALL_FLAGS";
    /// Lost syscalls, counted while [`LOST_CALLS_ACTIVE`] is 0.
    pub const LOST_CALLS_0: &str = "LOST_CALLS_0";
    /// Lost syscalls, counted while [`LOST_CALLS_ACTIVE`] is 1.
    pub const LOST_CALLS_1: &str = "LOST_CALLS_1";
    /// Which of [`LOST_CALLS_0`] and [`LOST_CALLS_1`] the programs count into.
    pub const LOST_CALLS_ACTIVE: &str = "LOST_CALLS_ACTIVE";
    /// Syscalls whose thread left its CPU before they returned, by thread.
    pub const CALLS_OFF_CPU: &str = "CALLS_OFF_CPU";
    /// Per CPU, the `CpuState`: the syscall in flight on that CPU, if any.
    pub const CPU_STATE: &str = "CPU_STATE";
    /// What [`super::program::CHECK_OFFSETS`] read from probe's own task.
    pub const OFFSET_CHECK: &str = "OFFSET_CHECK";
    /// Kernel stacks of blocking switch-outs and wakeups, with `--slow`.
    pub const KERNEL_STACKS: &str = "KERNEL_STACKS";
    /// Per syscall, the duration from which its calls send their details.
    pub const DETAIL_NS: &str = "DETAIL_NS";
    pub const CGROUPS: &str = "CGROUPS";
    pub const IN_CGROUPS: &str = "IN_CGROUPS";
}

/// Programs, by function name.
///
/// Each raw tracepoint program's name is also the name of the raw
/// tracepoint it attaches to (`raw_syscalls:sys_enter` is `sys_enter`), and
/// each io_uring program's name is its tracepoint's name in the `io_uring`
/// category (checked on Linux 6.18; `io_uring_submit_req` was
/// `io_uring_submit_sqe` before 5.19): the loader may pass the same
/// constant to `attach`.
pub mod program {
    /// Raw tracepoint `sys_enter` (`raw_syscalls:sys_enter`).
    pub const SYS_ENTER: &str = "sys_enter";
    /// Raw tracepoint `sys_exit` (`raw_syscalls:sys_exit`).
    pub const SYS_EXIT: &str = "sys_exit";
    /// Sends a CPU's batch of syscall records, run by userspace on each
    /// CPU (`BPF_PROG_TEST_RUN`), not attached.
    pub const FLUSH_SYSCALLS: &str = "flush_syscalls";
    /// Readies the lost-call maps' allocator on a CPU, run by userspace on
    /// each CPU (`BPF_PROG_TEST_RUN`) before the others are attached.
    pub const WARM_LOST_CALLS: &str = "warm_lost_calls";
    /// Raw tracepoint `sched_switch` (`sched:sched_switch`).
    pub const SCHED_SWITCH: &str = "sched_switch";
    /// Raw tracepoint `sched_wakeup` (`sched:sched_wakeup`).
    pub const SCHED_WAKEUP: &str = "sched_wakeup";
    /// Raw tracepoint `sched_wakeup_new` (`sched:sched_wakeup_new`).
    pub const SCHED_WAKEUP_NEW: &str = "sched_wakeup_new";
    /// Raw tracepoint `sched_waking` (`sched:sched_waking`), with `--slow`.
    pub const SCHED_WAKING: &str = "sched_waking";
    /// Raw tracepoint `sched_process_fork` (`sched:sched_process_fork`).
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    /// Raw tracepoint `sched_process_exit` (`sched:sched_process_exit`).
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    /// Raw tracepoint `sched_process_free` (`sched:sched_process_free`).
    pub const SCHED_PROCESS_FREE: &str = "sched_process_free";

    /// Raw tracepoint `sched_process_exec` (`sched:sched_process_exec`),
    /// when a Go program is followed.
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";

    /// Tracepoint `io_uring:io_uring_submit_req`.
    pub const IO_URING_SUBMIT_REQ: &str = "io_uring_submit_req";
    /// Tracepoint `io_uring:io_uring_queue_async_work`.
    pub const IO_URING_QUEUE_ASYNC_WORK: &str = "io_uring_queue_async_work";
    /// Tracepoint `io_uring:io_uring_complete`.
    pub const IO_URING_COMPLETE: &str = "io_uring_complete";
    /// Tracepoint `io_uring:io_uring_create`.
    pub const IO_URING_CREATE: &str = "io_uring_create";

    /// The start-up check; attaches to the raw tracepoint `sys_enter`, so
    /// its name is not a tracepoint's.
    pub const CHECK_OFFSETS: &str = "check_offsets";
    /// The benchmarks' do-nothing program (`--bench-floor`); attaches to the
    /// raw tracepoints of the real programs, so its name is not a
    /// tracepoint's.
    pub const FLOOR: &str = "floor";
}

/// Whether two strings are equal, in a `const` context (`==` on `str` is
/// not `const`): what the kernel programs' compile-time name checks use.
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_compares_bytes() {
        assert!(same("", ""));
        assert!(same("EVENTS", "EVENTS"));
        assert!(same(map::EVENTS, "EVENTS"));
        assert!(!same("EVENTS", "EVENT"));
        assert!(!same("EVENT", "EVENTS"));
        assert!(!same("EVENTS", "EVENTs"));
        assert!(!same("sys_enter", "sys_exit"));
        assert!(!same("", "x"));
        const _: () = assert!(same(program::SYS_ENTER, "sys_enter"));
        const _: () = assert!(!same(program::SYS_ENTER, program::SYS_EXIT));
    }
}
