//! `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! `/metrics` is the OpenMetrics text format (prometheus-client's `text`
//! encoder, ending in `# EOF`) under its own Content-Type, as the node agent
//! serves it: Prometheus refuses a scrape whose Content-Type it cannot read.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
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

/// The Content-Type of the OpenMetrics text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Content-Type of the probes' answers and of errors.
pub const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// The answer to a probe or scrape.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: PLAIN_TEXT,
            body: body.into(),
        }
    }
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
            Ok(body) => Reply {
                status: StatusCode::OK,
                content_type: OPENMETRICS_TEXT,
                body,
            },
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
                let reply = respond(request.uri().path(), &health, &metrics);
                let mut response = Response::new(Full::new(Bytes::from(reply.body)));
                *response.status_mut() = reply.status;
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
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
