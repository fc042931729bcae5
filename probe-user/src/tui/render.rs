//! Draws a [`View`]: header, thread table or one thread's detail, the
//! COMMAND's output pane, and a footer of keys.

use std::collections::VecDeque;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize},
    text::{Line as TextLine, Span},
    widgets::{Block, Borders, Paragraph, Row as TableRow, Table, TableState, Wrap},
    Frame,
};

use super::view::{Column, Line, Now, View};
use crate::{
    output::{explanation_brief, human_ns},
    report::ThreadDetail,
};

/// Lines of the COMMAND's output shown under the table.
const OUTPUT_PANE_LINES: u16 = 4;

/// `--slow` calls shown under the table, the latest last.
const SLOW_PANE_LINES: u16 = 4;

/// The columns a narrow terminal gives up first, the last first; then the
/// others from the right. 80 cells hold all but these.
const EXPENDABLE: [Column; 4] = [Column::Migrations, Column::Cpu, Column::Voluntary, Column::Involuntary];

fn title(column: Column) -> &'static str {
    match column {
        Column::Id => "PID/TID",
        Column::Name => "NAME",
        Column::Syscalls => "SYS/s",
        Column::Busiest => "BUSIEST",
        Column::P99 => "P99",
        Column::Now => "NOW",
        Column::OnCpu => "CPU%",
        Column::Runq => "RUNQ",
        Column::Migrations => "MIGR/s",
        Column::Voluntary => "VOL/s",
        Column::Involuntary => "INV/s",
        Column::Cpu => "CPU",
    }
}

/// Cells per column: names are at most 15 bytes (`TASK_COMM_LEN`), so are
/// most syscall names.
fn width(column: Column) -> u16 {
    match column {
        Column::Id => 9,
        Column::Name | Column::Busiest => 15,
        Column::OnCpu => 5,
        Column::Now => NOW_CELLS,
        Column::Syscalls
        | Column::P99
        | Column::Runq
        | Column::Migrations
        | Column::Voluntary
        | Column::Involuntary => 6,
        Column::Cpu => 3,
    }
}

/// The columns that fit in `available` cells, left to right.
fn columns(available: u16) -> Vec<Column> {
    let mut used = 0;
    let mut shown = Vec::new();
    let essential = Column::ALL.into_iter().filter(|column| !EXPENDABLE.contains(column));
    for column in essential.chain(EXPENDABLE) {
        let needed = width(column) + u16::from(!shown.is_empty());
        if used + needed > available {
            break;
        }
        used += needed;
        shown.push(column);
    }
    Column::ALL.into_iter().filter(|column| shown.contains(column)).collect()
}

/// `1234567.0` → `1.2M`: rates in four or five cells.
fn rate(per_s: f64) -> String {
    match per_s {
        x if x >= 999_950.0 => format!("{:.1}M", x / 1e6),
        x if x >= 9_999.5 => format!("{:.0}k", x / 1e3),
        x if x >= 999.95 => format!("{:.1}k", x / 1e3),
        x if x >= 9.995 || x == 0.0 => format!("{x:.0}"),
        x => format!("{x:.1}"),
    }
}

fn latency(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), human_ns)
}

/// Cells of the NOW column.
const NOW_CELLS: u16 = 11;

/// `read 12s`: the syscall in progress, cut to leave room for its age
/// (`≥12s` when it began before probe attached: a lower bound).
fn now(now: &Now) -> String {
    let age = format!("{}{}", if now.at_least { "≥" } else { "" }, short_age(now.age_ns));
    let room = (NOW_CELLS as usize).saturating_sub(age.chars().count() + 1);
    let name: String = now.syscall.chars().take(room).collect();
    format!("{name} {age}")
}

/// An age in at most five cells: `<1ms`, `850ms`, `4.2s`, `12s`, `59m`,
/// `3.5h`, `12d`.
fn short_age(ns: u64) -> String {
    let seconds = ns as f64 / 1e9;
    match seconds {
        _ if ns < 1_000_000 => "<1ms".to_owned(),
        s if s < 0.9995 => format!("{}ms", (ns / 1_000_000).min(999)),
        s if s < 9.95 => format!("{s:.1}s"),
        s if s < 59.5 => format!("{s:.0}s"),
        s if s < 59.5 * 60.0 => format!("{:.0}m", s / 60.0),
        s if s < 9.95 * 3600.0 => format!("{:.1}h", s / 3600.0),
        s if s < 23.5 * 3600.0 => format!("{:.0}h", s / 3600.0),
        s => format!("{:.0}d", s / 86400.0),
    }
}

fn cell(column: Column, line: &Line) -> String {
    let row = &line.row;
    match (column, &line.place) {
        (Column::Id, Some(_)) => return "▸".to_owned(),
        (Column::Name, Some(place)) => return place.clone(),
        _ => {}
    }
    match column {
        Column::Id => match line.threads {
            Some(_) => row.key.pid().to_string(),
            None => format!("  {}", row.key.tid()),
        },
        Column::Name => match line.threads {
            Some(threads) if threads > 1 => format!("{} ({threads})", row.comm),
            _ => row.comm.clone(),
        },
        Column::Syscalls => rate(row.syscalls_per_s),
        Column::Busiest => row.busiest.clone().unwrap_or_else(|| "-".to_owned()),
        Column::P99 => latency(row.busiest_p99_ns),
        Column::Now => row.now.as_ref().map_or_else(|| "-".to_owned(), now),
        // `~`: a sample, records were dropped.
        Column::OnCpu => row
            .on_cpu_pct
            .map_or_else(|| "-".to_owned(), |pct| format!("{}{pct:.1}", if row.sampled { "~" } else { "" })),
        Column::Runq => latency(row.runq_p99_ns),
        Column::Migrations => rate(row.migrations_per_s),
        Column::Voluntary => rate(row.voluntary_per_s),
        Column::Involuntary => rate(row.involuntary_per_s),
        Column::Cpu => row.last_cpu.map_or_else(|| "-".to_owned(), |cpu| cpu.to_string()),
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, view: &View) {
    // The detail needs the room more than the pane.
    let output = if view.output.is_empty() || view.detail.is_some() { 0 } else { OUTPUT_PANE_LINES + 1 };
    let slow = if view.slow.is_empty() || view.detail.is_some() { 0 } else { SLOW_PANE_LINES + 1 };
    let [header, body, slow_pane, pane, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(slow),
        Constraint::Length(output),
        Constraint::Length(2),
    ])
    .areas(frame.area());
    draw_header(frame, header, view);
    match &view.detail {
        Some((_, Some(detail))) => draw_detail(frame, body, detail, view.detail_row),
        Some((key, None)) => frame.render_widget(
            Paragraph::new(format!("thread {} of process {}: no data yet", key.tid(), key.pid())),
            body,
        ),
        None if view.show_goroutines => draw_go(frame, body, view),
        None => draw_table(frame, body, view),
    }
    if slow > 0 {
        let title =
            format!("slow calls: {} · their stacks in full: --json or the text stream", view.slow_calls);
        draw_pane(frame, slow_pane, &view.slow, SLOW_PANE_LINES, title);
    }
    if output > 0 {
        let plural = if view.output_lines == 1 { "" } else { "s" };
        let title = format!("COMMAND output ({} line{plural})", view.output_lines);
        draw_pane(frame, pane, &view.output, OUTPUT_PANE_LINES, title);
    }
    draw_footer(frame, footer, view);
}

fn draw_header(frame: &mut Frame, area: Rect, view: &View) {
    let header = &view.header;
    let mut first = vec![
        Span::styled("probe", Style::new().bold()),
        Span::raw(format!(" · {} · {} events/s · ", human_ns(header.elapsed_ns), rate(header.events_per_s))),
    ];
    let lost = format!("lost {}", header.lost_events);
    first.push(match (header.lost_events, header.counts_exact) {
        (0, _) => Span::raw(lost),
        (_, true) => Span::styled(format!("{lost} (counts exact)"), Style::new().yellow().bold()),
        (_, false) => Span::styled(format!("{lost} (counts low)"), Style::new().red().bold()),
    });
    if view.paused {
        first.push(Span::raw(" "));
        first.push(Span::styled(" PAUSED ", Style::new().add_modifier(Modifier::REVERSED)));
    }
    // Last: a long COMMAND line is cut at the edge, nothing else.
    first.push(Span::raw(format!(" · {}", header.traced)));
    let bpf = header.bpf_cpu.map_or_else(|| "n/a".to_owned(), |share| format!("{:.1}%", share * 100.0));
    let second = format!(
        "cost: BPF programs {bpf} of a CPU · probe {:.1}% of a CPU · RSS {} MiB",
        header.user_cpu * 100.0,
        header.rss_bytes >> 20
    );
    frame.render_widget(Paragraph::new(vec![TextLine::from(first), TextLine::from(second)]), area);
}

fn draw_table(frame: &mut Frame, area: Rect, view: &View) {
    let lines = view.lines();
    let columns = columns(area.width);
    let titles = columns.iter().map(|&column| title_line(column, column == view.sort));
    let rows = lines.iter().map(|line| {
        let row = TableRow::new(columns.iter().map(|&column| cell(column, line)));
        match (line.threads, &line.place) {
            (_, Some(_)) => row.style(Style::new().bold().underlined()),
            (Some(_), None) => row.style(Style::new().bold()),
            (None, None) => row,
        }
    });
    let table = Table::new(rows, columns.iter().map(|&column| Constraint::Length(width(column))))
        .header(TableRow::new(titles).style(Style::new().add_modifier(Modifier::REVERSED)))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(view.selected_index(&lines));
    if lines.is_empty() {
        let [head, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
        frame.render_stateful_widget(table, head, &mut state);
        frame.render_widget(Paragraph::new("(nothing traced has run yet)"), rest);
    } else {
        frame.render_stateful_widget(table, area, &mut state);
    }
}

/// A column's title with its sort key underlined; the sort column's is
/// also bold and not reversed (an arrow would not fit the narrow ones).
fn title_line(column: Column, sorted: bool) -> TextLine<'static> {
    let title = title(column);
    let style = match sorted {
        true => Style::new().bold().not_reversed(),
        false => Style::new(),
    };
    let at = title.to_lowercase().find(column.key()).unwrap_or(0);
    let (before, rest) = title.split_at(at);
    let (key, after) = rest.split_at(rest.chars().next().map_or(0, char::len_utf8));
    TextLine::from(vec![
        Span::styled(before, style),
        Span::styled(key, style.underlined()),
        Span::styled(after, style),
    ])
}

/// The Go view: each Go process's scheduler as last read (its Ps with the
/// thread that holds each and that thread's CPU, its threads and what each
/// is to the runtime, its goroutines by state), then every goroutine since
/// probe started, most syscalls first.
fn draw_go(frame: &mut Frame, area: Rect, view: &View) {
    let lines = go_scheduler_lines(view);
    let height = match view.goroutines.is_empty() {
        true => area.height,
        false => (lines.len() as u16).min(area.height / 2),
    };
    let [panel, table] = Layout::vertical([Constraint::Length(height), Constraint::Min(0)]).areas(area);
    frame.render_widget(Paragraph::new(lines), panel);
    if !view.goroutines.is_empty() {
        draw_goroutines(frame, table, view);
    }
}

fn go_scheduler_lines(view: &View) -> Vec<TextLine<'static>> {
    let mut lines = Vec::new();
    for process in &view.go {
        let title = format!("Go process {} ({})", process.pid, process.version);
        let (Some(sched), Some(states)) = (&process.sched, &process.goroutine_states) else {
            let why = process.sched_unavailable.as_deref().unwrap_or("unknown");
            lines.push(TextLine::from(format!("{title}: scheduler not read: {why}")).bold());
            continue;
        };
        lines.push(
            TextLine::from(format!("{title} · read {} ms ago · {}", sched.age_ms, sched.summary())).bold(),
        );
        lines.push(TextLine::from(format!("  {}", states.summary())));
        let on = |tid: u32| {
            let cpu = view.cpu_of(process.pid, tid).map_or_else(|| "?".to_owned(), |cpu| cpu.to_string());
            format!("thread {tid} on CPU {cpu}")
        };
        for p in &sched.ps {
            let thread = p.tid.map_or_else(String::new, |tid| format!(", {}", on(tid)));
            lines.push(TextLine::from(format!("  {}{thread}", p.summary())));
        }
        for m in &sched.ms {
            lines.push(TextLine::from(format!("  M{:<3} {}: {}", m.id, on(m.tid), m.role)).dim());
        }
    }
    lines
}

/// Every goroutine since probe started, most syscalls first.
fn draw_goroutines(frame: &mut Frame, area: Rect, view: &View) {
    let header = ["PID", "GOID", "STARTED AS", "SYSCALLS", "BUSIEST", "P99", "THREADS", "MOVES"];
    let rows = view.goroutines.iter().map(|goroutine| {
        let busiest = goroutine.syscalls.first();
        TableRow::new([
            goroutine.pid.to_string(),
            goroutine.goid.to_string(),
            goroutine.start_fn.clone(),
            goroutine.syscalls.iter().map(|call| call.count).sum::<u64>().to_string(),
            busiest.map_or_else(|| "-".to_owned(), |call| call.name.clone()),
            latency(busiest.and_then(|call| call.p99_ns)),
            goroutine.threads.len().to_string(),
            goroutine.moves.to_string(),
        ])
        .style(if goroutine.exited { Style::new().dim() } else { Style::new() })
    });
    let widths = [7, 8, 24, 9, 15, 7, 7, 6].map(Constraint::Length);
    let table = Table::new(rows, widths)
        .header(TableRow::new(header).style(Style::new().add_modifier(Modifier::REVERSED)));
    frame.render_widget(table, area);
}

fn draw_detail(frame: &mut Frame, area: Rect, detail: &ThreadDetail, selected: usize) {
    let thread = &detail.thread;
    // The syscalls get up to half the room; the histogram and the scheduler
    // the rest.
    let shown_calls = ((thread.syscalls.len() + thread.io_uring.len()) as u16)
        .min((area.height / 2).saturating_sub(2).max(3));
    let [title, calls, lower] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(shown_calls + 1), Constraint::Min(4)])
            .areas(area);
    let in_flight = thread.in_flight.as_ref().map_or_else(String::new, |call| {
        let at_least = if call.started_before_attach { "at least " } else { "" };
        format!(" · in {} for {at_least}{} ({})", call.name, human_ns(call.age_ns), call.state.words())
    });
    frame.render_widget(
        Paragraph::new(format!(
            "{} (tid {}, pid {}) since probe started{}{in_flight}",
            thread.comm,
            thread.tid,
            thread.pid,
            if thread.exited { ", exited" } else { "" }
        ))
        .bold(),
        title,
    );
    // Where the time went, when the terminal is wide enough for it.
    let columns = if area.width >= 100 { 10 } else { 7 };
    let header = ["SYSCALL", "COUNT", "ERRORS", "P50", "P99", "MAX", "TOTAL", "BLOCKED", "RUNQ", "ON-CPU"];
    let rows = thread.syscalls.iter().map(|call| {
        let cells = [
            call.name.clone(),
            call.count.to_string(),
            call.errors.to_string(),
            latency(call.p50_ns),
            latency(call.p99_ns),
            latency(call.max_ns),
            human_ns(call.total_ns),
            latency(call.blocked_ns),
            latency(call.runq_ns),
            latency(call.on_cpu_ns),
        ];
        TableRow::new(cells.into_iter().take(columns))
    });
    // Its io_uring requests follow, in the same columns.
    let requests = thread.io_uring.iter().map(|requests| {
        TableRow::new([
            format!("io_uring {}", requests.opcode),
            requests.count.to_string(),
            requests.errors.to_string(),
            latency(requests.p50_ns),
            latency(requests.p99_ns),
            latency(requests.max_ns),
        ])
    });
    let rows = rows.chain(requests);
    let widths = [18, 10, 7, 8, 8, 8, 8, 8, 8, 8].map(Constraint::Length);
    let table = Table::new(rows, widths.into_iter().take(columns))
        .header(
            TableRow::new(header.into_iter().take(columns))
                .style(Style::new().add_modifier(Modifier::REVERSED)),
        )
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let selected = selected.min(thread.syscalls.len().saturating_sub(1));
    let mut state = TableState::default().with_selected((!thread.syscalls.is_empty()).then_some(selected));
    frame.render_stateful_widget(table, calls, &mut state);

    let [histogram, scheduler] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(lower);
    let call = thread.syscalls.get(selected);
    let buckets = call.and_then(|call| detail.buckets.get(&call.nr)).map_or(&[][..], Vec::as_slice);
    let name = call.map_or("", |call| call.name.as_str());
    // Its slowest calls first, the calls behind the tail; then the buckets.
    let mut lines = call.map_or_else(Vec::new, slowest_lines);
    lines.extend(histogram_lines(buckets, histogram.width.saturating_sub(24)));
    frame.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::TOP).title(format!("{name} latency"))),
        histogram,
    );
    frame.render_widget(
        Paragraph::new(scheduler_lines(thread))
            .wrap(Wrap { trim: false })
            .block(Block::new().borders(Borders::TOP | Borders::LEFT).title("scheduler")),
        scheduler,
    );
}

/// `< 2.05µs ████▌ 123`: one line per power-of-two bucket, bars scaled to
/// the fullest.
/// `slowest 80.1ms: blocked 80.1ms, runq 12.7µs, = 0`, a line per kept call.
fn slowest_lines(call: &crate::report::SyscallReport) -> Vec<TextLine<'static>> {
    call.slowest
        .iter()
        .map(|slow| {
            let split = match (slow.blocked_ns, slow.runq_ns) {
                (Some(blocked), Some(runq)) => {
                    format!(": blocked {}, runq {}", human_ns(blocked), human_ns(runq))
                }
                _ => String::new(),
            };
            let returned = slow.errno.clone().unwrap_or_else(|| slow.ret.to_string());
            let explained = slow.explanation.as_ref().map(explanation_brief).unwrap_or_default();
            TextLine::from(format!("slowest {}{split}, = {returned}{explained}", human_ns(slow.duration_ns)))
        })
        .collect()
}

fn histogram_lines(buckets: &[(u64, u64)], bar_cells: u16) -> Vec<TextLine<'static>> {
    let fullest = buckets.iter().map(|&(_, count)| count).max().unwrap_or(0).max(1);
    buckets
        .iter()
        .map(|&(upper, count)| {
            let cells = (count as f64 / fullest as f64 * f64::from(bar_cells)).round() as usize;
            let bar = "█".repeat(if count > 0 { cells.max(1) } else { 0 });
            TextLine::from(format!("< {:>8} {bar} {count}", human_ns(upper)))
        })
        .collect()
}

fn scheduler_lines(thread: &crate::report::ThreadReport) -> Vec<TextLine<'static>> {
    let Some(sched) = &thread.sched else {
        return vec![TextLine::from("no scheduler data (--no-sched)")];
    };
    let mut lines = vec![
        TextLine::from(format!(
            "on-CPU {} · blocked {} · runq {}",
            human_ns(sched.on_cpu_ns),
            human_ns(sched.blocked_ns),
            human_ns(sched.runq_wait_ns)
        )),
        TextLine::from(format!(
            "switches {} vol, {} invol · {} migrations",
            sched.voluntary_switches, sched.involuntary_switches, sched.migrations
        )),
        TextLine::from("on-CPU share by CPU:".bold()),
    ];
    let on_cpu = sched.cpus.values().sum::<u64>().max(1);
    lines.extend(sched.cpus.iter().map(|(cpu, &ns)| {
        TextLine::from(format!("  cpu {cpu:>3}  {:>5.1}%", ns as f64 * 100.0 / on_cpu as f64))
    }));
    let waited = sched.runq_blame.iter().fold(0, |sum: u64, entry| sum.saturating_add(entry.ns));
    if waited > 0 {
        lines.push(TextLine::from(format!("run-queue waits ({}) behind:", human_ns(waited)).bold()));
        lines.extend(sched.runq_blame.iter().map(|entry| {
            let share = entry.ns as f64 * 100.0 / waited as f64;
            TextLine::from(format!("  {share:>5.1}%  {:>8}  {}", human_ns(entry.ns), entry.describe()))
        }));
    }
    if !sched.migration_pairs.is_empty() {
        lines.push(TextLine::from("migrations:".bold()));
        lines.extend(
            sched
                .migration_pairs
                .iter()
                .map(|pair| TextLine::from(format!("  {} → {}  ×{}", pair.from, pair.to, pair.count))),
        );
    }
    lines
}

/// A pane of the latest `height` of `lines` under a titled rule.
fn draw_pane(frame: &mut Frame, area: Rect, lines: &VecDeque<String>, height: u16, title: String) {
    let shown = lines.len().min(height as usize);
    let lines: Vec<TextLine> =
        lines.iter().skip(lines.len() - shown).map(|line| TextLine::from(line.as_str())).collect();
    frame.render_widget(Paragraph::new(lines).block(Block::new().borders(Borders::TOP).title(title)), area);
}

fn draw_footer(frame: &mut Frame, area: Rect, view: &View) {
    let text = if view.editing_filter {
        format!("filter (name, pid or tid): {}▏ · enter: keep · esc: clear", view.filter)
    } else if view.show_goroutines {
        "Go: schedulers as last read, goroutines since probe started (dim: ended) · g: threads · space: pause · q: quit"
            .to_owned()
    } else if view.detail.is_some() {
        "↑↓ syscall · esc: back · space: pause · q: quit".to_owned()
    } else {
        let filter = match view.filter.is_empty() {
            true => String::new(),
            false => format!(" · filter \"{}\" (esc clears)", view.filter),
        };
        let order = if view.descending { "▼" } else { "▲" };
        let goroutines = if view.has_go() { " · g: Go" } else { "" };
        format!(
            "sorted by {}{order} · underlined key: sort by it (again: reverse) · /: filter · o: group by {} · space: pause · enter: thread{goroutines} · q: quit{filter}",
            title(view.sort),
            view.grouping.next().name()
        )
    };
    frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }).dim(), area);
}

/// Tests draw into ratatui's `TestBackend` from views built here.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::ThreadKey,
        report::GoroutineReport,
        tui::view::{
            tests::{interval, view_of},
            Row,
        },
    };
    use ratatui::{
        backend::TestBackend,
        crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
        Terminal,
    };

    fn screen(view: &View, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| draw(frame, view)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect::<String>().trim_end().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn rates_fit_their_cells() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(0.25), "0.2");
        assert_eq!(rate(12.4), "12");
        assert_eq!(rate(1234.0), "1.2k");
        assert_eq!(rate(98_765.0), "99k");
        assert_eq!(rate(1_900_000.0), "1.9M");
        assert_eq!(rate(1e15), "1000000000.0M");
    }

    #[test]
    fn narrow_terminals_drop_the_last_columns_first() {
        assert_eq!(
            columns(80),
            [
                Column::Id,
                Column::Name,
                Column::Syscalls,
                Column::Busiest,
                Column::P99,
                Column::Now,
                Column::OnCpu,
                Column::Runq
            ]
        );
        assert!(columns(91).contains(&Column::Migrations) && columns(91).contains(&Column::Cpu));
        assert!(!columns(91).contains(&Column::Voluntary));
        assert_eq!(columns(200), Column::ALL);
        assert_eq!(columns(20), [Column::Id]);
    }

    #[test]
    fn the_now_column_keeps_the_age_and_cuts_the_name() {
        let at =
            |syscall: &str, age_ns, at_least| now(&Now { syscall: syscall.to_owned(), age_ns, at_least });
        assert_eq!(at("read", 12_300_000_000, false), "read 12s");
        assert_eq!(at("read", 4_200_000_000, true), "read ≥4.2s");
        assert_eq!(at("clock_nanosleep", 10_000_000_000, false), "clock_n 10s");
        assert_eq!(at("epoll_wait", 850_000_000, false), "epoll 850ms");
        for (ns, age) in [
            (0, "<1ms"),
            (1_500_000, "1ms"),
            (999_400_000, "999ms"),
            (9_940_000_000, "9.9s"),
            (59_400_000_000, "59s"),
            (3_000_000_000_000, "50m"),
            (7_200_000_000_000, "2.0h"),
            (50_000_000_000_000, "14h"),
            (u64::MAX, "213504d"),
        ] {
            assert_eq!(short_age(ns), age, "{ns}");
        }
        for ns in [0, 1_000_000_000, u64::MAX] {
            assert!(at("clock_nanosleep", ns, true).chars().count() <= NOW_CELLS as usize + 3);
        }
    }

    #[test]
    fn a_stuck_thread_sorts_first_by_now() {
        let mut report = interval(&[(10, 10, "server", 50), (10, 11, "stuck", 0), (20, 20, "db", 30)]);
        let stuck = report.threads.iter_mut().find(|thread| thread.tid == 11).unwrap();
        stuck.in_flight = Some(crate::report::InFlightReport {
            name: "read".to_owned(),
            nr: 0,
            args: None,
            started_ns: 1,
            age_ns: 3_600_000_000_000,
            state: crate::aggregate::in_flight::ThreadState::Blocked,
            started_before_attach: true,
        });
        let mut view = View::default();
        view.update(Default::default(), &report, |_| true);
        view.key(KeyEvent::new(KeyCode::Char('w'), KeyModifiers::NONE));
        let text = screen(&view, 80, 24);
        let rows: Vec<&str> = text.lines().skip(3).take(3).collect();
        assert!(rows[0].starts_with("10        server (2)"), "{text}");
        assert!(rows[1].starts_with("  11      stuck") && rows[1].contains("read ≥1.0h"), "{text}");
        assert!(text.lines().nth(2).unwrap().contains("NOW"), "{text}");
    }

    #[test]
    fn histograms_scale_to_the_fullest_bucket() {
        let lines = histogram_lines(&[(1024, 10), (2048, 0), (4096, 5)], 10);
        let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
        assert_eq!(text[0], format!("< {:>8} {} 10", "1.02µs", "█".repeat(10)));
        assert_eq!(text[1], format!("< {:>8}  0", "2.05µs"));
        assert_eq!(text[2], format!("< {:>8} {} 5", "4.10µs", "█".repeat(5)));
    }

    fn key(pid: u32, tid: u32) -> ThreadKey {
        ThreadKey::nth(pid, tid, 0)
    }

    #[test]
    fn an_empty_trace_says_so_at_80_by_24() {
        let text = screen(&View::default(), 80, 24);
        assert!(text.contains("nothing traced has run yet"), "{text}");
        assert!(text.contains("PID/TID"), "{text}");
        assert!(text.contains("q: quit"), "{text}");
    }

    #[test]
    fn the_table_shows_processes_then_their_threads_at_80_by_24() {
        let view = view_of(&[(10, 10, "server", 5), (10, 11, "worker", 50), (20, 20, "db", 30)]);
        let text = screen(&view, 80, 24);
        let rows: Vec<&str> = text.lines().skip(3).take(5).collect();
        assert!(rows[0].starts_with("10        server (2)      57     read"), "{text}");
        assert!(rows[1].starts_with("  11      worker          51     read"), "{text}");
        assert!(rows[2].starts_with("  10      server"), "{text}");
        assert!(rows[3].starts_with("20        db              31"), "{text}");
        assert!(text.lines().all(|line| line.chars().count() <= 80));
    }

    #[test]
    fn the_detail_shows_each_syscall_and_the_selected_ones_histogram() {
        let report = interval(&[(10, 11, "worker", 50)]);
        let mut table = crate::aggregate::Table::default();
        let mut call = crate::aggregate::tests::event(11, syscalls::Sysno::getppid.id() as u32, 0, 1000);
        call.pid = 10;
        (0..50).for_each(|_| crate::aggregate::tests::record(&mut table, &call));
        let mut view = View::default();
        view.update(Default::default(), &report, |_| true);
        let key = ThreadKey::nth(10, 11, 0);
        view.detail = Some((key, ThreadDetail::new(&table, key)));
        let text = screen(&view, 80, 24);
        assert!(text.contains("getppid            50"), "{text}");
        assert!(text.contains("getppid latency"), "{text}");
        assert!(text.contains(&format!("< {:>8} {}", "1.02µs", "█")), "{text}");
        assert!(text.contains("esc: back"), "{text}");
    }

    #[test]
    fn g_shows_the_goroutines_of_a_go_program() {
        let mut view = view_of(&[(10, 10, "server", 5)]);
        let press = |view: &mut View, c| view.key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
        press(&mut view, 'g');
        assert!(!view.show_goroutines, "no goroutines, no goroutine view");
        let goroutine = |goid, start_fn: &str, exited| GoroutineReport {
            pid: 10,
            goid,
            start_fn: start_fn.to_owned(),
            exited,
            syscalls: Vec::new(),
            threads: vec![10, 11],
            moves: 3,
        };
        view.update_goroutines(
            vec![goroutine(1, "runtime.main", false), goroutine(7, "main.worker", true)],
            Vec::new(),
        );
        press(&mut view, 'g');
        let text = screen(&view, 80, 24);
        assert!(text.contains("STARTED AS"), "{text}");
        let main = text.lines().find(|line| line.contains("runtime.main")).expect("goroutine 1");
        assert!(main.starts_with("10      1"), "{text}");
        assert!(text.contains("main.worker"), "{text}");
        press(&mut view, 'g');
        assert!(screen(&view, 80, 24).contains("PID/TID"));
    }

    #[test]
    fn the_go_view_shows_each_p_with_its_threads_cpu_and_each_threads_role() {
        use crate::report::go_process_example;
        let mut view = view_of(&[(10, 10, "server", 5)]);
        view.update_goroutines(Vec::new(), vec![go_process_example(10, true), go_process_example(11, false)]);
        view.key(KeyEvent::new(KeyCode::Char('g'), KeyModifiers::NONE));
        let text = screen(&view, 160, 24);
        assert!(
            text.contains(
                "Go process 10 (go1.19.8) · read 250 ms ago · GOMAXPROCS 2 of 4 CPUs: 1 idle P, 5 threads"
            ),
            "{text}"
        );
        assert!(text.contains("10 goroutines: 10 waiting (chan receive 10)"), "{text}");
        let p0 = text.lines().find(|line| line.contains("P0")).unwrap();
        assert!(p0.contains("runq 2+next") && p0.contains("thread 10 on CPU"), "{text}");
        assert!(text.contains("M1   thread 12 on CPU ?: sysmon"), "{text}");
        assert!(text.contains("Go process 11 (go1.19.8): scheduler not read: the process is gone"), "{text}");
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        for (width, height) in [(1, 1), (10, 3), (80, 5), (30, 40)] {
            screen(&View::default(), width, height);
        }
    }

    #[test]
    fn lost_events_are_highlighted() {
        let mut view = View::default();
        view.header.lost_events = 7;
        let mut terminal = Terminal::new(TestBackend::new(100, 10)).unwrap();
        terminal.draw(|frame| draw(frame, &view)).unwrap();
        let buffer = terminal.backend().buffer();
        let line: String = (0..100).map(|x| buffer[(x, 0)].symbol()).collect();
        let at = line.find("lost 7").expect("the header names the losses");
        let x = line[..at].chars().count() as u16;
        assert_eq!(buffer[(x, 0)].fg, ratatui::style::Color::Red);
    }

    #[test]
    fn huge_numbers_and_long_names_stay_in_their_cells() {
        let row = Row {
            key: key(4_194_303, 4_194_303),
            comm: "a-very-long-thread-name".to_owned(),
            syscalls_per_s: 1e18,
            busiest: Some("clock_nanosleep".to_owned()),
            busiest_p99_ns: Some(u64::MAX),
            on_cpu_pct: Some(100.0),
            runq_p99_ns: Some(u64::MAX),
            ..Row::default()
        };
        let line = Line { row, threads: None, place: None };
        for column in Column::ALL {
            let text = cell(column, &line);
            assert!(!text.is_empty(), "{column:?}");
        }
        let mut view = View::default();
        view.header.events_per_s = 1e18;
        screen(&view, 80, 24);
    }
}
