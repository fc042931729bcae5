//! Where reports go: text tables or JSON lines, to stdout or `--output`.

mod text;

pub use text::human_ns;

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

use anyhow::{Context, Result};

use crate::report::Report;

/// A report as the text tables show it.
#[cfg(test)]
pub fn render_text(report: &Report) -> io::Result<String> {
    let mut out = Vec::new();
    text::write(&mut out, report)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Writes reports in the chosen format.
pub struct Sink {
    out: Box<dyn Write>,
    json: bool,
}

impl Sink {
    /// Reports to `path`, or to stdout without one.
    pub fn open(path: Option<&Path>, json: bool) -> Result<Self> {
        let out: Box<dyn Write> = match path {
            Some(path) => Box::new(BufWriter::new(
                File::create(path)
                    .with_context(|| format!("cannot write the report to {}", path.display()))?,
            )),
            None => Box::new(BufWriter::new(io::stdout())),
        };
        Ok(Self { out, json })
    }

    /// Writes one report and flushes it, so that it is seen live.
    pub fn write(&mut self, report: &Report) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, report)?;
            writeln!(self.out)?;
        } else {
            text::write(&mut self.out, report)?;
        }
        self.out.flush()
    }
}
