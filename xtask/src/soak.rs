//! `cargo xtask soak`: probe against threads and processes that come and go
//! without end beside a storm of known size, into a small ring buffer, for
//! minutes; it prints probe's memory, kernel-map use and losses as they go,
//! and checks the storm's count at the end.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Storm calls per second of soak: about what the storm makes traced
/// beside the churn here, so that it runs for most of the soak.
const STORM_CALLS_PER_SECOND: u64 = 1_000_000;

pub fn soak(root: &Path, minutes: u64) -> Result<()> {
    let seconds = minutes * 60;
    let storm_calls = (seconds * STORM_CALLS_PER_SECOND).to_string();
    let mut probe = Command::new(root.join("target/release/probe"))
        .args(["--json", "--buffer-size", "65536", "-i", "10s", "--top", "1", "--"])
        .arg(root.join("target/release/examples/workload"))
        .args(["--churn", &seconds.to_string(), "--getppid", &storm_calls])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start probe")?;
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>14} {:>10}",
        "elapsed", "probe RSS", "events", "lost", "calls off-CPU", "lost keys"
    );
    let (mut summary, mut storm) = (None, None);
    for line in BufReader::new(probe.stdout.take().context("no stdout")?).lines() {
        let value: Value = serde_json::from_str(&line?).unwrap_or(Value::Null);
        match value["type"].as_str() {
            Some(_) => {
                let health = &value["probe"];
                println!(
                    "{:>7.0}s {:>6} MiB {:>12} {:>12} {:>14} {:>10}",
                    value["elapsed_ns"].as_f64().unwrap_or(0.0) / 1e9,
                    health["rss_bytes"].as_u64().unwrap_or(0) >> 20,
                    value["events"],
                    value["lost_events"],
                    health["calls_off_cpu"],
                    health["lost_call_keys"],
                );
                summary = Some(value);
            }
            None if value["threads"].is_array() => {
                storm = value["threads"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["syscall"] == "getppid")
                    .cloned();
            }
            None => {}
        }
    }
    probe.wait()?;
    let (summary, storm) =
        (summary.context("probe printed no summary")?, storm.context("the workload printed no report")?);
    let counted =
        summary["threads"].as_array().into_iter().flatten().find(|t| t["tid"] == storm["tid"]).and_then(
            |t| t["syscalls"].as_array()?.iter().find(|s| s["name"] == "getppid")?["count"].as_u64(),
        );
    println!(
        "storm: made {} getppid calls, probe counted {:?}; {} events lost, counts exact: {}",
        storm["calls"], counted, summary["lost_events"], summary["counts_exact"]
    );
    if counted != storm["calls"].as_u64() {
        bail!("the storm's count is not exact");
    }
    Ok(())
}
