//! Prometheus metrics. Where a metric means what kube-proxy's means it has
//! kube-proxy's name and buckets, so existing dashboards and alerts keep
//! working; the rest are `switchyard_*`. Labels are static (the mode), never
//! error text.
//!
//! `kubeproxy_network_programming_duration_seconds` is kube-proxy's: from the
//! EndpointSlice's last-change trigger time to the sync that applied it
//! ([`crate::changes`]). `switchyard_sync_delay_seconds` is the part of it
//! spent in the agent: from receiving a change to having applied it.

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

use crate::changes::Changes;
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

/// What one successful sync did, for the metrics.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    pub duration: Duration,
    /// It rewrote everything (not only what changed).
    pub full: bool,
    /// From the agent receiving the oldest change it applied.
    pub waited: Option<Duration>,
    pub changes: Changes,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    full_sync_duration: Histogram,
    partial_sync_duration: Histogram,
    network_programming: Histogram,
    sync_delay: Histogram,
    restore_failures: Counter,
    nftables_failures: Counter,
    service_changes: Counter,
    endpoint_changes: Counter,
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
        let sync_buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        // kube-proxy: 0.25s steps to 0.5s, 1s steps to 59s, 5s steps to 115s, 30s steps to 300s.
        let programming_buckets = || {
            Histogram::new(
                linear_buckets(0.25, 0.25, 2)
                    .chain(linear_buckets(1.0, 1.0, 59))
                    .chain(linear_buckets(60.0, 5.0, 12))
                    .chain(linear_buckets(120.0, 30.0, 7)),
            )
        };
        let mut m = Metrics {
            registry: Registry::default(),
            sync_duration,
            full_sync_duration: sync_buckets(),
            partial_sync_duration: sync_buckets(),
            network_programming: programming_buckets(),
            sync_delay: programming_buckets(),
            restore_failures: Counter::default(),
            nftables_failures: Counter::default(),
            service_changes: Counter::default(),
            endpoint_changes: Counter::default(),
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
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.full_sync_duration.clone(),
        );
        m.registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.partial_sync_duration.clone(),
        );
        m.registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        m.registry.register(
            "switchyard_sync_delay_seconds",
            "From the agent receiving a change to the sync that applied it, in seconds",
            m.sync_delay.clone(),
        );
        m.registry.register(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures (iptables and ipvs modes)",
            m.restore_failures.clone(),
        );
        m.registry.register(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            m.nftables_failures.clone(),
        );
        m.registry.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes (per service port)",
            m.service_changes.clone(),
        );
        m.registry.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes (per service port)",
            m.endpoint_changes.clone(),
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

    /// A successful sync: its duration and whether it rewrote everything, the
    /// wait of the oldest change it applied, what it changed, and the objects
    /// the active mode now holds.
    pub fn synced(&self, mode: Mode, sync: &SyncReport, objects: u32, now: SystemTime) {
        let seconds = sync.duration.as_secs_f64();
        self.sync_duration.observe(seconds);
        if sync.full {
            self.full_sync_duration.observe(seconds);
        } else {
            self.partial_sync_duration.observe(seconds);
        }
        if let Some(w) = sync.waited {
            self.sync_delay.observe(w.as_secs_f64());
        }
        for latency in &sync.changes.programming {
            self.network_programming.observe(latency.as_secs_f64());
        }
        self.service_changes.inc_by(sync.changes.services);
        self.endpoint_changes.inc_by(sync.changes.endpoints);
        self.last_sync.set(unix_seconds(now));
        for m in Mode::ALL {
            let value = if m == mode { i64::from(objects) } else { 0 };
            self.objects.get_or_create(&labels(m)).set(value);
        }
    }

    pub fn sync_failed(&self, mode: Mode) {
        self.sync_failures.get_or_create(&labels(mode)).inc();
        match mode {
            Mode::Iptables | Mode::Ipvs => {
                self.restore_failures.inc();
            }
            Mode::Nftables => {
                self.nftables_failures.inc();
            }
            Mode::Ebpf => {}
        }
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
        let sync = SyncReport {
            duration: Duration::from_millis(3),
            full: false,
            waited: Some(Duration::from_millis(600)),
            changes: Changes {
                services: 2,
                endpoints: 3,
                programming: vec![Duration::from_millis(900)],
            },
        };
        m.synced(Mode::Nftables, &sync, 42, now);
        m.sync_failed(Mode::Nftables);
        m.sync_failed(Mode::Ipvs);
        m.switched(Mode::Nftables, true);
        let text = m.encode();
        for line in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"1.0\"} 1",
            "switchyard_sync_delay_seconds_bucket{le=\"0.5\"} 0",
            "switchyard_sync_delay_seconds_bucket{le=\"1.0\"} 1",
            "kubeproxy_sync_proxy_rules_service_changes_total 2",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 3",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1",
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1",
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
