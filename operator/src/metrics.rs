//! Prometheus metrics. Labels are static strings (error kinds, operations) or
//! pool names; never error messages.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    /// `apply` or `delete`.
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub compile_duration: Histogram,
    pub shard_writes: Family<ShardLabels, Counter>,
    pub publish_errors: Counter,
    pub rollout_updated_nodes: Family<PoolLabels, Gauge>,
    pub rollout_total_nodes: Family<PoolLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard_operator");
        let m = Metrics {
            reconciliations: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            compile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            shard_writes: Family::default(),
            publish_errors: Counter::default(),
            rollout_updated_nodes: Family::default(),
            rollout_total_nodes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconciliations",
            "ProxyConfig reconciles started",
            m.reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "ProxyConfig reconciles that failed, by error kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a ProxyConfig reconcile",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "compile_duration_seconds",
            "Duration of compiling the cluster's ruleset",
            m.compile_duration.clone(),
        );
        registry.register(
            "shard_writes",
            "ProxyRuleset shard writes, by operation",
            m.shard_writes.clone(),
        );
        registry.register(
            "publish_errors",
            "Shard publications that failed and will be retried",
            m.publish_errors.clone(),
        );
        registry.register(
            "rollout_updated_nodes",
            "Nodes of the pool that run the rollout's target mode",
            m.rollout_updated_nodes.clone(),
        );
        registry.register(
            "rollout_total_nodes",
            "Nodes of the pool",
            m.rollout_total_nodes.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Start timing a reconcile; the duration is recorded when the guard drops.
    pub fn reconcile_started(&self) -> DurationGuard<'_> {
        self.reconciliations.inc();
        DurationGuard {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Observes the time since it was made into a histogram when dropped.
pub struct DurationGuard<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for DurationGuard<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
