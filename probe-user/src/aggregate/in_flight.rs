//! Syscalls in progress: what each traced thread is doing now, and the
//! calls that were already in progress when probe attached.
//!
//! The kernel programs hold every call they saw start until it returns (in
//! a per-CPU slot, or parked by thread once the thread left its CPU); the
//! pipeline asks for them at every report. A call that began before probe
//! attached has no entry there: the scan at attach (`/proc`, see
//! `procfs::calls_in_progress`) found it, with an estimated start, and
//! [`CallsAtAttach`] keeps it until it returns. It then comes back as a
//! record flagged `SYSCALL_UNSEEN_ENTRY`, which is counted apart from the
//! timed calls (`unfinished_at_attach`), with the time it took at least.

use probe_common::SyscallEvent;
use rustc_hash::FxHashMap;
use serde::Serialize;

/// Where a thread is, as far as the scheduler's events (or, without them,
/// `/proc`) say. JSON names it `blocked`, `runnable` or `on_cpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadState {
    /// Asleep: it waits for something (`S`, `D` in `/proc`).
    Blocked,
    /// Ready to run, waiting for a CPU. From `/proc` alone (`--no-sched`,
    /// `R`) also a thread on a CPU: `/proc` does not tell them apart.
    Runnable,
    /// Running on a CPU.
    OnCpu,
}

impl ThreadState {
    /// From the state letter of `/proc/PID/task/TID/stat`: `R` is running
    /// or runnable; any other (`S`, `D`, stopped, traced, ...) is not
    /// going to run.
    pub fn from_letter(letter: char) -> Self {
        match letter {
            'R' => Self::Runnable,
            _ => Self::Blocked,
        }
    }

    /// How the text outputs say it.
    pub fn words(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Runnable => "runnable",
            Self::OnCpu => "on CPU",
        }
    }
}

/// A syscall a traced thread was in when probe attached, as `/proc` showed
/// it then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallAtAttach {
    pub pid: u32,
    pub tid: u32,
    /// Syscall number.
    pub nr: u32,
    /// Its six argument registers, raw.
    pub args: [u64; 6],
    /// When it began at the latest, on the kernel's monotonic clock: when
    /// the thread last left its CPU, which a blocked thread did in the call
    /// (see `procfs::calls_in_progress` for how close that is), and never
    /// later than the attach.
    pub started_ns: u64,
    /// The thread's name.
    pub comm: String,
}

/// A thread's syscall in progress when a report is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInFlight {
    pub nr: u32,
    /// Its argument registers, raw, when `/proc` could show them (not while
    /// the thread runs).
    pub args: Option<[u64; 6]>,
    /// Its start on the kernel's monotonic clock: exact for a call that
    /// began after attach, a lower bound's start (the latest it can have
    /// begun) for one that began before.
    pub started_ns: u64,
    /// Time since `started_ns`, when the report was made.
    pub age_ns: u64,
    /// Where the thread is.
    pub state: ThreadState,
    /// It began before probe attached: `age_ns` is a lower bound.
    pub before_attach: bool,
    /// The thread's name, for a thread no record named.
    pub comm: String,
}

/// The calls in progress at attach that have not returned yet, and what
/// the ones that did took.
#[derive(Clone, Debug, Default)]
pub struct CallsAtAttach {
    /// When the trace began (the programs attached, the targets added), on
    /// the kernel's monotonic clock.
    attached_ns: u64,
    calls: FxHashMap<(u32, u32), CallAtAttach>,
}

impl CallsAtAttach {
    /// The trace began at `attached_ns` with `calls` in progress.
    pub fn new(attached_ns: u64, calls: Vec<CallAtAttach>) -> Self {
        let calls = calls.into_iter().map(|call| ((call.pid, call.tid), call)).collect();
        Self { attached_ns, calls }
    }

    /// A call returned whose entry was not seen (`SYSCALL_UNSEEN_ENTRY`):
    /// how long it took at least, from the start the scan estimated, or
    /// from the attach for a call the scan did not see (its thread was on a
    /// CPU, where `/proc` shows no call; or it began while probe attached).
    ///
    /// `None` for a call that is not one in progress at attach: one that
    /// returned before the trace began, or one of a thread that `made_calls`
    /// already since the attach. Those have no entry either: a call that
    /// seccomp refused (`SECCOMP_RET_ERRNO`, ...) or a tracer skipped never
    /// reaches `sys_enter`, but does `sys_exit`; and so does one whose entry
    /// was lost (the map of parked calls was full, which is counted).
    pub fn returned(&mut self, event: &SyscallEvent, made_calls: bool) -> Option<u64> {
        let scanned = self.calls.remove(&(event.pid, event.tid));
        // The record's start is the call's return.
        let returned_ns = event.start_ns;
        if returned_ns < self.attached_ns || made_calls {
            return None;
        }
        let started_ns = match scanned {
            Some(call) if call.nr == event.nr => call.started_ns,
            _ => self.attached_ns,
        };
        Some(returned_ns.saturating_sub(started_ns))
    }

    /// The calls still in progress.
    pub fn iter(&self) -> impl Iterator<Item = &CallAtAttach> {
        self.calls.values()
    }

    /// Keeps the calls of the threads `keep` approves of: a thread that is
    /// gone, or has made calls since, is out of its call.
    pub fn retain(&mut self, mut keep: impl FnMut(&CallAtAttach) -> bool) {
        self.calls.retain(|_, call| keep(call));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{EventKind, SYSCALL_UNSEEN_ENTRY};

    fn returned(tid: u32, nr: u32, at_ns: u64) -> SyscallEvent {
        SyscallEvent {
            kind: EventKind::Syscall as u32,
            cpu: 0,
            pid: 1,
            tid,
            nr,
            flags: SYSCALL_UNSEEN_ENTRY,
            ret: 0,
            start_ns: at_ns,
            duration_ns: 0,
            comm: [0; 16],
            goid: probe_common::NO_GOROUTINE,
            go_start_pc: 0,
        }
    }

    #[test]
    fn a_returning_call_takes_at_least_since_its_estimated_start() {
        let read = CallAtAttach {
            pid: 1,
            tid: 2,
            nr: 0,
            args: [3, 0, 4096, 0, 0, 0],
            started_ns: 400,
            comm: "r".into(),
        };
        let mut calls = CallsAtAttach::new(1000, vec![read.clone(), CallAtAttach { tid: 3, ..read.clone() }]);
        assert_eq!(calls.returned(&returned(2, 0, 5000), false), Some(4600));
        assert_eq!(calls.iter().count(), 1);
        // Another call than the scan saw, or none: since the attach.
        assert_eq!(calls.returned(&returned(3, 1, 5000), false), Some(4000));
        assert_eq!(calls.returned(&returned(9, 0, 1500), false), Some(500));
        // Before the trace began: not part of it.
        assert_eq!(calls.returned(&returned(9, 0, 900), false), None);
        assert_eq!(calls.iter().count(), 0);
        // A thread that made calls since the attach is not in one from
        // before (seccomp refused this one at its entry).
        let mut calls = CallsAtAttach::new(1000, vec![read]);
        assert_eq!(calls.returned(&returned(2, 0, 5000), true), None);
        assert_eq!(calls.iter().count(), 0);
    }

    #[test]
    fn states_from_proc_letters() {
        assert_eq!(ThreadState::from_letter('R'), ThreadState::Runnable);
        for letter in ['S', 'D', 'T', 't', 'I'] {
            assert_eq!(ThreadState::from_letter(letter), ThreadState::Blocked);
        }
        assert_eq!(serde_json::to_value(ThreadState::OnCpu).unwrap(), "on_cpu");
    }
}
