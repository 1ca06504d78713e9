//! `/healthz`, `/readyz` and Prometheus `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::warn;

use crate::metrics::Metrics;

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    /// This replica holds the Lease and runs the controllers.
    pub leader: AtomicBool,
    /// The last talk to the API server (the lease loop) succeeded.
    pub api_reachable: AtomicBool,
}

/// The answer to a probe or scrape.
pub fn respond(path: &str, health: &Health, metrics: &Metrics) -> (StatusCode, String) {
    match path {
        "/healthz" => (StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let role = if health.leader.load(Ordering::Relaxed) {
                "leader"
            } else {
                "standby"
            };
            if health.api_reachable.load(Ordering::Relaxed) {
                (StatusCode::OK, format!("ok ({role})\n"))
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the API server is not reachable ({role})\n"),
                )
            }
        }
        "/metrics" => match metrics.encode() {
            Ok(text) => (StatusCode::OK, text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n".into(),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "accepting a connection");
                    continue;
                }
            },
        };
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (status, body) = respond(request.uri().path(), &health, &metrics);
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                warn!(%error, "serving a connection");
            }
        });
    }
}
