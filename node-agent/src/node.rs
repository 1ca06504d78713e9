//! What the agent reads from its own `Node` object: the facts linking needs
//! (name, zone label, addresses), the pod CIDRs the settings need, and
//! whether the node is going away. `switchyard plan` reads nodes the same way.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use switchyard_api::policy::NodeInfo;
use switchyard_api::ruleset::Cidr;
use switchyard_api::validation::node::ZONE_LABEL;

/// The facts link needs from the Node: name, zone label, addresses (InternalIP first).
pub fn node_info(node: &Node) -> NodeInfo {
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .cloned();
    let mut addresses: Vec<IpAddr> = Vec::new();
    let all = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for kind in ["InternalIP", "ExternalIP"] {
        for a in all.iter().filter(|a| a.type_ == kind) {
            match a.address.parse() {
                Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
                Ok(_) => {}
                Err(_) => tracing::warn!(address = %a.address, "skipping unparsable node address"),
            }
        }
    }
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        zone,
        addresses,
    }
}

/// The node's `spec.podCIDRs` (or `spec.podCIDR`), unparsable entries skipped.
pub fn pod_cidrs(node: &Node) -> Vec<Cidr> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The node is going away: being deleted or tainted for removal by the autoscaler.
pub fn being_deleted(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_some()
        || node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"))
}
