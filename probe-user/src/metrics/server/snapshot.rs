//! The exposition, rendered at most once per interval and shared by every
//! scrape of it: N scrapers cost one rendering, not N, and none of it runs on
//! the event loop, which only counts the intervals it adds to the store.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
};

use hyper::body::Bytes;
use probe_common::Record;
use prometheus_client::{encoding::text::encode, registry::Registry};

use super::format::{classic_text, Format};
use crate::{
    aggregate::Table,
    metrics::{Export, Metrics},
    output::{Flow, Interval, Sink},
    report::Report,
};

/// One rendering of the store.
struct Rendering {
    /// The store's generation it shows.
    generation: u64,
    openmetrics: Bytes,
    /// Converted from `openmetrics` when a client first asks for it.
    text: OnceLock<Bytes>,
}

/// The renderings the endpoint serves.
pub struct Snapshots {
    registry: Registry,
    /// Intervals added to the store so far.
    generation: Arc<AtomicU64>,
    latest: Mutex<Option<Arc<Rendering>>>,
}

impl Snapshots {
    pub fn new(metrics: Metrics, generation: Arc<AtomicU64>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics));
        Self { registry, generation, latest: Mutex::new(None) }
    }

    /// The exposition of the store as it is, in `format`: the rendering of
    /// its generation if there is one, else a new one (the store locked
    /// while it is encoded, once per interval at most).
    pub fn body(&self, format: Format) -> Result<Bytes, std::fmt::Error> {
        let rendering = self.current()?;
        Ok(match format {
            Format::OpenMetrics | Format::OpenMetricsDraft => rendering.openmetrics.clone(),
            Format::Text => rendering
                .text
                .get_or_init(|| {
                    let openmetrics = std::str::from_utf8(&rendering.openmetrics).unwrap_or_default();
                    Bytes::from(classic_text(openmetrics))
                })
                .clone(),
        })
    }

    fn current(&self) -> Result<Arc<Rendering>, std::fmt::Error> {
        // Read before the store is: a rendering holds at least the intervals
        // of the generation it is filed under (one more at times, which only
        // costs a rendering again).
        let generation = self.generation.load(Ordering::Acquire);
        let mut latest = self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(rendering) = latest.as_ref().filter(|rendering| rendering.generation == generation) {
            return Ok(rendering.clone());
        }
        let mut openmetrics = String::new();
        encode(&mut openmetrics, &self.registry)?;
        let rendering =
            Arc::new(Rendering { generation, openmetrics: Bytes::from(openmetrics), text: OnceLock::new() });
        *latest = Some(rendering.clone());
        Ok(rendering)
    }
}

/// The metrics sink of the event loop: [`Export`], which adds each interval
/// to the store, and then a new generation for the endpoint to render.
pub struct Publish {
    export: Export,
    generation: Arc<AtomicU64>,
}

impl Publish {
    pub fn new(export: Export, generation: Arc<AtomicU64>) -> Self {
        Self { export, generation }
    }
}

impl Sink for Publish {
    fn follows_records(&self) -> bool {
        self.export.follows_records()
    }

    fn record(&mut self, record: &Record) {
        self.export.record(record);
    }

    fn interval(&mut self, interval: &Interval<'_>) -> anyhow::Result<Flow> {
        let flow = self.export.interval(interval)?;
        // After the store has the interval: a scrape that sees the new
        // generation renders what it holds.
        self.generation.fetch_add(1, Ordering::Release);
        Ok(flow)
    }

    fn poll_input(&mut self, cx: &mut Context<'_>, total: &Table) -> Poll<anyhow::Result<Flow>> {
        self.export.poll_input(cx, total)
    }

    fn finish(&mut self, summary: &Report) -> anyhow::Result<()> {
        self.export.finish(summary)
    }
}
