//! `ProxyNode`: per-node state. The operator writes `spec` (pool, target mode);
//! that node's agent writes `status`. No agent writes a shared object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::mode::Mode;
use crate::validation::limits::{MAX_MESSAGE_LENGTH, MAX_SHARDS};
use crate::validation::names::{DNS1123_SUBDOMAIN_PATTERN, SUBDOMAIN_MAX_LENGTH};
use crate::validation::schema::conditions;

/// One node's assignment, named after the node and owned by it.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ProxyNode",
    doc = "ProxyNode is one node's proxy state: the mode its pool wants (spec, written by the operator) and what the node agent applied (status, written by that node's agent). One per node, named after it and deleted with it.",
    plural = "proxynodes",
    shortname = "pxn",
    status = "ProxyNodeStatus",
    printcolumn = r#"{"name":"POOL","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"TARGET","type":"string","jsonPath":".spec.targetMode"}"#,
    printcolumn = r#"{"name":"APPLIED","type":"string","jsonPath":".status.appliedMode"}"#,
    printcolumn = r#"{"name":"SYNCED","type":"date","jsonPath":".status.lastSyncTime"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProxyNodeSpec {
    /// The ProxyConfig whose pool this node is in; unset when no pool selects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_SUBDOMAIN_PATTERN), length(max = SUBDOMAIN_MAX_LENGTH))]
    pub pool: Option<String>,
    /// The dataplane this node must run; unset leaves the node as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_mode: Option<Mode>,
}

/// Step of a mode switch on a node, in order.
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum SwitchStep {
    /// Building the new dataplane beside the old one.
    Building,
    /// Probing through the new dataplane.
    Verifying,
    /// Removing the old dataplane.
    RemovingOld,
}

/// A switch in flight on a node.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Mode>,
    pub to: Mode,
    pub step: SwitchStep,
}

/// Object counts of what the agent programmed.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedCounts {
    /// Service ports in the applied ruleset.
    pub service_ports: u32,
    /// Endpoints of those service ports, over the whole cluster.
    pub endpoints: u32,
    /// Rules, map entries or virtual servers, in the mode's own unit.
    pub objects: u32,
}

/// What a node's agent reports.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyNodeStatus {
    /// The ProxyNode `metadata.generation` (its spec: the target mode) the
    /// agent last acted on, whether the sync succeeded, waited or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The dataplane carrying this node's service traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_mode: Option<Mode>,
    /// The target mode the last switch failed to reach (cleared on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<SwitchStatus>,
    /// Epoch of the shard layout last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_epoch: Option<u64>,
    /// Shards of the layout last applied (every one of them is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_SHARDS))]
    pub applied_shard_count: Option<u32>,
    /// Sum of the generations of the shards last applied. Generations only
    /// grow within a layout, so the node is current when this equals the sum
    /// over the layout's ProxyRulesets. A number, not a map per shard: the
    /// status is written after every change and must not grow with the shard
    /// count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_generation_sum: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Duration of the last sync in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<AppliedCounts>,
    /// `Ready` (the target mode is applied and verified), `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = conditions)]
    pub conditions: Vec<Condition>,
    /// The last sync or switch error, cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_MESSAGE_LENGTH))]
    pub last_error: Option<String>,
}
