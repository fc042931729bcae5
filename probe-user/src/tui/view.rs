//! What the live view shows, and how keys change it: a row per thread
//! grouped under its process (and, with `o`, the processes under their
//! container or cgroup), sorted and filtered; a selection; pause; and
//! one thread's detail. Drawing is `render`'s; nothing here touches the
//! terminal, so the tests drive it with plain values.

use std::{cmp::Ordering, collections::VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use rustc_hash::FxHashMap;

use crate::{
    aggregate::ThreadKey,
    report::{GoProcessReport, GoroutineReport, ProcessReport, Report, ThreadDetail, ThreadReport},
};

/// Intervals a thread may stay silent before its row is dropped, once its
/// thread is gone.
const IDLE_INTERVALS: u32 = 5;

/// Lines of the traced COMMAND's output kept for its pane.
const OUTPUT_LINES: usize = 200;

/// What the header says about the trace and probe's own cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// What is traced: the command, the PIDs, or the whole system.
    pub traced: String,
    pub elapsed_ns: u64,
    pub events_per_s: f64,
    /// Events lost since the start.
    pub lost_events: u64,
    /// Whether syscall counts stay exact despite the losses.
    pub counts_exact: bool,
    /// CPU time of probe's BPF programs over the interval, as a share of
    /// one CPU; `None` when the kernel keeps no BPF statistics.
    pub bpf_cpu: Option<f64>,
    /// probe's own CPU time over the interval, as a share of one CPU.
    pub user_cpu: f64,
    pub rss_bytes: u64,
}

/// One thread's latest interval, as rates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub key: ThreadKey,
    pub comm: String,
    pub syscalls_per_s: f64,
    /// The syscall with the most time this interval, and its p99.
    pub busiest: Option<String>,
    pub busiest_p99_ns: Option<u64>,
    /// Share of the interval on a CPU, in percent; `None` without
    /// scheduler data.
    pub on_cpu_pct: Option<f64>,
    /// Whether its scheduler times are a sample (records were dropped).
    pub sampled: bool,
    pub runq_p99_ns: Option<u64>,
    pub migrations_per_s: f64,
    pub voluntary_per_s: f64,
    pub involuntary_per_s: f64,
    pub last_cpu: Option<u32>,
    /// The syscall it is in now, if any.
    pub now: Option<Now>,
    /// Intervals since the thread last did anything.
    pub(super) idle: u32,
    pub(super) exited: bool,
}

impl Row {
    fn from_report(thread: &ThreadReport, span_s: f64) -> Self {
        let per_s = |n: u64| n as f64 / span_s;
        let busiest = thread.syscalls.first();
        let sched = thread.sched.as_ref();
        Self {
            key: ThreadKey::nth(thread.pid, thread.tid, thread.generation),
            comm: thread.comm.clone(),
            syscalls_per_s: per_s(thread.syscalls.iter().map(|call| call.count).sum()),
            busiest: busiest.map(|call| call.name.clone()),
            busiest_p99_ns: busiest.and_then(|call| call.p99_ns),
            on_cpu_pct: sched.map(|sched| sched.on_cpu_ns as f64 / 1e9 / span_s * 100.0),
            sampled: sched.is_some_and(|sched| sched.sampled),
            runq_p99_ns: sched.and_then(|sched| sched.runq_p99_ns),
            migrations_per_s: sched.map_or(0.0, |sched| per_s(sched.migrations)),
            voluntary_per_s: sched.map_or(0.0, |sched| per_s(sched.voluntary_switches)),
            involuntary_per_s: sched.map_or(0.0, |sched| per_s(sched.involuntary_switches)),
            last_cpu: sched.and_then(|sched| sched.last_cpu),
            now: thread.in_flight.as_ref().map(|call| Now {
                syscall: call.name.clone(),
                age_ns: call.age_ns,
                at_least: call.started_before_attach,
            }),
            idle: 0,
            exited: thread.exited,
        }
    }

    /// The same thread with nothing done this interval.
    fn silent(&self) -> Self {
        Self {
            key: self.key,
            comm: self.comm.clone(),
            on_cpu_pct: self.on_cpu_pct.map(|_| 0.0),
            last_cpu: self.last_cpu,
            idle: self.idle + 1,
            exited: self.exited,
            ..Self::default()
        }
    }
}

/// The syscall a thread is in, when the interval closed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Now {
    pub syscall: String,
    /// Time in it so far.
    pub age_ns: u64,
    /// It began before probe attached: the age is a lower bound.
    pub at_least: bool,
}

/// A column of the thread table, and the key that sorts by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Id,
    Name,
    Syscalls,
    Busiest,
    P99,
    /// The syscall in progress, and for how long: sorted by age.
    Now,
    OnCpu,
    Runq,
    Migrations,
    Voluntary,
    Involuntary,
    Cpu,
}

impl Column {
    /// Left to right.
    pub const ALL: [Column; 12] = [
        Column::Id,
        Column::Name,
        Column::Syscalls,
        Column::Busiest,
        Column::P99,
        Column::Now,
        Column::OnCpu,
        Column::Runq,
        Column::Migrations,
        Column::Voluntary,
        Column::Involuntary,
        Column::Cpu,
    ];

    /// The key that sorts by this column.
    pub fn key(self) -> char {
        match self {
            Column::Id => 'p',
            Column::Name => 'n',
            Column::Syscalls => 's',
            Column::Busiest => 'b',
            Column::P99 => '9',
            Column::Now => 'w',
            Column::OnCpu => 'c',
            Column::Runq => 'r',
            Column::Migrations => 'm',
            Column::Voluntary => 'v',
            Column::Involuntary => 'i',
            Column::Cpu => 'u',
        }
    }

    /// Text columns sort A to Z first, numbers largest first.
    fn descending_by_default(self) -> bool {
        !matches!(self, Column::Id | Column::Name | Column::Busiest)
    }

    fn value(self, row: &Row) -> Value<'_> {
        let ns = |ns: Option<u64>| Value::Number(ns.map_or(-1.0, |ns| ns as f64));
        match self {
            Column::Id => Value::Number(f64::from(row.key.tid())),
            Column::Name => Value::Text(&row.comm),
            Column::Syscalls => Value::Number(row.syscalls_per_s),
            Column::Busiest => Value::Text(row.busiest.as_deref().unwrap_or("")),
            Column::P99 => ns(row.busiest_p99_ns),
            Column::Now => ns(row.now.as_ref().map(|now| now.age_ns)),
            Column::OnCpu => Value::Number(row.on_cpu_pct.unwrap_or(-1.0)),
            Column::Runq => ns(row.runq_p99_ns),
            Column::Migrations => Value::Number(row.migrations_per_s),
            Column::Voluntary => Value::Number(row.voluntary_per_s),
            Column::Involuntary => Value::Number(row.involuntary_per_s),
            Column::Cpu => Value::Number(row.last_cpu.map_or(-1.0, f64::from)),
        }
    }
}

#[derive(PartialEq, PartialOrd)]
enum Value<'a> {
    Number(f64),
    Text(&'a str),
}

/// A line of the table: a container or cgroup with its processes'
/// totals, a process with its threads', or one of its threads.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub row: Row,
    /// Threads under it, for a process line (processes, for a place's);
    /// `None` for a thread line.
    pub threads: Option<usize>,
    /// For a container's or cgroup's line, its name.
    pub place: Option<String>,
}

/// What the processes are grouped under, besides their threads under
/// them; `o` goes to the next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Grouping {
    #[default]
    Process,
    Container,
    Cgroup,
}

impl Grouping {
    pub fn next(self) -> Self {
        match self {
            Grouping::Process => Grouping::Container,
            Grouping::Container => Grouping::Cgroup,
            Grouping::Cgroup => Grouping::Process,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Grouping::Process => "process",
            Grouping::Container => "container",
            Grouping::Cgroup => "cgroup",
        }
    }

    /// The name of the place of `process` this grouping puts it under,
    /// short enough for a name's cell: a container's id, a pod's, a unit,
    /// or the end of a cgroup's path.
    fn place_of(self, process: &ProcessReport) -> String {
        let Some(cgroup) = &process.cgroup else {
            return "(unknown)".to_owned();
        };
        let name = match self {
            Grouping::Process => return String::new(),
            Grouping::Container => match (&process.container, &process.pod_uid, &process.unit) {
                (Some(container), _, _) => container.id.clone(),
                (None, Some(uid), _) => format!("pod {uid}"),
                (None, None, Some(unit)) => unit.clone(),
                (None, None, None) => "(host)".to_owned(),
            },
            Grouping::Cgroup => cgroup.clone(),
        };
        // The end of a long name tells more than its start.
        match name.chars().count() {
            count if count > PLACE_CELLS => {
                format!("…{}", name.chars().skip(count - PLACE_CELLS + 1).collect::<String>())
            }
            _ => name,
        }
    }
}

/// A process's line and its threads' rows.
type ProcessLines<'a> = (Line, Vec<&'a Row>);

/// Cells of a place's name: the name column's.
const PLACE_CELLS: usize = 15;

/// What the selection points at; kept by identity, so that it stays on
/// the same thread however the rows move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Selected {
    Process(u32),
    Thread(ThreadKey),
}

/// What a key asks of the event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Quit,
}

/// The live view's whole state.
#[derive(Debug)]
pub struct View {
    pub header: Header,
    rows: FxHashMap<ThreadKey, Row>,
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
    /// Keys go to the filter while it is typed.
    pub editing_filter: bool,
    pub paused: bool,
    pub grouping: Grouping,
    /// Each process's place in `grouping`, as last reported.
    places: FxHashMap<u32, String>,
    selected: Option<Selected>,
    /// The thread whose detail is shown, and its data as of the last update.
    pub detail: Option<(ThreadKey, Option<ThreadDetail>)>,
    /// Which of the detail's syscalls is selected.
    pub detail_row: usize,
    /// The traced COMMAND's latest output lines, and how many came in all.
    pub output: VecDeque<String>,
    pub output_lines: u64,
    /// The goroutines of a traced Go program, since probe started, and
    /// its processes' schedulers; shown instead of the threads while
    /// `show_goroutines`.
    pub goroutines: Vec<GoroutineReport>,
    pub go: Vec<GoProcessReport>,
    pub show_goroutines: bool,
    /// `--slow`'s latest calls, one line each, and how many came in all.
    pub slow: VecDeque<String>,
    pub slow_calls: u64,
}

impl Default for View {
    fn default() -> Self {
        Self {
            header: Header::default(),
            rows: FxHashMap::default(),
            sort: Column::Syscalls,
            descending: true,
            filter: String::new(),
            editing_filter: false,
            paused: false,
            grouping: Grouping::default(),
            places: FxHashMap::default(),
            selected: None,
            detail: None,
            detail_row: 0,
            output: VecDeque::new(),
            output_lines: 0,
            goroutines: Vec::new(),
            go: Vec::new(),
            show_goroutines: false,
            slow: VecDeque::new(),
            slow_calls: 0,
        }
    }
}

impl View {
    /// Takes an interval's report; `alive` says whether a silent thread
    /// still exists. Ignored while paused.
    pub fn update(&mut self, header: Header, interval: &Report, alive: impl Fn(ThreadKey) -> bool) {
        if self.paused {
            return;
        }
        self.header = header;
        let span_s = (interval.span_ns.max(1) as f64) / 1e9;
        let mut rows = FxHashMap::default();
        for thread in &interval.threads {
            let row = Row::from_report(thread, span_s);
            rows.insert(row.key, row);
        }
        for (key, row) in &self.rows {
            if rows.contains_key(key) || row.exited {
                continue;
            }
            let silent = row.silent();
            if silent.idle < IDLE_INTERVALS || alive(*key) {
                rows.insert(*key, silent);
            }
        }
        self.rows = rows;
        for process in &interval.processes {
            self.places.insert(process.pid, self.grouping.place_of(process));
        }
        let rows = &self.rows;
        self.places.retain(|pid, _| rows.keys().any(|key| key.pid() == *pid));
    }

    /// Takes the goroutines and Go processes as of now. Ignored while
    /// paused.
    pub fn update_goroutines(&mut self, goroutines: Vec<GoroutineReport>, go: Vec<GoProcessReport>) {
        if !self.paused {
            self.goroutines = goroutines;
            self.go = go;
        }
    }

    /// Whether there is a Go view to show.
    pub fn has_go(&self) -> bool {
        !self.goroutines.is_empty() || !self.go.is_empty()
    }

    /// The CPU thread `tid` of process `pid` last ran on.
    pub fn cpu_of(&self, pid: u32, tid: u32) -> Option<u32> {
        self.rows
            .iter()
            .find(|(key, _)| key.pid() == pid && key.tid() == tid)
            .and_then(|(_, row)| row.last_cpu)
    }

    /// Takes the selected thread's detail.
    pub fn update_detail(&mut self, detail: Option<ThreadDetail>) {
        if self.paused {
            return;
        }
        if let Some((_, data)) = &mut self.detail {
            *data = detail;
        }
    }

    /// The thread whose detail the view wants, if any.
    pub fn wants_detail(&self) -> Option<ThreadKey> {
        self.detail.as_ref().map(|(key, _)| *key)
    }

    /// Takes a line of the COMMAND's output.
    pub fn add_output(&mut self, line: String) {
        if self.output.len() == OUTPUT_LINES {
            self.output.pop_front();
        }
        self.output.push_back(line);
        self.output_lines += 1;
    }

    /// Takes a `--slow` call's line.
    pub fn add_slow_call(&mut self, line: String) {
        if self.slow.len() == OUTPUT_LINES {
            self.slow.pop_front();
        }
        self.slow.push_back(line);
        self.slow_calls += 1;
    }

    /// The table's lines: processes in sort order, each followed by its
    /// threads in sort order, with the filter applied.
    pub fn lines(&self) -> Vec<Line> {
        let mut processes: FxHashMap<u32, Vec<&Row>> = FxHashMap::default();
        for row in self.rows.values() {
            processes.entry(row.key.pid()).or_default().push(row);
        }
        let mut groups: Vec<(Line, Vec<&Row>)> = processes
            .into_values()
            .filter_map(|mut threads| {
                threads.sort_by(|a, b| self.order(a, b));
                let process = process_row(&threads);
                if !self.matches(&process) {
                    threads.retain(|row| self.matches(row));
                    if threads.is_empty() {
                        return None;
                    }
                }
                let line = Line { threads: Some(threads.len()), row: process, place: None };
                // A single-threaded process is its one line.
                if let [only] = threads[..] {
                    if only.key.tid() == only.key.pid() {
                        return Some((Line { row: only.clone(), ..line }, Vec::new()));
                    }
                }
                Some((line, threads))
            })
            .collect();
        groups.sort_by(|a, b| self.order(&a.0.row, &b.0.row));
        fn process_lines((process, threads): ProcessLines<'_>) -> impl Iterator<Item = Line> + '_ {
            std::iter::once(process).chain(threads.into_iter().map(|row| Line {
                row: row.clone(),
                threads: None,
                place: None,
            }))
        }
        if self.grouping == Grouping::Process {
            return groups.into_iter().flat_map(process_lines).collect();
        }
        // Each place's line, with its processes' totals, over its
        // processes; the places in the same order.
        let mut places: Vec<(String, Vec<ProcessLines>)> = Vec::new();
        for group in groups {
            let place = self
                .places
                .get(&group.0.row.key.pid())
                .cloned()
                .unwrap_or_else(|| "(not read yet)".to_owned());
            match places.iter_mut().find(|(name, _)| *name == place) {
                Some((_, members)) => members.push(group),
                None => places.push((place, vec![group])),
            }
        }
        let mut places: Vec<(Line, Vec<ProcessLines>)> = places
            .into_iter()
            .map(|(place, members)| {
                let rows: Vec<&Row> = members.iter().map(|(process, _)| &process.row).collect();
                let line = Line { row: process_row(&rows), threads: Some(members.len()), place: Some(place) };
                (line, members)
            })
            .collect();
        places.sort_by(|a, b| self.order(&a.0.row, &b.0.row));
        places
            .into_iter()
            .flat_map(|(place, members)| {
                std::iter::once(place).chain(members.into_iter().flat_map(process_lines))
            })
            .collect()
    }

    fn order(&self, a: &Row, b: &Row) -> Ordering {
        let by_column = self.sort.value(a).partial_cmp(&self.sort.value(b)).unwrap_or(Ordering::Equal);
        let by_column = if self.descending { by_column.reverse() } else { by_column };
        by_column.then(a.key.cmp(&b.key))
    }

    /// A row passes the filter when its name contains it (any case), or
    /// its pid or tid starts with it.
    fn matches(&self, row: &Row) -> bool {
        let filter = self.filter.trim();
        filter.is_empty()
            || row.comm.to_lowercase().contains(&filter.to_lowercase())
            || row.key.pid().to_string().starts_with(filter)
            || row.key.tid().to_string().starts_with(filter)
    }

    /// The selected line's index in `lines`, if it is there.
    pub fn selected_index(&self, lines: &[Line]) -> Option<usize> {
        let selected = self.selected?;
        lines.iter().position(|line| selection(line) == Some(selected))
    }

    /// Applies a key.
    pub fn key(&mut self, key: KeyEvent) -> Control {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Control::Quit;
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Char(c) => self.filter.push(c),
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                _ => {}
            }
            return Control::Continue;
        }
        match key.code {
            KeyCode::Char('q') => return Control::Quit,
            KeyCode::Char(' ') => self.paused = !self.paused,
            _ if self.detail.is_some() => self.detail_key(key.code),
            KeyCode::Char('/') => self.editing_filter = true,
            KeyCode::Char('g') => self.show_goroutines = !self.show_goroutines && self.has_go(),
            KeyCode::Char('o') => {
                // The places come with the next interval.
                self.grouping = self.grouping.next();
                self.places.clear();
            }
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Enter => {
                let thread = match self.selected {
                    Some(Selected::Thread(key)) => Some(key),
                    Some(Selected::Process(pid)) => self.single_thread(pid),
                    None => None,
                };
                if let Some(key) = thread {
                    self.detail = Some((key, None));
                    self.detail_row = 0;
                }
            }
            KeyCode::Up => self.move_selection(-1),
            KeyCode::Down => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::Home => self.move_selection(isize::MIN / 2),
            KeyCode::End => self.move_selection(isize::MAX / 2),
            KeyCode::Char(c) => {
                if let Some(column) = Column::ALL.into_iter().find(|column| column.key() == c) {
                    self.descending =
                        if column == self.sort { !self.descending } else { column.descending_by_default() };
                    self.sort = column;
                }
            }
            _ => {}
        }
        Control::Continue
    }

    /// A process's only thread, when it is the main thread.
    fn single_thread(&self, pid: u32) -> Option<ThreadKey> {
        let mut threads = self.rows.keys().filter(|key| key.pid() == pid);
        match (threads.next(), threads.next()) {
            (Some(&key), None) if key.tid() == pid => Some(key),
            _ => None,
        }
    }

    fn detail_key(&mut self, code: KeyCode) {
        let syscalls = match &self.detail {
            Some((_, Some(detail))) => detail.thread.syscalls.len(),
            _ => 0,
        };
        match code {
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => self.detail = None,
            KeyCode::Up => self.detail_row = self.detail_row.saturating_sub(1),
            KeyCode::Down => self.detail_row = (self.detail_row + 1).min(syscalls.saturating_sub(1)),
            _ => {}
        }
    }

    fn move_selection(&mut self, by: isize) {
        let lines = self.lines();
        if lines.is_empty() {
            return;
        }
        let at = match self.selected_index(&lines) {
            Some(at) => at.saturating_add_signed(by).min(lines.len() - 1),
            None => 0,
        };
        // A place's line is passed over, the way the move goes (or back
        // at an end).
        let onward = |at: usize| match by < 0 {
            true => lines[..=at].iter().rev().find_map(selection),
            false => lines[at..].iter().find_map(selection),
        };
        let backward = |at: usize| match by < 0 {
            true => lines[at..].iter().find_map(selection),
            false => lines[..=at].iter().rev().find_map(selection),
        };
        self.selected = onward(at).or_else(|| backward(at));
    }
}

/// What selecting `line` selects: a place's line is not selectable.
fn selection(line: &Line) -> Option<Selected> {
    match (line.threads, &line.place) {
        (_, Some(_)) => None,
        (Some(_), None) => Some(Selected::Process(line.row.key.pid())),
        (None, None) => Some(Selected::Thread(line.row.key)),
    }
}

/// A process's line: its main thread's name (else its first thread's),
/// rates summed, the worst p99s.
fn process_row(threads: &[&Row]) -> Row {
    let pid = threads[0].key.pid();
    let name = threads.iter().find(|row| row.key.tid() == pid).unwrap_or(&threads[0]);
    let sum = |f: fn(&Row) -> f64| threads.iter().map(|row| f(row)).sum::<f64>();
    let busiest = threads.iter().max_by(|a, b| a.syscalls_per_s.total_cmp(&b.syscalls_per_s));
    Row {
        key: ThreadKey::nth(pid, pid, 0),
        comm: name.comm.clone(),
        syscalls_per_s: sum(|row| row.syscalls_per_s),
        busiest: busiest.and_then(|row| row.busiest.clone()),
        busiest_p99_ns: busiest.and_then(|row| row.busiest_p99_ns),
        on_cpu_pct: threads
            .iter()
            .any(|row| row.on_cpu_pct.is_some())
            .then(|| sum(|row| row.on_cpu_pct.unwrap_or(0.0))),
        sampled: threads.iter().any(|row| row.sampled),
        runq_p99_ns: threads.iter().filter_map(|row| row.runq_p99_ns).max(),
        migrations_per_s: sum(|row| row.migrations_per_s),
        voluntary_per_s: sum(|row| row.voluntary_per_s),
        involuntary_per_s: sum(|row| row.involuntary_per_s),
        last_cpu: None,
        // Its oldest call in progress.
        now: threads.iter().filter_map(|row| row.now.as_ref()).max_by_key(|now| now.age_ns).cloned(),
        idle: 0,
        exited: false,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::{
        aggregate::{
            tests::{event, record},
            Table,
        },
        cgroup::Labels,
        report::{Health, Kind, Losses, Span},
    };
    use probe_common::COMM_LEN;
    use syscalls::Sysno;

    /// A one-second interval in which each `(pid, tid, name, calls)` thread
    /// made `calls` getppid calls of 1 µs, and its first one a 1 ms read.
    pub(crate) fn interval(threads: &[(u32, u32, &str, u64)]) -> Report {
        let mut table = Table::default();
        for &(pid, tid, name, calls) in threads {
            let mut comm = [0; COMM_LEN];
            comm[..name.len()].copy_from_slice(name.as_bytes());
            let mut read = event(tid, Sysno::read.id() as u32, 0, 1_000_000);
            (read.pid, read.comm) = (pid, comm);
            record(&mut table, &read);
            for _ in 0..calls {
                let mut call = event(tid, Sysno::getppid.id() as u32, 0, 1000);
                (call.pid, call.comm) = (pid, comm);
                record(&mut table, &call);
            }
        }
        let span = Span {
            elapsed_ns: 1_000_000_000,
            span_ns: 1_000_000_000,
            lost: Losses::default(),
            health: Health::default(),
        };
        Report::new(Kind::Interval, &table, span, None)
    }

    pub(crate) fn view_of(threads: &[(u32, u32, &str, u64)]) -> View {
        let mut view = View::default();
        view.update(Header::default(), &interval(threads), |_| true);
        view
    }

    fn press(view: &mut View, keys: &str) {
        for c in keys.chars() {
            let code = match c {
                '\n' => KeyCode::Enter,
                '\x1b' => KeyCode::Esc,
                c => KeyCode::Char(c),
            };
            view.key(KeyEvent::new(code, KeyModifiers::NONE));
        }
    }

    fn shown(view: &View) -> Vec<(u32, bool)> {
        view.lines().iter().map(|line| (line.row.key.tid(), line.threads.is_some())).collect()
    }

    const THREADS: [(u32, u32, &str, u64); 4] =
        [(10, 10, "server", 5), (10, 11, "worker", 50), (20, 20, "db", 30), (20, 21, "db-flush", 1)];

    #[test]
    fn threads_are_grouped_under_their_process_busiest_first() {
        let view = view_of(&THREADS);
        // Process 10 makes 57 calls a second, process 20 makes 33.
        assert_eq!(
            shown(&view),
            [(10, true), (11, false), (10, false), (20, true), (20, false), (21, false)]
        );
        let lines = view.lines();
        assert_eq!(lines[0].threads, Some(2));
        assert_eq!(lines[0].row.comm, "server");
        assert_eq!(lines[0].row.syscalls_per_s, 57.0);
        assert_eq!(lines[1].row.busiest.as_deref(), Some("read"));
    }

    #[test]
    fn o_groups_processes_under_their_container_then_cgroup() {
        let mut view = View::default();
        press(&mut view, "o");
        assert_eq!(view.grouping, Grouping::Container);
        let threads = [(10, 10, "server", 5), (20, 20, "db", 30), (30, 30, "cron", 1)];
        let mut report = interval(&threads);
        let docker = Labels::of_path(&format!("/system.slice/docker-{}.scope", "ab".repeat(32)));
        let placed = |pid, labels: Option<&Labels>| ProcessReport {
            pid,
            cgroup: labels.map(|labels| labels.cgroup.clone()),
            container: labels.and_then(|labels| labels.container.clone()),
            pod_uid: None,
            pod_qos: None,
            unit: labels.and_then(|labels| labels.unit.clone()),
            throttling: None,
            runq_wait_ns: 0,
        };
        let cron = Labels::of_path("/system.slice/cron.service");
        report.processes =
            vec![placed(10, Some(&docker)), placed(20, Some(&docker)), placed(30, Some(&cron))];
        view.update(Header::default(), &report, |_| true);
        let lines = view.lines();
        let places: Vec<_> = lines.iter().map(|line| (line.place.clone(), line.row.key.pid())).collect();
        // The container's two processes make 37 calls a second.
        assert_eq!(
            places,
            [
                (Some("abababababab".to_owned()), 20),
                (None, 20),
                (None, 10),
                (Some("cron.service".to_owned()), 30),
                (None, 30)
            ]
        );
        assert_eq!((lines[0].threads, lines[0].row.syscalls_per_s), (Some(2), 37.0));
        // The selection passes over the places' lines.
        press(&mut view, "\x1b");
        view.key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        assert_eq!(view.selected_index(&lines), Some(1));
        view.key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        view.key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        assert_eq!(view.selected_index(&lines), Some(4));
        press(&mut view, "o");
        view.update(Header::default(), &report, |_| true);
        let long = view.lines()[0].place.clone().unwrap();
        assert_eq!((long.chars().count(), long.starts_with('…')), (15, true), "{long}");
        press(&mut view, "o");
        assert_eq!(view.lines().iter().filter(|line| line.place.is_some()).count(), 0);
    }

    #[test]
    fn a_sort_key_sorts_and_pressing_it_again_reverses() {
        let mut view = view_of(&THREADS);
        press(&mut view, "s");
        assert_eq!(
            shown(&view),
            [(20, true), (21, false), (20, false), (10, true), (10, false), (11, false)]
        );
        press(&mut view, "n");
        assert_eq!((view.sort, view.descending), (Column::Name, false));
        assert_eq!(
            shown(&view),
            [(20, true), (20, false), (21, false), (10, true), (10, false), (11, false)]
        );
        press(&mut view, "p");
        assert_eq!(shown(&view)[0], (10, true));
    }

    #[test]
    fn the_filter_keeps_matching_threads_and_whole_matching_processes() {
        let mut view = view_of(&THREADS);
        press(&mut view, "/work\n");
        assert_eq!(shown(&view), [(10, true), (11, false)]);
        press(&mut view, "\x1b");
        assert_eq!(shown(&view).len(), 6);
        press(&mut view, "/2");
        assert!(view.editing_filter);
        assert_eq!(shown(&view), [(20, true), (20, false), (21, false)]);
        press(&mut view, "\x1b");
        press(&mut view, "/nothing\n");
        assert!(shown(&view).is_empty());
    }

    #[test]
    fn a_single_threaded_process_is_one_line_and_opens_its_thread() {
        let mut view = view_of(&[(30, 30, "alone", 3)]);
        assert_eq!(shown(&view), [(30, true)]);
        view.key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        press(&mut view, "\n");
        assert_eq!(view.wants_detail(), Some(ThreadKey::nth(30, 30, 0)));
    }

    #[test]
    fn silent_threads_stay_until_they_are_gone() {
        let mut view = view_of(&THREADS);
        let quiet = interval(&[(10, 11, "worker", 5)]);
        view.update(Header::default(), &quiet, |key| key.tid() != 21);
        let server = view.lines().into_iter().find(|line| line.row.key.tid() == 10 && line.threads.is_none());
        assert_eq!(server.map(|line| line.row.syscalls_per_s), Some(0.0));
        for _ in 0..IDLE_INTERVALS {
            view.update(Header::default(), &quiet, |key| key.tid() != 21);
        }
        assert!(!shown(&view).contains(&(21, false)), "a dead silent thread goes");
        assert!(shown(&view).contains(&(20, true)), "a live silent thread stays");
    }

    #[test]
    fn pause_freezes_the_rows() {
        let mut view = view_of(&THREADS);
        press(&mut view, " ");
        view.update(Header::default(), &interval(&[(30, 30, "new", 1)]), |_| true);
        assert!(!shown(&view).contains(&(30, true)));
        press(&mut view, " ");
        view.update(Header::default(), &interval(&[(30, 30, "new", 1)]), |_| true);
        assert!(shown(&view).contains(&(30, true)));
    }

    #[test]
    fn enter_opens_the_selected_thread_and_esc_goes_back() {
        let mut view = view_of(&THREADS);
        view.key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        press(&mut view, "\n");
        assert_eq!(view.wants_detail(), None, "a process of several threads has no detail");
        view.key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        press(&mut view, "\n");
        assert_eq!(view.wants_detail(), Some(ThreadKey::nth(10, 11, 0)));
        press(&mut view, "\x1b");
        assert_eq!(view.wants_detail(), None);
        assert_eq!(view.key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)), Control::Quit);
        assert_eq!(view.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Control::Quit);
    }
}
