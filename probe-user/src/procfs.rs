//! What probe reads from `/proc`: the one place that asks it. The record
//! pipeline and the tables do not read it themselves; they ask through
//! [`World`], which [`Proc`] answers from here and tests answer from a list.

use std::{fs, fs::File, io, os::unix::fs::FileExt, path::Path};

use anyhow::{Context, Result};

use crate::aggregate::World;

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// The running system, as `/proc` shows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Proc;

impl World for Proc {
    fn thread_alive(&self, pid: u32, tid: u32) -> bool {
        Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
    }

    fn process_alive(&self, pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    fn thread_name(&self, pid: u32, tid: u32) -> Option<String> {
        let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
        Some(comm.trim_end_matches('\n').to_owned())
    }
}

/// Whether `pid` is a kernel thread, from the flags in `/proc/PID/stat`.
pub fn is_kernel_thread(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The name in parentheses may hold spaces; the fields after it do not.
    // flags is the 9th field, the 7th after the name.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6))
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// probe's resident memory, from `/proc/self/status`; 0 if unreadable.
pub fn rss_bytes() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// probe's effective capabilities, from `/proc/self/status`.
pub fn effective_capabilities() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("cannot read the effective capabilities from /proc/self/status")
}

/// The kernel's largest PID plus one.
pub fn pid_max() -> Result<u32> {
    let text =
        fs::read_to_string("/proc/sys/kernel/pid_max").context("cannot read /proc/sys/kernel/pid_max")?;
    text.trim().parse().context("cannot parse /proc/sys/kernel/pid_max")
}

/// The value of variable `name` in the environment process `pid` started
/// with.
pub fn environment_variable(pid: u32, name: &str) -> Option<Vec<u8>> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|entry| {
        entry.strip_prefix(name.as_bytes()).and_then(|rest| rest.strip_prefix(b"=")).map(<[u8]>::to_vec)
    })
}

/// Reads `bytes.len()` bytes of process `pid`'s memory at `address`.
pub fn read_memory(pid: u32, address: u64, bytes: &mut [u8]) -> io::Result<()> {
    File::open(format!("/proc/{pid}/mem"))?.read_exact_at(bytes, address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_about_this_process_and_kernel_threads() {
        let pid = std::process::id();
        assert!(Proc.process_alive(pid) && Proc.thread_alive(pid, pid));
        assert!(Proc.thread_name(pid, pid).is_some_and(|name| !name.is_empty()));
        // PID 2 is kthreadd on Linux.
        assert!(is_kernel_thread(2) && !is_kernel_thread(pid));
        assert!(rss_bytes() > 0 && pid_max().unwrap() > pid);
    }
}
