//! The report stream: text tables or JSON lines, to stdout or `--output`,
//! every interval (unless another output shows them) and at the end, and
//! the `--slow` calls as they return.
//!
//! A reader that stops reading (`probe | sleep 60`, a FIFO nobody opens
//! again) must not stop probe: the reports are rendered in the event loop
//! and written by a thread of their own, which alone may block. Reports
//! that find it still busy with a backlog are dropped and counted, and the
//! summary waits for it only briefly before probe ends and says so.

use std::{
    io::{self, BufWriter, Write},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use super::{text, Flow, Interval, Sink};
use crate::{
    pipeline::SlowCallSeen,
    report::{Kind, Report, SlowCallLine},
};

/// Reports rendered and not yet written before new ones are dropped.
const BACKLOG: usize = 16;

/// How long the end of the trace waits for the summary to be written.
const LAST_WRITE_WAIT: Duration = Duration::from_millis(500);

/// Writes reports in the chosen format.
pub struct Stream {
    /// Rendered reports to the writer thread.
    reports: Option<SyncSender<Vec<u8>>>,
    /// Told when the writer thread has written everything and ended.
    done: Receiver<io::Result<()>>,
    /// The reader went away (a broken pipe).
    gone: Arc<AtomicBool>,
    /// Interval reports dropped because the writer was stuck.
    dropped: u64,
    /// `--slow` calls dropped for the same reason.
    dropped_slow: u64,
    json: bool,
    /// Threads per interval report; `None`: the summary only.
    top: Option<usize>,
    /// Whether `--slow` calls are written (not to the terminal the live
    /// view has, which shows them itself).
    slow_calls: bool,
}

impl Stream {
    /// Reports to `path`, or to stdout without one; interval reports of the
    /// `top` busiest threads, or none; `--slow` calls if `slow_calls`.
    pub fn open(path: Option<&Path>, json: bool, top: Option<usize>, slow_calls: bool) -> Result<Self> {
        let out: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(BufWriter::new(
                super::file::create(path)
                    .with_context(|| format!("cannot write the report to {}", path.display()))?,
            )),
            None => Box::new(BufWriter::new(io::stdout())),
        };
        let (reports, queued) = mpsc::sync_channel(BACKLOG);
        let (finished, done) = mpsc::channel();
        let gone = Arc::new(AtomicBool::new(false));
        let writer_gone = gone.clone();
        thread::Builder::new()
            .name("probe-output".into())
            .spawn(move || {
                let result = write_all(out, &queued, &writer_gone);
                let _ = finished.send(result);
            })
            .context("cannot start the output's thread")?;
        Ok(Self { reports: Some(reports), done, gone, dropped: 0, dropped_slow: 0, json, top, slow_calls })
    }

    fn render(&self, report: &Report) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        if self.json {
            serde_json::to_writer(&mut bytes, report)?;
            bytes.push(b'\n');
        } else {
            text::write(&mut bytes, report)?;
        }
        Ok(bytes)
    }
}

/// The writer thread: each report written and flushed, so that it is seen
/// live; ends at a broken pipe (flagging `gone`) or when the stream closes.
fn write_all(
    mut out: Box<dyn Write + Send>,
    queued: &Receiver<Vec<u8>>,
    gone: &AtomicBool,
) -> io::Result<()> {
    for bytes in queued {
        if let Err(err) = out.write_all(&bytes).and_then(|()| out.flush()) {
            if err.kind() == io::ErrorKind::BrokenPipe {
                gone.store(true, Ordering::Relaxed);
                return Ok(());
            }
            return Err(err);
        }
    }
    Ok(())
}

impl Sink for Stream {
    fn slow_calls(&mut self, calls: &[SlowCallSeen]) {
        let Some(reports) = self.reports.as_ref().filter(|_| self.slow_calls) else {
            return;
        };
        let mut bytes = Vec::new();
        for call in calls {
            let line = SlowCallLine::new(call);
            // Writing to memory fails only on a serializer bug.
            let written = match self.json {
                true => serde_json::to_writer(&mut bytes, &line).map_err(io::Error::from),
                false => text::write_slow_call(&mut bytes, &line),
            };
            if written.is_ok() && self.json {
                bytes.push(b'\n');
            }
        }
        match reports.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped_slow += calls.len() as u64,
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn interval(&mut self, interval: &Interval<'_>) -> Result<Flow> {
        if self.gone.load(Ordering::Relaxed) {
            // A reader that went away (`probe | head`) ends the trace quietly.
            return Ok(Flow::ReaderGone);
        }
        let (Some(top), Some(reports)) = (self.top, &self.reports) else {
            return Ok(Flow::Continue);
        };
        let mut report = Report::new(Kind::Interval, interval.table, interval.span, Some(top));
        report.place(interval.cgroups);
        let bytes = self.render(&report)?;
        match reports.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped += 1,
            // The writer ended on an error: said at the end.
            Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, summary: &Report) -> Result<()> {
        let bytes = self.render(summary)?;
        let Some(reports) = self.reports.take() else {
            return Ok(());
        };
        // Room for the summary, if the writer makes any in time.
        let mut unsent = Some(bytes);
        for _ in 0..10 {
            match reports.try_send(unsent.take().expect("the summary")) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => break,
                Err(TrySendError::Full(bytes)) => {
                    unsent = Some(bytes);
                    thread::sleep(LAST_WRITE_WAIT / 10);
                }
            }
        }
        drop(reports);
        let written = match self.done.recv_timeout(LAST_WRITE_WAIT) {
            Ok(Err(err)) => return Err(err).context("cannot write the report"),
            Ok(Ok(())) => unsent.is_none(),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        };
        if self.dropped + self.dropped_slow > 0 || (!written && !self.gone.load(Ordering::Relaxed)) {
            let slow = match self.dropped_slow {
                0 => String::new(),
                calls => format!(", {calls} slow calls"),
            };
            eprintln!(
                "probe: the report's reader is not reading: {} interval reports{slow} left out{}",
                self.dropped,
                if written { "" } else { ", and the summary" }
            );
        }
        Ok(())
    }
}
