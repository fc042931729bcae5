//! The event loop: drains the ring buffer into the record pipeline, closes
//! an interval every `--interval` and hands it to the outputs, and ends
//! with the summary when the trace is over. What ends a trace is decided
//! here; what records mean is the pipeline's business, and how reports look
//! the outputs'.

use std::{future::pending, io, os::fd::AsRawFd, time::Duration};

use anyhow::{Context, Result};
use nix::{sys::wait::waitpid, unistd::Pid};
use probe_common::entry_records;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::{interval, interval_at, sleep_until, Instant, MissedTickBehavior},
};

use crate::{
    bpf::{Probe, Streams},
    cgroup::Cgroups,
    clock::{monotonic_ns, process_cpu_ns},
    output::{Cost, Flow, Interval, Outputs},
    pipeline::Pipeline,
    procfs::{self, Proc},
    report::{Health, Kind, Losses, Report, Span},
    ring::Ring,
    slow::Slow,
    target::{exit_code, PidTarget},
};

/// The kernel wakes the reader only when the ring buffer is filling up;
/// this timer keeps a slow trickle of events live. Each wakeup the kernel
/// asks for starts its period again: under load those wakeups keep the
/// ring read, and the timer's would only add to them (each costs probe
/// about 30 µs on the test VM).
const POLL_PERIOD: Duration = Duration::from_millis(50);

/// How often the kernel's counts of dropped calls are read.
const LOST_CALLS_PERIOD: Duration = Duration::from_millis(250);

/// What is traced, as the event loop watches it end.
pub enum Traced {
    /// Everything but probe.
    System,
    /// `--pid` processes: the trace ends when the last one exits.
    Pids(Vec<PidTarget>),
    /// The COMMAND probe started: the trace ends when it exits.
    Command(Pid),
}

/// When reports come and the trace ends.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Time between intervals.
    pub interval: Duration,
    /// Time after which the trace ends.
    pub duration: Option<Duration>,
    /// Say on stderr how to end the trace (not while the live view holds
    /// the terminal: it says so on screen).
    pub announce: bool,
    /// When the programs were attached, on the kernel's clock: the trace's
    /// first interval begins there.
    pub started_ns: u64,
}

/// Why the trace ended.
enum End {
    Signal,
    Duration,
    TargetsGone,
    CommandExited(Option<i32>),
    /// An output's reader went away: no summary.
    ReaderGone,
    /// The live view's user quit.
    Quit,
}

impl End {
    fn of(flow: Flow) -> Option<Self> {
        match flow {
            Flow::Continue => None,
            Flow::ReaderGone => Some(End::ReaderGone),
            Flow::Quit => Some(End::Quit),
        }
    }
}

/// Runs the trace to its end and returns probe's exit status.
pub async fn run(
    mut probe: Probe,
    streams: Streams,
    traced: Traced,
    options: Options,
    mut pipeline: Pipeline,
    mut slow: Option<Slow>,
    mut outputs: Outputs,
) -> Result<i32> {
    let start = Instant::now();
    // Intervals are measured on the clock the kernel's records use, from
    // the attach and then from one settling to the next: the time they
    // cover, however late a tick.
    let start_ns = options.started_ns;
    let mut last_ns = start_ns;
    let mut events = readable(streams.events).context("cannot poll the ring buffer")?;
    let mut logs = streams.logs.map(readable).transpose().context("cannot poll the kernel programs' log")?;
    let mut poll = interval(POLL_PERIOD);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut lost_calls = interval(LOST_CALLS_PERIOD);
    let mut floors_at = start;
    lost_calls.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tick = interval_at(start + options.interval, options.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = options.duration.map(|duration| start + duration);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // Said only now that a signal ends the trace with its summary.
    match &traced {
        _ if !options.announce => {}
        Traced::System => eprintln!("probe: tracing the whole system; Ctrl-C for the summary"),
        Traced::Pids(targets) => {
            // A long list is cut: the line is a greeting, not a record.
            const SHOWN: usize = 10;
            let pids: Vec<_> = targets.iter().take(SHOWN).map(|target| target.pid.to_string()).collect();
            let more = match targets.len().saturating_sub(SHOWN) {
                0 => String::new(),
                more => format!(" and {more} more"),
            };
            eprintln!("probe: tracing PID {}{more}; Ctrl-C for the summary", pids.join(","));
        }
        Traced::Command(_) => {}
    }

    let cgroups = Cgroups::default();
    let (exited, mut exits) = mpsc::unbounded_channel();
    let mut remaining = 0usize;
    let mut command = None;
    let mut command_pid = None;
    match traced {
        Traced::System => {}
        Traced::Pids(targets) => {
            remaining = targets.len();
            for target in targets {
                // Its cgroup, known even if it ends before the first report.
                cgroups.labels(target.pid);
                let exited = exited.clone();
                let pidfd = readable(target.pidfd)?;
                tokio::spawn(async move {
                    // A pidfd turns readable when its process exits.
                    let _ = pidfd.readable().await;
                    let _ = exited.send(target.pid);
                });
            }
        }
        Traced::Command(pid) => {
            cgroups.labels(pid.as_raw() as u32);
            command_pid = Some(pid);
            command = Some(tokio::task::spawn_blocking(move || waitpid(pid, None)));
        }
    }

    let end = loop {
        tokio::select! {
            Some(call) = async {
                match slow.as_mut() {
                    Some(slow) => slow.explaining.next().await,
                    None => pending().await,
                }
            } => {
                pipeline.explained(&call);
                if call.report {
                    outputs.slow_calls(std::slice::from_ref(&call));
                }
            }
            guard = events.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut pipeline, &mut outputs, &probe, slow.as_ref());
                guard.clear_ready();
                poll.reset();
                // As after the poll's drain, which these hold off.
                pipeline.read_go_schedulers(&Proc);
            }
            _ = poll.tick() => {
                drain(events.get_mut(), &mut pipeline, &mut outputs, &probe, slow.as_ref());
                // Every 250 ms, and at once for a process not read yet: a
                // program of 100 ms gets its snapshot.
                pipeline.read_go_schedulers(&Proc);
            }
            _ = lost_calls.tick() => {
                // Records first: they precede the calls counted since.
                drain(events.get_mut(), &mut pipeline, &mut outputs, &probe, slow.as_ref());
                pipeline.add_lost_calls(&probe.take_lost_calls(false)?, &Proc);
                // Details take the ring buffer's room: their floors are
                // raised as often, before they crowd records out.
                let now = Instant::now();
                probe.send_details_from(&pipeline.raise_detail_floors((now - floors_at).as_secs_f64()))?;
                floors_at = now;
            }
            guard = async {
                match logs.as_mut() {
                    Some(logs) => logs.readable_mut().await,
                    None => pending().await,
                }
            } => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let (now_ns, calls_off_cpu) = settle(&mut probe, events.get_mut(), &mut pipeline, &mut outputs, slow.as_ref(), false)?;
                let table = pipeline.close_interval(&Proc);
                cgroups.next_interval();
                let span = measure(&probe, &pipeline, now_ns - start_ns, now_ns - last_ns, calls_off_cpu)?;
                last_ns = now_ns;
                let interval = Interval {
                    table: &table,
                    total: pipeline.total(),
                    span,
                    cost: Cost { bpf_ns: probe.run_time_ns(), cpu_ns: process_cpu_ns() },
                    goroutines: pipeline.goroutines(),
                    world: &Proc,
                    cgroups: &cgroups,
                };
                match End::of(outputs.interval(&interval)?) {
                    // A COMMAND is not left behind: the trace goes on, unseen,
                    // until it exits, and probe ends with its status.
                    Some(End::ReaderGone) if command.is_some() => {}
                    Some(end) => break end,
                    None => {}
                }
            }
            flow = outputs.input(pipeline.total()) => {
                if let Some(end) = End::of(flow?) {
                    break end;
                }
            }
            _ = interrupt.recv() => {
                // A second Ctrl-C while the summary is written ends probe at
                // once; the kernel detaches the programs with its fds.
                // SAFETY: restoring the default disposition of SIGINT.
                unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
                break End::Signal;
            }
            _ = terminate.recv() => break End::Signal,
            _ = hangup.recv() => break End::Signal,
            _ = async { sleep_until(deadline.unwrap_or(start)).await }, if deadline.is_some() => break End::Duration,
            Some(_) = exits.recv(), if remaining > 0 => {
                remaining -= 1;
                if remaining == 0 {
                    break End::TargetsGone;
                }
            }
            status = async { command.as_mut().unwrap().await }, if command.is_some() => {
                let status = status.context("lost track of the COMMAND")?.context("cannot wait for the COMMAND")?;
                break End::CommandExited(exit_code(status));
            }
        }
    };
    let exit_code = match end {
        End::ReaderGone => return Ok(0),
        End::Quit => {
            // What Ctrl-C would have done in the terminal the view took over.
            if let Some(pid) = command_pid {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            }
            None
        }
        End::CommandExited(code) => code,
        End::Signal | End::Duration | End::TargetsGone => None,
    };

    // Every record of the finished trace is in the ring buffer, or in a
    // CPU's batch that `settle` has sent.
    let (now_ns, calls_off_cpu) =
        settle(&mut probe, events.get_mut(), &mut pipeline, &mut outputs, slow.as_ref(), true)?;
    let span = measure(&probe, &pipeline, now_ns - start_ns, now_ns - start_ns, calls_off_cpu)?;
    pipeline.close_interval(&Proc);
    // The last slow calls, once explained, before the summary.
    if let Some(slow) = slow.take() {
        let mut rest = slow.explaining.finish();
        for call in &rest {
            pipeline.explained(call);
        }
        rest.retain(|call| call.report);
        if !rest.is_empty() {
            outputs.slow_calls(&rest);
        }
    }
    let mut summary = Report::new(Kind::Summary, pipeline.total(), span, None);
    if let Some(goroutines) = pipeline.goroutines() {
        (summary.goroutines, summary.go) = goroutines.report();
    }
    summary.exit_code = exit_code;
    cgroups.next_interval();
    summary.place(&cgroups);
    outputs.finish(&summary)?;
    Ok(exit_code.unwrap_or(0))
}

/// Takes every record waiting in the ring buffer, in its order; the slow
/// calls among them go out at once, or once explained when `slow` is there.
fn drain(
    ring: &mut Ring,
    pipeline: &mut Pipeline,
    outputs: &mut Outputs,
    probe: &Probe,
    slow: Option<&Slow>,
) {
    loop {
        while let Some(entry) = ring.next() {
            for bytes in entry_records(entry) {
                pipeline.ingest(bytes, |record| outputs.record(record));
            }
        }
        if !ring.publish() {
            break;
        }
    }
    let calls = pipeline.take_slow_calls();
    let mut unexplained: Vec<_> = match slow {
        Some(slow) => calls.into_iter().filter_map(|call| slow.explaining.submit(probe, call)).collect(),
        None => calls,
    };
    unexplained.retain(|call| call.report);
    if !unexplained.is_empty() {
        outputs.slow_calls(&unexplained);
    }
}

/// Brings the pipeline up to now, for an interval (or, with `last`, the
/// trace) about to close; returns that time and the entries of the map of
/// parked calls. The clock is read before the ring buffer is drained: read
/// after, a switch recorded in between (a drain or a lost-call read can be
/// preempted for milliseconds) would leave the time from the switch to the
/// clock counted twice: on the CPU, and off it.
fn settle(
    probe: &mut Probe,
    ring: &mut Ring,
    pipeline: &mut Pipeline,
    outputs: &mut Outputs,
    slow: Option<&Slow>,
    last: bool,
) -> Result<(u64, usize)> {
    let now_ns = monotonic_ns();
    probe.flush_batches()?;
    drain(ring, pipeline, outputs, probe, slow);
    // A batch the full ring buffer refused stays on its CPU for a later
    // interval; at the end there is none, so it is sent again once the
    // drain has made room.
    if last {
        probe.flush_batches()?;
        drain(ring, pipeline, outputs, probe, slow);
    }
    if let Some(sites) = slow.and_then(|slow| slow.sites.as_ref()) {
        pipeline.name_wait_sites(&mut |site| sites.name(probe, site));
    }
    pipeline.add_lost_calls(&probe.take_lost_calls(last)?, &Proc);
    pipeline.settle(now_ns, &Proc);
    let calls_off_cpu = note_in_flight(probe, pipeline, now_ns)?;
    Ok((now_ns, calls_off_cpu))
}

/// Gives the pipeline the syscalls in progress at `now_ns`, for the
/// interval about to close; returns the entries of the map of parked calls.
fn note_in_flight(probe: &Probe, pipeline: &mut Pipeline, now_ns: u64) -> Result<usize> {
    let calls = probe.calls_in_flight()?;
    pipeline.note_in_flight(&calls.on_cpu, &calls.parked, now_ns, &Proc);
    Ok(calls.parked_entries)
}

/// What a report says beside its table: times, losses, probe's footprint.
fn measure(
    probe: &Probe,
    pipeline: &Pipeline,
    elapsed_ns: u64,
    span_ns: u64,
    calls_off_cpu: usize,
) -> Result<Span> {
    let drops = probe.drops()?;
    let lost = Losses {
        ring_buffer: drops.ring_buffer,
        in_flight_full: drops.in_flight_full,
        uncounted: drops.uncounted,
        io_uring_full: drops.io_uring_full,
        undecodable: pipeline.undecodable(),
    };
    let lost_call_keys = probe.lost_call_keys();
    Ok(Span {
        elapsed_ns,
        span_ns,
        lost,
        health: Health { rss_bytes: procfs::rss_bytes(), calls_off_cpu, lost_call_keys },
    })
}

/// Registers an owned fd with the event loop for readiness.
fn readable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd, and the AsyncFd owns `inner`: the fd
    // stays open for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}
