//! The daemons' HTTP endpoints (hyper 1, HTTP/1): one accept loop, handlers
//! of one shape, and the replies both serve alike — plain text for probes,
//! and `/metrics` in the OpenMetrics text format under its own Content-Type
//! (Prometheus refuses a scrape whose Content-Type it cannot read).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The Content-Type of the OpenMetrics text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Content-Type of probe answers and errors.
pub const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// Response bodies.
pub type Body = Full<Bytes>;

/// Answers one HTTP request.
pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Body> + Send + Sync>;

/// An answer: status, Content-Type and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    /// A plain-text answer.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: PLAIN_TEXT,
            body: body.into(),
        }
    }

    /// A scrape's answer: metrics encoded in the OpenMetrics text format.
    pub fn openmetrics(body: String) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: OPENMETRICS_TEXT,
            body,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        response
    }
}

/// Serve HTTP/1 on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, handler: Handler) {
    serve_until(listener, handler, std::future::pending()).await;
}

/// Serve HTTP/1 on `listener` until `shutdown` resolves (connections being
/// served then finish on their own tasks).
pub async fn serve_until(
    listener: TcpListener,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection");
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = handler(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended");
            }
        });
    }
}
