//! The event loop: drains the ring buffer into tables, reports every
//! interval, and ends with a summary when the trace is over.

use std::{future::pending, io, os::fd::AsRawFd, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use nix::{
    sys::wait::waitpid,
    time::{clock_gettime, ClockId},
    unistd::Pid,
};
use probe_common::{EventKind, SchedEvent, SyscallEvent};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::{interval, interval_at, sleep_until, Instant, MissedTickBehavior},
};

use crate::{
    aggregate::{sched::SchedTracker, Table, ThreadKey},
    bpf::{Probe, Streams},
    output::Sink,
    report::{Kind, Report, Span},
    target::{exit_code, PidTarget},
};

/// The kernel wakes the reader only when the ring buffer is filling up;
/// between wakeups this timer keeps a slow trickle of events live.
const POLL_PERIOD: Duration = Duration::from_millis(50);

/// What is traced, as the event loop watches it end.
pub enum Target {
    /// Everything but probe.
    System,
    /// `--pid` processes: the trace ends when the last one exits.
    Pids(Vec<PidTarget>),
    /// The COMMAND probe started: the trace ends when it exits.
    Command(Pid),
}

/// Report options.
pub struct Options {
    /// Time between interval reports.
    pub interval: Duration,
    /// Time after which the trace ends.
    pub duration: Option<Duration>,
    /// Threads per interval report.
    pub top: usize,
}

/// Why the trace ended.
enum End {
    Signal,
    Duration,
    TargetsGone,
    CommandExited(Option<i32>),
    OutputClosed,
}

/// Receives records; turns them into tables.
#[derive(Default)]
struct Aggregator {
    interval: Table,
    total: Table,
    tracker: SchedTracker,
    undecodable: u64,
}

impl Aggregator {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(record) = ring.next() {
            self.ingest(&record);
        }
    }

    /// Adds one record, whatever its bytes: a record that is not a known
    /// event of the right size is counted, never trusted.
    fn ingest(&mut self, record: &[u8]) {
        let kind = record
            .get(..4)
            .and_then(|tag| tag.try_into().ok())
            .and_then(|tag| EventKind::from_u32(u32::from_ne_bytes(tag)));
        let decoded = match kind {
            Some(EventKind::Syscall) => {
                SyscallEvent::decode(record).map(|event| self.interval.record(&event))
            }
            Some(_) => SchedEvent::decode(record).map(|event| {
                let key = ThreadKey {
                    pid: event.pid,
                    tid: event.tid,
                };
                let stats = self.interval.record_sched(key, &event.comm);
                self.tracker.apply(&event, stats);
            }),
            None => None,
        };
        if decoded.is_none() {
            self.undecodable += 1;
        }
    }

    /// Charges the threads on a CPU now with their time so far, so that
    /// the interval about to be reported holds it.
    fn charge_running(&mut self) {
        self.tracker
            .charge_running(monotonic_ns(), &mut self.interval);
    }

    /// Closes the current interval, folding it into the total.
    fn close_interval(&mut self) {
        self.total.merge(std::mem::take(&mut self.interval));
    }
}

/// The clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// Runs the trace to its end and returns probe's exit status.
pub async fn run(
    probe: Probe,
    streams: Streams,
    target: Target,
    options: Options,
    mut sink: Sink,
) -> Result<i32> {
    let start = Instant::now();
    let mut events = readable(streams.events).context("cannot poll the ring buffer")?;
    let mut logs = streams
        .logs
        .map(readable)
        .transpose()
        .context("cannot poll the kernel programs' log")?;
    let mut poll = interval(POLL_PERIOD);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tick = interval_at(start + options.interval, options.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = options.duration.map(|duration| start + duration);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;

    let (exited, mut exits) = mpsc::unbounded_channel();
    let mut remaining = 0usize;
    let mut command = None;
    match target {
        Target::System => {}
        Target::Pids(targets) => {
            remaining = targets.len();
            for target in targets {
                let exited = exited.clone();
                let pidfd = readable(target.pidfd)?;
                tokio::spawn(async move {
                    // A pidfd turns readable when its process exits.
                    let _ = pidfd.readable().await;
                    let _ = exited.send(target.pid);
                });
            }
        }
        Target::Command(pid) => {
            command = Some(tokio::task::spawn_blocking(move || waitpid(pid, None)));
        }
    }

    let mut aggregator = Aggregator::default();
    let mut last_tick = start;
    let end = loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard?;
                aggregator.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = poll.tick() => aggregator.drain(events.get_mut()),
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
            now = tick.tick() => {
                aggregator.drain(events.get_mut());
                aggregator.charge_running();
                let span = Span {
                    elapsed_ns: (now - start).as_nanos() as u64,
                    span_ns: (now - last_tick).as_nanos() as u64,
                    lost: losses(&probe, &aggregator)?,
                };
                last_tick = now;
                let report = Report::new(Kind::Interval, &aggregator.interval, span, Some(options.top));
                aggregator.close_interval();
                if let Err(err) = sink.write(&report) {
                    break output_error(err)?;
                }
            }
            _ = interrupt.recv() => break End::Signal,
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
    if let End::OutputClosed = end {
        return Ok(0);
    }

    // Every record of the finished trace is already in the ring buffer.
    aggregator.drain(events.get_mut());
    let now = Instant::now();
    let span = Span {
        elapsed_ns: (now - start).as_nanos() as u64,
        span_ns: (now - start).as_nanos() as u64,
        lost: losses(&probe, &aggregator)?,
    };
    aggregator.charge_running();
    aggregator.close_interval();
    let mut summary = Report::new(Kind::Summary, &aggregator.total, span, None);
    let status = match end {
        End::CommandExited(code) => {
            summary.exit_code = code;
            code.unwrap_or(0)
        }
        End::Signal | End::Duration | End::TargetsGone | End::OutputClosed => 0,
    };
    match sink.write(&summary) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write the summary")
        }
        _ => Ok(status),
    }
}

/// Registers an owned fd with the event loop for readiness.
fn readable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd, and the AsyncFd owns `inner`: the fd
    // stays open for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}

fn losses(probe: &Probe, aggregator: &Aggregator) -> Result<crate::report::Losses> {
    let mut lost = probe.losses().context("cannot read the loss counters")?;
    lost.undecodable = aggregator.undecodable;
    Ok(lost)
}

/// A reader that went away (`probe | head`) ends the trace quietly.
fn output_error(err: io::Error) -> Result<End> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        Ok(End::OutputClosed)
    } else {
        Err(err).context("cannot write the report")
    }
}
