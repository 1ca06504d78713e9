//! One pool's reconcile as a pure function: from the ProxyConfig, the pool
//! assignment, the Nodes and the ProxyNodes to the ProxyNode specs to apply,
//! the status to record and the Events to publish.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use switchyard_api::{Mode, ProxyConfig, ProxyConfigStatus, ProxyNode, ProxyNodeSpec};

use crate::policy::RolloutPolicy;
use crate::pools::{Assignment, NodeConflict};
use crate::rollout::{self, NodeState, RolloutEvent, RolloutInput};
use crate::status::{self, StatusInput};

/// What a pool's reconcile reads.
#[derive(Clone, Debug)]
pub struct PoolInput<'a> {
    pub config: &'a ProxyConfig,
    pub assignment: &'a Assignment,
    pub nodes: &'a [Arc<Node>],
    pub proxy_nodes: &'a [ProxyNode],
    pub now: Timestamp,
    /// Added to the verification timeout for a node's switch deadline.
    pub switch_margin: Duration,
}

/// A ProxyNode to create or update, owned by the Node of the same name.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyNodeApply {
    pub name: String,
    pub node_uid: String,
    pub spec: ProxyNodeSpec,
}

/// Something worth an Event on the ProxyConfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolEvent {
    Rollout(RolloutEvent),
    /// The set of conflicting nodes changed and is not empty.
    Conflict(String),
    /// A rollout (or its rollback) from `from` to `to` is about to start and
    /// will cut these connections on each node ([`crate::migration`]).
    ConnectionsCut {
        from: Mode,
        to: Mode,
        what: &'static str,
    },
}

/// What a pool's reconcile writes.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolPlan {
    pub proxy_nodes: Vec<ProxyNodeApply>,
    pub status: ProxyConfigStatus,
    pub events: Vec<PoolEvent>,
    pub requeue_after: Option<Duration>,
}

/// The warning published before a rollout or rollback that cuts connections.
fn cut_warning(event: &RolloutEvent) -> Option<PoolEvent> {
    let (from, to) = match *event {
        RolloutEvent::Started { from, to, .. } => (from, to),
        RolloutEvent::RollbackStarted { from, to, .. } => (to, from),
        _ => return None,
    };
    crate::migration::connections_cut(from, to).map(|what| PoolEvent::ConnectionsCut {
        from,
        to,
        what,
    })
}

/// The rollout's view of a ProxyNode (or of a node that has none yet).
pub fn node_state(name: &str, proxy_node: Option<&ProxyNode>) -> NodeState {
    let status = proxy_node.and_then(|p| p.status.as_ref());
    NodeState {
        name: name.to_string(),
        target: proxy_node.and_then(|p| p.spec.target_mode),
        applied: status.and_then(|s| s.applied_mode),
        failed: status.and_then(|s| s.failed_mode),
        ready: status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        }),
    }
}

/// Plan one pool.
pub fn plan_pool(input: &PoolInput<'_>) -> PoolPlan {
    let config = input.config;
    let pool = config.name_any();
    let previous = config.status.clone().unwrap_or_default();
    let proxy_nodes: BTreeMap<String, &ProxyNode> = input
        .proxy_nodes
        .iter()
        .map(|p| (p.name_any(), p))
        .collect();
    let node_uids = uids(input.nodes);

    let members: Vec<NodeState> = input
        .assignment
        .nodes_of(&pool)
        .filter(|n| node_uids.contains_key(*n))
        .map(|n| node_state(n, proxy_nodes.get(n).copied()))
        .collect();
    let pool_size = u32::try_from(members.len()).unwrap_or(u32::MAX);
    let mut policy = RolloutPolicy::resolve(&config.spec.rollout, pool_size, input.switch_margin);
    let largest = input
        .assignment
        .nodes_of(&pool)
        .filter_map(|n| proxy_nodes.get(n)?.status.as_ref()?.counts.as_ref())
        .map(|c| c.service_ports.saturating_add(c.endpoints))
        .max()
        .unwrap_or(0);
    let from = previous.rollout.as_ref().map(|r| r.from);
    let modes: Vec<Mode> = [Some(config.spec.mode), from]
        .into_iter()
        .flatten()
        .collect();
    policy.allow_build(&modes, largest);
    if let Some(why) = input.assignment.invalid_selectors.get(&pool) {
        policy.problems.push(format!(
            "spec.nodeSelector cannot be used, it selects no node: {why}"
        ));
    }
    let step = rollout::step(&RolloutInput {
        mode: config.spec.mode,
        generation: config.metadata.generation,
        policy: &policy,
        previous: previous.rollout.as_ref(),
        nodes: &members,
        now: input.now,
    });

    let mut after = members;
    let mut applies = Vec::new();
    for node in &mut after {
        if let Some(mode) = step.targets.get(&node.name) {
            node.target = Some(*mode);
        }
        let spec = ProxyNodeSpec {
            pool: Some(pool.clone()),
            target_mode: node.target,
        };
        // Members were chosen among nodes with a uid.
        if let Some(uid) = node_uids.get(&node.name)
            && proxy_nodes.get(&node.name).map(|p| &p.spec) != Some(&spec)
        {
            applies.push(ProxyNodeApply {
                name: node.name.clone(),
                node_uid: uid.clone(),
                spec,
            });
        }
    }
    applies.extend(released_nodes(
        &pool,
        input.assignment,
        &proxy_nodes,
        &node_uids,
    ));

    let conflicts: &[NodeConflict] = input.assignment.conflicts_of(&pool);
    let status = status::aggregate(&StatusInput {
        mode: config.spec.mode,
        generation: config.metadata.generation,
        nodes: &after,
        rollout: step.status.as_ref(),
        conflicts,
        unassigned_nodes: u32::try_from(input.assignment.unassigned.len()).unwrap_or(u32::MAX),
        problems: &policy.problems,
        previous_conditions: &previous.conditions,
        max_unavailable: policy.max_unavailable,
        now: input.now,
    });
    let mut events: Vec<PoolEvent> = step
        .events
        .into_iter()
        .flat_map(|e| cut_warning(&e).into_iter().chain([PoolEvent::Rollout(e)]))
        .collect();
    if status.conflicting_nodes != previous.conflicting_nodes
        && let Some(c) = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Conflict" && c.status == "True")
    {
        events.push(PoolEvent::Conflict(c.message.clone()));
    }
    PoolPlan {
        proxy_nodes: applies,
        status,
        events,
        requeue_after: step.requeue_after,
    }
}

/// ProxyNodes that name this pool but whose node no pool selects any more.
fn released_nodes(
    pool: &str,
    assignment: &Assignment,
    proxy_nodes: &BTreeMap<String, &ProxyNode>,
    node_uids: &BTreeMap<String, String>,
) -> Vec<ProxyNodeApply> {
    assignment
        .unassigned
        .iter()
        .filter_map(|name| release(pool, proxy_nodes.get(name)?, node_uids))
        .collect()
}

/// Every ProxyNode of a pool that is being deleted.
pub fn release_pool(
    pool: &str,
    nodes: &[Arc<Node>],
    proxy_nodes: &[ProxyNode],
) -> Vec<ProxyNodeApply> {
    let node_uids = uids(nodes);
    proxy_nodes
        .iter()
        .filter_map(|p| release(pool, p, &node_uids))
        .collect()
}

/// A ProxyNode of `pool` leaves it: its pool is cleared and its target mode
/// kept, so the node is left as it is.
fn release(
    pool: &str,
    proxy_node: &ProxyNode,
    node_uids: &BTreeMap<String, String>,
) -> Option<ProxyNodeApply> {
    (proxy_node.spec.pool.as_deref() == Some(pool)).then_some(())?;
    let name = proxy_node.name_any();
    Some(ProxyNodeApply {
        node_uid: node_uids.get(&name)?.clone(),
        name,
        spec: ProxyNodeSpec {
            pool: None,
            target_mode: proxy_node.spec.target_mode,
        },
    })
}

fn uids(nodes: &[Arc<Node>]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .filter_map(|n| Some((n.name_any(), n.metadata.uid.clone()?)))
        .collect()
}
