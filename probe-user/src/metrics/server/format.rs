//! What a scrape gets: OpenMetrics to the clients whose `Accept` asks for
//! it (Prometheus does), the classic Prometheus text format 0.0.4 to the
//! others (curl, promtool, older scrapers), as the official client
//! libraries negotiate; the classic text is converted from the OpenMetrics
//! rendering, so both say the same.

use std::fmt::Write;

/// An exposition format and its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0.
    OpenMetrics,
    /// OpenMetrics 0.0.1, the draft some scrapers still name: the same text.
    OpenMetricsDraft,
    /// The Prometheus text format 0.0.4.
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::OpenMetricsDraft => "application/openmetrics-text; version=0.0.1; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// What a client accepts, as client_golang's `NegotiateIncludingOpenMetrics`
    /// decides: the media ranges by falling quality (`q=0` is a refusal), the
    /// first one probe can answer wins; the classic text when none can, or
    /// without `Accept`.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut ranges: Vec<(f32, Format)> = accept
            .unwrap_or_default()
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';');
                let media = parts.next()?.trim().to_ascii_lowercase();
                let mut quality = 1.0;
                let mut version = None;
                for parameter in parts {
                    let Some((key, value)) = parameter.split_once('=') else {
                        continue;
                    };
                    let value = value.trim().trim_matches('"');
                    match key.trim().to_ascii_lowercase().as_str() {
                        "q" => quality = value.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))?,
                        "version" => version = Some(value.to_owned()),
                        _ => {}
                    }
                }
                let format = match (media.as_str(), version.as_deref()) {
                    ("application/openmetrics-text", None | Some("1.0.0")) => Format::OpenMetrics,
                    ("application/openmetrics-text", Some("0.0.1")) => Format::OpenMetricsDraft,
                    ("text/plain", None | Some("0.0.4")) => Format::Text,
                    _ => return None,
                };
                (quality > 0.0).then_some((quality, format))
            })
            .collect();
        // Stable: of equal quality, the first listed.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranges.first().map_or(Format::Text, |&(_, format)| format)
    }
}

/// A metric family's kind, from its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl Kind {
    fn parse(text: &str) -> Kind {
        match text {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "gaugehistogram" => Kind::GaugeHistogram,
            "summary" => Kind::Summary,
            "info" => Kind::Info,
            "stateset" => Kind::StateSet,
            _ => Kind::Unknown,
        }
    }

    /// Its type in the classic format, and the suffix its samples (and so
    /// its `# TYPE` line) carry there, as the official Python client
    /// converts: a counter `x` is `# TYPE x_total counter`.
    fn classic(self) -> (&'static str, &'static str) {
        match self {
            Kind::Counter => ("counter", "_total"),
            Kind::Gauge | Kind::StateSet => ("gauge", ""),
            Kind::Info => ("gauge", "_info"),
            Kind::Histogram | Kind::GaugeHistogram => ("histogram", ""),
            Kind::Summary => ("summary", ""),
            Kind::Unknown => ("untyped", ""),
        }
    }
}

/// The family being converted.
struct Family<'a> {
    name: &'a str,
    help: Option<&'a str>,
    kind: Kind,
    /// Whether its `# HELP` and `# TYPE` lines are out.
    described: bool,
    /// Its `_created` samples, which the classic format has no place for in
    /// the family: they follow it as a gauge family of their own.
    created: Vec<String>,
}

impl<'a> Family<'a> {
    fn new(name: &'a str) -> Self {
        Self { name, help: None, kind: Kind::Unknown, described: false, created: Vec::new() }
    }

    fn describe(&mut self, out: &mut String, name: &str, kind: &str) {
        if let Some(help) = self.help {
            let _ = writeln!(out, "# HELP {name} {}", classic_help(help));
        }
        let _ = writeln!(out, "# TYPE {name} {kind}");
    }

    /// Ends the family: its `_created` samples, if any.
    fn close(&mut self, out: &mut String) {
        if !self.created.is_empty() {
            let name = format!("{}_created", self.name);
            self.describe(out, &name, "gauge");
            for line in self.created.drain(..) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
}

/// Converts an OpenMetrics exposition into the Prometheus text format 0.0.4:
/// no `# EOF` nor `# UNIT`, counters typed under their `_total` name, `_created`
/// samples as gauges of their own, timestamps in milliseconds, no exemplars.
pub fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut family = Family::new("");
    for line in openmetrics.lines() {
        if line == "# EOF" {
            break;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (Some(keyword), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
                continue;
            }
            if name != family.name {
                family.close(&mut out);
                family = Family::new(name);
            }
            match keyword {
                "HELP" => family.help = Some(words.next().unwrap_or_default()),
                "TYPE" => family.kind = Kind::parse(words.next().unwrap_or_default().trim()),
                _ => {}
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(sample) = Sample::parse(line) else {
            // Not ours to judge: passed on as it came.
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let suffix = sample.name.strip_prefix(family.name).unwrap_or(sample.name);
        if suffix == "_created" && matches!(family.kind, Kind::Counter | Kind::Histogram | Kind::Summary) {
            family.created.push(sample.classic(sample.name));
            continue;
        }
        if !family.described {
            let (kind, suffix) = family.kind.classic();
            let name = format!("{}{suffix}", family.name);
            family.describe(&mut out, &name, kind);
            family.described = true;
        }
        let renamed = match (family.kind, suffix) {
            (Kind::GaugeHistogram, "_gcount") => format!("{}_count", family.name),
            (Kind::GaugeHistogram, "_gsum") => format!("{}_sum", family.name),
            _ => sample.name.to_owned(),
        };
        out.push_str(&sample.classic(&renamed));
        out.push('\n');
    }
    family.close(&mut out);
    out
}

/// HELP text: OpenMetrics escapes `\`, newline and `"`; the classic format
/// only the first two (and reads `\"` as an error).
fn classic_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let mut rest = chars.clone();
        match rest.next() {
            Some('\\') => out.push_str("\\\\"),
            Some('n') => out.push_str("\\n"),
            Some('"') => out.push('"'),
            // A lone backslash stands for itself.
            _ => {
                out.push_str("\\\\");
                continue;
            }
        }
        chars = rest;
    }
    out
}

/// One sample line: `name{labels} value [timestamp] [# exemplar]`.
struct Sample<'a> {
    name: &'a str,
    /// With their braces, or empty; label values are escaped alike in both
    /// formats.
    labels: &'a str,
    value: &'a str,
    timestamp: Option<&'a str>,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let (labels, rest) = match line[name_end..].starts_with('{') {
            true => {
                let close = name_end + label_set_end(&line[name_end..])?;
                (&line[name_end..=close], &line[close + 1..])
            }
            false => ("", &line[name_end..]),
        };
        let mut fields = rest.split(' ').filter(|field| !field.is_empty());
        let value = fields.next()?;
        let timestamp = fields.next().filter(|field| *field != "#");
        Some(Self { name, labels, value, timestamp })
    }

    /// The line in the classic format, under `name`: a timestamp in
    /// milliseconds rather than seconds, and no exemplar.
    fn classic(&self, name: &str) -> String {
        let mut line = format!("{name}{} {}", self.labels, self.value);
        if let Some(seconds) = self.timestamp.and_then(|t| t.parse::<f64>().ok()) {
            let _ = write!(line, " {}", (seconds * 1000.0).round() as i64);
        }
        line
    }
}

/// Where the label set that `text` begins with closes: the index of its
/// `}`, quotes and escapes in label values considered.
fn label_set_end(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (index, byte) in text.bytes().enumerate() {
        match (quoted, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => quoted = !quoted,
            (false, _, b'}') => return Some(index),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_accept() {
        let negotiate = Format::negotiate;
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("text/plain")), Format::Text);
        assert_eq!(negotiate(Some("application/openmetrics-text;")), Format::OpenMetrics);
        assert_eq!(negotiate(Some("application/openmetrics-text")), Format::OpenMetrics);
        assert_eq!(negotiate(Some("Application/OpenMetrics-Text; Version=\"1.0.0\"")), Format::OpenMetrics);
        // Prometheus 2.
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::OpenMetrics
        );
        // Prometheus 3.
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1")),
            Format::OpenMetrics
        );
        // Prometheus 3 with scrape_protocols that prefer the classic text.
        assert_eq!(
            negotiate(Some(
                "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4"
            )),
            Format::Text
        );
        assert_eq!(negotiate(Some("application/openmetrics-text;version=0.0.1")), Format::OpenMetricsDraft);
        assert_eq!(negotiate(Some("application/openmetrics-text;version=2.0.0")), Format::Text);
        assert_eq!(negotiate(Some("application/openmetrics-text;q=0, text/plain")), Format::Text);
        assert_eq!(negotiate(Some("application/openmetrics-text;q=abc")), Format::Text);
        assert_eq!(
            negotiate(Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,application/openmetrics-text;q=0.6")),
            Format::OpenMetrics
        );
    }

    #[test]
    fn classic_text_types_counters_under_their_total_name() {
        let openmetrics = concat!(
            "# HELP probe_syscalls Syscalls made, failed or not.\n",
            "# TYPE probe_syscalls counter\n",
            "probe_syscalls_total{pid=\"1\",comm=\"a \\\"b\\\" {c}\",syscall=\"read\"} 45\n",
            "probe_syscalls_created{pid=\"1\",comm=\"x\",syscall=\"read\"} 1700000000.5\n",
            "# HELP probe_latency_seconds Time \\\"in\\\" calls.\n",
            "# TYPE probe_latency_seconds histogram\n",
            "# UNIT probe_latency_seconds seconds\n",
            "probe_latency_seconds_sum{pid=\"1\"} 0.25\n",
            "probe_latency_seconds_count{pid=\"1\"} 2\n",
            "probe_latency_seconds_bucket{le=\"0.1\",pid=\"1\"} 1 # {trace_id=\"x\"} 0.05 1700000000.0\n",
            "probe_latency_seconds_bucket{le=\"+Inf\",pid=\"1\"} 2\n",
            "# HELP probe_traced_processes Processes with series.\n",
            "# TYPE probe_traced_processes gauge\n",
            "probe_traced_processes 59 1700000000.123\n",
            "# TYPE probe_thing unknown\n",
            "probe_thing NaN\n",
            "# EOF\n",
        );
        assert_eq!(
            classic_text(openmetrics),
            concat!(
                "# HELP probe_syscalls_total Syscalls made, failed or not.\n",
                "# TYPE probe_syscalls_total counter\n",
                "probe_syscalls_total{pid=\"1\",comm=\"a \\\"b\\\" {c}\",syscall=\"read\"} 45\n",
                "# HELP probe_syscalls_created Syscalls made, failed or not.\n",
                "# TYPE probe_syscalls_created gauge\n",
                "probe_syscalls_created{pid=\"1\",comm=\"x\",syscall=\"read\"} 1700000000.5\n",
                "# HELP probe_latency_seconds Time \"in\" calls.\n",
                "# TYPE probe_latency_seconds histogram\n",
                "probe_latency_seconds_sum{pid=\"1\"} 0.25\n",
                "probe_latency_seconds_count{pid=\"1\"} 2\n",
                "probe_latency_seconds_bucket{le=\"0.1\",pid=\"1\"} 1\n",
                "probe_latency_seconds_bucket{le=\"+Inf\",pid=\"1\"} 2\n",
                "# HELP probe_traced_processes Processes with series.\n",
                "# TYPE probe_traced_processes gauge\n",
                "probe_traced_processes 59 1700000000123\n",
                "# TYPE probe_thing untyped\n",
                "probe_thing NaN\n",
            )
        );
    }

    #[test]
    fn help_is_escaped_for_the_classic_format() {
        assert_eq!(classic_help(r#"a \"b\" \\ c\nd \x e\"#), r#"a "b" \\ c\nd \\x e\\"#);
    }

    #[test]
    fn label_sets_close_outside_quotes() {
        assert_eq!(label_set_end(r#"{a="}"} 1"#), Some(6));
        assert_eq!(label_set_end(r#"{a="\"}\\"} 1"#), Some(10));
        assert_eq!(label_set_end(r#"{a="}"#), None);
    }
}
