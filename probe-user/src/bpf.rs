//! Loads the embedded kernel programs, configures them and attaches them.

use std::fs;

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{raw_trace_point::RawTracePointLinkId, RawTracePoint},
    Ebpf, EbpfLoader,
};
use probe_common::{Counter, OffsetCheck, MAX_SYSCALL_NR};
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
}

/// The loaded, attached programs and the maps userspace configures and
/// polls. Dropping it detaches every program.
pub struct Probe {
    // Owns the programs and their links.
    _ebpf: Ebpf,
    traced: HashMap<MapData, u32, u8>,
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
        let exit_nr = Sysno::exit.id() as u32;
        let exit_group_nr = Sysno::exit_group.id() as u32;
        let filter_pids = u8::from(config.filter_pids);
        let filter_syscalls = u8::from(!config.only.is_empty());
        let wakeup_bytes = u64::from(ring_bytes / 8);
        let offsets = match config.sched {
            true => btf::task_offsets()?,
            false => TaskOffsets { pid: 0, tgid: 0 },
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("SELF_PID", &self_pid, true)
            .override_global("FILTER_PIDS", &filter_pids, true)
            .override_global("FILTER_SYSCALLS", &filter_syscalls, true)
            .override_global("EXIT_NR", &exit_nr, true)
            .override_global("EXIT_GROUP_NR", &exit_group_nr, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("TASK_PID_OFFSET", &offsets.pid, true)
            .override_global("TASK_TGID_OFFSET", &offsets.tgid, true)
            .map_max_entries("EVENTS", ring_bytes)
            .load(OBJECT)
            .context("cannot load probe's BPF programs (they need Linux 5.8 or later, with BPF ring buffers)")?;

        let logs = if with_logs {
            Some(
                aya_log::EbpfLogger::init(&mut ebpf)
                    .context("cannot read the kernel programs' log")?,
            )
        } else {
            None
        };
        let mut syscalls: Array<MapData, u8> = take_map(&mut ebpf, "SYSCALLS")?;
        for sysno in &config.only {
            let nr = sysno.id() as u32;
            if nr >= MAX_SYSCALL_NR {
                bail!(
                    "syscall {} (number {nr}) is beyond what -e can filter",
                    sysno.name()
                );
            }
            syscalls
                .set(nr, 1, 0)
                .context("cannot set the syscall filter")?;
        }
        let traced = take_map(&mut ebpf, "TRACED")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let events = take_map(&mut ebpf, "EVENTS")?;

        if config.sched {
            check_offsets(&mut ebpf, offsets)?;
            // Wakeups first, so that no switch-in lacks the wakeup before it.
            for program in ["sched_wakeup", "sched_wakeup_new", "sched_switch"] {
                attach(&mut ebpf, program, program)?;
            }
        }
        if config.syscalls {
            // Exits before entries, so that no entry is left unmatched.
            for program in ["sched_process_exit", "sys_exit", "sys_enter"] {
                attach(&mut ebpf, program, program)?;
            }
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
        self.traced
            .insert(pid, 1, 0)
            .with_context(|| format!("cannot add pid {pid} to the trace"))
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
