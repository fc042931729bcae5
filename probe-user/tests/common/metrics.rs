//! Scraping probe's metrics endpoint the way Prometheus does.

use std::net::TcpListener;

use prometheus_parse::{Sample, Scrape};

/// What Prometheus 3 sends as `Accept`.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

/// A loopback port nothing listens on (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One scrape of the endpoint on `port`, asked for as Prometheus asks: it
/// must answer OpenMetrics.
pub fn scrape(port: u16) -> Vec<Sample> {
    let body = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .header("Accept", PROMETHEUS_ACCEPT)
        .call()
        .expect("the endpoint answers")
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(body.ends_with("# EOF\n"), "not OpenMetrics: {}", &body[body.len().saturating_sub(200)..]);
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("the scrape parses").samples
}
