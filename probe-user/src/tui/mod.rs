//! The live view: a full-screen table, refreshed in place like `top`, when
//! probe runs in a terminal. [`view`] holds the state and the keys,
//! [`render`] draws it; this module owns the terminal, its input and the
//! COMMAND's output pane, and plugs the view in as an output ([`Sink`]).

mod render;
mod view;

use std::{
    io::{self, Stdout},
    os::fd::OwnedFd,
    task::{Context as TaskContext, Poll},
    thread,
};

use anyhow::{Context, Result};
use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        event::{self, Event},
        execute,
        terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen},
    },
    Terminal,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
};

use view::{Control, Grouping, Header, View};

use crate::{
    aggregate::Table,
    output::{slow_call_brief, Cost, Flow, Interval, Sink},
    pipeline::SlowCallSeen,
    report::{Kind, Report, SlowCallLine, ThreadDetail},
};

/// The terminal, in raw mode on its alternate screen while this lives (or
/// until the trace ends).
pub struct Live {
    terminal: Option<Terminal<CrosstermBackend<Stdout>>>,
    view: View,
    traced: String,
    input: mpsc::UnboundedReceiver<Event>,
    /// The COMMAND's stdout and stderr, while they stay open.
    pane: Option<AsyncFd<OwnedFd>>,
    pane_lines: OutputLines,
    cost: Cost,
}

impl Live {
    /// Takes over the terminal; `traced` names what is traced in the header,
    /// `command_output` (non-blocking) is what the COMMAND writes. Call
    /// inside the event loop's runtime.
    pub fn open(traced: String, command_output: Option<OwnedFd>) -> Result<Self> {
        let pane = command_output
            // SAFETY: the AsyncFd owns the fd: it stays open for as long as
            // it is registered.
            .map(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) })
            .transpose()
            .context("cannot poll the COMMAND's output")?;
        enable_raw_mode().context("cannot put the terminal in raw mode (try --no-tui)")?;
        let mut stdout = io::stdout();
        if let Err(err) = execute!(stdout, EnterAlternateScreen) {
            let _ = disable_raw_mode();
            return Err(err).context("cannot switch to the terminal's alternate screen (try --no-tui)");
        }
        let terminal = Terminal::new(CrosstermBackend::new(stdout));
        let mut live = Self {
            terminal: Some(terminal.context("cannot draw on the terminal (try --no-tui)")?),
            view: View::default(),
            traced,
            input: spawn_input(),
            pane,
            pane_lines: OutputLines::default(),
            cost: Cost::default(),
        };
        live.view.header.traced = live.traced.clone();
        if let Some(terminal) = &mut live.terminal {
            terminal.clear()?;
        }
        live.draw()?;
        Ok(live)
    }

    /// Applies a key (a resize only redraws), and draws.
    fn handle(&mut self, event: Event, total: &Table) -> Result<Control> {
        let control = match event {
            Event::Key(key) if key.kind != event::KeyEventKind::Release => self.view.key(key),
            _ => Control::Continue,
        };
        // A thread just opened shows its detail at once, not at the next
        // interval.
        if matches!(self.view.detail, Some((_, None))) {
            self.show_detail(total);
        }
        self.draw()?;
        Ok(control)
    }

    /// Takes what the COMMAND wrote, if anything; false once it closed.
    fn poll_pane(&mut self, cx: &mut TaskContext<'_>) -> Result<bool> {
        let Some(pane) = &mut self.pane else {
            return Ok(false);
        };
        let Poll::Ready(guard) = pane.poll_read_ready_mut(cx) else {
            return Ok(false);
        };
        let mut guard = guard.context("cannot poll the COMMAND's output")?;
        let mut buffer = [0u8; 4096];
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buffer).map_err(io::Error::from)) {
            Ok(Ok(0)) | Ok(Err(_)) => {
                if let Some(line) = self.pane_lines.finish() {
                    self.view.add_output(line);
                }
                self.pane = None;
            }
            Ok(Ok(read)) => {
                self.pane_lines.push(&buffer[..read]).into_iter().for_each(|line| self.view.add_output(line));
            }
            // Readiness was stale: it is cleared, and polled again.
            Err(_would_block) => return Ok(true),
        }
        self.draw()?;
        Ok(true)
    }

    /// Shows an interval's report, with probe's cost up to its end.
    fn update(&mut self, interval: &Report, cost: Cost, alive: impl Fn(crate::aggregate::ThreadKey) -> bool) {
        let span_s = interval.span_ns.max(1) as f64 / 1e9;
        let share = |now: u64, before: u64| now.saturating_sub(before) as f64 / 1e9 / span_s;
        let header = Header {
            traced: self.traced.clone(),
            elapsed_ns: interval.elapsed_ns,
            events_per_s: interval.events as f64 / span_s,
            lost_events: interval.lost_events,
            counts_exact: interval.counts_exact,
            bpf_cpu: cost.bpf_ns.map(|now| share(now, self.cost.bpf_ns.unwrap_or(0))),
            user_cpu: share(cost.cpu_ns, self.cost.cpu_ns),
            rss_bytes: interval.probe.rss_bytes,
        };
        self.cost = cost;
        self.view.update(header, interval, alive);
    }

    /// Shows the selected thread's detail, from the run so far.
    fn show_detail(&mut self, total: &Table) {
        self.view.update_detail(self.view.wants_detail().and_then(|key| ThreadDetail::new(total, key)));
    }

    /// Draws the screen; ratatui writes only the cells that changed, so
    /// nothing flickers.
    fn draw(&mut self) -> Result<()> {
        if let Some(terminal) = &mut self.terminal {
            terminal.draw(|frame| render::draw(frame, &self.view)).context("cannot draw on the terminal")?;
        }
        Ok(())
    }

    /// Gives the terminal back as it was.
    fn leave(&mut self) {
        if let Some(mut terminal) = self.terminal.take() {
            let _ = disable_raw_mode();
            let _ = execute!(terminal.backend_mut(), LeaveAlternateScreen);
            let _ = terminal.show_cursor();
        }
    }
}

impl Sink for Live {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<Flow> {
        // Every thread: the view sorts and filters them.
        let mut report = Report::new(Kind::Interval, interval.table, interval.span, None);
        // Cgroups are read only for a view grouped by them.
        if self.view.grouping != Grouping::Process {
            report.place(interval.cgroups);
        }
        self.update(&report, interval.cost, |key| interval.world.thread_alive(key.pid(), key.tid()));
        if let Some(goroutines) = interval.goroutines {
            let (goroutines, go) = goroutines.report();
            self.view.update_goroutines(goroutines, go);
        }
        self.show_detail(interval.total);
        self.draw()?;
        Ok(Flow::Continue)
    }

    fn poll_input(&mut self, cx: &mut TaskContext<'_>, total: &Table) -> Poll<Result<Flow>> {
        loop {
            let mut progressed = match self.poll_pane(cx) {
                Ok(progressed) => progressed,
                Err(err) => return Poll::Ready(Err(err)),
            };
            // Pending forever once the input thread is gone.
            if let Poll::Ready(Some(event)) = self.input.poll_recv(cx) {
                progressed = true;
                match self.handle(event, total) {
                    Ok(Control::Quit) => return Poll::Ready(Ok(Flow::Quit)),
                    Ok(Control::Continue) => {}
                    Err(err) => return Poll::Ready(Err(err)),
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    fn slow_calls(&mut self, calls: &[SlowCallSeen]) {
        for call in calls {
            self.view.add_slow_call(slow_call_brief(&SlowCallLine::new(call)));
        }
        // Shown as they come, not at the next interval; a drawing error
        // shows at the next interval's drawing too.
        let _ = self.draw();
    }

    /// The terminal is given back before the summary is written to it.
    fn finish(&mut self, _summary: &Report) -> Result<()> {
        self.leave();
        Ok(())
    }
}

impl Drop for Live {
    /// Gives the terminal back as it was, also when probe fails.
    fn drop(&mut self) {
        self.leave();
    }
}

/// Reads terminal events on a thread of their own: crossterm's reader
/// blocks, and the event loop must not.
fn spawn_input() -> mpsc::UnboundedReceiver<Event> {
    let (sender, receiver) = mpsc::unbounded_channel();
    thread::spawn(move || {
        while let Ok(event) = event::read() {
            if sender.send(event).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Splits a COMMAND's output into lines for its pane. Control characters
/// are dropped: an escape sequence in a pane would move the cursor and
/// corrupt the screen.
#[derive(Debug, Default)]
struct OutputLines {
    partial: Vec<u8>,
}

impl OutputLines {
    /// Adds bytes read; returns the lines they complete.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                lines.push(self.take());
            } else {
                self.partial.push(byte);
            }
        }
        lines
    }

    /// The last line, if the output ended without a newline.
    fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.partial)
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .filter(|c| !c.is_control())
            .collect();
        self.partial.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_are_split_and_cleaned() {
        let mut lines = OutputLines::default();
        assert_eq!(lines.push(b"hello\nwor"), ["hello"]);
        assert_eq!(lines.push(b"ld\x1b[2J\tx\n\n"), ["world[2J x", ""]);
        assert_eq!(lines.push(b"\xffend"), Vec::<String>::new());
        assert_eq!(lines.finish().as_deref(), Some("\u{fffd}end"));
        assert_eq!(lines.finish(), None);
    }
}
