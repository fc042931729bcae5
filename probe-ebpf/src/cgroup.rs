//! `--cgroup`: only threads in the given cgroups (v2) and their
//! descendants are traced.
//!
//! A thread running a program is checked exactly, with
//! `bpf_current_task_under_cgroup` on each cgroup of `CGROUPS` (the
//! kernel's own ancestry test, O(1) per cgroup: `cgroup->ancestors[level]`).
//! The scheduler events about another task (the woken one, the next in
//! `sched_switch`) cannot use that helper, and a raw tracepoint's task
//! argument is a plain pointer: its cgroup chain (`cgroups`, `dfl_cgrp`,
//! `level`, `ancestors[level]`, `kn`, `id`) would cost a
//! `bpf_probe_read_kernel` per link, about 70 ns each on this VM, on
//! every wakeup and switch. So they read `IN_CGROUPS[tid]`, the verdict the thread's own
//! last check left there (userspace sets it for the threads already in the
//! cgroups, `sched_process_fork` for new ones): an array byte, which the
//! verifier inlines. It lags only for a thread moved between cgroups while
//! asleep, until it next runs a program itself: its wakeup and switch-in
//! then follow its old cgroup, and its first switch-out is sent if either
//! says so, so that a thread seen getting a CPU is also seen leaving it.

use aya_ebpf::{
    macros::map,
    maps::{Array, CgroupArray},
};
use probe_common::MAX_CGROUPS;

use crate::shared::{config, task_ids};

/// How many cgroups `CGROUPS` holds; zero: no cgroup filter, and every
/// check below is pruned by the verifier. Set by the loader, like the
/// globals in `shared`.
#[unsafe(no_mangle)]
static FILTER_CGROUPS: u32 = 0;
shared!(global FILTER_CGROUPS);

/// The cgroups whose threads are traced, by directory fd.
#[map]
static CGROUPS: CgroupArray = CgroupArray::with_max_entries(MAX_CGROUPS, 0);
/// `IN_CGROUPS[tid] != 0`: the thread was in one of the cgroups at its
/// last check. The loader sizes it to `pid_max` when filtering.
#[map]
static IN_CGROUPS: Array<u8> = Array::with_max_entries(1, 0);
shared!(map CGROUPS, IN_CGROUPS);

#[inline(always)]
fn filtering() -> bool {
    config(&FILTER_CGROUPS) != 0
}

/// Whether the current thread `tid` is in one of the cgroups, checked
/// exactly, and left in `IN_CGROUPS` for the events about it that other
/// threads' programs send.
#[inline(always)]
fn check_current(tid: u32) -> bool {
    let count = config(&FILTER_CGROUPS);
    let mut inside = false;
    for index in 0..MAX_CGROUPS {
        if index >= count {
            break;
        }
        if CGROUPS.current_task_under_cgroup(index) == Ok(true) {
            inside = true;
            break;
        }
    }
    remember(tid, inside);
    inside
}

/// Writes the verdict only when it changes: the line stays shared between
/// CPUs that read it.
#[inline(always)]
fn remember(tid: u32, inside: bool) {
    if let Some(slot) = IN_CGROUPS.get_ptr_mut(tid) {
        // SAFETY: a byte of an array map; a racing write of another verdict
        // for the same thread can only come from that thread's own check.
        unsafe {
            if *slot != u8::from(inside) {
                *slot = u8::from(inside);
            }
        }
    }
}

/// `IN_CGROUPS[tid]`: the thread's last verdict.
#[inline(always)]
fn last_verdict(tid: u32) -> bool {
    IN_CGROUPS.get(tid).is_some_and(|&inside| inside != 0)
}

/// The current thread `tid` passes the cgroup filter (always, without one).
#[inline(always)]
pub(crate) fn current_passes(tid: u32) -> bool {
    !filtering() || check_current(tid)
}

/// Thread `tid`, not the current one, passes the cgroup filter, as far as
/// its last check says.
#[inline(always)]
pub(crate) fn thread_passes(tid: u32) -> bool {
    !filtering() || last_verdict(tid)
}

/// The current thread `tid`, leaving its CPU, passes: in the cgroups now,
/// or when its switch-in was decided.
#[inline(always)]
pub(crate) fn leaving_thread_passes(tid: u32) -> bool {
    !filtering() || {
        let was = last_verdict(tid);
        check_current(tid) || was
    }
}

/// A new thread, `child` (its task), starts with the verdict of the
/// current thread `parent`, its creator, whose cgroup it inherits (one that
/// `clone3` puts in another with `CLONE_INTO_CGROUP` is corrected at its
/// first own check).
#[inline(always)]
pub(crate) fn inherit(parent: u32, child: *const u8) -> Result<(), u32> {
    if filtering() {
        let (tid, _) = task_ids(child)?;
        remember(tid, check_current(parent));
    }
    Ok(())
}
