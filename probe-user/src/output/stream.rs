//! The report stream: text tables or JSON lines, to stdout or `--output`,
//! every interval (unless another output shows them) and at the end.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

use anyhow::{Context, Result};

use super::{text, Flow, Interval, Sink};
use crate::report::{Kind, Report};

/// Writes reports in the chosen format.
pub struct Stream {
    out: Box<dyn Write>,
    json: bool,
    /// Threads per interval report; `None`: the summary only.
    top: Option<usize>,
}

impl Stream {
    /// Reports to `path`, or to stdout without one; interval reports of the
    /// `top` busiest threads, or none.
    pub fn open(path: Option<&Path>, json: bool, top: Option<usize>) -> Result<Self> {
        let out: Box<dyn Write> = match path {
            Some(path) => Box::new(BufWriter::new(
                File::create(path)
                    .with_context(|| format!("cannot write the report to {}", path.display()))?,
            )),
            None => Box::new(BufWriter::new(io::stdout())),
        };
        Ok(Self { out, json, top })
    }

    /// Writes one report and flushes it, so that it is seen live.
    fn write(&mut self, report: &Report) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, report)?;
            writeln!(self.out)?;
        } else {
            text::write(&mut self.out, report)?;
        }
        self.out.flush()
    }
}

impl Sink for Stream {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<Flow> {
        let Some(top) = self.top else {
            return Ok(Flow::Continue);
        };
        match self.write(&Report::new(Kind::Interval, interval.table, interval.span, Some(top))) {
            Ok(()) => Ok(Flow::Continue),
            // A reader that went away (`probe | head`) ends the trace quietly.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(Flow::ReaderGone),
            Err(err) => Err(err).context("cannot write the report"),
        }
    }

    fn finish(&mut self, summary: &Report) -> Result<()> {
        match self.write(summary) {
            Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
                Err(err).context("cannot write the summary")
            }
            _ => Ok(()),
        }
    }
}
