//! The Grafana dashboard of the monitoring component
//! (`config/components/monitoring/dashboard.json`) queries only series the
//! node agent and the operator export: every `kubeproxy_*` / `switchyard_*`
//! name in its queries and variables, with its suffix, is checked against
//! the `# TYPE` lines of the two real registries (`_bucket` of a histogram,
//! `_total` of a counter, a gauge by its name), and each topic the dashboard
//! promises has a panel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use switchyard_agent::metrics::SyncReport;
use switchyard_api::Mode;
use switchyard_operator::metrics::{ErrorLabels, PoolLabels, ShardLabels};

fn dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/components/monitoring/dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every family both daemons export, with its type. A labelled family shows
/// in the encoding once it has a series, so each gets one first.
fn exported() -> BTreeMap<String, String> {
    let agent = switchyard_agent::metrics::Metrics::new();
    agent.synced(Mode::Nftables, &SyncReport::default(), 1, SystemTime::now());
    agent.sync_failed(Mode::Nftables);
    agent.switched(Mode::Nftables, true);
    let operator = switchyard_operator::metrics::Metrics::default();
    operator
        .reconcile_errors
        .get_or_create(&ErrorLabels { error: "any" })
        .inc();
    operator
        .shard_writes
        .get_or_create(&ShardLabels { operation: "apply" })
        .inc();
    let pool = PoolLabels { pool: "p".into() };
    operator.rollout_updated_nodes.get_or_create(&pool).set(1);
    operator.rollout_total_nodes.get_or_create(&pool).set(1);
    let (agent, operator) = (agent.encode(), operator.encode().unwrap());
    [agent, operator]
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_string(), kind.to_string())
        })
        .collect()
}

/// Every PromQL text of the dashboard: panel targets and variable queries.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The metric names a query mentions (ours and kube-proxy's).
fn metric_names(query: &str) -> Vec<&str> {
    query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("kubeproxy_") || t.starts_with("switchyard_"))
        .collect()
}

/// The family and type a sample name belongs to, if exported.
fn family<'a>(name: &str, exported: &'a BTreeMap<String, String>) -> Option<(&'a str, &'a str)> {
    let candidates = [
        (name, "gauge"),
        (name.strip_suffix("_total").unwrap_or(""), "counter"),
        (name.strip_suffix("_bucket").unwrap_or(""), "histogram"),
        (name.strip_suffix("_count").unwrap_or(""), "histogram"),
        (name.strip_suffix("_sum").unwrap_or(""), "histogram"),
    ];
    candidates.iter().find_map(|(base, kind)| {
        let (family, exported_kind) = exported.get_key_value(*base)?;
        (exported_kind == kind).then_some((family.as_str(), exported_kind.as_str()))
    })
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let exported = exported();
    assert!(exported.len() > 20, "both registries read: {exported:?}");
    let mut all = Vec::new();
    queries(&dashboard(), &mut all);
    assert!(all.len() > 15, "queries found: {all:?}");
    let mut unknown = Vec::new();
    let mut used = Vec::new();
    for query in &all {
        for name in metric_names(query) {
            match family(name, &exported) {
                Some((f, _)) => used.push(f),
                None => unknown.push(format!("{name} (in {query})")),
            }
        }
    }
    assert!(unknown.is_empty(), "not exported: {unknown:#?}");
    for topic in [
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "kubeproxy_sync_full_proxy_rules_duration_seconds",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
        "kubeproxy_network_programming_duration_seconds",
        "switchyard_programmed_objects",
        "switchyard_sync_proxy_rules_failures",
        "switchyard_operator_reconcile_errors",
        "switchyard_operator_rollout_updated_nodes",
        "switchyard_operator_rollout_total_nodes",
    ] {
        assert!(used.contains(&topic), "no panel queries {topic}");
    }
}

#[test]
fn a_misspelled_or_mistyped_name_is_caught() {
    let exported = exported();
    assert!(
        family(
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
            &exported
        )
        .is_some()
    );
    assert!(
        family(
            "kubeproxy_sync_proxy_rules_duration_seconds_total",
            &exported
        )
        .is_none()
    );
    assert!(family("switchyard_programmed_objects_total", &exported).is_none());
    assert!(
        family(
            "kubeproxy_sync_proxy_rules_duration_second_bucket",
            &exported
        )
        .is_none()
    );
}
