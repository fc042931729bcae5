//! The event loop: drains the ring buffer into tables, reports every
//! interval, and ends with a summary when the trace is over.

use std::{
    future::pending,
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use nix::{
    sys::wait::waitpid,
    time::{clock_gettime, ClockId},
    unistd::Pid,
};
use probe_common::{
    EventKind, GoEvent, IoUringEvent, SchedEvent, SyscallEvent, SWITCH_EXITED, SYSCALL_NO_RETURN,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::{interval, interval_at, sleep_until, Instant, MissedTickBehavior},
};

use crate::{
    aggregate::{sched::SchedTracker, Generations, Table, MAX_EXITED_THREADS},
    bpf::{Probe, Streams},
    golang::Goroutines,
    metrics::{Health as MetricsHealth, Store},
    output::Sink,
    report::{Health, Kind, Report, Span, ThreadDetail},
    target::{exit_code, process_alive, thread_alive, PidTarget},
    timeline::Timeline,
    tui::{Control, Cost, Live, OutputLines},
};

/// The kernel wakes the reader only when the ring buffer is filling up;
/// between wakeups this timer keeps a slow trickle of events live.
const POLL_PERIOD: Duration = Duration::from_millis(50);

/// How often the kernel's counts of dropped calls are read.
const LOST_CALLS_PERIOD: Duration = Duration::from_millis(250);

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
    /// The COMMAND's stdout and stderr, when the live view shows them.
    pub command_output: Option<OwnedFd>,
    /// The series `--prometheus` serves, updated every interval.
    pub metrics: Option<Arc<Mutex<Store>>>,
    /// The `--trace` file, written as records arrive.
    pub timeline: Option<Timeline>,
    /// The goroutines of a traced Go program, for the summary.
    pub goroutines: Option<Goroutines>,
}

/// Where reports go.
pub enum Output {
    /// Text or JSON, every interval and at the end.
    Reports(Sink),
    /// The summary only (the metrics endpoint shows the intervals).
    Summary(Sink),
    /// The live view while the trace runs, then the summary to the sink.
    Live(Box<Live>, Sink),
}

/// Why the trace ended.
enum End {
    Signal,
    Duration,
    TargetsGone,
    CommandExited(Option<i32>),
    OutputClosed,
    /// The live view's user quit.
    Quit,
}

/// Receives records; turns them into tables.
struct Aggregator {
    interval: Table,
    total: Table,
    tracker: SchedTracker,
    generations: Generations,
    undecodable: u64,
    timeline: Option<Timeline>,
    goroutines: Option<Goroutines>,
}

/// A decoded record.
enum Event {
    Syscall(SyscallEvent),
    Sched(SchedEvent),
    Go(GoEvent),
    IoUring(IoUringEvent),
}

impl Default for Aggregator {
    fn default() -> Self {
        Self {
            interval: Table::default(),
            total: Table::folding_processes(),
            tracker: SchedTracker::default(),
            generations: Generations::default(),
            undecodable: 0,
            timeline: None,
            goroutines: None,
        }
    }
}

impl Aggregator {
    /// Takes every record waiting in the ring buffer.
    ///
    /// Records are applied in ring-buffer order, which is the order the
    /// programs reserved them in: for any one thread it is the order things
    /// happened to it (a thread leaves one CPU before another can switch it
    /// in), where timestamps from different CPUs may disagree by more than a
    /// migration takes.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(record) = ring.next() {
            self.ingest(&record);
        }
    }

    /// Adds one record, whatever its bytes: a record that is not a known
    /// event of the right size is counted, never trusted.
    fn ingest(&mut self, record: &[u8]) {
        match decode(record) {
            Some(event) => self.apply(event),
            None => self.undecodable += 1,
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Syscall(event) => {
                if let Some(timeline) = &mut self.timeline {
                    timeline.syscall(&event);
                }
                if let Some(goroutines) = &mut self.goroutines {
                    goroutines.syscall(&event);
                }
                let key = self.generations.syscall(event.pid, event.tid);
                self.interval.record(key, &event);
                if event.flags & SYSCALL_NO_RETURN == 0 {
                    let end = event.start_ns.saturating_add(event.duration_ns);
                    if let Some(split) = self.tracker.split(key, event.start_ns, end) {
                        self.interval.record_split(key, &event, split);
                    }
                }
                if event.flags & SYSCALL_NO_RETURN != 0 {
                    self.generations.exited(key);
                }
            }
            Event::Sched(event) => {
                if let Some(timeline) = &mut self.timeline {
                    timeline.sched(&event);
                }
                let key = match EventKind::from_u32(event.kind) {
                    Some(EventKind::WakeupNew) => self.generations.new_thread(event.pid, event.tid),
                    _ => self.generations.current(event.pid, event.tid),
                };
                self.interval.record_sched(key, &event.comm);
                self.tracker.apply(key, &event, &mut self.interval);
                if event.flags & SWITCH_EXITED != 0 {
                    self.interval.mark_exited(key);
                    self.generations.exited(key);
                }
            }
            Event::Go(event) => {
                if let Some(goroutines) = &mut self.goroutines {
                    goroutines.apply(&event);
                }
            }
            Event::IoUring(event) => {
                let key = self.generations.current(event.pid, event.tid);
                self.interval.record_io_uring(key, &event);
            }
        }
    }

    /// Brings the interval up to now before it is reported: the threads
    /// on a CPU are charged their time so far, and the calls the kernel
    /// counted without records are added.
    fn settle(&mut self, probe: &mut Probe, last: bool) -> Result<()> {
        self.tracker.forget_dead();
        self.tracker.charge_running(monotonic_ns(), &mut self.interval);
        self.add_lost_calls(probe, last)
    }

    /// Adds the calls the kernel counted without records. Done often, so
    /// that the kernel's map of them is emptied of exited threads quickly.
    fn add_lost_calls(&mut self, probe: &mut Probe, all: bool) -> Result<()> {
        for (call, calls, dead) in probe.take_lost_calls(all)? {
            // Counted since the last read, so most likely by the thread
            // that has these ids now.
            let key = self.generations.current(call.pid, call.tid);
            self.interval.record_lost(key, &call, calls);
            // A dead thread's row can be folded away; its ids are left to
            // the scheduler's and the syscalls' own signs of a new thread.
            if dead {
                self.interval.mark_exited(key);
            }
        }
        // Threads that come and go by the thousand would otherwise pile up in
        // the interval's table until its report: fold the dead ones now. Only
        // then: finding the dead asks /proc about every row.
        if self.interval.rows() > MAX_EXITED_THREADS {
            self.interval.retire_dead();
        }
        Ok(())
    }

    /// Closes the current interval, folding it into the total.
    fn close_interval(&mut self) {
        self.total.merge(std::mem::take(&mut self.interval));
        self.total.retire_dead();
    }
}

/// CPU time probe has used so far.
fn process_cpu_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_or(0, |now| now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// The clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// Runs the trace to its end and returns probe's exit status.
pub async fn run(
    mut probe: Probe,
    streams: Streams,
    target: Target,
    options: Options,
    mut output: Output,
) -> Result<i32> {
    let start = Instant::now();
    let mut events = readable(streams.events).context("cannot poll the ring buffer")?;
    let mut logs = streams.logs.map(readable).transpose().context("cannot poll the kernel programs' log")?;
    let mut poll = interval(POLL_PERIOD);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut lost_calls = interval(LOST_CALLS_PERIOD);
    lost_calls.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tick = interval_at(start + options.interval, options.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = options.duration.map(|duration| start + duration);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // Said only now that a signal ends the trace with its summary; the
    // live view says it on screen, where a line on stderr would garble it.
    match &target {
        _ if matches!(output, Output::Live(..)) => {}
        Target::System => eprintln!("probe: tracing the whole system; Ctrl-C for the summary"),
        Target::Pids(targets) => {
            let pids: Vec<_> = targets.iter().map(|target| target.pid.to_string()).collect();
            eprintln!("probe: tracing PID {}; Ctrl-C for the summary", pids.join(","));
        }
        Target::Command(_) => {}
    }

    let mut command_output = options.command_output.map(readable).transpose()?;
    let mut output_lines = OutputLines::default();
    let (exited, mut exits) = mpsc::unbounded_channel();
    let mut remaining = 0usize;
    let mut command = None;
    let mut command_pid = None;
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
            command_pid = Some(pid);
            command = Some(tokio::task::spawn_blocking(move || waitpid(pid, None)));
        }
    }

    let mut aggregator =
        Aggregator { timeline: options.timeline, goroutines: options.goroutines, ..Aggregator::default() };
    let metrics = options.metrics;
    let mut last_tick = start;
    let end = loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard?;
                aggregator.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = poll.tick() => aggregator.drain(events.get_mut()),
            _ = lost_calls.tick() => {
                // Records first: they precede the calls counted since.
                aggregator.drain(events.get_mut());
                aggregator.add_lost_calls(&mut probe, false)?;
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
            now = tick.tick() => {
                aggregator.drain(events.get_mut());
                aggregator.settle(&mut probe, false)?;
                let span = measure(&probe, &aggregator, now - start, now - last_tick)?;
                last_tick = now;
                if let Some(goroutines) = &mut aggregator.goroutines {
                    goroutines.refresh();
                }
                if let Some(metrics) = &metrics {
                    let health = MetricsHealth {
                        events: aggregator.total.events() + aggregator.interval.events(),
                        lost_events: span.lost.total(),
                        bpf_run_ns: probe.run_time_ns(),
                        cpu_ns: process_cpu_ns(),
                    };
                    let mut store = metrics.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    store.add_interval(&aggregator.interval, health, now.into_std(), |pid, tid| match tid {
                        Some(tid) => thread_alive(pid, tid),
                        None => process_alive(pid),
                    });
                }
                match &mut output {
                    Output::Summary(_) => aggregator.close_interval(),
                    Output::Reports(sink) => {
                        let report = Report::new(Kind::Interval, &aggregator.interval, span, Some(options.top));
                        aggregator.close_interval();
                        if let Err(err) = sink.write(&report) {
                            break output_error(err)?;
                        }
                    }
                    Output::Live(live, _) => {
                        // Every thread: the view sorts and filters them.
                        let report = Report::new(Kind::Interval, &aggregator.interval, span, None);
                        aggregator.close_interval();
                        let cost = Cost { bpf_ns: probe.run_time_ns(), cpu_ns: process_cpu_ns() };
                        live.update(&report, cost, |key| thread_alive(key.pid, key.tid));
                        if let Some(goroutines) = &aggregator.goroutines {
                            live.update_goroutines(goroutines.report().0);
                        }
                        live.update_detail(live.wants_detail().and_then(|key| ThreadDetail::new(&aggregator.total, key)));
                        live.draw()?;
                    }
                }
            }
            event = async {
                match &mut output {
                    Output::Live(live, _) => live.next_event().await,
                    Output::Reports(_) | Output::Summary(_) => pending().await,
                }
            } => {
                let Output::Live(live, _) = &mut output else { unreachable!("only the live view has input") };
                if live.handle(event)? == Control::Quit {
                    break End::Quit;
                }
                if live.lacks_detail() {
                    live.update_detail(live.wants_detail().and_then(|key| ThreadDetail::new(&aggregator.total, key)));
                    live.draw()?;
                }
            }
            guard = async { command_output.as_mut().unwrap().readable_mut().await }, if command_output.is_some() => {
                let mut guard = guard?;
                let mut buffer = [0u8; 4096];
                match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buffer).map_err(io::Error::from)) {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        let last = output_lines.finish();
                        if let (Output::Live(live, _), Some(line)) = (&mut output, last) {
                            live.add_output(line);
                        }
                        command_output = None;
                    }
                    Ok(Ok(read)) => {
                        if let Output::Live(live, _) = &mut output {
                            output_lines.push(&buffer[..read]).into_iter().for_each(|line| live.add_output(line));
                            live.draw()?;
                        }
                    }
                    Err(_would_block) => {}
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
    if let End::OutputClosed = end {
        return Ok(0);
    }
    let mut sink = match output {
        Output::Reports(sink) | Output::Summary(sink) => sink,
        // The terminal is given back before the summary is written to it.
        Output::Live(live, sink) => {
            drop(live);
            sink
        }
    };
    if let (End::Quit, Some(pid)) = (&end, command_pid) {
        // What Ctrl-C would have done in the terminal the view took over.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    }

    // Every record of the finished trace is already in the ring buffer.
    aggregator.drain(events.get_mut());
    aggregator.settle(&mut probe, true)?;
    let elapsed = start.elapsed();
    let span = measure(&probe, &aggregator, elapsed, elapsed)?;
    aggregator.close_interval();
    let mut summary = Report::new(Kind::Summary, &aggregator.total, span, None);
    if let Some(goroutines) = &mut aggregator.goroutines {
        goroutines.refresh();
        (summary.goroutines, summary.go) = goroutines.report();
    }
    if let Some(timeline) = aggregator.timeline.take() {
        if let Some(cut) = timeline.finish()? {
            eprintln!("{cut}");
        }
    }
    let status = match end {
        End::CommandExited(code) => {
            summary.exit_code = code;
            code.unwrap_or(0)
        }
        End::Signal | End::Duration | End::TargetsGone | End::OutputClosed | End::Quit => 0,
    };
    match sink.write(&summary) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(err).context("cannot write the summary"),
        _ => Ok(status),
    }
}

/// Decodes one record, whatever its bytes: a record that is not a known
/// event of the right size is refused, never trusted.
fn decode(record: &[u8]) -> Option<Event> {
    let tag = u32::from_ne_bytes(record.get(..4)?.try_into().ok()?);
    match EventKind::from_u32(tag)? {
        EventKind::Syscall => SyscallEvent::decode(record).map(Event::Syscall),
        EventKind::GoExecute | EventKind::GoSchedule | EventKind::GoExit | EventKind::GoSysmon => {
            GoEvent::decode(record).map(Event::Go)
        }
        EventKind::SwitchOut | EventKind::SwitchIn | EventKind::Wakeup | EventKind::WakeupNew => {
            SchedEvent::decode(record).map(Event::Sched)
        }
        EventKind::IoUring => IoUringEvent::decode(record).map(Event::IoUring),
    }
}

/// Registers an owned fd with the event loop for readiness.
fn readable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd, and the AsyncFd owns `inner`: the fd
    // stays open for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}

/// What a report says beside its table: times, losses, probe's footprint.
fn measure(probe: &Probe, aggregator: &Aggregator, elapsed: Duration, span: Duration) -> Result<Span> {
    let mut lost = probe.losses().context("cannot read the loss counters")?;
    lost.undecodable = aggregator.undecodable;
    let (calls_off_cpu, lost_call_keys) = probe.map_entries();
    Ok(Span {
        elapsed_ns: elapsed.as_nanos() as u64,
        span_ns: span.as_nanos() as u64,
        lost,
        health: Health { rss_bytes: rss_bytes(), calls_off_cpu, lost_call_keys },
    })
}

/// probe's resident memory, from `/proc/self/status`; 0 if unreadable.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A reader that went away (`probe | head`) ends the trace quietly.
fn output_error(err: io::Error) -> Result<End> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        Ok(End::OutputClosed)
    } else {
        Err(err).context("cannot write the report")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{COMM_LEN, SWITCH_VOLUNTARY};
    use proptest::prelude::*;

    fn tagged(kind: EventKind, len: usize, body: &[u8]) -> Vec<u8> {
        let mut record = (kind as u32).to_ne_bytes().to_vec();
        record.extend(body.iter().copied().cycle().take(len.saturating_sub(4)));
        record.resize(len, 0);
        record
    }

    fn sched_record(kind: u32, tid: u32, cpu: u32, flags: u32, ts_ns: u64) -> Vec<u8> {
        let event = SchedEvent { kind, cpu, pid: 1, tid, flags, _pad: 0, ts_ns, comm: [b'a'; COMM_LEN] };
        // SAFETY: the bytes of a padding-free `#[repr(C)]` value.
        unsafe {
            std::slice::from_raw_parts((&event as *const SchedEvent).cast::<u8>(), size_of::<SchedEvent>())
        }
        .to_vec()
    }

    /// Whatever the ring buffer holds, the aggregator and the reports
    /// built from it neither panic nor lose count of what they refused.
    fn ingest_and_report(records: &[Vec<u8>]) -> Aggregator {
        let mut aggregator = Aggregator::default();
        for record in records {
            aggregator.ingest(record);
        }
        let span = Span { elapsed_ns: 1, span_ns: 1, lost: Default::default(), health: Default::default() };
        serde_json::to_string(&Report::new(Kind::Interval, &aggregator.interval, span, Some(3))).unwrap();
        aggregator.close_interval();
        let report = Report::new(Kind::Summary, &aggregator.total, span, None);
        crate::output::render_text(&report).unwrap();
        aggregator
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..64)) {
            let aggregator = ingest_and_report(&records);
            let valid = records.iter().filter(|r| SyscallEvent::decode(r).is_some() || SchedEvent::decode(r).is_some() || GoEvent::decode(r).is_some() || IoUringEvent::decode(r).is_some()).count();
            prop_assert_eq!(aggregator.undecodable as usize, records.len() - valid);
        }

        #[test]
        fn well_tagged_records_with_random_fields_never_panic(
            bodies in prop::collection::vec((1u32..=6, prop::sample::select(vec![0usize, 4, 47, 48, 64, 65]), prop::collection::vec(any::<u8>(), 1..64)), 0..64),
        ) {
            let records: Vec<_> = bodies
                .iter()
                .map(|(kind, len, body)| tagged(EventKind::from_u32(*kind).unwrap_or(EventKind::Syscall), *len, body))
                .collect();
            ingest_and_report(&records);
        }

        #[test]
        fn scheduler_events_in_any_order_never_panic(
            events in prop::collection::vec((2u32..=5, 0u32..4, 0u32..2, 0u32..4, any::<u64>()), 0..200),
        ) {
            let records: Vec<_> = events
                .iter()
                .map(|&(kind, tid, cpu, flags, ts)| sched_record(kind, tid, cpu, flags & (SWITCH_VOLUNTARY | SWITCH_EXITED), ts))
                .collect();
            let aggregator = ingest_and_report(&records);
            prop_assert_eq!(aggregator.undecodable, 0);
        }
    }
}
