//! Loads the embedded kernel programs, configures them and attaches them.

use std::fs;

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
    Ebpf, EbpfLoader,
};
use probe_common::{Counter, MAX_SYSCALL_NR};
use syscalls::Sysno;

use crate::report::Losses;

/// The object `cargo xtask build` compiled from `probe-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PROBE_EBPF_OBJECT"));

/// Ring-buffer bytes per CPU: at ~2 M syscalls/s a CPU fills 2 MiB in about
/// 15 ms, several times the reader's wakeup latency.
const RING_BYTES_PER_CPU: u32 = 2 << 20;

/// Capabilities that loading tracing programs needs (from linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// How the kernel programs filter.
#[derive(Debug, Default)]
pub struct Config {
    /// Trace only processes added with [`Probe::trace_pid`].
    pub filter_pids: bool,
    /// Trace only these syscalls; all when empty.
    pub syscalls: Vec<Sysno>,
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
    /// Completed syscalls.
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
        let filter_syscalls = u8::from(!config.syscalls.is_empty());
        let wakeup_bytes = u64::from(ring_bytes / 8);
        let mut ebpf = EbpfLoader::new()
            .override_global("SELF_PID", &self_pid, true)
            .override_global("FILTER_PIDS", &filter_pids, true)
            .override_global("FILTER_SYSCALLS", &filter_syscalls, true)
            .override_global("EXIT_NR", &exit_nr, true)
            .override_global("EXIT_GROUP_NR", &exit_group_nr, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
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
        for sysno in &config.syscalls {
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

        for (program, tracepoint) in [
            ("sched_process_exit", "sched_process_exit"),
            ("sys_exit", "sys_exit"),
            ("sys_enter", "sys_enter"),
        ] {
            let raw: &mut RawTracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("the BPF object lacks the program {program}"))?
                .try_into()?;
            raw.load()
                .with_context(|| format!("the kernel refused the BPF program {program}"))?;
            raw.attach(tracepoint)
                .with_context(|| format!("cannot attach to the raw tracepoint {tracepoint}"))?;
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
