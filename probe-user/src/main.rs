//! `probe`: per-thread syscall latency and scheduling, live, from eBPF.
//!
//! The flow: [`cli`] checks the options, [`target`] finds or starts what to
//! trace, [`bpf`] loads and attaches the kernel programs (with `task_struct`
//! offsets from [`btf`]), [`session`] drains their ring buffer into
//! [`aggregate`] tables and writes [`report`]s through [`output`], or shows
//! them live in a terminal through [`tui`].

mod aggregate;
mod bpf;
mod btf;
mod cli;
mod output;
mod report;
mod session;
mod target;
mod tui;

use std::{io::IsTerminal, process::ExitCode};

use anyhow::{bail, Context, Result};
use clap::{error::ErrorKind, Parser};

use crate::{
    bpf::{Config, Probe},
    cli::Args,
    output::Sink,
    session::{Options, Output, Target},
    target::{GatedCommand, PidTarget, SpawnError},
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
            // One line, not clap's usage block: the rest is in --help.
            let text = err.to_string();
            let line = text.lines().next().unwrap_or_default();
            eprintln!("probe: {} (see probe --help)", line.trim_start_matches("error: "));
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

fn run(args: Args) -> Result<i32> {
    let stdout_is_terminal = std::io::stdout().is_terminal();
    if args.tui && !stdout_is_terminal {
        bail!("--tui needs a terminal on stdout");
    }
    let live = args.tui || (!args.no_tui && !args.json && args.output.is_none() && stdout_is_terminal);
    let sink = Sink::open(args.output.as_deref(), args.json)?;
    let pids = args.pid.iter().map(|&pid| PidTarget::open(pid)).collect::<Result<Vec<_>>>()?;
    // Fork before anything starts a thread: the child must stay
    // single-threaded until it execs.
    let gated = match args.command.is_empty() {
        true => None,
        false => Some(GatedCommand::fork(&args.command, live)?),
    };
    let config = Config {
        filter_pids: !pids.is_empty() || gated.is_some(),
        follow_forks: args.follow_forks || (gated.is_some() && !args.no_follow_forks),
        buffer_bytes: args.buffer_size,
        syscalls: !args.no_syscalls,
        sched: !args.no_sched,
        only: args.syscalls.clone(),
        floor: args.bench_floor,
    };
    let (mut probe, streams) = Probe::attach(&config, args.verbose > 0)?;
    let traced = match (&gated, pids.is_empty()) {
        (Some(_), _) => args.command.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>().join(" "),
        (None, true) => "whole system".to_owned(),
        (None, false) => {
            format!("PID {}", pids.iter().map(|target| target.pid.to_string()).collect::<Vec<_>>().join(","))
        }
    };
    let output = match live {
        true => {
            // The header shows what the programs cost; without the kernel's
            // statistics it says n/a.
            if let Err(err) = probe.enable_stats() {
                log::info!("{err:#}");
            }
            Output::Live(Box::new(Live::open(traced)?), sink)
        }
        false => Output::Reports(sink),
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
    let options = Options { interval: args.interval, duration: args.duration, top: args.top, command_output };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?
        .block_on(session::run(probe, streams, target, options, output))
}
