//! The `probe` command: parses the options, finds or starts what to trace,
//! loads the kernel programs, plugs in the outputs and runs the event loop.
//! Everything is put together here and nowhere else.

use std::{
    collections::HashSet,
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use clap::{error::ErrorKind, Parser};
use probe_common::COMPAT_NR;

use crate::{
    bpf::{Config, GoTarget, Probe},
    cgroup::filter::Filter,
    cli::Args,
    clock, escape,
    golang::{
        self,
        binary::{file_id, GoBinary, Inspection},
        Goroutines,
    },
    metrics::{server::Endpoint, Limits, Store},
    output::{self, stream::Stream, Outputs, Sink},
    pipeline::Pipeline,
    procfs,
    session::{self, Options, Traced},
    slow::Slow,
    target::{GatedCommand, PidTarget, SpawnError},
    timeline::Timeline,
    tui::Live,
};

/// Runs probe with the process's arguments and returns its exit status.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // One line, not clap's usage block: the rest is in --help. A
            // first line that ends in ':' takes the list that follows it.
            let text = err.to_string();
            let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
            let mut line = lines.next().unwrap_or_default().trim_start_matches("error: ").to_owned();
            if line.ends_with(':') {
                let list: Vec<&str> = lines.take_while(|line| !line.starts_with("Usage:")).collect();
                line = format!("{line} {}", list.join(", "));
            }
            eprintln!("probe: {line} (see probe --help)");
            return ExitCode::from(2);
        }
    };
    let level = match args.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new().filter_level(level).format_timestamp(None).init();
    match run(args) {
        Ok(status) => ExitCode::from(status as u8),
        Err(err) => {
            let status = err.downcast_ref::<SpawnError>().map_or(1, |spawn| spawn.exit_code);
            // One line, even when the kernel's verifier log has several.
            let text = format!("{err:#}").split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("probe: {text}");
            ExitCode::from(status as u8)
        }
    }
}

/// Raises the soft limit of open files to the hard one, as systemd asks of
/// programs that need many: explaining slow calls keeps each object of up
/// to 32 processes open (their stacks are named from them after the
/// processes exit), and the metrics endpoint takes a descriptor a
/// connection. Without it, probe runs with fewer.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out-pointer, then a valid in-pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The traced executable, if it is a Go program whose goroutines probe can
/// follow (its scheduler, and its goroutines at each syscall); a Go program
/// it cannot follow gets a note on stderr, and so does an executable that
/// is not Go at all when `asked` (--goroutines).
fn followable_go_program(path: &Path, asked: bool) -> Result<Option<GoBinary>> {
    match golang::binary::inspect(path)? {
        Inspection::NotGo => {
            if asked {
                eprintln!(
                    "probe: {} is not a Go program: --goroutines has nothing to follow",
                    path.display()
                );
            }
            Ok(None)
        }
        Inspection::Unsupported { version, why } => {
            eprintln!(
                "probe: {} is a Go program ({version}) whose goroutines and scheduler cannot be followed: {why}; showing its threads",
                path.display()
            );
            Ok(None)
        }
        Inspection::Go(binary) => Ok(Some(binary)),
    }
}

fn run(args: Args) -> Result<i32> {
    let stdout_is_terminal = std::io::stdout().is_terminal();
    if args.tui && !stdout_is_terminal {
        bail!("--tui needs a terminal on stdout");
    }
    let live = args.tui
        || (!args.no_tui
            && !args.json
            && args.output.is_none()
            && args.prometheus.is_none()
            && stdout_is_terminal);
    // Interval reports go to the stream unless the live view or the
    // metrics show them.
    let intervals = match live || args.prometheus.is_some() {
        true => None,
        false => Some(args.top),
    };
    if let (Some(report), Some(timeline)) = (&args.output, &args.trace) {
        if output::file::same_file(report, timeline) {
            bail!("-o and --trace name the same file, {}: give them two", report.display());
        }
    }
    // The live view shows --slow's calls on its terminal itself.
    let stream = Stream::open(args.output.as_deref(), args.json, intervals, !live || args.output.is_some())?;
    // Ports and paths are checked before anything is loaded or started.
    let endpoint =
        args.prometheus.map(|address| Endpoint::bind(address, args.web_config.as_deref())).transpose()?;
    let timeline = args.trace.as_deref().map(|path| Timeline::create(path, args.trace_limit)).transpose()?;
    let pids = args.pid.iter().map(|&pid| PidTarget::open(pid)).collect::<Result<Vec<_>>>()?;
    let mut cgroups = match args.cgroups.is_empty() {
        true => None,
        false => Some(Filter::open(&args.cgroups)?),
    };
    // Fork before anything starts a thread: the child must stay
    // single-threaded until it execs.
    let gated = match args.command.is_empty() {
        true => None,
        false => Some(GatedCommand::fork(&args.command, live)?),
    };
    // After the fork: the COMMAND keeps the limit it was given.
    raise_descriptor_limit();
    let executable = match (&gated, pids.first()) {
        (Some(gated), _) => Some(gated.path.clone()),
        (None, Some(target)) => Some(PathBuf::from(format!("/proc/{}/exe", target.pid))),
        (None, None) => None,
    };
    let go_program = match &executable {
        Some(path) if !args.no_goroutines && !args.no_syscalls => {
            followable_go_program(path, args.goroutines)?
        }
        _ => None,
    };
    let tail_details = args.tail_details || (!args.no_tail_details && (gated.is_some() || !pids.is_empty()));
    let config = Config {
        filter_pids: !pids.is_empty() || gated.is_some(),
        follow_forks: args.follow_forks || (gated.is_some() && !args.no_follow_forks),
        buffer_bytes: args.buffer_size,
        syscalls: !args.no_syscalls,
        sched: !args.no_sched,
        only: args.syscalls.clone(),
        floor: args.bench_floor,
        io_uring: true,
        // A COMMAND's threads start traced; those of --pid and of the
        // whole system may be mid-call.
        report_unseen: gated.is_none(),
        slow_ns: args
            .slow
            .map_or(0, |threshold| u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX).max(1)),
        tail_details,
        cgroups: cgroups.as_mut().map(|cgroups| std::mem::take(&mut cgroups.dirs)).unwrap_or_default(),
        go: go_program.as_ref().map(|binary| GoTarget {
            dev: binary.file.0,
            ino: binary.file.1,
            tls_offset: binary.tls_offset,
            goid_offset: binary.goid_offset,
            startpc_offset: binary.startpc_offset,
        }),
    };
    let (mut probe, streams) = Probe::attach(&config, args.verbose > 0)?;
    // After attaching: a thread created since is marked by the programs.
    let in_cgroups = match &cgroups {
        Some(cgroups) => {
            let tids = cgroups.threads();
            probe.mark_in_cgroups(&tids)?;
            Some(tids.into_iter().collect::<HashSet<u32>>())
        }
        None => None,
    };
    // The trace has begun: what the programs see from now on is counted.
    let attached_ns = clock::monotonic_ns();
    let traced = match (&gated, pids.is_empty()) {
        (Some(_), _) => escape::visible(
            &args.command.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>().join(" "),
        ),
        (None, true) => "whole system".to_owned(),
        (None, false) => {
            format!("PID {}", pids.iter().map(|target| target.pid.to_string()).collect::<Vec<_>>().join(","))
        }
    };
    let traced = match args.cgroups.is_empty() {
        true => traced,
        false => {
            let paths: Vec<String> =
                args.cgroups.iter().map(|path| path.to_string_lossy().into_owned()).collect();
            format!("{traced}, cgroups {}", escape::visible(&paths.join(",")))
        }
    };
    // The live view shows what the programs cost, and the metrics with
    // --bpf-stats; without the kernel's statistics they say nothing of it.
    if live || args.bpf_stats {
        if let Err(err) = probe.enable_stats() {
            log::info!("{err:#}");
        }
    }
    let metrics = match endpoint {
        Some(endpoint) => {
            let limits = Limits {
                processes: args.prometheus_processes,
                by_pid: args.prometheus_pids,
                threads: args.prometheus_threads,
                grace: args.prometheus_grace,
            };
            let store = Arc::new(Mutex::new(Store::new(limits)));
            Some((endpoint, store))
        }
        None => None,
    };
    // The --pid targets that run the Go program.
    let go_pids: Vec<u32> = match &go_program {
        Some(binary) => pids
            .iter()
            .map(|target| target.pid)
            .filter(|&pid| file_id(Path::new(&format!("/proc/{pid}/exe"))).is_ok_and(|id| id == binary.file))
            .collect(),
        None => Vec::new(),
    };
    let mut goroutines = go_program.map(Goroutines::new);
    if let Some(goroutines) = &mut goroutines {
        let command = gated.iter().map(|gated| gated.pid.as_raw() as u32);
        command.chain(go_pids.iter().copied()).for_each(|pid| goroutines.watch(pid));
    }
    let mut pipeline = Pipeline::new(goroutines);
    pipeline.explain_calls(args.slow, tail_details);
    // The explaining thread, which slow calls' details go to, and with
    // --slow kallsyms read, before the traced threads run: a storm would
    // fill the ring buffer meanwhile.
    probe.send_details_from(&pipeline.details_from())?;
    let slow = match probe.regs_layout() {
        Some(regs) if pipeline.wants_details() => Some(
            Slow::start(regs, args.slow.is_some())
                .context("cannot start the thread that explains slow calls")?,
        ),
        _ => None,
    };
    let (target, command_output) = if let Some(mut gated) = gated {
        // Not Go yet: it becomes the Go program at its exec.
        probe.trace_pid(gated.pid.as_raw() as u32, false)?;
        let command_output = gated.output.take();
        (Traced::Command(gated.release()?), command_output)
    } else if pids.is_empty() {
        (Traced::System, None)
    } else {
        for target in &pids {
            probe.trace_pid(target.pid, go_pids.contains(&target.pid))?;
        }
        (Traced::Pids(pids), None)
    };
    // What the traced threads are in the middle of is read now, and
    // counted apart when it returns.
    let mut calls_at_attach = match &target {
        Traced::Command(_) => Vec::new(),
        _ if args.no_syscalls => Vec::new(),
        Traced::System => procfs::calls_in_progress(None, attached_ns),
        Traced::Pids(targets) => {
            let pids: Vec<u32> = targets.iter().map(|target| target.pid).collect();
            procfs::calls_in_progress(Some(&pids), attached_ns)
        }
    };
    // With --cgroup, only the threads in the cgroups.
    if let Some(tids) = &in_cgroups {
        calls_at_attach.retain(|call| tids.contains(&call.tid));
    }
    // With -e, only the syscalls traced.
    if !args.syscalls.is_empty() {
        calls_at_attach.retain(|call| {
            let nr = (call.nr & !COMPAT_NR) as usize;
            args.syscalls.iter().any(|sysno| match call.nr & COMPAT_NR {
                0 => sysno.id() as usize == nr,
                _ => syscalls::x86::Sysno::new(nr).is_some_and(|compat| compat.name() == sysno.name()),
            })
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    // The outputs in the order they finish: the live view gives the
    // terminal back before the stream prints the summary to it.
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    {
        let _guard = runtime.enter();
        if live {
            sinks.push(Box::new(Live::open(traced, command_output)?));
        }
        if let Some((endpoint, store)) = metrics {
            sinks.push(Box::new(endpoint.serve(store)?));
        }
    }
    if let Some(timeline) = timeline {
        sinks.push(Box::new(timeline));
    }
    sinks.push(Box::new(stream));
    let options = Options {
        interval: args.interval,
        duration: args.duration,
        announce: !live,
        started_ns: attached_ns,
    };
    pipeline.attached(attached_ns, calls_at_attach, &procfs::Proc);
    runtime.block_on(session::run(probe, streams, target, options, pipeline, slow, Outputs::new(sinks)))
}
