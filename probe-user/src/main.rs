//! `probe`: per-thread syscall latency and scheduling, live, from eBPF.
//!
//! The flow: [`cli`] checks the options, [`target`] finds or starts what to
//! trace, [`bpf`] loads and attaches the kernel programs (with `task_struct`
//! offsets from [`btf`]), [`session`] drains their ring buffer into
//! [`aggregate`] tables and writes [`report`]s through [`output`], or shows
//! them live in a terminal through [`tui`]; [`metrics`] serves them to
//! Prometheus, [`timeline`] writes every event for Perfetto, and [`golang`]
//! follows a Go program's goroutines.

mod aggregate;
mod bpf;
mod btf;
mod cli;
mod golang;
mod metrics;
mod output;
mod report;
mod session;
mod target;
mod timeline;
mod tracefs;
mod tui;

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use clap::{error::ErrorKind, Parser};

use crate::{
    bpf::{Config, GoTarget, Probe},
    cli::Args,
    golang::{
        binary::{GoBinary, Inspection},
        Goroutines,
    },
    metrics::{server::Endpoint, Limits, Metrics, Store},
    output::Sink,
    session::{Options, Output, Target},
    target::{GatedCommand, PidTarget, SpawnError},
    timeline::Timeline,
    tui::Live,
};

fn main() -> ExitCode {
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

/// The traced executable, if it is a Go program whose goroutines probe can
/// follow; a Go program it cannot follow gets a note on stderr, and so does
/// an executable that is not Go at all (--goroutines was asked for).
fn go_binary(path: &Path) -> Result<Option<(PathBuf, GoBinary)>> {
    match golang::binary::inspect(path)? {
        Inspection::NotGo => {
            eprintln!("probe: {} is not a Go program: --goroutines has nothing to follow", path.display());
            Ok(None)
        }
        Inspection::Unsupported { version, why } => {
            eprintln!(
                "probe: {} is a Go program ({version}) whose goroutines cannot be followed: {why}; showing its threads",
                path.display()
            );
            Ok(None)
        }
        Inspection::Go(binary) => Ok(Some((path.to_owned(), binary))),
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
    let sink = Sink::open(args.output.as_deref(), args.json)?;
    // Ports and paths are checked before anything is loaded or started.
    let endpoint = args.prometheus.map(Endpoint::bind).transpose()?;
    let timeline = args.trace.as_deref().map(|path| Timeline::create(path, args.trace_limit)).transpose()?;
    let pids = args.pid.iter().map(|&pid| PidTarget::open(pid)).collect::<Result<Vec<_>>>()?;
    // Fork before anything starts a thread: the child must stay
    // single-threaded until it execs.
    let gated = match args.command.is_empty() {
        true => None,
        false => Some(GatedCommand::fork(&args.command, live)?),
    };
    let executable = match (&gated, pids.first()) {
        (Some(gated), _) => Some(gated.path.clone()),
        (None, Some(target)) => Some(PathBuf::from(format!("/proc/{}/exe", target.pid))),
        (None, None) => None,
    };
    let go = match &executable {
        Some(path) if args.goroutines => go_binary(path)?,
        Some(path) if golang::binary::is_go(path) => {
            eprintln!(
                "probe: {} is a Go program: --goroutines shows which goroutine made each syscall, at a cost to every goroutine switch",
                path.display()
            );
            None
        }
        _ => None,
    };
    let config = Config {
        filter_pids: !pids.is_empty() || gated.is_some(),
        follow_forks: args.follow_forks || (gated.is_some() && !args.no_follow_forks),
        buffer_bytes: args.buffer_size,
        syscalls: !args.no_syscalls,
        sched: !args.no_sched,
        only: args.syscalls.clone(),
        floor: args.bench_floor,
        io_uring: true,
        go: go.as_ref().map(|(path, binary)| GoTarget {
            path: path.clone(),
            goid_offset: binary.goid_offset,
            startpc_offset: binary.startpc_offset,
        }),
    };
    let (mut probe, streams) = Probe::attach(&config, args.verbose > 0)?;
    let traced = match (&gated, pids.is_empty()) {
        (Some(_), _) => args.command.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>().join(" "),
        (None, true) => "whole system".to_owned(),
        (None, false) => {
            format!("PID {}", pids.iter().map(|target| target.pid.to_string()).collect::<Vec<_>>().join(","))
        }
    };
    // The live view and the metrics show what the programs cost; without
    // the kernel's statistics they say nothing of it.
    if live || endpoint.is_some() {
        if let Err(err) = probe.enable_stats() {
            log::info!("{err:#}");
        }
    }
    let metrics = match endpoint {
        Some(endpoint) => {
            let limits = Limits { threads: args.prometheus_threads, grace: args.prometheus_grace };
            let store = Arc::new(Mutex::new(Store::new(limits)));
            Some((endpoint, store))
        }
        None => None,
    };
    let output = match (live, &metrics) {
        (true, _) => Output::Live(Box::new(Live::open(traced)?), sink),
        (false, Some(_)) => Output::Summary(sink),
        (false, None) => Output::Reports(sink),
    };
    let (target, command_output) = if let Some(mut gated) = gated {
        probe.trace_pid(gated.pid.as_raw() as u32)?;
        let command_output = gated.output.take();
        (Target::Command(gated.release()?), command_output)
    } else if pids.is_empty() {
        (Target::System, None)
    } else {
        for target in &pids {
            probe.trace_pid(target.pid)?;
        }
        (Target::Pids(pids), None)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    let store = match metrics {
        Some((endpoint, store)) => {
            let _guard = runtime.enter();
            endpoint.serve(Metrics(store.clone()))?;
            Some(store)
        }
        None => None,
    };
    let options = Options {
        interval: args.interval,
        duration: args.duration,
        top: args.top,
        command_output,
        metrics: store,
        timeline,
        goroutines: go.map(|(_, binary)| Goroutines::new(binary)),
    };
    runtime.block_on(session::run(probe, streams, target, options, output))
}
