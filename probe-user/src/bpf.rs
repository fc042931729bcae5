//! Loads the embedded kernel programs, configures them and attaches them.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, CgroupArray, HashMap, IterableMap, MapData, PerCpuArray, StackTraceMap},
    programs::{
        raw_trace_point::RawTracePointLinkId, RawTracePoint, RawTracePointRunOptions, TestRun, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use probe_common::{
    names::{global, map, program},
    syscall_flags, Counter, CpuState, InFlight, LostCall, OffsetCheck, SyscallEvent, COMPAT_FLAGS_BASE,
    MAX_SYSCALL_NR, REGS_WORDS, TRACED_GO,
};
use syscalls::{x86::Sysno as I386, Sysno};

use crate::{
    btf::{self, RegsLayout, TaskOffsets},
    clock, procfs,
    ring::Ring,
    tracefs::{self, Format},
};

/// The object `cargo xtask build` compiled from `probe-ebpf`; empty when
/// the build script found none (`cargo check`, clippy and unit tests on
/// stable Rust alone).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PROBE_EBPF_OBJECT"));

/// Ring-buffer bytes per CPU by default: at ~2 M syscalls/s a CPU fills
/// 2 MiB in about 15 ms, several times the reader's wakeup latency.
const RING_BYTES_PER_CPU: u32 = 2 << 20;

/// How long programs get to finish counting into a map of lost calls that
/// was just retired, at the end of a trace: far longer than any program runs.
const LAST_TURN_GRACE: Duration = Duration::from_millis(20);

/// Capabilities that loading tracing programs needs (from linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Which programs run, and how they filter.
#[derive(Debug, Default)]
pub struct Config {
    /// Trace only processes added with [`Probe::trace_pid`].
    pub filter_pids: bool,
    /// Also trace the processes that traced processes fork.
    pub follow_forks: bool,
    /// Time syscalls (`raw_syscalls`).
    pub syscalls: bool,
    /// Follow threads through the scheduler (`sched_switch`, wakeups).
    pub sched: bool,
    /// Trace only these syscalls; all when empty.
    pub only: Vec<Sysno>,
    /// Ring-buffer size in bytes; a size scaled to the CPUs when `None`.
    pub buffer_bytes: Option<u32>,
    /// Benchmarks only: attach a program that does nothing where the real
    /// ones would go, to measure what attaching alone costs.
    pub floor: bool,
    /// Follow the goroutines of this Go executable, in the traced
    /// processes that run it.
    pub go: Option<GoTarget>,
    /// Follow io_uring requests (with the syscalls).
    pub io_uring: bool,
    /// Send the calls that return without a seen entry (in progress at
    /// attach): for `--pid` and whole-system traces.
    pub report_unseen: bool,
    /// `--slow`'s threshold in ns: calls at least this long are sent with
    /// their registers and user stack, and (with `sched`) the kernel stacks
    /// they blocked in and their wakers; 0: none.
    pub slow_ns: u64,
    /// Trace only the threads in these cgroups (v2 directories, open) and
    /// their descendants; every thread when empty.
    pub cgroups: Vec<OwnedFd>,
    /// The run's slowest calls are explained too: the programs send the
    /// details of calls from the floors userspace sets, and (with `sched`)
    /// the wakers of traced calls, without kernel stacks.
    pub tail_details: bool,
}

/// Where the io_uring tracepoints' records keep the fields the programs
/// read, on this kernel.
struct IoUringLayout {
    submit_ctx: u32,
    submit_req: u32,
    submit_opcode: u32,
    submit_op_str: u32,
    async_req: u32,
    complete_req: u32,
    complete_res: u32,
    create_ctx: u32,
}

impl IoUringLayout {
    fn read() -> Result<Self> {
        let tracefs = tracefs::mount_point()?;
        let format = |event: &str| Format::read(&tracefs, "io_uring", event);
        let (submit, queued, complete, create) = (
            format("io_uring_submit_req")?,
            format("io_uring_queue_async_work")?,
            format("io_uring_complete")?,
            format("io_uring_create")?,
        );
        Ok(Self {
            submit_ctx: submit.offset("ctx")?,
            submit_req: submit.offset("req")?,
            submit_opcode: submit.offset("opcode")?,
            submit_op_str: submit.offset("op_str")?,
            async_req: queued.offset("req")?,
            complete_req: complete.offset("req")?,
            complete_res: complete.offset("res")?,
            create_ctx: create.offset("ctx")?,
        })
    }
}

/// The Go executable whose goroutines are followed, and where its threads
/// keep what the programs read.
#[derive(Clone, Copy, Debug, Default)]
pub struct GoTarget {
    /// Its device (`st_dev`, userspace's encoding) and inode.
    pub dev: u64,
    pub ino: u64,
    pub tls_offset: i64,
    pub goid_offset: u32,
    pub startpc_offset: u32,
}

/// What the kernel programs counted and could not deliver, by cause (the
/// `Counter` slots, summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Records the full ring buffer refused.
    pub ring_buffer: u64,
    /// Syscalls lost because the map of calls parked off-CPU was full.
    pub in_flight_full: u64,
    /// Of `ring_buffer`, syscall records the map of lost calls had no room
    /// to count either.
    pub uncounted: u64,
    /// io_uring requests not followed: the map of requests was full.
    pub io_uring_full: u64,
}

/// The default ring-buffer size for this machine.
pub fn default_buffer_bytes() -> Result<u32> {
    Ok((RING_BYTES_PER_CPU * nr_cpus()?).next_power_of_two())
}

/// The number of CPUs the kernel may run programs on.
fn nr_cpus() -> Result<u32> {
    let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
    Ok(cpus as u32)
}

/// The loaded, attached programs and the maps userspace configures and
/// polls. Dropping it detaches every program.
pub struct Probe {
    // Owns the programs and their links.
    ebpf: Ebpf,
    /// Keeps the kernel's BPF run-time statistics on, once asked for.
    stats: Option<OwnedFd>,
    traced: Array<MapData, u8>,
    /// With --cgroup: each thread's last cgroup verdict, by tid.
    in_cgroups: Option<Array<MapData, u8>>,
    counters: PerCpuArray<MapData, u64>,
    lost_calls: LostCalls,
    calls_off_cpu: HashMap<MapData, u32, InFlight>,
    cpu_state: PerCpuArray<MapData, CpuState>,
    /// With slow calls' details: the kernel stacks records name (`--slow`'s),
    /// from how long each syscall's calls send them, and where the
    /// registers of their records are.
    kernel_stacks: Option<StackTraceMap<MapData>>,
    detail_ns: Option<Array<MapData, u64>>,
    regs: Option<RegsLayout>,
    /// The CPUs online at attach, where batches are flushed: read once, as
    /// reading them opens a file, which a probe out of descriptors cannot.
    cpus: Vec<u32>,
}

/// The traced syscalls in progress, as the kernel programs hold them.
#[derive(Clone, Debug, Default)]
pub struct CallsInFlight {
    /// Each in the per-CPU slot of the CPU its thread runs on.
    pub on_cpu: Vec<InFlight>,
    /// Parked when their thread left its CPU mid-call (it may have come
    /// back since).
    pub parked: Vec<InFlight>,
    /// Entries of the map of parked calls, probe's own included: for the
    /// health report.
    pub parked_entries: usize,
}

/// The two `LOST_CALLS_*` maps that take turns, and which one the programs
/// count into now.
struct LostCalls {
    maps: [MapData; 2],
    active_index: Array<MapData, u32>,
    active: usize,
    /// Entries taken at the last turn, for the health report.
    last_taken: usize,
    /// The kernel's count of dropped records at each of the last
    /// `QUIET_TURNS` turns, oldest first: see [`LostCalls::turn`].
    dropped_at: [Option<u64>; QUIET_TURNS],
}

/// Turns without a dropped record after which the idle lost-call map is
/// known to be empty. The map to empty was made the one counted into two
/// turns ago; a program that wrote into it since read which map is active
/// after that switch, and counted its dropped record just before: at most
/// one turn earlier, the grace the two maps already grant a program.
const QUIET_TURNS: usize = 3;

/// What the kernel programs stream to userspace, for the event loop to own.
pub struct Streams {
    /// Completed syscalls and scheduler events.
    pub events: Ring,
    /// The kernel programs' diagnostics, for `-v`.
    pub logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Probe {
    /// Loads and attaches the programs; from the return on, every traced
    /// syscall is recorded.
    pub fn attach(config: &Config, with_logs: bool) -> Result<(Self, Streams)> {
        if OBJECT.is_empty() {
            bail!("this probe was built without its kernel programs: build it with `cargo xtask build`");
        }
        check_privileges()?;
        let ring_bytes = match config.buffer_bytes {
            Some(bytes) => bytes,
            None => default_buffer_bytes()?,
        };
        let self_pid = std::process::id();
        let filter_pids = u8::from(config.filter_pids);
        let filter_syscalls = u8::from(!config.only.is_empty());
        let trace_sched = u8::from(config.sched);
        let filter_cgroups = if config.floor { 0 } else { config.cgroups.len() as u32 };
        // The last cgroup verdict of each thread, by tid.
        let in_cgroups_entries = if filter_cgroups != 0 { procfs::pid_max()? } else { 1 };
        let btf = btf::KernelBtf::default();
        // Where sys_exit reads the number of a call it did not see start.
        let syscall_nr_offset = match config.report_unseen && config.syscalls && !config.floor {
            true => btf
                .syscall_nr_offset()
                .inspect_err(|err| {
                    log::warn!("calls in progress at attach are not counted when they return: {err:#}")
                })
                .ok(),
            false => None,
        };
        let report_unseen = u8::from(syscall_nr_offset.is_some());
        let syscall_nr_offset = syscall_nr_offset.unwrap_or(0);
        // Where sys_enter finds whether a call is a 32-bit one; without it
        // (no BTF), probe says that it cannot tell.
        let task_status_offset = match config.syscalls && !config.floor {
            true => btf.task_status_offset()
                .inspect_err(|err| {
                    eprintln!("probe: 32-bit syscalls cannot be told from 64-bit ones and are named from x86-64's table: {err:#}")
                })
                .unwrap_or(0),
            false => 0,
        };
        // Together the CPUs wake the reader when the ring is at most half
        // full (a record takes its size plus an 8-byte header). A wakeup
        // costs probe about 30 µs on the test VM, and at an eighth it woke
        // 260 times a second under redis: its CPU a record fell from 47 ns
        // to 39 at half. The other half still holds 12 ms of the fastest
        // storm's records while the reader gets a CPU.
        let record_bytes = (std::mem::size_of::<SyscallEvent>() + 8) as u32;
        let wakeup_records = (ring_bytes / 2 / record_bytes / nr_cpus()?).max(1);
        // Scheduler events and forks name other tasks than the current one.
        let reads_tasks = !config.floor && (config.sched || (config.follow_forks && config.filter_pids));
        // With the offsets, a process stays traced until its final switch.
        let untrace_at_free = u8::from(reads_tasks && config.filter_pids);
        let offsets = match reads_tasks {
            true => btf.task_offsets().context("the scheduler view needs it; --no-sched runs without")?,
            false => TaskOffsets { pid: 0, tgid: 0 },
        };
        // The kernel's own count of each thread's migrations, in every
        // switch-out: exact however many records are lost. With it, whether
        // the thread was created since the programs were loaded, and so
        // made all of its moves in the trace.
        let (migrations_offset, start_time_offset) = match config.sched && !config.floor {
            true => (
                btf.task_migrations_offset().context("cannot find where the kernel counts migrations")?,
                btf.task_start_time_offset()?,
            ),
            false => (0, 0),
        };
        // A slow call's details (--slow's, and the tail exemplars'): where
        // pt_regs keeps the registers, and (for --slow's wakers) where a
        // task's kernel stack is.
        let slow = config.slow_ns != 0 && config.syscalls && !config.floor;
        let tail = config.tail_details && config.syscalls && !config.floor;
        let regs = match (slow, tail) {
            (true, _) => Some(btf.regs_layout(REGS_WORDS).context("--slow reads a slow call's registers")?),
            (false, true) => btf
                .regs_layout(REGS_WORDS)
                .inspect_err(|err| {
                    eprintln!("probe: the slowest calls come without their stacks and arguments: {err:#}")
                })
                .ok(),
            (false, false) => None,
        };
        // Tail details go without their wakers rather than not start.
        let task_stack_offset = match (slow, regs.is_some() && config.sched) {
            (_, false) => 0,
            (true, true) => {
                btf.task_stack_offset().context("--slow tells interrupts from tasks by their stacks")?
            }
            (false, true) => btf
                .task_stack_offset()
                .inspect_err(|err| eprintln!("probe: the slowest calls come without their wakers: {err:#}"))
                .unwrap_or(0),
        };
        // The goroutine at each call's entry: the thread's TLS base, and
        // which executable each exec of a traced process runs.
        let go = match (&config.go, config.syscalls && !config.floor) {
            (Some(go), true) => Some((
                *go,
                btf.task_fsbase_offset().context("goroutines are read from a thread's TLS")?,
                btf.exec_file_offsets().context("goroutines are followed across exec")?,
            )),
            _ => None,
        };
        let (go_target, fsbase_offset, exec) = go.unwrap_or_default();
        // The kernel's dev_t: MKDEV(major, minor), 20 bits of minor.
        let go_dev = (libc::major(go_target.dev) << 20) | libc::minor(go_target.dev);
        let slow_ns = if slow { config.slow_ns } else { 0 };
        let sp_offset = regs.map_or(0, |regs| regs.sp);
        // Megabytes that nothing needs from here on.
        drop(btf);
        let io_uring = match config.io_uring && config.syscalls && !config.floor {
            true => IoUringLayout::read()
                .inspect_err(|err| eprintln!("probe: io_uring requests are not followed: {err:#}"))
                .ok(),
            false => None,
        };
        let at = |field: fn(&IoUringLayout) -> u32| io_uring.as_ref().map_or(0, field);
        let mut ebpf = EbpfLoader::new()
            .override_global(global::SELF_PID, &self_pid, true)
            .override_global(global::FILTER_PIDS, &filter_pids, true)
            .override_global(global::FILTER_SYSCALLS, &filter_syscalls, true)
            .override_global(global::TRACE_SCHED, &trace_sched, true)
            .override_global(global::REPORT_UNSEEN, &report_unseen, true)
            .override_global(global::SYSCALL_NR_OFFSET, &syscall_nr_offset, true)
            .override_global(global::TASK_STATUS_OFFSET, &task_status_offset, true)
            .override_global(global::UNTRACE_AT_FREE, &untrace_at_free, true)
            .override_global(global::WAKEUP_RECORDS, &wakeup_records, true)
            .override_global(global::TASK_PID_OFFSET, &offsets.pid, true)
            .override_global(global::TASK_TGID_OFFSET, &offsets.tgid, true)
            .override_global(global::TASK_MIGRATIONS_OFFSET, &migrations_offset, true)
            .override_global(global::TASK_START_TIME_OFFSET, &start_time_offset, true)
            .override_global(global::LOADED_NS, &clock::monotonic_ns(), true)
            .override_global(global::GO_GOID_OFFSET, &go_target.goid_offset, true)
            .override_global(global::GO_STARTPC_OFFSET, &go_target.startpc_offset, true)
            .override_global(global::GO_TLS_OFFSET, &go_target.tls_offset, true)
            .override_global(global::GO_EXE_DEV, &go_dev, true)
            .override_global(global::GO_EXE_INO, &go_target.ino, true)
            .override_global(global::TASK_FSBASE_OFFSET, &fsbase_offset, true)
            .override_global(global::BINPRM_FILE_OFFSET, &exec.file, true)
            .override_global(global::FILE_INODE_OFFSET, &exec.inode, true)
            .override_global(global::INODE_INO_OFFSET, &exec.ino, true)
            .override_global(global::INODE_SB_OFFSET, &exec.sb, true)
            .override_global(global::SB_DEV_OFFSET, &exec.dev, true)
            .override_global(global::IOU_SUBMIT_CTX, &at(|l| l.submit_ctx), true)
            .override_global(global::IOU_SUBMIT_REQ, &at(|l| l.submit_req), true)
            .override_global(global::IOU_SUBMIT_OPCODE, &at(|l| l.submit_opcode), true)
            .override_global(global::IOU_SUBMIT_OP_STR, &at(|l| l.submit_op_str), true)
            .override_global(global::IOU_ASYNC_REQ, &at(|l| l.async_req), true)
            .override_global(global::IOU_COMPLETE_REQ, &at(|l| l.complete_req), true)
            .override_global(global::IOU_COMPLETE_RES, &at(|l| l.complete_res), true)
            .override_global(global::IOU_CREATE_CTX, &at(|l| l.create_ctx), true)
            .override_global(global::SLOW_NS, &slow_ns, true)
            .override_global(global::PT_REGS_SP_OFFSET, &sp_offset, true)
            .override_global(global::TASK_STACK_OFFSET, &task_stack_offset, true)
            .override_global(global::FILTER_CGROUPS, &filter_cgroups, true)
            .map_max_entries(map::EVENTS, ring_bytes)
            .map_max_entries(map::TRACED, procfs::pid_max()?)
            .map_max_entries(map::IN_CGROUPS, in_cgroups_entries)
            // The whole system needs no count of its waiting threads.
            .map_max_entries(map::WAITING, if config.filter_pids { procfs::pid_max()? } else { 1 })
            .load(OBJECT)
            .map_err(|err| load_error(err.into()))?;

        let logs = match with_logs {
            true => {
                Some(aya_log::EbpfLogger::init(&mut ebpf).context("cannot read the kernel programs' log")?)
            }
            false => None,
        };
        set_syscall_flags(&mut ebpf, &config.only)?;
        if filter_cgroups != 0 {
            let mut cgroups: CgroupArray<_> =
                ebpf.map_mut(map::CGROUPS).context("the BPF object lacks the map CGROUPS")?.try_into()?;
            for (index, dir) in config.cgroups.iter().enumerate() {
                cgroups
                    .set(index as u32, dir.as_raw_fd(), 0)
                    .context("cannot give the kernel programs a --cgroup")?;
            }
        }

        if config.floor {
            let floor = load(&mut ebpf, program::FLOOR)?;
            for tracepoint in [
                program::SYS_ENTER,
                program::SYS_EXIT,
                program::SCHED_SWITCH,
                program::SCHED_WAKEUP,
                program::SCHED_WAKEUP_NEW,
            ] {
                floor
                    .attach(tracepoint)
                    .with_context(|| format!("cannot attach to the raw tracepoint {tracepoint}"))?;
            }
            return Self::assemble(ebpf, logs, None, false, Vec::new());
        }
        if reads_tasks {
            check_offsets(&mut ebpf, offsets, task_stack_offset != 0)?;
        }
        let mut programs = Vec::new();
        if config.sched {
            programs.extend([program::SCHED_WAKEUP, program::SCHED_WAKEUP_NEW]);
            // The wakers of slow calls (--slow's, the tail's).
            if task_stack_offset != 0 {
                programs.push(program::SCHED_WAKING);
            }
        }
        // With --cgroup, a new thread's first scheduler events need the
        // cgroup verdict it inherits.
        if (config.follow_forks && config.filter_pids) || (filter_cgroups != 0 && config.sched) {
            programs.push(program::SCHED_PROCESS_FORK);
        }
        if untrace_at_free != 0 {
            programs.push(program::SCHED_PROCESS_FREE);
        }
        // Before the syscalls: a traced process that execs the Go program
        // is marked before its first call in it.
        if go.is_some() && config.filter_pids {
            programs.push(program::SCHED_PROCESS_EXEC);
        }
        // sched_switch also parks the calls of threads that leave their CPU
        // mid-syscall, so it goes before sys_enter, and sys_exit before
        // both: no call is then recorded that nothing would complete.
        match (config.syscalls, config.sched) {
            (true, _) => programs.extend([
                program::SCHED_PROCESS_EXIT,
                program::SYS_EXIT,
                program::SCHED_SWITCH,
                program::SYS_ENTER,
            ]),
            (false, true) => programs.extend([program::SCHED_PROCESS_EXIT, program::SCHED_SWITCH]),
            (false, false) => {}
        }
        let cpus = aya::util::online_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
        // Before any program can count a lost record: see `warm_lost_calls`.
        if !programs.is_empty() {
            let warm = load(&mut ebpf, program::WARM_LOST_CALLS)?;
            run_on_each_cpu(warm, &cpus).context("cannot ready the maps of lost calls")?;
        }
        for program in programs {
            attach(&mut ebpf, program, program)?;
        }
        // Run by `flush_batches`, not attached.
        if config.syscalls {
            load(&mut ebpf, program::FLUSH_SYSCALLS)?;
        }
        if io_uring.is_some() {
            // Completion last: no request is then followed that nothing
            // would complete.
            for event in [
                program::IO_URING_COMPLETE,
                program::IO_URING_QUEUE_ASYNC_WORK,
                program::IO_URING_CREATE,
                program::IO_URING_SUBMIT_REQ,
            ] {
                let program: &mut TracePoint = ebpf
                    .program_mut(event)
                    .with_context(|| format!("the BPF object lacks {event}"))?
                    .try_into()?;
                program.load().with_context(|| format!("the kernel refused the BPF program {event}"))?;
                program
                    .attach("io_uring", event)
                    .with_context(|| format!("cannot attach to io_uring:{event}"))?;
            }
        }
        Self::assemble(ebpf, logs, regs, filter_cgroups != 0, cpus)
    }

    /// Takes the maps userspace uses once the programs are loaded (taken
    /// maps stay open for as long as `Probe` and `Streams` hold them).
    fn assemble(
        mut ebpf: Ebpf,
        logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
        regs: Option<RegsLayout>,
        cgroups: bool,
        cpus: Vec<u32>,
    ) -> Result<(Self, Streams)> {
        let events = match ebpf.take_map(map::EVENTS).context("the BPF object lacks the ring buffer")? {
            aya::maps::Map::RingBuf(data) => Ring::new(data)?,
            _ => bail!("the map {} has an unexpected type", map::EVENTS),
        };
        let (kernel_stacks, detail_ns) = match regs {
            Some(_) => {
                (Some(take_map(&mut ebpf, map::KERNEL_STACKS)?), Some(take_map(&mut ebpf, map::DETAIL_NS)?))
            }
            None => (None, None),
        };
        let probe = Self {
            traced: take_map(&mut ebpf, map::TRACED)?,
            in_cgroups: if cgroups { Some(take_map(&mut ebpf, map::IN_CGROUPS)?) } else { None },
            counters: take_map(&mut ebpf, map::COUNTERS)?,
            lost_calls: LostCalls {
                maps: [raw_map(&mut ebpf, map::LOST_CALLS_0)?, raw_map(&mut ebpf, map::LOST_CALLS_1)?],
                active_index: take_map(&mut ebpf, map::LOST_CALLS_ACTIVE)?,
                active: 0,
                last_taken: 0,
                dropped_at: [None; QUIET_TURNS],
            },
            calls_off_cpu: take_map(&mut ebpf, map::CALLS_OFF_CPU)?,
            cpu_state: take_map(&mut ebpf, map::CPU_STATE)?,
            kernel_stacks,
            detail_ns,
            regs,
            cpus,
            ebpf,
            stats: None,
        };
        Ok((probe, Streams { events, logs }))
    }

    /// The addresses of kernel stack `id` (a record's id plus one), innermost
    /// first; `None` for 0 (not kept) or one the map does not hold.
    pub fn kernel_stack(&self, id: u32) -> Option<Vec<u64>> {
        let stack = self.kernel_stacks.as_ref()?.get(&id.checked_sub(1)?, 0).ok()?;
        Some(stack.frames().iter().map(|frame| frame.ip).collect())
    }

    /// Has the calls of each syscall (`(table_index, ns)`) send their
    /// details from that long; without details, nothing.
    pub fn send_details_from(&mut self, entries: &[(u32, u64)]) -> Result<()> {
        let Some(detail_ns) = self.detail_ns.as_mut() else {
            return Ok(());
        };
        for &(index, ns) in entries {
            detail_ns.set(index, ns, 0).context("cannot set from when slow calls send their details")?;
        }
        Ok(())
    }

    /// Where a slow call's registers are in its record, when calls send
    /// their details.
    pub fn regs_layout(&self) -> Option<RegsLayout> {
        self.regs
    }

    /// Adds a process (all its threads, present and future) to the trace;
    /// with `go`, as one that runs the followed Go program.
    pub fn trace_pid(&mut self, pid: u32, go: bool) -> Result<()> {
        let value = if go { TRACED_GO } else { 1 };
        self.traced.set(pid, value, 0).with_context(|| format!("cannot add PID {pid} to the trace"))
    }

    /// Marks threads as in the --cgroup cgroups, for the scheduler events
    /// about them before they run a program themselves (which checks them).
    pub fn mark_in_cgroups(&mut self, tids: &[u32]) -> Result<()> {
        let Some(in_cgroups) = self.in_cgroups.as_mut() else {
            return Ok(());
        };
        for &tid in tids {
            in_cgroups.set(tid, 1, 0).with_context(|| format!("cannot mark thread {tid} as in --cgroup"))?;
        }
        Ok(())
    }

    /// Has the kernel time every run of every BPF program from now on, for
    /// [`Probe::run_time_ns`]. It costs each run two clock reads.
    pub fn enable_stats(&mut self) -> Result<()> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("cannot enable the kernel's BPF statistics")?;
        self.stats = Some(fd);
        Ok(())
    }

    /// Time probe's programs have run, if statistics are on.
    pub fn run_time_ns(&self) -> Option<u64> {
        self.stats.as_ref()?;
        let loaded = self.ebpf.programs().filter_map(|(_, program)| program.info().ok());
        Some(loaded.map(|info| info.run_time().as_nanos() as u64).sum())
    }

    /// Has each CPU send the syscall records it holds in its batch, so
    /// that none older than now waits for the CPU's next context switch:
    /// `flush_syscalls` run on each online CPU (`BPF_PROG_TEST_RUN`, an
    /// interrupt there). A CPU interrupted while adding a record to its
    /// batch keeps it until its next switch or flush.
    pub fn flush_batches(&self) -> Result<()> {
        let Some(program) = self.ebpf.program(program::FLUSH_SYSCALLS) else {
            return Ok(());
        };
        let flush: &RawTracePoint = program.try_into()?;
        if flush.fd().is_err() {
            return Ok(());
        }
        run_on_each_cpu(flush, &self.cpus).context("cannot flush the syscall records")
    }

    /// Events lost in the kernel so far.
    pub fn drops(&self) -> Result<Drops> {
        let sum = |counter: Counter| -> Result<u64> {
            let values = self.counters.get(&(counter as u32), 0).context("cannot read the loss counters")?;
            Ok(values.iter().sum())
        };
        Ok(Drops {
            ring_buffer: sum(Counter::LostEvents)?,
            in_flight_full: sum(Counter::InFlightFull)?,
            io_uring_full: sum(Counter::IoUringFull)?,
            uncounted: sum(Counter::LostUncounted)?,
        })
    }

    /// Lost-call counters (thread, syscall, errno) taken at the last turn:
    /// the kernel map that grows with the threads losing records.
    pub fn lost_call_keys(&self) -> usize {
        self.lost_calls.last_taken
    }

    /// The traced syscalls in progress now, probe's own left out: one batch
    /// read of the parked calls, one of the per-CPU slots.
    pub fn calls_in_flight(&self) -> Result<CallsInFlight> {
        let own = std::process::id();
        let entries = batch::<u32, InFlight>(self.calls_off_cpu.map(), BPF_MAP_LOOKUP_BATCH)
            .context("cannot read the calls parked off-CPU")?;
        let parked_entries = entries.len();
        let parked = entries
            .into_iter()
            .map(|(_, call)| call)
            .filter(|call| call.start_ns != 0 && call.pid != own)
            .collect();
        let slots = self.cpu_state.get(&0, 0).context("cannot read the per-CPU calls in flight")?;
        let on_cpu = slots
            .iter()
            .map(|state| state.call)
            .filter(|call| call.start_ns != 0 && call.pid != own)
            .collect();
        Ok(CallsInFlight { on_cpu, parked, parked_entries })
    }

    /// Syscalls whose records were dropped, by thread, syscall and errno:
    /// what the kernel counted in the map it stopped using at the previous
    /// call. With `all`, when the trace is over, the other map too, after
    /// the programs have had time to finish.
    pub fn take_lost_calls(&mut self, all: bool) -> Result<Vec<(LostCall, u64)>> {
        let mut taken = self.lost_calls.turn(self.drops()?.ring_buffer, all)?;
        if all {
            std::thread::sleep(LAST_TURN_GRACE);
            taken.extend(self.lost_calls.turn(self.drops()?.ring_buffer, all)?);
        }
        Ok(taken)
    }
}

impl LostCalls {
    /// Empties the map the programs stopped counting into at the previous
    /// turn, then makes it the one they count into. Every write into these
    /// maps follows a dropped record's count (`dropped`, the kernel's count
    /// now): while that count has not moved for `QUIET_TURNS` turns, the
    /// map is empty and is not read, a walk of its million buckets that
    /// took a tenth of probe's CPU under a syscall storm. With `all`, at the
    /// end, it is read whatever the count.
    fn turn(&mut self, dropped: u64, all: bool) -> Result<Vec<(LostCall, u64)>> {
        let idle = 1 - self.active;
        let taken = match !all && self.dropped_at[0] == Some(dropped) {
            true => Vec::new(),
            false => batch(&self.maps[idle], BPF_MAP_LOOKUP_AND_DELETE_BATCH)
                .context("cannot read the counts of lost calls")?,
        };
        self.active_index.set(0, idle as u32, 0).context("cannot switch the map of lost calls")?;
        self.active = idle;
        self.last_taken = taken.len();
        self.dropped_at.rotate_left(1);
        self.dropped_at[QUIET_TURNS - 1] = Some(dropped);
        Ok(taken)
    }
}

/// `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_LOOKUP_AND_DELETE_BATCH` from
/// linux/bpf.h: aya has no batch operations, and reading a large map one
/// entry at a time costs three syscalls an entry, more than a trace under
/// load can spare.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of linux/bpf.h's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads every entry of a `K -> V` hash map with one of the batch commands
/// above (and so, with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, removes them).
fn batch<K, V>(map: &MapData, command: libc::c_long) -> io::Result<Vec<(K, V)>>
where
    K: aya::Pod + Default,
    V: aya::Pod + Default,
{
    const CHUNK: usize = 4096;
    // The kernel writes the map's own sizes into the buffers.
    let info = map.info().map_err(io::Error::other)?;
    if (info.key_size() as usize, info.value_size() as usize) != (size_of::<K>(), size_of::<V>()) {
        return Err(io::Error::other("the map's key or value is not of the type read"));
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    let mut taken = Vec::new();
    // A hash map's batch position is its bucket index, a u32.
    let (mut position, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &position as *const u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the pointers in `attr` point to buffers of `count` keys and
        // values of the map's sizes (checked above), and to u32 positions,
        // all alive here.
        let ret = unsafe { libc::syscall(libc::SYS_bpf, command, &mut attr, size_of::<BatchAttr>()) };
        let done = match ret {
            0 => false,
            _ => match io::Error::last_os_error() {
                err if err.raw_os_error() == Some(libc::ENOENT) => true,
                err => return Err(err),
            },
        };
        let filled = (attr.count as usize).min(CHUNK);
        taken.extend(keys[..filled].iter().copied().zip(values[..filled].iter().copied()));
        if done {
            return Ok(taken);
        }
        position = next;
        first = false;
    }
}

/// Marks which syscalls never return, may rename the thread, and (with
/// `-e`) are wanted.
fn set_syscall_flags(ebpf: &mut Ebpf, only: &[Sysno]) -> Result<()> {
    // Borrowed, not taken: a taken map is closed when dropped, and the
    // programs, still to be loaded, need it open.
    let map = ebpf.map_mut(map::SYSCALL_FLAGS).context("the BPF object lacks the map SYSCALL_FLAGS")?;
    let mut table: Array<&mut MapData, u8> = Array::try_from(map)?;
    let mut flags = vec![0u8; MAX_SYSCALL_NR as usize];
    // x86-64's numbers, then the i386 table's from COMPAT_FLAGS_BASE: the
    // same syscall by name has another number there (exit is 60 and 1).
    let mut mark = |name: &str, flag: u8| -> Result<()> {
        let native = name.parse::<Sysno>().ok().map(|sysno| sysno.id() as u32);
        let compat = name.parse::<I386>().ok().map(|sysno| COMPAT_FLAGS_BASE + sysno.id() as u32);
        for nr in native.into_iter().chain(compat) {
            let slot = flags
                .get_mut(nr as usize)
                .with_context(|| format!("syscall {name} (number {nr}) is beyond what probe can flag"))?;
            *slot |= flag;
        }
        Ok(())
    };
    for name in ["exit", "exit_group"] {
        mark(name, syscall_flags::NO_RETURN)?;
    }
    for name in ["execve", "execveat", "prctl"] {
        mark(name, syscall_flags::RENAMES)?;
    }
    for name in ["clone", "clone3", "fork", "vfork"] {
        mark(name, syscall_flags::FORKS)?;
    }
    for sysno in only {
        mark(sysno.name(), syscall_flags::WANTED)?;
    }
    for (nr, &flag) in flags.iter().enumerate().filter(|(_, &flag)| flag != 0) {
        table.set(nr as u32, flag, 0).context("cannot set the syscall flags")?;
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, program: &str, tracepoint: &str) -> Result<RawTracePointLinkId> {
    let raw = load(ebpf, program)?;
    raw.attach(tracepoint).with_context(|| format!("cannot attach to the raw tracepoint {tracepoint}"))
}

/// Runs a loaded program that is not attached once on each of `cpus`
/// (`BPF_PROG_TEST_RUN`: an interrupt there, or a plain call on the CPU
/// probe runs on).
fn run_on_each_cpu(program: &RawTracePoint, cpus: &[u32]) -> Result<()> {
    for &cpu in cpus {
        let options = RawTracePointRunOptions { cpu: Some(cpu), ..RawTracePointRunOptions::new() };
        program.test_run(options).with_context(|| format!("on CPU {cpu}"))?;
    }
    Ok(())
}

fn load<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut RawTracePoint> {
    let raw: &mut RawTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("the BPF object lacks the program {program}"))?
        .try_into()?;
    raw.load().with_context(|| format!("the kernel refused the BPF program {program}"))?;
    Ok(raw)
}

/// Proves the BTF offsets on probe's own task: a program reads it at those
/// offsets during one syscall of probe's, and the ids must match the
/// kernel's own answer. A wrong layout would silently misattribute every
/// scheduler event, so it stops probe instead.
/// With `task_stack`, also that the programs tell they run on a task's
/// kernel stack, as `--slow` tells a waker from an interrupt.
fn check_offsets(ebpf: &mut Ebpf, offsets: TaskOffsets, task_stack: bool) -> Result<()> {
    let link = attach(ebpf, program::CHECK_OFFSETS, program::SYS_ENTER)?;
    // SAFETY: getppid has no arguments and no side effects; it is the
    // syscall that the check program observes.
    unsafe { libc::getppid() };
    let raw: &mut RawTracePoint =
        ebpf.program_mut(program::CHECK_OFFSETS).context("check_offsets vanished")?.try_into()?;
    raw.detach(link).context("cannot detach check_offsets")?;
    let checks: Array<&MapData, OffsetCheck> =
        Array::try_from(ebpf.map(map::OFFSET_CHECK).context("the BPF object lacks OFFSET_CHECK")?)?;
    let seen = checks.get(&0, 0).context("cannot read OFFSET_CHECK")?;
    let expected = (seen.pid_tgid as u32, (seen.pid_tgid >> 32) as u32);
    if seen.pid_tgid == 0 || (seen.pid, seen.tgid) != expected {
        bail!(
            "the kernel's BTF gives task_struct offsets (pid at {}, tgid at {}) that do not read this process's ids (read {:?}, expected {:?}); run with --no-sched",
            offsets.pid, offsets.tgid, (seen.pid, seen.tgid), expected
        );
    }
    if task_stack && seen.on_task_stack == 0 {
        bail!("--slow cannot tell a waker from an interrupt on this kernel (its kernel stacks are not 16 KiB: KASAN?); run without --slow");
    }
    Ok(())
}

/// Takes a map whose raw fd probe drives itself.
fn raw_map(ebpf: &mut Ebpf, name: &str) -> Result<MapData> {
    match ebpf.take_map(name).with_context(|| format!("the BPF object lacks the map {name}"))? {
        aya::maps::Map::HashMap(data) => Ok(data),
        _ => bail!("the map {name} has an unexpected type"),
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &str) -> Result<M>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).with_context(|| format!("the BPF object lacks the map {name}"))?;
    M::try_from(map).with_context(|| format!("the map {name} has an unexpected type"))
}

/// Says what a failed load most likely needs: descriptors and memory are
/// the user's to give; otherwise the kernel is too old for the programs.
fn load_error(err: anyhow::Error) -> anyhow::Error {
    let errno = err.chain().find_map(|cause| cause.downcast_ref::<io::Error>()?.raw_os_error());
    let hint = match errno {
        Some(libc::EMFILE | libc::ENFILE) => "too few file descriptors: raise `ulimit -n` to a few hundred",
        Some(libc::ENOMEM) => {
            "the kernel refused memory for its maps: lower --buffer-size, or raise `ulimit -l`"
        }
        // The capabilities are there (checked first), so they count for
        // nothing here: a user namespace, or a security module's policy.
        Some(libc::EPERM) => {
            "the kernel refused: CAP_BPF and CAP_PERFMON count only in the host's user namespace, \
             not a container's, and a security module may forbid BPF"
        }
        _ => "they need Linux 5.18 or later, with BPF ring buffers",
    };
    err.context(format!("cannot load probe's BPF programs ({hint})"))
}

/// Fails early, with what to do, when the capabilities are missing: the
/// kernel's own answer would be a bare EPERM deep inside the loader.
fn check_privileges() -> Result<()> {
    let effective = procfs::effective_capabilities()?;
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!("probe needs root, or the capabilities CAP_BPF and CAP_PERFMON: run it with sudo")
}
