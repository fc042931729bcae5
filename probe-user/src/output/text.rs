//! Aligned text tables, one block per report.

use std::io::{self, Write};

use crate::report::{
    InFlightReport, IoUringReport, Kind, ProcessReport, Report, SchedReport, SlowCallLine, SyscallReport,
    ThreadReport,
};
use crate::slow::{End, Explanation, Stack};

/// Migration pairs shown per thread; JSON has them all.
const PAIRS_SHOWN: usize = 3;

/// Holders a thread's run-queue line names before "other".
const BLAME_SHOWN: usize = 3;

/// `1234` → `1.23µs`: three significant digits in the largest fitting unit.
pub fn human_ns(ns: u64) -> String {
    const UNITS: [(f64, &str); 3] = [(1e9, "s"), (1e6, "ms"), (1e3, "µs")];
    // 999.6µs would print as "1000µs": round into the next unit instead.
    let Some(&(scale, unit)) = UNITS.iter().find(|(scale, _)| ns as f64 >= *scale * 0.9995) else {
        return format!("{ns}ns");
    };
    let value = ns as f64 / scale;
    if value < 9.995 {
        format!("{value:.2}{unit}")
    } else if value < 99.95 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

fn latency(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), human_ns)
}

/// Writes a `--slow` call as one line: what, how long and where the time
/// went, how it returned, whose it was.
pub fn write_slow_call(out: &mut dyn Write, line: &SlowCallLine) -> io::Result<()> {
    let call = &line.call;
    let split = match (call.blocked_ns, call.runq_ns) {
        (Some(blocked), Some(runq)) => {
            format!(" (blocked {}, run queue {})", human_ns(blocked), human_ns(runq))
        }
        _ => String::new(),
    };
    let returned = match &call.errno {
        Some(errno) => format!("-1 {errno}"),
        None => call.ret.to_string(),
    };
    let goroutine = line.goroutine.map_or_else(String::new, |goid| format!(", goroutine {goid}"));
    writeln!(
        out,
        "slow call: {} {}{split} = {returned}, tid {} ({}) of pid {}{goroutine}",
        line.name,
        human_ns(call.duration_ns),
        line.tid,
        line.comm,
        line.pid
    )?;
    if let Some(explanation) = &line.explanation {
        write_explanation(out, explanation)?;
    }
    Ok(())
}

/// What `--slow` found out about a call, one indented line each: like
/// strace's `-k` and `-y`, offcputime's stacks and offwaketime's wakers.
fn write_explanation(out: &mut dyn Write, explanation: &Explanation) -> io::Result<()> {
    if let Some(why) = explanation.unexplained {
        writeln!(out, "    ({why})")?;
    }
    if !explanation.args.is_empty() {
        let args: Vec<String> = explanation.args.iter().map(|arg| format!("{}={arg}", arg.name)).collect();
        writeln!(out, "    args: {}", args.join(", "))?;
    }
    if let Some(stack) = &explanation.user_stack {
        writeln!(out, "    called from: {}", stack_line(stack))?;
    }
    if let (Some(ns), Some(stack)) = (explanation.longest_sleep_ns, &explanation.blocked_in) {
        writeln!(out, "    blocked {} in: {}", human_ns(ns), stack_line(stack))?;
    }
    if let Some(waker) = &explanation.woken_by {
        let who = format!("tid {} ({}) of pid {}", waker.tid, waker.comm, waker.pid);
        let doing = match (waker.context, &waker.syscall) {
            ("interrupt", _) => format!("an interrupt, while {who} ran"),
            (_, Some(syscall)) => format!("{who} in {syscall}"),
            ("task_or_interrupt", None) => {
                format!("{who} (in no traced syscall), or an interrupt while it ran")
            }
            (_, None) => format!("{who} (in no traced syscall)"),
        };
        let path = waker.stack.as_ref().map_or_else(String::new, |stack| format!(": {}", stack_line(stack)));
        writeln!(out, "    woken by {doing}{path}; then {} in the run queue", human_ns(waker.runq_ns))?;
    }
    Ok(())
}

/// Frames a one-line slow call shows of its user stack.
const BRIEF_FRAMES: usize = 3;

/// A `--slow` call in one line, for the live view's pane: what, how long,
/// how it returned, whose, asleep in what, woken by whom, and last (a
/// narrow terminal cuts it first) called from where.
pub fn slow_call_brief(line: &SlowCallLine) -> String {
    let call = &line.call;
    let returned = match &call.errno {
        Some(errno) => format!("-1 {errno}"),
        None => call.ret.to_string(),
    };
    let brief =
        format!("{} {} = {returned} · {} {}", line.name, human_ns(call.duration_ns), line.comm, line.tid);
    match &line.explanation {
        Some(explanation) => brief + &explanation_brief(explanation),
        None => brief,
    }
}

/// An explanation in a line's end: ` · in anon_pipe_read · woken by writer
/// 13221 (write) · from __GI___libc_read ← wait_for_writer ← main`.
pub fn explanation_brief(explanation: &Explanation) -> String {
    let mut brief = String::new();
    if let Some(site) = explanation.blocked_in.as_ref().and_then(|stack| stack.frames.first()) {
        brief.push_str(&format!(" · in {}", site.function.as_deref().unwrap_or("?")));
    }
    if let Some(waker) = &explanation.woken_by {
        match (waker.context, &waker.syscall) {
            ("interrupt", _) => brief.push_str(" · woken by an interrupt"),
            (_, Some(syscall)) => {
                brief.push_str(&format!(" · woken by {} {} ({syscall})", waker.comm, waker.tid))
            }
            (_, None) => brief.push_str(&format!(" · woken by {} {}", waker.comm, waker.tid)),
        }
    }
    if let Some(stack) = &explanation.user_stack {
        let mut names: Vec<&str> =
            stack.frames.iter().filter_map(|frame| frame.function.as_deref()).collect();
        names.dedup();
        if !names.is_empty() {
            let shown: Vec<&str> = names.into_iter().take(BRIEF_FRAMES).collect();
            brief.push_str(&format!(" · from {}", shown.join(" ← ")));
        }
    }
    brief
}

/// A stack innermost first, on one line, and how it ended.
fn stack_line(stack: &Stack) -> String {
    let frames: Vec<String> = stack
        .frames
        .iter()
        .map(|frame| match (&frame.function, &frame.file, frame.line) {
            (Some(function), Some(file), Some(line)) => format!("{function} ({file}:{line})"),
            (Some(function), _, _) => function.clone(),
            (None, _, _) => format!("{:#x}", frame.addr),
        })
        .collect();
    let end = match stack.end {
        End::Complete => "",
        End::Truncated => " ← … (truncated)",
        End::ProcessGone => " (the process exited before its objects were read: callers unknown)",
    };
    format!("{}{end}", frames.join(" ← "))
}

/// Writes `report` as a heading and one row per thread and syscall.
pub fn write(out: &mut dyn Write, report: &Report) -> io::Result<()> {
    let summary = report.kind == Kind::Summary;
    let elapsed = human_ns(report.elapsed_ns);
    if summary {
        writeln!(
            out,
            "probe summary: {elapsed} traced, {} events, {} lost",
            report.events, report.lost_events
        )?;
    } else {
        let per_second = report.events as f64 / (report.span_ns.max(1) as f64 / 1e9);
        writeln!(
            out,
            "[{elapsed:>8}] {} events ({per_second:.0}/s), {} lost",
            report.events, report.lost_events
        )?;
    }
    if report.lost_events > 0 && report.counts_exact {
        writeln!(
            out,
            "NOTE: {} events lost to a full ring buffer: counts and errors are exact, latencies and scheduler times are a sample (raise --buffer-size)",
            report.lost_events
        )?;
    } else if report.lost_events > 0 {
        writeln!(
            out,
            "WARNING: {} events lost (ring buffer full: {}, of them uncounted: {}; in-flight map full: {}; undecodable: {}): counts are low by up to that many",
            report.lost_events, report.lost.ring_buffer, report.lost.uncounted, report.lost.in_flight_full, report.lost.undecodable
        )?;
    }
    if report.threads.is_empty() {
        writeln!(out, "(no syscalls)")?;
        return writeln!(out);
    }
    write!(
        out,
        "{:>7} {:>7} {:<16} {:<18} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "PID", "TID", "COMM", "SYSCALL", "COUNT", "ERRORS", "TOTAL", "P50", "P99", "MAX"
    )?;
    if summary {
        write!(out, " {:>7} {:>5}  ERRNOS", "BLOCKED", "RUNQ")?;
    }
    writeln!(out)?;
    for (place, threads) in by_cgroup(report) {
        if let Some(process) = place {
            write_place(out, process)?;
        }
        write_threads(out, &threads, summary)?;
    }
    if !summary {
        writeln!(out)?;
    }
    if summary {
        write_unfinished(out, report)?;
    }
    write_go(out, report)
}

/// The report's threads in groups by cgroup, each under a process of it,
/// the groups in the order of their first thread; one group, unheaded,
/// when they all share one (or none is known).
fn by_cgroup(report: &Report) -> Vec<(Option<&ProcessReport>, Vec<&ThreadReport>)> {
    let mut groups: Vec<(Option<&ProcessReport>, Vec<&ThreadReport>)> = Vec::new();
    for thread in &report.threads {
        let process = report.process(thread.pid);
        let cgroup = process.and_then(|process| process.cgroup.as_ref());
        match groups.iter_mut().find(|(place, _)| place.and_then(|place| place.cgroup.as_ref()) == cgroup) {
            Some((_, threads)) => threads.push(thread),
            None => groups.push((process, vec![thread])),
        }
    }
    if groups.len() == 1 {
        groups[0].0 = None;
    }
    groups
}

/// A group's header: the container or cgroup, its throttling, and the
/// run-queue wait of its threads shown.
fn write_place(out: &mut dyn Write, process: &ProcessReport) -> io::Result<()> {
    write!(out, "── {}", process.brief())?;
    // A cgroup with no quota that was never throttled has nothing to say.
    let throttling = process
        .throttling
        .as_ref()
        .filter(|throttling| throttling.quota_us.is_some() || throttling.throttled_periods > 0);
    if let Some(throttling) = throttling {
        let quota = match (throttling.quota_us, throttling.period_us) {
            (Some(quota), Some(period)) => {
                format!("quota {} per {}", human_ns(quota * 1000), human_ns(period * 1000))
            }
            _ => "no quota of its own".to_owned(),
        };
        write!(
            out,
            "; cpu throttled {} of {} periods, {} in all ({quota}, {} {})",
            throttling.throttled_periods,
            throttling.periods,
            human_ns(throttling.throttled_ns),
            throttling.hierarchy,
            throttling.cgroup
        )?;
    }
    writeln!(out, "; run-queue wait of its threads here {}", human_ns(process.runq_wait_ns))
}

/// The rows of `threads`.
fn write_threads(out: &mut dyn Write, threads: &[&ThreadReport], summary: bool) -> io::Result<()> {
    for thread in threads {
        // The thread's ids head its first row; later rows are indented.
        let mut ids = Some(format!("{:>7} {:>7} {:<16}", thread.pid, thread.tid, thread.comm));
        let mut lead = |out: &mut dyn Write| write!(out, "{:32}", ids.take().unwrap_or_default());
        for call in &thread.syscalls {
            lead(out)?;
            write_row(out, call, summary)?;
            if summary && !call.wait_sites.is_empty() {
                // --slow's kernel stacks: what the blocked time was spent in.
                let sites: Vec<String> = call
                    .wait_sites
                    .iter()
                    .map(|site| format!("{:.0}% {}", 100.0 * site.share, site.site))
                    .collect();
                lead(out)?;
                writeln!(out, "   {} asleep in: {}", call.name, sites.join(", "))?;
            }
        }
        for call in thread.syscalls.iter().filter(|call| call.unfinished_at_attach > 0) {
            lead(out)?;
            write_unfinished_at_attach(out, call)?;
        }
        for requests in &thread.io_uring {
            lead(out)?;
            write_io_uring(out, requests, summary)?;
        }
        if let Some(sched) = &thread.sched {
            lead(out)?;
            write_sched(out, sched)?;
            if !sched.runq_blame.is_empty() {
                lead(out)?;
                write_runq_blame(out, sched)?;
            }
        }
        if let Some(call) = &thread.in_flight {
            lead(out)?;
            writeln!(out, " {}", in_flight_words(call))?;
        }
        if summary {
            writeln!(out)?;
        }
    }
    Ok(())
}

/// `in read for 12.3s (blocked)`: a call in progress, and how long so far
/// (at least, for one that began before probe attached).
fn in_flight_words(call: &InFlightReport) -> String {
    format!("in {} {}", call.name, in_flight_age(call))
}

/// `for 12.3s (blocked)`, or `for at least 12.3s (blocked, began before
/// attach)`.
fn in_flight_age(call: &InFlightReport) -> String {
    let (age, state) = (human_ns(call.age_ns), call.state.words());
    match call.started_before_attach {
        true => format!("for at least {age} ({state}, began before attach)"),
        false => format!("for {age} ({state})"),
    }
}

/// The calls of a syscall that were in progress when probe attached and
/// returned since: not in its latencies, only a lower bound of theirs.
fn write_unfinished_at_attach(out: &mut dyn Write, call: &SyscallReport) -> io::Result<()> {
    let (calls, took) = match call.unfinished_at_attach {
        1 => ("1 call".to_owned(), "took"),
        n => (format!("{n} calls"), "took in all"),
    };
    writeln!(
        out,
        " {}: {calls} in progress at attach returned, {took} at least {} (not in the latencies)",
        call.name,
        human_ns(call.unfinished_at_attach_ns)
    )
}

/// Like strace's `<unfinished ...>`: the calls still in progress when the
/// trace ended, oldest first, with their raw arguments.
fn write_unfinished(out: &mut dyn Write, report: &Report) -> io::Result<()> {
    let mut calls: Vec<_> =
        report.threads.iter().filter_map(|thread| Some((thread, thread.in_flight.as_ref()?))).collect();
    if calls.is_empty() {
        return Ok(());
    }
    calls.sort_by(|a, b| b.1.age_ns.cmp(&a.1.age_ns).then((a.0.pid, a.0.tid).cmp(&(b.0.pid, b.0.tid))));
    writeln!(out, "Unfinished when the trace ended, oldest first:")?;
    writeln!(out, "{:>7} {:>7} {:<16} CALL", "PID", "TID", "COMM")?;
    for (thread, call) in calls {
        let args = match &call.args {
            Some(args) => args.join(", "),
            None => "?".to_owned(),
        };
        writeln!(
            out,
            "{:>7} {:>7} {:<16} {}({args} <unfinished ...>) {}",
            thread.pid,
            thread.tid,
            thread.comm,
            call.name,
            in_flight_age(call)
        )?;
    }
    writeln!(out)
}

/// The Go view: each Go process's runtime threads, then its goroutines
/// with their syscalls, in the same columns as the threads'.
fn write_go(out: &mut dyn Write, report: &Report) -> io::Result<()> {
    for process in &report.go {
        let gomaxprocs = process.gomaxprocs.map_or_else(|| "?".to_owned(), |n| n.to_string());
        writeln!(
            out,
            "Go process {} ({}): GOMAXPROCS {gomaxprocs} (from the {}), {} OS threads, {} goroutines made syscalls",
            process.pid,
            process.version,
            process.gomaxprocs_from,
            process.threads.len(),
            process.goroutines_seen
        )?;
        match (&process.sched, &process.goroutine_states, &process.sched_unavailable) {
            (Some(sched), Some(states), _) => {
                writeln!(
                    out,
                    "  scheduler, read {} ms before this report: {}",
                    sched.age_ms,
                    sched.summary()
                )?;
                writeln!(out, "  {}", states.summary())?;
                for p in &sched.ps {
                    let thread = p.tid.map_or_else(String::new, |tid| format!(", thread {tid}"));
                    writeln!(out, "  {}{thread}", p.summary())?;
                }
            }
            (_, _, why) => writeln!(out, "  scheduler: not read: {}", why.as_deref().unwrap_or("unknown"))?,
        }
        for thread in &process.threads {
            writeln!(out, "  thread {:>7}: {}", thread.tid, thread.role)?;
        }
        writeln!(out)?;
    }
    if report.goroutines.is_empty() {
        return Ok(());
    }
    // A goroutine's line names its start in full (a column would cut
    // `[runtime: scheduler, g0]` and most package paths), then its calls.
    writeln!(
        out,
        "{:>7} {:>7} {:<18} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5}  ERRNOS",
        "PID", "GOID", "SYSCALL", "COUNT", "ERRORS", "TOTAL", "P50", "P99", "MAX", "BLOCKED", "RUNQ"
    )?;
    for goroutine in &report.goroutines {
        let threads: Vec<String> = goroutine.threads.iter().map(u32::to_string).collect();
        writeln!(
            out,
            "{:>7} {:>7} {}: threads {} ({} moves between them){}",
            goroutine.pid,
            // The rows of no goroutine and of folded ones have no id.
            match goroutine.goid {
                goid if goid >= probe_common::GOROUTINE_UNREAD => "-".to_owned(),
                goid => goid.to_string(),
            },
            goroutine.start_fn,
            threads.join(","),
            goroutine.moves,
            if goroutine.exited { ", ended" } else { "" }
        )?;
        for call in &goroutine.syscalls {
            write!(out, "{:15}", "")?;
            write_row(out, call, true)?;
        }
    }
    writeln!(out)
}

/// A syscall's row. The summary adds where its time went (the shares of
/// TOTAL spent asleep and waiting for a CPU; the rest was on a CPU) and its
/// errnos; JSON has the nanoseconds, and the quantiles these rows leave out.
fn write_row(out: &mut dyn Write, call: &SyscallReport, summary: bool) -> io::Result<()> {
    write!(out, " {:<18} {:>9} {:>7} {:>8}", call.name, call.count, call.errors, human_ns(call.total_ns))?;
    write!(out, " {:>8} {:>8} {:>8}", latency(call.p50_ns), latency(call.p99_ns), latency(call.max_ns))?;
    if !summary {
        return writeln!(out);
    }
    let share = |part: Option<u64>| match (part, call.total_ns) {
        (Some(part), total) if total > 0 => format!("{:.0}%", 100.0 * part as f64 / total as f64),
        _ => "-".to_owned(),
    };
    write!(out, " {:>7} {:>5}", share(call.blocked_ns), share(call.runq_ns))?;
    if !call.errnos.is_empty() {
        let errnos: Vec<_> = call.errnos.iter().map(|(name, n)| format!("{name}:{n}")).collect();
        write!(out, "  {}", errnos.join(","))?;
    }
    writeln!(out)
}

/// An io_uring opcode's requests, in the syscall columns (their latency is
/// submission to completion).
fn write_io_uring(out: &mut dyn Write, requests: &IoUringReport, summary: bool) -> io::Result<()> {
    let name = format!("io_uring {}", requests.opcode);
    write!(out, " {name:<18} {:>9} {:>7} {:>8}", requests.count, requests.errors, "-")?;
    write!(
        out,
        " {:>8} {:>8} {:>8}",
        latency(requests.p50_ns),
        latency(requests.p99_ns),
        latency(requests.max_ns)
    )?;
    if summary {
        write!(out, " {:>7} {:>5}", "-", "-")?;
    }
    writeln!(out, "  async:{}", requests.offloaded)
}

/// One line: where the thread's time went, and how it moved.
fn write_sched(out: &mut dyn Write, sched: &SchedReport) -> io::Result<()> {
    write!(out, " sched: on-cpu {}", human_ns(sched.on_cpu_ns))?;
    if sched.on_cpu_ns > 0 {
        let shares: Vec<_> = sched
            .cpus
            .iter()
            .map(|(cpu, &ns)| format!("cpu{cpu} {:.0}%", 100.0 * ns as f64 / sched.on_cpu_ns as f64))
            .collect();
        write!(out, " [{}]", shares.join(" "))?;
    }
    write!(
        out,
        ", blocked {}, runq {} (p50 {} p99 {} max {}), switches {} vol + {} invol, migrations {}",
        human_ns(sched.blocked_ns),
        human_ns(sched.runq_wait_ns),
        latency(sched.runq_p50_ns),
        latency(sched.runq_p99_ns),
        latency(sched.runq_max_ns),
        sched.voluntary_switches,
        sched.involuntary_switches,
        sched.migrations,
    )?;
    if !sched.migration_pairs.is_empty() {
        let pairs: Vec<_> = sched
            .migration_pairs
            .iter()
            .take(PAIRS_SHOWN)
            .map(|pair| format!("{}→{} ×{}", pair.from, pair.to, pair.count))
            .collect();
        write!(out, " [{}]", pairs.join(", "))?;
    }
    if let Some(cpu) = sched.last_cpu {
        write!(out, ", last cpu {cpu}")?;
    }
    if sched.sampled {
        write!(
            out,
            " (times sampled: {} records dropped, {} runs seen at one end only)",
            sched.lost_records, sched.partial_runs
        )?;
    }
    writeln!(out)
}

/// ` waited 41.0ms in run queues: 60% tid 123 (java) of pid 120, 30% idle,
/// 10% other`: who held the CPU while the thread waited.
fn write_runq_blame(out: &mut dyn Write, sched: &SchedReport) -> io::Result<()> {
    // Saturating: the times come from records, which may be garbage.
    let total = sched.runq_blame.iter().fold(0, |sum: u64, entry| sum.saturating_add(entry.ns));
    let percent = |ns: u64| 100.0 * ns as f64 / total.max(1) as f64;
    let named = sched.runq_blame.iter().filter(|entry| entry.holder != "other").take(BLAME_SHOWN);
    let mut shares: Vec<_> =
        named.clone().map(|entry| format!("{:.0}% {}", percent(entry.ns), entry.describe())).collect();
    let rest = total.saturating_sub(named.fold(0, |sum: u64, entry| sum.saturating_add(entry.ns)));
    if rest > 0 {
        shares.push(format!("{:.0}% other", percent(rest)));
    }
    writeln!(out, " waited {} in run queues: {}", human_ns(total), shares.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{
        tests::{event, record},
        Table,
    };
    use crate::report::{Health, Losses, Span};

    #[test]
    fn a_slow_call_is_one_line_with_its_split_and_errno() {
        use crate::{
            aggregate::{sched::Split, slowest::SlowCall, ThreadKey},
            pipeline::SlowCallSeen,
        };
        let seen = |ret, split| SlowCallSeen {
            report: true,
            key: ThreadKey::new(7, 9),
            nr: 0,
            comm: "\\x1bworker".to_owned(),
            call: SlowCall { duration_ns: 20_100_000, started_ns: 5, ret, split },
            goroutine: None,
            detail: None,
            blocked: None,
            kernel_stacks: Default::default(),
            explanation: None,
        };
        let line = |seen: SlowCallSeen| {
            let mut out = Vec::new();
            write_slow_call(&mut out, &SlowCallLine::new(&seen)).unwrap();
            String::from_utf8(out).unwrap()
        };
        let split = Some(Split { blocked_ns: 19_900_000, runq_ns: 120_000 });
        assert_eq!(
            line(seen(4096, split)),
            "slow call: read 20.1ms (blocked 19.9ms, run queue 120µs) = 4096, tid 9 (\\x1bworker) of pid 7\n"
        );
        assert_eq!(line(seen(-4, None)), "slow call: read 20.1ms = -1 EINTR, tid 9 (\\x1bworker) of pid 7\n");
    }

    #[test]
    fn human_units_keep_three_digits() {
        assert_eq!(human_ns(0), "0ns");
        assert_eq!(human_ns(999), "999ns");
        assert_eq!(human_ns(1_000), "1.00µs");
        assert_eq!(human_ns(12_345), "12.3µs");
        assert_eq!(human_ns(123_456), "123µs");
        assert_eq!(human_ns(999_999), "1.00ms");
        assert_eq!(human_ns(10_100_000), "10.1ms");
        assert_eq!(human_ns(2_500_000_000), "2.50s");
        assert_eq!(human_ns(3_600_000_000_000), "3600s");
    }

    fn render(kind: Kind, lost: Losses) -> String {
        let mut table = Table::default();
        record(&mut table, &event(11, 39, 0, 250));
        record(&mut table, &event(11, 257, -2, 12_000));
        let span =
            Span { elapsed_ns: 2_000_000_000, span_ns: 1_000_000_000, lost, health: Health::default() };
        let mut out = Vec::new();
        write(&mut out, &Report::new(kind, &table, span, None)).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn threads_of_several_cgroups_come_under_a_header_each() {
        use crate::cgroup::{Labels, Throttling};
        let mut table = Table::default();
        record(&mut table, &event(11, 39, 0, 250));
        let mut other = event(21, 39, 0, 250);
        other.pid = 200;
        record(&mut table, &other);
        record(&mut table, &other);
        let span = Span { elapsed_ns: 1, span_ns: 1, lost: Losses::default(), health: Health::default() };
        let mut report = Report::new(Kind::Interval, &table, span, None);
        let place = |pid, labels: Labels, throttling| ProcessReport {
            pid,
            cgroup: Some(labels.cgroup),
            container: labels.container,
            pod_uid: labels.pod_uid,
            pod_qos: labels.pod_qos,
            unit: labels.unit,
            throttling,
            runq_wait_ns: 5_000_000,
        };
        let throttling = Throttling {
            cgroup: "/docker".into(),
            hierarchy: "v1",
            periods: 50,
            throttled_periods: 12,
            throttled_ns: 80_000_000,
            quota_us: Some(10_000),
            period_us: Some(100_000),
        };
        let docker = Labels::of_path(&format!("/system.slice/docker-{}.scope", "0f".repeat(32)));
        report.processes = vec![
            place(100, Labels::of_path("/user.slice/\x1b[2J.service"), None),
            place(200, docker, Some(throttling)),
        ];
        let mut out = Vec::new();
        write(&mut out, &report).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines[2],
            "── container docker 0f0f0f0f0f0f, cgroup /system.slice/docker-0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f.scope; cpu throttled 12 of 50 periods, 80.0ms in all (quota 10.0ms per 100ms, v1 /docker); run-queue wait of its threads here 5.00ms",
            "{text}"
        );
        assert!(lines[3].starts_with("    200      21"), "{text}");
        assert!(
            lines[4].starts_with("── unit \\x1b[2J.service, cgroup /user.slice/\\x1b[2J.service; run-queue"),
            "{text}"
        );
        assert!(lines[5].starts_with("    100      11"), "{text}");
        // One cgroup: no header.
        report.processes.truncate(1);
        report.threads.retain(|thread| thread.pid == 100);
        let mut out = Vec::new();
        write(&mut out, &report).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("──"));
    }

    #[test]
    fn summary_rows_line_up_and_name_errnos() {
        let text = render(Kind::Summary, Losses::default());
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "probe summary: 2.00s traced, 2 events, 0 lost");
        assert!(lines[1].starts_with("    PID     TID COMM"), "{text}");
        assert!(lines[2].contains("openat") && lines[2].ends_with("ENOENT:1"), "{text}");
        assert!(lines[2].starts_with("    100      11 worker"), "{text}");
        assert!(lines[3].trim_start().starts_with("getpid "), "{text}");
        // The last column of a row without errnos ends where its heading ends.
        let heading_end = lines[1].find("RUNQ").unwrap() + "RUNQ".len();
        assert_eq!(lines[3].chars().count(), lines[1][..heading_end].chars().count(), "{text}");
        // An ordinary terminal holds a row (errnos, when there are any,
        // come after the columns).
        assert!(lines[3].chars().count() <= 120, "{text}");
    }

    #[test]
    fn interval_shows_rate_and_says_what_a_loss_means() {
        let counted = Losses { ring_buffer: 3, ..Losses::default() };
        let text = render(Kind::Interval, counted);
        assert!(text.starts_with("[   2.00s] 2 events (2/s), 3 lost\nNOTE: 3 events lost"), "{text}");
        assert!(text.contains("counts and errors are exact"), "{text}");
        assert!(!text.contains("P90"));

        let uncounted = Losses { ring_buffer: 3, uncounted: 1, ..Losses::default() };
        let text = render(Kind::Interval, uncounted);
        assert!(
            text.contains("\nWARNING: 3 events lost (ring buffer full: 3, of them uncounted: 1;"),
            "{text}"
        );
    }

    #[test]
    fn calls_in_progress_show_under_their_thread_and_at_the_end() {
        use crate::aggregate::{
            in_flight::{CallInFlight, ThreadState},
            ThreadKey,
        };
        let mut table = Table::default();
        // Thread 11 made calls; its read in progress at attach returned.
        record(&mut table, &event(11, 39, 0, 250));
        let mut read = event(11, 0, 5, 0);
        read.flags = probe_common::SYSCALL_UNSEEN_ENTRY;
        table.record_unfinished(ThreadKey::new(100, 11), &read, 9_870_000_000);
        let call = |nr, age_ns, state, before_attach, comm: &str| CallInFlight {
            nr,
            args: Some([3, 0x7ffd, 4096, 0, 0, 0]),
            started_ns: 1,
            age_ns,
            state,
            before_attach,
            comm: comm.to_owned(),
        };
        table.set_in_flight(
            [
                (ThreadKey::new(100, 11), call(7, 1_500_000, ThreadState::Runnable, false, "worker")),
                // A thread with no records, blocked since before attach; a
                // hostile name, as probe takes it in.
                (
                    ThreadKey::new(100, 12),
                    call(
                        0,
                        12_300_000_000,
                        ThreadState::Blocked,
                        true,
                        &crate::escape::visible("evil\x1b[2J"),
                    ),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let span = Span {
            elapsed_ns: 2_000_000_000,
            span_ns: 1_000_000_000,
            lost: Losses::default(),
            health: Health::default(),
        };
        let mut out = Vec::new();
        write(&mut out, &Report::new(Kind::Summary, &table, span, None)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let under =
            |needle: &str| lines.iter().find(|line| line.contains(needle)).copied().unwrap_or_default();
        assert!(under("in poll").ends_with(" in poll for 1.50ms (runnable)"), "{text}");
        assert!(
            under("read: 1 call").ends_with(
                " read: 1 call in progress at attach returned, took at least 9.87s (not in the latencies)"
            ),
            "{text}"
        );
        assert!(
            under("in read").ends_with(" in read for at least 12.3s (blocked, began before attach)"),
            "{text}"
        );
        assert!(under("in read").starts_with("    100      12 "), "{text}");
        let end = text.find("Unfinished when the trace ended, oldest first:").expect(&text);
        let unfinished: Vec<&str> = text[end..].lines().collect();
        assert_eq!(
            unfinished[2],
            "    100      12 evil\\x1b[2J      read(0x3, 0x7ffd, 0x1000, 0x0, 0x0, 0x0 <unfinished ...>) for at least 12.3s (blocked, began before attach)"
        );
        assert!(
            unfinished[3].contains("poll(0x3") && unfinished[3].ends_with("for 1.50ms (runnable)"),
            "{text}"
        );
    }
}
