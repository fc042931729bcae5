//! Loads the embedded kernel programs, configures them and attaches them.

use std::fs;

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{raw_trace_point::RawTracePointLinkId, RawTracePoint},
    Ebpf, EbpfLoader,
};
use probe_common::{syscall_flags, Counter, OffsetCheck, MAX_SYSCALL_NR};
use syscalls::Sysno;

use crate::{
    btf::{self, TaskOffsets},
    report::Losses,
};

/// The object `cargo xtask build` compiled from `probe-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PROBE_EBPF_OBJECT"));

/// Ring-buffer bytes per CPU: at ~2 M syscalls/s a CPU fills 2 MiB in about
/// 15 ms, several times the reader's wakeup latency.
const RING_BYTES_PER_CPU: u32 = 2 << 20;

/// Capabilities that loading tracing programs needs (from linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Which programs run, and how they filter.
#[derive(Debug, Default)]
pub struct Config {
    /// Trace only processes added with [`Probe::trace_pid`].
    pub filter_pids: bool,
    /// Time syscalls (`raw_syscalls`).
    pub syscalls: bool,
    /// Follow threads through the scheduler (`sched_switch`, wakeups).
    pub sched: bool,
    /// Trace only these syscalls; all when empty.
    pub only: Vec<Sysno>,
    /// Benchmarks only: attach a program that does nothing where the real
    /// ones would go, to measure what attaching alone costs.
    pub floor: bool,
}

/// The loaded, attached programs and the maps userspace configures and
/// polls. Dropping it detaches every program.
pub struct Probe {
    // Owns the programs and their links.
    _ebpf: Ebpf,
    traced: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
}

/// What the kernel programs stream to userspace, for the event loop to own.
pub struct Streams {
    /// Completed syscalls and scheduler events.
    pub events: RingBuf<MapData>,
    /// The kernel programs' diagnostics, for `-v`.
    pub logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Probe {
    /// Loads and attaches the programs; from the return on, every traced
    /// syscall is recorded.
    pub fn attach(config: &Config, with_logs: bool) -> Result<(Self, Streams)> {
        check_privileges()?;
        let cpus =
            aya::util::nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))? as u32;
        let ring_bytes = (RING_BYTES_PER_CPU * cpus).next_power_of_two();
        let self_pid = std::process::id();
        let filter_pids = u8::from(config.filter_pids);
        let filter_syscalls = u8::from(!config.only.is_empty());
        let trace_sched = u8::from(config.sched);
        let wakeup_bytes = u64::from(ring_bytes / 8);
        let offsets = match config.sched {
            true => btf::task_offsets()?,
            false => TaskOffsets { pid: 0, tgid: 0 },
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("SELF_PID", &self_pid, true)
            .override_global("FILTER_PIDS", &filter_pids, true)
            .override_global("FILTER_SYSCALLS", &filter_syscalls, true)
            .override_global("TRACE_SCHED", &trace_sched, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("TASK_PID_OFFSET", &offsets.pid, true)
            .override_global("TASK_TGID_OFFSET", &offsets.tgid, true)
            .map_max_entries("EVENTS", ring_bytes)
            .map_max_entries("TRACED", pid_max()?.div_ceil(64))
            .load(OBJECT)
            .context("cannot load probe's BPF programs (they need Linux 5.18 or later, with BPF ring buffers)")?;

        let logs = match with_logs {
            true => Some(
                aya_log::EbpfLogger::init(&mut ebpf)
                    .context("cannot read the kernel programs' log")?,
            ),
            false => None,
        };
        set_syscall_flags(&mut ebpf, &config.only)?;
        let traced = take_map(&mut ebpf, "TRACED")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let events = take_map(&mut ebpf, "EVENTS")?;

        if config.floor {
            let floor: &mut RawTracePoint = ebpf
                .program_mut("floor")
                .context("the BPF object lacks the program floor")?
                .try_into()?;
            floor
                .load()
                .context("the kernel refused the BPF program floor")?;
            for tracepoint in [
                "sys_enter",
                "sys_exit",
                "sched_switch",
                "sched_wakeup",
                "sched_wakeup_new",
            ] {
                floor
                    .attach(tracepoint)
                    .with_context(|| format!("cannot attach to the raw tracepoint {tracepoint}"))?;
            }
            return Ok((
                Self {
                    _ebpf: ebpf,
                    traced,
                    counters,
                },
                Streams { events, logs },
            ));
        }
        if config.sched {
            check_offsets(&mut ebpf, offsets)?;
            for program in ["sched_wakeup", "sched_wakeup_new"] {
                attach(&mut ebpf, program, program)?;
            }
        }
        // sched_switch also parks the calls of threads that leave their CPU
        // mid-syscall, so it goes before sys_enter, and sys_exit before
        // both: no call is then recorded that nothing would complete.
        let programs: &[&str] = match (config.syscalls, config.sched) {
            (true, _) => &[
                "sched_process_exit",
                "sys_exit",
                "sched_switch",
                "sys_enter",
            ],
            (false, true) => &["sched_switch"],
            (false, false) => &[],
        };
        for program in programs {
            attach(&mut ebpf, program, program)?;
        }
        Ok((
            Self {
                _ebpf: ebpf,
                traced,
                counters,
            },
            Streams { events, logs },
        ))
    }

    /// Adds a process (all its threads, present and future) to the trace.
    pub fn trace_pid(&mut self, pid: u32) -> Result<()> {
        let (word, bit) = (pid / 64, pid % 64);
        let add = |traced: &mut Array<MapData, u64>| -> Result<(), aya::maps::MapError> {
            let bits = traced.get(&word, 0)?;
            traced.set(word, bits | (1 << bit), 0)
        };
        add(&mut self.traced).with_context(|| format!("cannot add pid {pid} to the trace"))
    }

    /// Events lost in the kernel so far.
    pub fn losses(&self) -> Result<Losses> {
        let sum = |counter: Counter| -> Result<u64> {
            let values = self.counters.get(&(counter as u32), 0)?;
            Ok(values.iter().sum())
        };
        Ok(Losses {
            ring_buffer: sum(Counter::LostEvents)?,
            in_flight_full: sum(Counter::InFlightFull)?,
            undecodable: 0,
        })
    }
}

/// The kernel's largest PID plus one, which sizes the traced-PID bitmap.
fn pid_max() -> Result<u32> {
    let text = fs::read_to_string("/proc/sys/kernel/pid_max")
        .context("cannot read /proc/sys/kernel/pid_max")?;
    text.trim()
        .parse()
        .context("cannot parse /proc/sys/kernel/pid_max")
}

/// Marks which syscalls never return, may rename the thread, and (with
/// `-e`) are wanted.
fn set_syscall_flags(ebpf: &mut Ebpf, only: &[Sysno]) -> Result<()> {
    // Borrowed, not taken: a taken map is closed when dropped, and the
    // programs, still to be loaded, need it open.
    let map = ebpf
        .map_mut("SYSCALL_FLAGS")
        .context("the BPF object lacks the map SYSCALL_FLAGS")?;
    let mut table: Array<&mut MapData, u8> = Array::try_from(map)?;
    let mut flags = vec![0u8; MAX_SYSCALL_NR as usize];
    let mut mark = |sysno: Sysno, flag: u8| -> Result<()> {
        let slot = flags.get_mut(sysno.id() as usize).with_context(|| {
            format!(
                "syscall {} (number {}) is beyond what probe can flag",
                sysno.name(),
                sysno.id()
            )
        })?;
        *slot |= flag;
        Ok(())
    };
    for sysno in [Sysno::exit, Sysno::exit_group] {
        mark(sysno, syscall_flags::NO_RETURN)?;
    }
    for sysno in [Sysno::execve, Sysno::execveat, Sysno::prctl] {
        mark(sysno, syscall_flags::RENAMES)?;
    }
    for &sysno in only {
        mark(sysno, syscall_flags::WANTED)?;
    }
    for (nr, &flag) in flags.iter().enumerate().filter(|(_, &flag)| flag != 0) {
        table
            .set(nr as u32, flag, 0)
            .context("cannot set the syscall flags")?;
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, program: &str, tracepoint: &str) -> Result<RawTracePointLinkId> {
    let raw: &mut RawTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("the BPF object lacks the program {program}"))?
        .try_into()?;
    raw.load()
        .with_context(|| format!("the kernel refused the BPF program {program}"))?;
    raw.attach(tracepoint)
        .with_context(|| format!("cannot attach to the raw tracepoint {tracepoint}"))
}

/// Proves the BTF offsets on probe's own task: a program reads it at those
/// offsets during one syscall of probe's, and the ids must match the
/// kernel's own answer. A wrong layout would silently misattribute every
/// scheduler event, so it stops probe instead.
fn check_offsets(ebpf: &mut Ebpf, offsets: TaskOffsets) -> Result<()> {
    let link = attach(ebpf, "check_offsets", "sys_enter")?;
    // SAFETY: getppid has no arguments and no side effects; it is the
    // syscall that the check program observes.
    unsafe { libc::getppid() };
    let raw: &mut RawTracePoint = ebpf
        .program_mut("check_offsets")
        .context("check_offsets vanished")?
        .try_into()?;
    raw.detach(link).context("cannot detach check_offsets")?;
    let checks: Array<&MapData, OffsetCheck> = Array::try_from(
        ebpf.map("OFFSET_CHECK")
            .context("the BPF object lacks OFFSET_CHECK")?,
    )?;
    let seen = checks.get(&0, 0).context("cannot read OFFSET_CHECK")?;
    let expected = (seen.pid_tgid as u32, (seen.pid_tgid >> 32) as u32);
    if seen.pid_tgid == 0 || (seen.pid, seen.tgid) != expected {
        bail!(
            "the kernel's BTF gives task_struct offsets (pid at {}, tgid at {}) that do not read this process's ids (read {:?}, expected {:?}); run with --no-sched",
            offsets.pid, offsets.tgid, (seen.pid, seen.tgid), expected
        );
    }
    Ok(())
}

fn take_map<M>(ebpf: &mut Ebpf, name: &str) -> Result<M>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the BPF object lacks the map {name}"))?;
    M::try_from(map).with_context(|| format!("the map {name} has an unexpected type"))
}

/// Fails early, with what to do, when the capabilities are missing: the
/// kernel's own answer would be a bare EPERM deep inside the loader.
fn check_privileges() -> Result<()> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("cannot read the effective capabilities from /proc/self/status")?;
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!("probe needs root, or the capabilities CAP_BPF and CAP_PERFMON: run it with sudo")
}
