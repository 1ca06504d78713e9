//! Builders for the Kubernetes objects tests feed the operator.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, ObjectMeta, Time,
};
use k8s_openapi::jiff::Timestamp;
use switchyard_api::{
    Mode, ProxyConfig, ProxyConfigSpec, ProxyNode, ProxyNodeSpec, ProxyNodeStatus,
};

pub fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

pub fn selector(labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> LabelSelector {
    LabelSelector {
        match_labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        }),
        match_expressions: (!exprs.is_empty()).then(|| {
            exprs
                .iter()
                .map(|(key, op, values)| LabelSelectorRequirement {
                    key: key.to_string(),
                    operator: op.to_string(),
                    values: (!values.is_empty())
                        .then(|| values.iter().map(|v| v.to_string()).collect()),
                })
                .collect()
        }),
    }
}

pub fn config(name: &str, mode: Mode, priority: i32, node_selector: LabelSelector) -> ProxyConfig {
    let mut c = ProxyConfig::new(
        name,
        ProxyConfigSpec {
            node_selector,
            priority,
            mode,
            ..ProxyConfigSpec::default()
        },
    );
    c.metadata.generation = Some(1);
    c.metadata.uid = Some(format!("uid-{name}"));
    c
}

pub fn ready_condition(now: Timestamp) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "Applied".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: Time(now),
    }
}

/// A ProxyNode whose agent reports `mode` applied and Ready.
pub fn proxy_node(name: &str, pool: Option<&str>, mode: Mode) -> ProxyNode {
    let mut p = ProxyNode::new(
        name,
        ProxyNodeSpec {
            pool: pool.map(str::to_string),
            target_mode: Some(mode),
        },
    );
    p.status = Some(ProxyNodeStatus {
        applied_mode: Some(mode),
        conditions: vec![ready_condition(Timestamp::UNIX_EPOCH)],
        ..ProxyNodeStatus::default()
    });
    p
}
