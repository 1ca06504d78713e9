//! Health, kube-proxy style: the proxy health server (`/healthz`, `/livez`) and
//! one health-check server per `healthCheckNodePort` of the services with
//! `externalTrafficPolicy: Local`, answering with this node's endpoint count
//! so load balancers send traffic only to nodes that have endpoints.
//!
//! Semantics follow kube-proxy's `pkg/proxy/healthcheck`: the proxy is healthy
//! unless a change has been waiting longer than the health timeout without a
//! successful sync; `/healthz` additionally answers 503 while the node is being
//! deleted. Times are written in RFC 3339.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use hyper::{Response, StatusCode, header};
use k8s_openapi::jiff::Timestamp;
use switchyard_api::policy::LinkedRuleset;
use switchyard_daemon::http::{Body, Handler};
use tokio::task::JoinHandle;

use crate::http::{HttpError, json_response, not_found, spawn_server};

#[derive(Debug, Default)]
struct ProxyHealthState {
    last_updated: Option<SystemTime>,
    oldest_queued: Option<SystemTime>,
    node_deleting: bool,
}

/// The proxy's health: when it last synced and whether a change waits.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<ProxyHealthState>,
}

/// A health answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    pub node_eligible: bool,
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
}

impl ProxyHealth {
    /// `timeout`: how long a change may wait for a successful sync (kube-proxy:
    /// twice its sync period).
    pub fn new(timeout: Duration) -> ProxyHealth {
        ProxyHealth {
            timeout,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProxyHealthState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A change arrived that a sync must apply.
    pub fn queued(&self, now: SystemTime) {
        self.lock().oldest_queued.get_or_insert(now);
    }

    /// A sync applied everything queued.
    pub fn updated(&self, now: SystemTime) {
        let mut s = self.lock();
        s.last_updated = Some(now);
        s.oldest_queued = None;
    }

    /// The node is being deleted (`/healthz` then fails so load balancers drain it).
    pub fn set_node_deleting(&self, deleting: bool) {
        self.lock().node_deleting = deleting;
    }

    pub fn report(&self, now: SystemTime) -> HealthReport {
        let s = self.lock();
        let late = s.oldest_queued.is_some_and(|q| {
            now.duration_since(q)
                .is_ok_and(|waited| waited > self.timeout)
        });
        HealthReport {
            healthy: !late,
            node_eligible: !s.node_deleting,
            last_updated: s.last_updated,
            current_time: now,
        }
    }
}

fn rfc3339(t: Option<SystemTime>) -> String {
    t.and_then(|t| Timestamp::try_from(t).ok())
        .map_or_else(String::new, |t| t.to_string())
}

/// `/healthz` (health and node eligibility) and `/livez` (health only).
pub fn proxy_health_response(health: &ProxyHealth, path: &str, now: SystemTime) -> Response<Body> {
    let r = health.report(now);
    let ok = match path {
        "/healthz" => r.healthy && r.node_eligible,
        "/livez" => r.healthy,
        _ => return not_found(),
    };
    let body = serde_json::json!({
        "lastUpdated": rfc3339(r.last_updated),
        "currentTime": rfc3339(Some(r.current_time)),
        "nodeEligible": r.node_eligible,
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body.to_string())
}

/// The proxy health server's handler.
pub fn proxy_health_handler(health: Arc<ProxyHealth>) -> Handler {
    Arc::new(move |req| proxy_health_response(&health, req.uri().path(), SystemTime::now()))
}

/// One service behind a health check node port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckService {
    pub namespace: String,
    pub name: String,
    /// This node's endpoints of the service.
    pub local_endpoints: usize,
}

/// The health check node ports of a linked ruleset and their services' local
/// endpoint counts (distinct local endpoint addresses over the service's ports).
pub fn health_check_services(ruleset: &LinkedRuleset) -> BTreeMap<u16, HealthCheckService> {
    let mut services = BTreeMap::new();
    let mut local_ips: BTreeMap<u16, BTreeSet<IpAddr>> = BTreeMap::new();
    for sp in &ruleset.services {
        let Some(port) = sp.rule.health_check_node_port else {
            continue;
        };
        if !sp.external_policy_local() {
            continue;
        }
        services.entry(port).or_insert_with(|| HealthCheckService {
            namespace: sp.rule.namespace.clone(),
            name: sp.rule.name.clone(),
            local_endpoints: 0,
        });
        local_ips
            .entry(port)
            .or_default()
            .extend(sp.local_endpoints().map(|b| b.ip));
    }
    for (port, svc) in &mut services {
        svc.local_endpoints = local_ips.get(port).map_or(0, BTreeSet::len);
    }
    services
}

/// kube-proxy's answer on a health check node port.
pub fn service_health_response(
    svc: Option<&HealthCheckService>,
    proxy: &ProxyHealth,
    now: SystemTime,
) -> Response<Body> {
    let Some(svc) = svc else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"message":"no service on this port"}"#.to_string(),
        );
    };
    let proxy_healthy = proxy.report(now).healthy;
    let body = serde_json::json!({
        "service": {"namespace": svc.namespace, "name": svc.name},
        "localEndpoints": svc.local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    });
    let status = if svc.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = json_response(status, body.to_string());
    if let Ok(v) = header::HeaderValue::from_str(&svc.local_endpoints.to_string()) {
        resp.headers_mut()
            .insert("X-Load-Balancing-Endpoint-Weight", v);
    }
    resp
}

type Services = Arc<Mutex<BTreeMap<u16, HealthCheckService>>>;

/// The health check node port servers, one listener per port.
pub struct HealthCheckServers {
    bind: IpAddr,
    proxy: Arc<ProxyHealth>,
    services: Services,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthCheckServers {
    /// Listen on `bind` (kube-proxy listens on every address: `0.0.0.0` / `::`).
    pub fn new(bind: IpAddr, proxy: Arc<ProxyHealth>) -> HealthCheckServers {
        HealthCheckServers {
            bind,
            proxy,
            services: Arc::default(),
            listeners: BTreeMap::new(),
        }
    }

    /// Serve exactly `wanted`: start new ports, stop gone ones, update counts.
    /// Ports that cannot be bound are reported and tried again on the next call.
    /// Must be called inside a tokio runtime.
    pub fn sync(&mut self, wanted: BTreeMap<u16, HealthCheckService>) -> Vec<HttpError> {
        let ports: BTreeSet<u16> = wanted.keys().copied().collect();
        *self.services.lock().unwrap_or_else(PoisonError::into_inner) = wanted;
        self.listeners.retain(|port, task| {
            let keep = ports.contains(port);
            if !keep {
                task.abort();
            }
            keep
        });
        let mut errors = Vec::new();
        for port in ports {
            if self.listeners.contains_key(&port) {
                continue;
            }
            match self.listen(port) {
                Ok(task) => {
                    self.listeners.insert(port, task);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// The ports being served.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }

    fn listen(&self, port: u16) -> Result<JoinHandle<()>, HttpError> {
        let services = self.services.clone();
        let proxy = self.proxy.clone();
        let handler: Handler = Arc::new(move |_req| {
            let services = services.lock().unwrap_or_else(PoisonError::into_inner);
            service_health_response(services.get(&port), &proxy, SystemTime::now())
        });
        spawn_server(
            "health check node port",
            SocketAddr::new(self.bind, port),
            handler,
        )
    }
}

impl Drop for HealthCheckServers {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn healthy_until_a_queued_change_waits_longer_than_the_timeout() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        assert!(h.report(t(1000)).healthy, "starting up is healthy");
        h.queued(t(1000));
        h.queued(t(1030));
        assert!(h.report(t(1060)).healthy);
        assert!(!h.report(t(1061)).healthy, "oldest change counts");
        h.updated(t(1062));
        let r = h.report(t(5000));
        assert!(r.healthy, "nothing pending after a sync");
        assert_eq!(r.last_updated, Some(t(1062)));
    }

    #[test]
    fn healthz_fails_while_the_node_is_deleted_but_livez_does_not() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        h.updated(t(1_800_000_000));
        h.set_node_deleting(true);
        let now = t(1_800_000_005);
        assert_eq!(
            proxy_health_response(&h, "/healthz", now).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            proxy_health_response(&h, "/livez", now).status(),
            StatusCode::OK
        );
        assert_eq!(
            proxy_health_response(&h, "/other", now).status(),
            StatusCode::NOT_FOUND
        );
    }
}
