//! Where what probe learns goes. Every output is a [`Sink`], and plugs in
//! the same way: the event loop hands each sink every closed interval and,
//! at the end, the summary; a sink that follows records (the timeline) also
//! gets each record as it arrives, and one that reads input (the live view)
//! is polled for it. [`stream`] is the text or JSON report stream; the live
//! view (`tui`), the metrics endpoint (`metrics`) and the timeline
//! (`timeline`) are the others.

pub mod file;
pub mod stream;
mod text;

pub use text::{explanation_brief, human_ns, slow_call_brief};

use std::{
    future::poll_fn,
    task::{Context, Poll},
};

use anyhow::Result;
use probe_common::Record;

use crate::{
    aggregate::{Table, World},
    cgroup::Cgroups,
    golang::Goroutines,
    pipeline::SlowCallSeen,
    report::{Report, Span},
};

/// A report as the text tables show it.
#[cfg(test)]
pub fn render_text(report: &Report) -> std::io::Result<String> {
    let mut out = Vec::new();
    text::write(&mut out, report)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// probe's own cost up to now: what the live view and the metrics show.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// Run time of probe's BPF programs, if the kernel counts it.
    pub bpf_ns: Option<u64>,
    /// CPU time of the probe process.
    pub cpu_ns: u64,
}

/// An interval that has just closed, and the run up to its end.
pub struct Interval<'a> {
    /// What the interval held.
    pub table: &'a Table,
    /// The run so far, this interval included.
    pub total: &'a Table,
    /// Its times, losses and probe's footprint.
    pub span: Span,
    /// probe's cost so far.
    pub cost: Cost,
    /// The goroutines of a traced Go program, if followed.
    pub goroutines: Option<&'a Goroutines>,
    /// Which threads still exist, for what no record says.
    pub world: &'a dyn World,
    /// Where the processes run, read as the outputs ask.
    pub cgroups: &'a Cgroups,
}

/// What an output wants of the trace after it took something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Its reader went away (`probe | head`): end quietly, no summary.
    ReaderGone,
    /// The live view's user quit: end with the summary.
    Quit,
}

/// An output.
pub trait Sink {
    /// Whether it wants every record, through [`Sink::record`].
    fn follows_records(&self) -> bool {
        false
    }

    /// A record, in ring-buffer order, as it arrives.
    fn record(&mut self, _record: &Record) {}

    /// Calls that took at least `--slow`, as they returned.
    fn slow_calls(&mut self, _calls: &[SlowCallSeen]) {}

    /// An interval closed.
    fn interval(&mut self, interval: &Interval<'_>) -> Result<Flow>;

    /// Input it waits for (the live view's keys); `total` is the run so
    /// far, for what the input asks to see. Pending forever by default.
    fn poll_input(&mut self, _cx: &mut Context<'_>, _total: &Table) -> Poll<Result<Flow>> {
        Poll::Pending
    }

    /// The trace is over; `summary` is the whole run.
    fn finish(&mut self, summary: &Report) -> Result<()>;
}

/// Every output of a trace, in the order they finish: one that holds the
/// terminal before the one that prints the summary to it.
pub struct Outputs {
    sinks: Vec<Box<dyn Sink>>,
    /// The sinks that follow records, so that the common case costs a
    /// record nothing.
    following: Vec<usize>,
}

impl Outputs {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        let following = (0..sinks.len()).filter(|&i| sinks[i].follows_records()).collect();
        Self { sinks, following }
    }

    pub fn record(&mut self, record: &Record) {
        for &i in &self.following {
            self.sinks[i].record(record);
        }
    }

    pub fn slow_calls(&mut self, calls: &[SlowCallSeen]) {
        for sink in &mut self.sinks {
            sink.slow_calls(calls);
        }
    }

    /// Gives every sink the interval; the first that wants the trace to end
    /// has its way.
    pub fn interval(&mut self, interval: &Interval<'_>) -> Result<Flow> {
        let mut flow = Flow::Continue;
        for sink in &mut self.sinks {
            match sink.interval(interval)? {
                Flow::Continue => {}
                stop if flow == Flow::Continue => flow = stop,
                _ => {}
            }
        }
        Ok(flow)
    }

    /// The next input any sink acts on that matters to the trace.
    pub async fn input(&mut self, total: &Table) -> Result<Flow> {
        poll_fn(|cx| {
            for sink in &mut self.sinks {
                if let Poll::Ready(flow) = sink.poll_input(cx, total) {
                    return Poll::Ready(flow);
                }
            }
            Poll::Pending
        })
        .await
    }

    pub fn finish(&mut self, summary: &Report) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|sink| sink.finish(summary))
    }
}
