//! The followed Go program's goroutines, with no uprobes: on linux/amd64 the
//! runtime keeps the running goroutine's `g` in thread-local storage, at a
//! fixed offset from the thread's FS base. `sys_enter` reads it, and the
//! goroutine's id and start, for calls of processes marked `TRACED_GO`; a
//! goroutine keeps its thread from syscall entry to exit, so the call is
//! its. `sched_process_exec` marks a traced process that starts running
//! the followed executable (and unmarks one that leaves it).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use probe_common::{CpuState, GOROUTINE_UNREAD, TRACED_GO};

use crate::shared::{config, current_task_field, is_traced, TRACED};

/// Where the followed Go program keeps what is read, from its binary: the
/// offset of the `g` pointer from the FS base (-8 without cgo; from
/// `runtime.tlsg` with cgo), and `runtime.g`'s `goid` and `startpc`.
#[unsafe(no_mangle)]
static GO_TLS_OFFSET: i64 = 0;
#[unsafe(no_mangle)]
static GO_GOID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static GO_STARTPC_OFFSET: u32 = 0;
/// The followed executable: device (`MKDEV(major, minor)`) and inode.
#[unsafe(no_mangle)]
static GO_EXE_DEV: u32 = 0;
#[unsafe(no_mangle)]
static GO_EXE_INO: u64 = 0;
shared!(global GO_TLS_OFFSET, GO_GOID_OFFSET, GO_STARTPC_OFFSET, GO_EXE_DEV, GO_EXE_INO);

/// Byte offset of `thread.fsbase` in `task_struct` (from BTF).
#[unsafe(no_mangle)]
static TASK_FSBASE_OFFSET: u32 = 0;
/// From an exec's `linux_binprm` to its executable's inode and device
/// (from BTF).
#[unsafe(no_mangle)]
static BINPRM_FILE_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static FILE_INODE_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static INODE_INO_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static INODE_SB_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static SB_DEV_OFFSET: u32 = 0;
shared!(
    global TASK_FSBASE_OFFSET,
    BINPRM_FILE_OFFSET,
    FILE_INODE_OFFSET,
    INODE_INO_OFFSET,
    INODE_SB_OFFSET,
    SB_DEV_OFFSET
);

/// The current thread's goroutine and, unless this CPU's previous call of
/// the program was the same thread's and goroutine's, its start pc (else
/// 0): `(goid, start_pc)`. `GOROUTINE_UNREAD` when the TLS slot or the `g`
/// cannot be read (before the runtime sets the thread up).
#[inline(always)]
pub(crate) fn goroutine(state: *mut CpuState, tid: u32) -> (u64, u64) {
    let fsbase = current_task_field::<u64>(config(&TASK_FSBASE_OFFSET));
    let slot = fsbase.wrapping_add(config(&GO_TLS_OFFSET) as u64) as *const u64;
    // SAFETY: bpf_probe_read_user checks the addresses; a bad one is an
    // error, not a fault.
    let Ok(g) = (unsafe { bpf_probe_read_user(slot) }) else {
        return (GOROUTINE_UNREAD, 0);
    };
    let g = g as *const u8;
    let Ok(goid) = (unsafe { bpf_probe_read_user(g.add(config(&GO_GOID_OFFSET) as usize).cast::<u64>()) })
    else {
        return (GOROUTINE_UNREAD, 0);
    };
    // SAFETY: this CPU's state; programs on one CPU do not run concurrently.
    let state = unsafe { &mut *state };
    if state.go_tid == tid && state.go_goid == goid {
        return (goid, 0);
    }
    state.go_tid = tid;
    state.go_goid = goid;
    // SAFETY: as above.
    let start_pc =
        unsafe { bpf_probe_read_user(g.add(config(&GO_STARTPC_OFFSET) as usize).cast::<u64>()) }.unwrap_or(0);
    (goid, start_pc)
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_exec(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program sched_process_exec as SCHED_PROCESS_EXEC);

fn try_sched_process_exec(ctx: &RawTracePointContext) -> Result<u32, u32> {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm),
    // as the process, its new program loaded.
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_traced(pid) {
        return Ok(0);
    }
    let bprm = ctx.arg::<*const u8>(2);
    // SAFETY: bpf_probe_read_kernel checks each address; a bad one is an
    // error, not a fault.
    let (ino, dev) = unsafe {
        let file = bpf_probe_read_kernel(bprm.add(config(&BINPRM_FILE_OFFSET) as usize).cast::<*const u8>())
            .map_err(|_| 0u32)?;
        let inode = bpf_probe_read_kernel(file.add(config(&FILE_INODE_OFFSET) as usize).cast::<*const u8>())
            .map_err(|_| 0u32)?;
        let ino = bpf_probe_read_kernel(inode.add(config(&INODE_INO_OFFSET) as usize).cast::<u64>())
            .map_err(|_| 0u32)?;
        let sb = bpf_probe_read_kernel(inode.add(config(&INODE_SB_OFFSET) as usize).cast::<*const u8>())
            .map_err(|_| 0u32)?;
        let dev =
            bpf_probe_read_kernel(sb.add(config(&SB_DEV_OFFSET) as usize).cast::<u32>()).map_err(|_| 0u32)?;
        (ino, dev)
    };
    let traced = if ino == config(&GO_EXE_INO) && dev == config(&GO_EXE_DEV) { TRACED_GO } else { 1 };
    TRACED.set(pid, traced, 0).map_err(|_| 0u32)?;
    Ok(0)
}
