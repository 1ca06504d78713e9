//! Pool assignment: which ProxyConfig each node belongs to.
//!
//! A node goes to the matching ProxyConfig with the highest `spec.priority`.
//! When several share that priority the node is in conflict: it is reported on
//! every ProxyConfig involved and left where it is. A node no pool selects is
//! left alone too.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use switchyard_api::ProxyConfig;

/// A node selected by several pools of the same, highest priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConflict {
    pub node: String,
    /// Every pool involved, sorted.
    pub pools: Vec<String>,
    pub priority: i32,
}

/// The outcome of assigning every node to a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Node name → the pool that won it.
    pub assigned: BTreeMap<String, String>,
    /// Pool name → its conflicts, sorted by node.
    pub conflicts: BTreeMap<String, Vec<NodeConflict>>,
    /// Nodes no pool selects.
    pub unassigned: BTreeSet<String>,
    /// Pools whose `nodeSelector` cannot be parsed (they select nothing): name → why.
    pub invalid_selectors: BTreeMap<String, String>,
}

impl Assignment {
    /// The nodes that `pool` won, sorted.
    pub fn nodes_of<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.assigned
            .iter()
            .filter(move |(_, p)| p.as_str() == pool)
            .map(|(n, _)| n.as_str())
    }

    /// The conflicts `pool` is involved in.
    pub fn conflicts_of(&self, pool: &str) -> &[NodeConflict] {
        self.conflicts.get(pool).map_or(&[], Vec::as_slice)
    }
}

/// Assign `nodes` to `configs` (ProxyConfigs being deleted must be left out by the caller).
pub fn assign_pools<N: Borrow<Node>, C: Borrow<ProxyConfig>>(
    nodes: &[N],
    configs: &[C],
) -> Assignment {
    let mut out = Assignment::default();
    let mut selectors: Vec<(String, i32, Selector)> = Vec::new();
    for config in configs.iter().map(Borrow::borrow) {
        let name = config.name_any();
        match Selector::try_from(config.spec.node_selector.clone()) {
            Ok(selector) => selectors.push((name, config.spec.priority, selector)),
            Err(e) => {
                out.invalid_selectors.insert(name, e.to_string());
            }
        }
    }
    let no_labels = BTreeMap::new();
    for node in nodes.iter().map(Borrow::borrow) {
        let node_name = node.name_any();
        let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
        let matching: Vec<(&str, i32)> = selectors
            .iter()
            .filter(|(_, _, selector)| selector.matches(labels))
            .map(|(name, priority, _)| (name.as_str(), *priority))
            .collect();
        let Some(top) = matching.iter().map(|(_, p)| *p).max() else {
            out.unassigned.insert(node_name);
            continue;
        };
        let mut winners: Vec<String> = matching
            .iter()
            .filter(|(_, p)| *p == top)
            .map(|(name, _)| name.to_string())
            .collect();
        winners.sort();
        if let [winner] = winners.as_slice() {
            out.assigned.insert(node_name, winner.clone());
            continue;
        }
        for pool in &winners {
            out.conflicts
                .entry(pool.clone())
                .or_default()
                .push(NodeConflict {
                    node: node_name.clone(),
                    pools: winners.clone(),
                    priority: top,
                });
        }
    }
    for conflicts in out.conflicts.values_mut() {
        conflicts.sort_by(|a, b| a.node.cmp(&b.node));
    }
    out
}
