//! The HTTP endpoint: `GET /metrics` in the OpenMetrics text format, on
//! the event loop's own runtime.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    body::Bytes, header::CONTENT_TYPE, server::conn::http1, service::service_fn, Request, Response,
    StatusCode,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;

use super::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bound listener, not yet serving: binding first lets a port in use
/// fail before any program is loaded.
pub struct Endpoint {
    listener: std::net::TcpListener,
}

impl Endpoint {
    pub fn bind(address: SocketAddr) -> Result<Self> {
        let listener = std::net::TcpListener::bind(address)
            .with_context(|| format!("cannot serve metrics on {address} (is the port in use?)"))?;
        listener.set_nonblocking(true).context("cannot set up the metrics socket")?;
        Ok(Self { listener })
    }

    /// Serves `metrics` until the runtime stops; each connection on a task
    /// of its own.
    pub fn serve(self, metrics: Metrics) -> Result<()> {
        let listener = TcpListener::from_std(self.listener).context("cannot set up the metrics socket")?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics));
        let registry = Arc::new(registry);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let registry = registry.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| respond(request, registry.clone()));
                    // A client that goes away mid-request is its own business.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(())
    }
}

async fn respond<B>(
    request: Request<B>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, content_type.parse().expect("a valid header value"));
        Ok(response)
    };
    if request.uri().path() != "/metrics" {
        return response(StatusCode::NOT_FOUND, "text/plain", "probe serves /metrics\n".to_owned());
    }
    let mut body = String::new();
    match encode(&mut body, &registry) {
        Ok(()) => response(StatusCode::OK, OPENMETRICS, body),
        Err(_) => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "cannot encode the metrics\n".to_owned(),
        ),
    }
}
