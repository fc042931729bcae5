//! The Go runtime, through uprobes on its functions in a traced Go binary.
//! Each says what the thread (an M) runs now; userspace attributes the
//! thread's syscalls to the goroutine it last ran, which is right because a
//! thread's records arrive in the order they happened, and a goroutine keeps
//! its thread from syscall entry to exit.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};
use probe_common::{EventKind, GoEvent};

use crate::shared::{config, cpu, cpu_state, is_traced, now, send};

/// Byte offsets of `runtime.g`'s `goid` and `startpc` in the traced Go
/// binary, from its DWARF. Set by the loader, like the globals in `shared`.
#[unsafe(no_mangle)]
static GO_GOID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static GO_STARTPC_OFFSET: u32 = 0;
shared!(global GO_GOID_OFFSET, GO_STARTPC_OFFSET);

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
shared!(program go_execute as GO_EXECUTE);

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
shared!(program go_schedule as GO_SCHEDULE);

/// `func goexit1()`: the thread's goroutine ends.
#[uprobe]
pub fn go_exit(_ctx: ProbeContext) -> u32 {
    match go_event(EventKind::GoExit, 0, 0) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program go_exit as GO_EXIT);

/// `func sysmon()`: the thread is the runtime's monitor from now on.
#[uprobe]
pub fn go_sysmon(_ctx: ProbeContext) -> u32 {
    match go_event(EventKind::GoSysmon, 0, 0) {
        Ok(ret) | Err(ret) => ret,
    }
}
shared!(program go_sysmon as GO_SYSMON);
