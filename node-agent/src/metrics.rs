//! Prometheus metrics. Where a metric means what kube-proxy's means it has
//! kube-proxy's name and buckets, so existing dashboards and alerts keep
//! working; the rest are `switchyard_*`. Labels are static (the mode), never
//! error text.
//!
//! `kubeproxy_network_programming_duration_seconds` is measured from the time
//! the agent received the change (kube-proxy measures from the EndpointSlice's
//! trigger time, which the compiled ruleset does not carry).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;
use switchyard_api::Mode;
use switchyard_daemon::http::{Handler, Reply};

use crate::http::not_found;

/// The `mode` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

/// The `result` label of mode switches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchLabels {
    pub to: &'static str,
    pub result: &'static str,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    network_programming: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    last_queued: Gauge<f64, AtomicU64>,
    sync_failures: Family<ModeLabels, Counter>,
    objects: Family<ModeLabels, Gauge>,
    switches: Family<SwitchLabels, Counter>,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    pub fn new() -> Metrics {
        // kube-proxy: ExponentialBuckets(0.001, 2, 15).
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        // kube-proxy: 0.25s steps to 0.5s, 1s steps to 59s, 5s steps to 115s, 30s steps to 300s.
        let network_programming = Histogram::new(
            linear_buckets(0.25, 0.25, 2)
                .chain(linear_buckets(1.0, 1.0, 59))
                .chain(linear_buckets(60.0, 5.0, 12))
                .chain(linear_buckets(120.0, 30.0, 7)),
        );
        let mut m = Metrics {
            registry: Registry::default(),
            sync_duration,
            network_programming,
            last_sync: Gauge::default(),
            last_queued: Gauge::default(),
            sync_failures: Family::default(),
            objects: Family::default(),
            switches: Family::default(),
        };
        m.registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        m.registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds (from the agent receiving a change)",
            m.network_programming.clone(),
        );
        m.registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync.clone(),
        );
        m.registry.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued.clone(),
        );
        m.registry.register(
            "switchyard_sync_proxy_rules_failures",
            "Syncs whose apply failed (the previous rules stayed in place), by mode",
            m.sync_failures.clone(),
        );
        m.registry.register(
            "switchyard_programmed_objects",
            "Objects (rules, set elements, virtual servers, map entries) in the applied plan, by mode",
            m.objects.clone(),
        );
        m.registry.register(
            "switchyard_mode_switches",
            "Mode switches on this node by target mode and result",
            m.switches.clone(),
        );
        m
    }

    pub fn queued(&self, now: SystemTime) {
        self.last_queued.set(unix_seconds(now));
    }

    /// A successful sync: its duration, the wait of the oldest change it applied,
    /// and the objects the active mode now holds.
    pub fn synced(
        &self,
        mode: Mode,
        duration: Duration,
        waited: Option<Duration>,
        objects: u32,
        now: SystemTime,
    ) {
        self.sync_duration.observe(duration.as_secs_f64());
        if let Some(w) = waited {
            self.network_programming.observe(w.as_secs_f64());
        }
        self.last_sync.set(unix_seconds(now));
        for m in Mode::ALL {
            let value = if m == mode { i64::from(objects) } else { 0 };
            self.objects.get_or_create(&labels(m)).set(value);
        }
    }

    pub fn sync_failed(&self, mode: Mode) {
        self.sync_failures.get_or_create(&labels(mode)).inc();
    }

    pub fn switched(&self, to: Mode, succeeded: bool) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.switches
            .get_or_create(&SwitchLabels {
                to: to.as_str(),
                result,
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Serves `/metrics` in the OpenMetrics text format.
pub fn metrics_handler(metrics: Arc<Metrics>) -> Handler {
    Arc::new(move |req| {
        if req.uri().path() != "/metrics" {
            return not_found();
        }
        Reply::openmetrics(metrics.encode()).into_response()
    })
}

fn labels(mode: Mode) -> ModeLabels {
    ModeLabels {
        mode: mode.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_names_and_static_mode_labels() {
        let m = Metrics::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        m.synced(
            Mode::Nftables,
            Duration::from_millis(3),
            Some(Duration::from_millis(600)),
            42,
            now,
        );
        m.sync_failed(Mode::Nftables);
        m.switched(Mode::Nftables, true);
        let text = m.encode();
        for line in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"1.0\"} 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1800000000.0",
            "switchyard_sync_proxy_rules_failures_total{mode=\"nftables\"} 1",
            "switchyard_programmed_objects{mode=\"nftables\"} 42",
            "switchyard_programmed_objects{mode=\"iptables\"} 0",
            "switchyard_mode_switches_total{to=\"nftables\",result=\"succeeded\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
