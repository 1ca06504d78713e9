//! The agent's small HTTP servers: each serves a handler with the daemons'
//! accept loop (`switchyard_daemon::http`) on a listener bound here, and the
//! proxy servers' addresses follow the pool's ProxyConfig
//! (`healthzBindAddress`, `metricsBindAddress`).

use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode, header};
use switchyard_api::ProxyConfigSpec;
use switchyard_daemon::http::{Body, Handler, Reply, serve};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding the {what} server on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} address {text:?} is not host:port")]
    Address { what: &'static str, text: String },
}

/// A JSON answer, as kube-proxy's health servers send it.
pub fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Reply {
        status,
        content_type: "application/json",
        body,
    }
    .into_response();
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A plain 404, as Go's mux answers.
pub fn not_found() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"404 page not found\n")));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

/// Bind `addr` now and serve `handler` on it in a task (stopped by aborting it).
/// Must be called inside a tokio runtime.
pub fn spawn_server(
    what: &'static str,
    addr: SocketAddr,
    handler: Handler,
) -> Result<JoinHandle<()>, HttpError> {
    let bind_err = |source| HttpError::Bind { what, addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = TcpListener::from_std(std_listener).map_err(bind_err)?;
    Ok(tokio::spawn(serve(listener, handler)))
}

/// `host:port` as ProxyConfig writes it; an empty host means every address.
pub fn parse_bind_address(what: &'static str, text: &str) -> Result<SocketAddr, HttpError> {
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_string()
    };
    full.parse().map_err(|_| HttpError::Address {
        what,
        text: text.to_string(),
    })
}

/// A server whose address can change while the agent runs.
pub struct Rebindable {
    what: &'static str,
    handler: Handler,
    /// From the command line: wins over the ProxyConfig.
    flag: Option<SocketAddr>,
    default: SocketAddr,
    current: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Rebindable {
    pub fn new(
        what: &'static str,
        handler: Handler,
        flag: Option<SocketAddr>,
        default: SocketAddr,
    ) -> Rebindable {
        Rebindable {
            what,
            handler,
            flag,
            default,
            current: None,
        }
    }

    /// Serve on the flag's address, else `configured` (ProxyConfig text), else
    /// the default. A new address is bound before the old listener stops; when
    /// it cannot be bound the old one keeps serving.
    pub fn reconcile(&mut self, configured: Option<&str>) -> Result<(), HttpError> {
        let addr = match (self.flag, configured) {
            (Some(flag), _) => flag,
            (None, Some(text)) => parse_bind_address(self.what, text)?,
            (None, None) => self.default,
        };
        if self.current.as_ref().is_some_and(|(a, _)| *a == addr) {
            return Ok(());
        }
        let task = spawn_server(self.what, addr, self.handler.clone())?;
        if let Some((_, old)) = self.current.replace((addr, task)) {
            old.abort();
        }
        tracing::info!(server = self.what, %addr, "serving");
        Ok(())
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        self.current.as_ref().map(|(a, _)| *a)
    }
}

impl Drop for Rebindable {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.current {
            task.abort();
        }
    }
}

/// The proxy health and metrics servers.
pub struct HttpServers {
    pub healthz: Rebindable,
    pub metrics: Rebindable,
}

impl HttpServers {
    /// Follow the pool's ProxyConfig (`None`: no pool config, flags or defaults).
    pub fn reconcile(&mut self, spec: Option<&ProxyConfigSpec>) -> Vec<HttpError> {
        let healthz = spec.and_then(|s| s.healthz_bind_address.as_deref());
        let metrics = spec.and_then(|s| s.metrics_bind_address.as_deref());
        [
            self.healthz.reconcile(healthz),
            self.metrics.reconcile(metrics),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect()
    }
}
