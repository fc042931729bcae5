//! Aligned text tables, one block per report.

use std::io::{self, Write};

use crate::report::{IoUringReport, Kind, Report, SchedReport, SyscallReport};

/// Migration pairs shown per thread; JSON has them all.
const PAIRS_SHOWN: usize = 3;

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
        "{:>7} {:>7} {:<16} {:<22} {:>9} {:>7} {:>8}",
        "PID", "TID", "COMM", "SYSCALL", "COUNT", "ERRORS", "TOTAL"
    )?;
    if summary {
        write!(out, " {:>8}", "MIN")?;
    }
    write!(out, " {:>8}", "P50")?;
    if summary {
        write!(out, " {:>8}", "P90")?;
    }
    write!(out, " {:>8} {:>8}", "P99", "MAX")?;
    if summary {
        write!(out, "  ERRNOS")?;
    }
    writeln!(out)?;
    for thread in &report.threads {
        // The thread's ids head its first row; later rows are indented.
        let mut ids = Some(format!("{:>7} {:>7} {:<16}", thread.pid, thread.tid, thread.comm));
        let mut lead = |out: &mut dyn Write| write!(out, "{:32}", ids.take().unwrap_or_default());
        for call in &thread.syscalls {
            lead(out)?;
            write_row(out, call, summary)?;
        }
        for requests in &thread.io_uring {
            lead(out)?;
            write_io_uring(out, requests, summary)?;
        }
        if let Some(sched) = &thread.sched {
            lead(out)?;
            write_sched(out, sched)?;
        }
        if summary {
            writeln!(out)?;
        }
    }
    if !summary {
        writeln!(out)?;
    }
    write_go(out, report)
}

/// The Go view: each Go process's runtime threads, then its goroutines
/// with their syscalls, in the same columns as the threads'.
fn write_go(out: &mut dyn Write, report: &Report) -> io::Result<()> {
    for process in &report.go {
        let gomaxprocs = process.gomaxprocs.map_or_else(|| "?".to_owned(), |n| n.to_string());
        writeln!(
            out,
            "Go process {} ({}): GOMAXPROCS {gomaxprocs} (from the {}), {} OS threads, {} goroutines started, {} alive",
            process.pid,
            process.version,
            process.gomaxprocs_from,
            process.threads.len(),
            process.goroutines_started,
            process.goroutines_alive
        )?;
        for thread in &process.threads {
            writeln!(out, "  thread {:>7}: {}", thread.tid, thread.role)?;
        }
        writeln!(out)?;
    }
    if report.goroutines.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:>7} {:>7} {:<16} {:<22} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "PID", "GOID", "START", "SYSCALL", "COUNT", "ERRORS", "TOTAL", "MIN", "P50", "P90", "P99", "MAX"
    )?;
    for goroutine in &report.goroutines {
        let start: String = goroutine.start_fn.chars().take(16).collect();
        let mut ids = Some(format!("{:>7} {:>7} {start:<16}", goroutine.pid, goroutine.goid));
        let mut lead = |out: &mut dyn Write| write!(out, "{:32}", ids.take().unwrap_or_default());
        for call in &goroutine.syscalls {
            lead(out)?;
            write_row(out, call, true)?;
        }
        lead(out)?;
        let threads: Vec<String> = goroutine.threads.iter().map(u32::to_string).collect();
        writeln!(
            out,
            " {}: threads {} ({} moves between them){}",
            goroutine.start_fn,
            threads.join(","),
            goroutine.moves,
            if goroutine.exited { ", ended" } else { "" }
        )?;
    }
    writeln!(out)
}

fn write_row(out: &mut dyn Write, call: &SyscallReport, summary: bool) -> io::Result<()> {
    write!(out, " {:<22} {:>9} {:>7} {:>8}", call.name, call.count, call.errors, human_ns(call.total_ns))?;
    if summary {
        write!(out, " {:>8}", latency(call.min_ns))?;
    }
    write!(out, " {:>8}", latency(call.p50_ns))?;
    if summary {
        write!(out, " {:>8}", latency(call.p90_ns))?;
    }
    write!(out, " {:>8} {:>8}", latency(call.p99_ns), latency(call.max_ns))?;
    if summary && !call.errnos.is_empty() {
        let errnos: Vec<_> = call.errnos.iter().map(|(name, n)| format!("{name}:{n}")).collect();
        write!(out, "  {}", errnos.join(","))?;
    }
    if let (true, Some(on_cpu), Some(blocked), Some(runq)) =
        (summary, call.on_cpu_ns, call.blocked_ns, call.runq_ns)
    {
        if call.total_ns > 0 {
            write!(
                out,
                "  = {} blocked + {} runq + {} on-CPU",
                human_ns(blocked),
                human_ns(runq),
                human_ns(on_cpu)
            )?;
        }
    }
    writeln!(out)
}

/// An io_uring opcode's requests, in the syscall columns (their latency is
/// submission to completion).
fn write_io_uring(out: &mut dyn Write, requests: &IoUringReport, summary: bool) -> io::Result<()> {
    let name = format!("io_uring {}", requests.opcode);
    write!(out, " {name:<22} {:>9} {:>7} {:>8}", requests.count, requests.errors, "-")?;
    if summary {
        write!(out, " {:>8}", "-")?;
    }
    write!(out, " {:>8}", latency(requests.p50_ns))?;
    if summary {
        write!(out, " {:>8}", "-")?;
    }
    writeln!(
        out,
        " {:>8} {:>8}  async:{}",
        latency(requests.p99_ns),
        latency(requests.max_ns),
        requests.offloaded
    )
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
    writeln!(out)
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
    fn summary_rows_line_up_and_name_errnos() {
        let text = render(Kind::Summary, Losses::default());
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "probe summary: 2.00s traced, 2 events, 0 lost");
        assert!(lines[1].starts_with("    PID     TID COMM"), "{text}");
        assert!(lines[2].contains("openat") && lines[2].ends_with("ENOENT:1"), "{text}");
        assert!(lines[2].starts_with("    100      11 worker"), "{text}");
        assert!(lines[3].trim_start().starts_with("getpid "), "{text}");
        // The last column of a row without errnos ends where its heading ends.
        let heading_end = lines[1].find("MAX").unwrap() + "MAX".len();
        assert_eq!(lines[3].chars().count(), lines[1][..heading_end].chars().count(), "{text}");
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
}
