//! `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! `/metrics` is the OpenMetrics text format (prometheus-client's `text`
//! encoder, ending in `# EOF`) under its own Content-Type, as the node agent
//! serves it: Prometheus refuses a scrape whose Content-Type it cannot read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::StatusCode;
use switchyard_daemon::http::{Handler, Reply, serve_until};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    /// This replica holds the Lease and runs the controllers.
    pub leader: AtomicBool,
    /// The last talk to the API server (the lease loop) succeeded.
    pub api_reachable: AtomicBool,
}

/// Answer a probe or scrape of `path`.
pub fn respond(path: &str, health: &Health, metrics: &Metrics) -> Reply {
    match path {
        "/healthz" => Reply::text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let role = if health.leader.load(Ordering::Relaxed) {
                "leader"
            } else {
                "standby"
            };
            if health.api_reachable.load(Ordering::Relaxed) {
                Reply::text(StatusCode::OK, format!("ok ({role})\n"))
            } else {
                Reply::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the API server is not reachable ({role})\n"),
                )
            }
        }
        "/metrics" => match metrics.encode() {
            Ok(body) => Reply::openmetrics(body),
            Err(_) => Reply::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            ),
        },
        _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let handler: Handler =
        Arc::new(move |request| respond(request.uri().path(), &health, &metrics).into_response());
    serve_until(listener, handler, shutdown).await;
}
