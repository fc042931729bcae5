//! Programs that trace nothing: the start-up check of the `task_struct`
//! offsets, and the benchmarks' floor.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use probe_common::OffsetCheck;

use crate::{
    shared::{config, task_ids, SELF_PID},
    slow::on_task_stack,
};

/// What `check_offsets` read from probe's own task, for the loader to compare.
#[map]
static OFFSET_CHECK: Array<OffsetCheck> = Array::with_max_entries(1, 0);
shared!(map OFFSET_CHECK);

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
        unsafe {
            *slot = OffsetCheck { pid_tgid, pid, tgid, on_task_stack: u32::from(on_task_stack()), _pad: 0 }
        };
    }
    0
}
shared!(program check_offsets as CHECK_OFFSETS);

/// The benchmarks' floor (`probe --bench-floor`): attached to the same
/// tracepoints as the real programs, it returns at once, so that it costs
/// what any program there costs.
#[raw_tracepoint]
pub fn floor(_ctx: RawTracePointContext) -> u32 {
    0
}
shared!(program floor as FLOOR);
