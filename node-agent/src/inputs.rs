//! What a sync pass reads: the objects the watches currently hold, and the
//! key of the parts a sync depends on.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use switchyard_api::policy::NodeInfo;
use switchyard_api::ruleset::Cidr;
use switchyard_api::{Mode, ProxyConfig, ProxyConfigSpec, ProxyNode, ProxyRuleset};

use crate::node::{being_deleted, node_info, pod_cidrs};

/// What the watches currently hold.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Every watch has completed its initial list (until then nothing syncs).
    pub listed: bool,
    pub node: Option<Arc<Node>>,
    pub proxy_node: Option<Arc<ProxyNode>>,
    /// The ProxyConfig named by the ProxyNode's `spec.pool`.
    pub config: Option<Arc<ProxyConfig>>,
    pub shards: Vec<Arc<ProxyRuleset>>,
}

/// The parts of the inputs a sync depends on; an event that changes none of
/// them (a status write coming back, a Node heartbeat) does not sync.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct InputKey {
    pub target: Option<Mode>,
    node: Option<(NodeInfo, Vec<Cidr>, bool)>,
    config: Option<ProxyConfigSpec>,
    shards: Vec<(String, Option<String>)>,
}

impl InputKey {
    pub fn of(inputs: &Inputs) -> InputKey {
        let mut shards: Vec<(String, Option<String>)> = inputs
            .shards
            .iter()
            .map(|s| {
                (
                    s.metadata.name.clone().unwrap_or_default(),
                    s.metadata.resource_version.clone(),
                )
            })
            .collect();
        shards.sort();
        InputKey {
            target: inputs.proxy_node.as_ref().and_then(|p| p.spec.target_mode),
            node: inputs
                .node
                .as_deref()
                .map(|n| (node_info(n), pod_cidrs(n), being_deleted(n))),
            config: inputs.config.as_ref().map(|c| c.spec.clone()),
            shards,
        }
    }
}
