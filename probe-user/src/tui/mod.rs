//! The live view: a full-screen table, refreshed in place like `top`, when
//! probe runs in a terminal. [`view`] holds the state and the keys,
//! [`render`] draws it; this module owns the terminal and its input.

mod render;
mod view;

use std::{
    io::{self, Stdout},
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
use tokio::sync::mpsc;

pub use view::Control;
use view::{Header, View};

use crate::{
    aggregate::ThreadKey,
    report::{GoroutineReport, Report, ThreadDetail},
};

/// probe's own cost up to now, which the header turns into shares of a CPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// Run time of probe's BPF programs, if the kernel counts it.
    pub bpf_ns: Option<u64>,
    /// CPU time of the probe process.
    pub cpu_ns: u64,
}

/// The terminal, in raw mode on its alternate screen while this lives.
pub struct Live {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    view: View,
    traced: String,
    input: mpsc::UnboundedReceiver<Event>,
    cost: Cost,
}

impl Live {
    /// Takes over the terminal; `traced` names what is traced in the header.
    pub fn open(traced: String) -> Result<Self> {
        enable_raw_mode().context("cannot put the terminal in raw mode (try --no-tui)")?;
        let mut stdout = io::stdout();
        if let Err(err) = execute!(stdout, EnterAlternateScreen) {
            let _ = disable_raw_mode();
            return Err(err).context("cannot switch to the terminal's alternate screen (try --no-tui)");
        }
        let terminal = Terminal::new(CrosstermBackend::new(stdout));
        let mut live = Self {
            terminal: terminal.context("cannot draw on the terminal (try --no-tui)")?,
            view: View::default(),
            traced,
            input: spawn_input(),
            cost: Cost::default(),
        };
        live.view.header.traced = live.traced.clone();
        live.terminal.clear()?;
        live.draw()?;
        Ok(live)
    }

    /// The next key or resize; pending forever once input is gone.
    pub async fn next_event(&mut self) -> Event {
        match self.input.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }

    /// Applies a key (a resize only redraws), and draws.
    pub fn handle(&mut self, event: Event) -> Result<Control> {
        let control = match event {
            Event::Key(key) if key.kind != event::KeyEventKind::Release => self.view.key(key),
            _ => Control::Continue,
        };
        self.draw()?;
        Ok(control)
    }

    /// Shows an interval's report, with probe's cost up to its end.
    pub fn update(&mut self, interval: &Report, cost: Cost, alive: impl Fn(ThreadKey) -> bool) {
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

    /// Shows a Go program's goroutines.
    pub fn update_goroutines(&mut self, goroutines: Vec<GoroutineReport>) {
        self.view.update_goroutines(goroutines);
    }

    /// The thread whose detail is on screen, if any.
    pub fn wants_detail(&self) -> Option<ThreadKey> {
        self.view.wants_detail()
    }

    /// Whether the detail screen waits for its first data.
    pub fn lacks_detail(&self) -> bool {
        matches!(self.view.detail, Some((_, None)))
    }

    /// Shows the selected thread's detail.
    pub fn update_detail(&mut self, detail: Option<ThreadDetail>) {
        self.view.update_detail(detail);
    }

    /// Adds a line of the traced COMMAND's output to its pane.
    pub fn add_output(&mut self, line: String) {
        self.view.add_output(line);
    }

    /// Draws the screen; ratatui writes only the cells that changed, so
    /// nothing flickers.
    pub fn draw(&mut self) -> Result<()> {
        self.terminal.draw(|frame| render::draw(frame, &self.view)).context("cannot draw on the terminal")?;
        Ok(())
    }
}

impl Drop for Live {
    /// Gives the terminal back as it was, also when probe fails.
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(self.terminal.backend_mut(), LeaveAlternateScreen);
        let _ = self.terminal.show_cursor();
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
pub struct OutputLines {
    partial: Vec<u8>,
}

impl OutputLines {
    /// Adds bytes read; returns the lines they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
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
    pub fn finish(&mut self) -> Option<String> {
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
