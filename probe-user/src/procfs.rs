//! What probe reads from `/proc`: the one place that asks it. The record
//! pipeline and the tables do not read it themselves; they ask through
//! [`World`], which [`Proc`] answers from here and tests answer from a list.

use std::{
    collections::{btree_map::Entry, BTreeMap},
    fs,
    fs::File,
    io::{self, Read},
    os::unix::{fs::FileExt, net::UnixStream},
    path::Path,
    sync::{
        atomic::{AtomicI32, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use probe_common::COMPAT_NR;

use crate::aggregate::{in_flight::CallAtAttach, World};
use crate::{clock::monotonic_ns, escape};

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
        let comm = fs::read(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
        Some(escape::visible_bytes(comm.strip_suffix(b"\n").unwrap_or(&comm)))
    }

    fn thread_state(&self, pid: u32, tid: u32) -> Option<char> {
        let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        Some(Stat::parse(&stat)?.state)
    }

    fn syscall_args(&self, pid: u32, tid: u32) -> Option<(u32, [u64; 6])> {
        let (nr, args) = parse_syscall(&fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?)?;
        Some((nr | abi_of(pid), args))
    }
}

/// What probe uses of a `/proc/PID[/task/TID]/stat` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    /// `R`, `S`, `D`, ...
    state: char,
    /// `PF_*` flags.
    flags: u64,
    /// The CPU it last ran on.
    processor: Option<u32>,
}

impl Stat {
    fn parse(stat: &str) -> Option<Self> {
        // The name in parentheses may hold spaces and parentheses; the
        // fields after its last ')' do not. They start with the 3rd field,
        // state; flags is the 9th, processor the 39th.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(Self {
            state: fields.first()?.chars().next()?,
            flags: fields.get(6)?.parse().ok()?,
            processor: fields.get(36).and_then(|cpu| cpu.parse().ok()),
        })
    }
}

/// Whether `pid` is a kernel thread, from the flags in `/proc/PID/stat`.
pub fn is_kernel_thread(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Stat::parse(&stat))
        .is_some_and(|stat| stat.flags & PF_KTHREAD != 0)
}

/// A `/proc/PID/task/TID/syscall` line: `NR ARG1 .. ARG6 SP PC` (the
/// arguments in hex) for a thread blocked in syscall NR; `-1 SP PC` for one
/// blocked outside any, `running` for one on a CPU or ready for one.
fn parse_syscall(text: &str) -> Option<(u32, [u64; 6])> {
    let mut fields = text.split_whitespace();
    let nr: u32 = fields.next()?.parse().ok()?;
    let mut args = [0u64; 6];
    for arg in &mut args {
        *arg = u64::from_str_radix(fields.next()?.strip_prefix("0x")?, 16).ok()?;
    }
    Some((nr, args))
}

/// `se.exec_start` of a `/proc/PID/task/TID/sched`, in nanoseconds: the
/// kernel prints the run queue's task clock in milliseconds with six
/// decimals.
fn parse_exec_start(sched: &str) -> Option<u64> {
    let line = sched.lines().find(|line| line.starts_with("se.exec_start"))?;
    let (_, value) = line.split_once(':')?;
    let (ms, fraction) = value.trim().split_once('.')?;
    let fraction = format!("{fraction:0<6}");
    Some(ms.parse::<u64>().ok()? * 1_000_000 + fraction.get(..6)?.parse::<u64>().ok()?)
}

/// The syscalls the traced threads are in, as probe attaches (done after
/// the programs attach and the targets are added, at `attached_ns` on the
/// kernel's monotonic clock): the threads of `pids`, or, with `None`, of
/// every process but probe and the kernel's threads. A thread on a CPU
/// shows no syscall in `/proc` (`running`): if it is in one, it is only
/// known when the call returns.
///
/// Each call's start is estimated from when its thread last left its CPU
/// (see [`ClockTask`]), never later than `attached_ns`: its age is then a
/// lower bound, and a close one for a thread that blocked once in the call.
pub fn calls_in_progress(pids: Option<&[u32]>, attached_ns: u64) -> Vec<CallAtAttach> {
    let own = std::process::id();
    let pids: Vec<u32> = match pids {
        Some(pids) => pids.to_vec(),
        None => numbered_entries(Path::new("/proc"))
            .into_iter()
            .filter(|&pid| pid != own && !is_kernel_thread(pid))
            .collect(),
    };
    let mut clock: Option<ClockTask> = None;
    let mut calls = Vec::new();
    for pid in pids {
        let abi = abi_of(pid);
        for tid in numbered_entries(Path::new(&format!("/proc/{pid}/task"))) {
            let task = format!("/proc/{pid}/task/{tid}");
            let Some((nr, args)) =
                fs::read_to_string(format!("{task}/syscall")).ok().and_then(|text| parse_syscall(&text))
            else {
                continue;
            };
            let nr = nr | abi;
            let stat = fs::read_to_string(format!("{task}/stat")).ok().and_then(|stat| Stat::parse(&stat));
            let exec_start =
                fs::read_to_string(format!("{task}/sched")).ok().and_then(|sched| parse_exec_start(&sched));
            let clock = clock.get_or_insert_with(ClockTask::calibrate);
            let started_ns = exec_start
                .zip(stat.and_then(|stat| stat.processor))
                .and_then(|(exec_start, cpu)| clock.to_monotonic(exec_start, cpu))
                .map_or(attached_ns, |started| started.min(attached_ns));
            let comm = Proc.thread_name(pid, tid).unwrap_or_default();
            calls.push(CallAtAttach { pid, tid, nr, args, started_ns, comm });
        }
    }
    calls
}

/// `COMPAT_NR` for a process that runs a 32-bit ELF program (`EI_CLASS`
/// is `ELFCLASS32`), whose syscall numbers `/proc` shows are the i386
/// table's; else 0. As probe numbers them.
fn abi_of(pid: u32) -> u32 {
    let mut ident = [0u8; 5];
    let elf32 =
        File::open(format!("/proc/{pid}/exe")).and_then(|exe| exe.read_exact_at(&mut ident, 0)).is_ok()
            && ident[..4] == *b"\x7fELF"
            && ident[4] == 1;
    if elf32 {
        COMPAT_NR
    } else {
        0
    }
}

/// The numbered entries of a `/proc` directory: processes, or threads.
fn numbered_entries(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// How each CPU's run-queue task clock, in which `/proc`'s `se.exec_start`
/// is kept, maps to `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`, probe's clock).
///
/// A thread's `se.exec_start` is set when it last got its CPU and at every
/// accounting update while it runs, the last of them when it is taken off
/// the CPU to sleep: for a thread blocked in a syscall, when it blocked, in
/// the clock of the run queue of the CPU it blocked on (`rq->clock_task`).
/// That clock is `sched_clock()` minus the time the CPU spent on interrupts
/// (with `CONFIG_IRQ_TIME_ACCOUNTING`) and the time the hypervisor stole
/// from it (`CONFIG_PARAVIRT_TIME_ACCOUNTING`, as on this VM): each CPU's
/// has its own offset to `CLOCK_MONOTONIC`, here 6.9 s on CPU 0 and 7.5 s
/// on CPU 1 after 20 minutes up. So the offset is measured per CPU, now: a
/// helper thread pinned to each CPU reads `CLOCK_MONOTONIC` and blocks at
/// once; its `exec_start` is then the same moment on that CPU's clock.
///
/// How far an estimated start can be off. On the late side (the age comes
/// out short, a lower bound still): the time from the call's entry to the
/// thread's blocking (microseconds); the interrupt and stolen time of that
/// CPU while the thread slept, which the offset measured now holds and the
/// thread's `exec_start` does not (steal was 0.5% of the time on this VM,
/// more when the host is busy); and, for a thread woken in the call and
/// put back to sleep (a spurious wakeup, a wait that went on), the time
/// before its last sleep. On the early side (an age too long): the
/// microsecond or two between the helper's clock read and its blocking,
/// by which the offset comes out short, and `sched_clock()`'s drift from
/// the NTP-disciplined `CLOCK_MONOTONIC`, at most 500 ppm of the sleep.
#[derive(Clone, Debug, Default)]
pub struct ClockTask {
    /// `CLOCK_MONOTONIC - rq->clock_task` per CPU, in ns.
    offsets: BTreeMap<u32, i64>,
}

impl ClockTask {
    /// Measures the offset of every CPU probe may run on; a CPU whose
    /// helper does not block within a moment is left out.
    pub fn calibrate() -> Self {
        let cpus = allowed_cpus();
        let helpers: Vec<_> = cpus.iter().filter_map(|&cpu| Helper::start(cpu).ok()).collect();
        let mut offsets = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_millis(200);
        while offsets.len() < helpers.len() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
            for helper in &helpers {
                if let (Entry::Vacant(slot), Some(offset)) = (offsets.entry(helper.cpu), helper.offset()) {
                    slot.insert(offset);
                }
            }
        }
        for helper in helpers {
            helper.finish();
        }
        Self { offsets }
    }

    /// A moment of CPU `cpu`'s task clock on `CLOCK_MONOTONIC`. A CPU not
    /// measured takes the largest offset measured: the latest estimate,
    /// the likelier to stay a lower bound of an age.
    pub fn to_monotonic(&self, clock_task_ns: u64, cpu: u32) -> Option<u64> {
        let offset = self.offsets.get(&cpu).or_else(|| self.offsets.values().max())?;
        clock_task_ns.checked_add_signed(*offset)
    }
}

/// A thread pinned to one CPU that reads the clock, then blocks until
/// [`Helper::finish`].
struct Helper {
    cpu: u32,
    /// Its tid, once it runs.
    tid: Arc<AtomicI32>,
    /// `CLOCK_MONOTONIC` just before it blocked; 0 before.
    before_ns: Arc<AtomicU64>,
    release: UnixStream,
    thread: thread::JoinHandle<()>,
}

impl Helper {
    fn start(cpu: u32) -> io::Result<Self> {
        let (release, mut wait) = UnixStream::pair()?;
        let (tid, before_ns) = (Arc::new(AtomicI32::new(0)), Arc::new(AtomicU64::new(0)));
        let (its_tid, its_before_ns) = (tid.clone(), before_ns.clone());
        let thread = thread::Builder::new().name("probe-clock".into()).spawn(move || {
            // SAFETY: gettid has no arguments; a zeroed cpu_set_t with one
            // CPU set, for this thread.
            let pinned = unsafe {
                its_tid.store(libc::gettid(), Ordering::SeqCst);
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu as usize, &mut set);
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
            };
            if pinned {
                its_before_ns.store(monotonic_ns(), Ordering::SeqCst);
                // Blocks until `release` is dropped.
                let _ = wait.read(&mut [0u8; 1]);
            }
        })?;
        Ok(Self { cpu, tid, before_ns, release, thread })
    }

    /// `CLOCK_MONOTONIC - rq->clock_task` on its CPU, once it is blocked
    /// there.
    fn offset(&self) -> Option<i64> {
        let (tid, before_ns) = (self.tid.load(Ordering::SeqCst), self.before_ns.load(Ordering::SeqCst));
        if before_ns == 0 {
            return None;
        }
        let task = format!("/proc/self/task/{tid}");
        let stat = Stat::parse(&fs::read_to_string(format!("{task}/stat")).ok()?)?;
        if stat.state != 'S' || stat.processor != Some(self.cpu) {
            return None;
        }
        let exec_start = parse_exec_start(&fs::read_to_string(format!("{task}/sched")).ok()?)?;
        // Still asleep after the read: the value is of its blocking.
        let again = Stat::parse(&fs::read_to_string(format!("{task}/stat")).ok()?)?;
        (again.state == 'S').then(|| before_ns as i64 - exec_start as i64)
    }

    fn finish(self) {
        drop(self.release);
        let _ = self.thread.join();
    }
}

/// The CPUs probe may run on.
fn allowed_cpus() -> Vec<u32> {
    // SAFETY: a zeroed cpu_set_t filled by the kernel for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .map(|cpu| cpu as u32)
            .collect()
    }
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

/// Process `pid`'s cgroups, a line of `/proc/PID/cgroup` per hierarchy
/// (`0` the unified one), as the procfs crate parses them.
pub fn cgroups(pid: u32) -> Option<Vec<::procfs::ProcessCGroup>> {
    let process = ::procfs::process::Process::new(pid as i32).ok()?;
    process.cgroups().ok().map(|groups| groups.0)
}

/// probe's mounts, from `/proc/self/mountinfo`.
pub fn mounts() -> Vec<::procfs::process::MountInfo> {
    ::procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .map_or_else(|_| Vec::new(), |infos| infos.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_lines() {
        let blocked =
            "0 0x3 0x7fa83669e000 0x20000 0x7fa836731b60 0xffffffff 0x0 0x7ffe37dffa18 0x7fa83681a2ad\n";
        assert_eq!(
            parse_syscall(blocked),
            Some((0, [3, 0x7fa83669e000, 0x20000, 0x7fa836731b60, 0xffffffff, 0]))
        );
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffe37dffa18 0x7fa83681a2ad\n"), None);
        let sched = "sleep (2478, #threads: 1)\n------\nse.exec_start                                :       1158977.053384\nse.vruntime   :  1.5\n";
        assert_eq!(parse_exec_start(sched), Some(1_158_977_053_384));
        let stat = "2478 (a) b (c) S 2476 2476 1487 0 -1 4194304 132 0 0 0 0 0 0 0 20 0 1 0 116318 2990080 410 18446744073709551615 1 1 0 0 0 0 0 6 0 1 0 0 17 1 0 0 0 0 0";
        assert_eq!(Stat::parse(stat), Some(Stat { state: 'S', flags: 4194304, processor: Some(1) }));
    }

    #[test]
    fn a_blocked_thread_is_found_with_its_start() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let before = monotonic_ns();
        let blocked = thread::spawn(move || {
            let mut byte = 0u8;
            // SAFETY: gettid has no arguments; a one-byte read into `byte`.
            unsafe {
                let tid = libc::gettid();
                libc::read(fds[0], (&raw mut byte).cast(), 1);
                tid
            }
        });
        thread::sleep(Duration::from_millis(100));
        let attached = monotonic_ns();
        let calls = calls_in_progress(Some(&[std::process::id()]), attached);
        // SAFETY: closing our own fds wakes the reader.
        unsafe {
            libc::close(fds[1]);
        }
        let tid = blocked.join().unwrap() as u32;
        // SAFETY: as above.
        unsafe { libc::close(fds[0]) };
        let call = calls.iter().find(|call| call.tid == tid).expect("the blocked thread");
        assert_eq!(
            (call.nr, call.args[0], call.args[2]),
            (libc::SYS_read as u32, fds[0] as u64, 1),
            "{call:?}"
        );
        // It blocked within milliseconds of `before`, 100 ms before the scan.
        assert!(call.started_ns >= before && call.started_ns < before + 20_000_000, "{call:?} {before}");
        assert!(call.started_ns <= attached);
    }

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
