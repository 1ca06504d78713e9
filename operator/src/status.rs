//! `ProxyConfig.status` from the pool's nodes, its rollout and its conflicts:
//! counts, and the `Ready`, `Progressing`, `Degraded`, `Conflict`,
//! `ConnectionsCut`, `Reconciling` and `Stalled` conditions with messages a
//! person can act on.
//!
//! Every condition carries the generation it describes. `Reconciling` and
//! `Stalled` follow kstatus (what Flux and `kubectl wait` pipelines read): while
//! the pool is not `Ready`, exactly one of them is True unless the pool selects
//! no node — `Reconciling` while nodes are still being switched or waited for,
//! `Stalled` when the pool will not reach `spec.mode` without a change by a
//! person (a halted or rolled-back rollout, failed nodes, an invalid spec).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use switchyard_api::Mode;
use switchyard_api::proxyconfig::{ProxyConfigStatus, RolloutPhase, RolloutStatus};

use crate::pools::NodeConflict;
use crate::rollout::NodeState;

/// Everything the status of one pool is computed from.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    pub mode: Mode,
    pub generation: Option<i64>,
    /// The pool's nodes, with the targets just decided.
    pub nodes: &'a [NodeState],
    pub rollout: Option<&'a RolloutStatus>,
    pub conflicts: &'a [NodeConflict],
    pub unassigned_nodes: u32,
    /// Spec problems (bad selector, unusable rollout settings).
    pub problems: &'a [String],
    /// The conditions recorded before, to keep their transition times.
    pub previous_conditions: &'a [Condition],
    pub max_unavailable: u32,
    pub now: Timestamp,
}

/// A node's state for `nodesByState`.
pub fn node_state_name(node: &NodeState) -> &'static str {
    match node.target {
        Some(t) if node.settled_on(t) => "ready",
        Some(t) if node.failed == Some(t) => "failed",
        _ if node.applied.is_none() && node.failed.is_none() => "unknown",
        _ => "switching",
    }
}

/// The whole status.
pub fn aggregate(input: &StatusInput<'_>) -> ProxyConfigStatus {
    let mut nodes_by_state: BTreeMap<String, u32> = BTreeMap::new();
    let mut nodes_by_mode: BTreeMap<String, u32> = BTreeMap::new();
    for node in input.nodes {
        *nodes_by_state
            .entry(node_state_name(node).to_string())
            .or_default() += 1;
        if let Some(applied) = node.applied {
            *nodes_by_mode.entry(applied.to_string()).or_default() += 1;
        }
    }
    let count = |f: &dyn Fn(&NodeState) -> bool| {
        u32::try_from(input.nodes.iter().filter(|n| f(n)).count()).unwrap_or(u32::MAX)
    };
    let ready_nodes = count(&|n| n.settled_on(input.mode));
    let updated_nodes = count(&|n| n.target == Some(input.mode));
    let nodes = u32::try_from(input.nodes.len()).unwrap_or(u32::MAX);
    let ready = ready_condition(input, ready_nodes, nodes);
    let progressing = progressing_condition(input);
    let stalled = stalled_condition(input, ready.ok);
    let reconciling = reconciling_condition(input, &ready, &progressing, stalled.ok);
    let conditions = [
        ready,
        progressing,
        degraded_condition(input),
        conflict_condition(input),
        connections_cut_condition(input),
        reconciling,
        stalled,
    ]
    .into_iter()
    .map(|c| keep_transition_time(c, input))
    .collect();
    ProxyConfigStatus {
        observed_generation: input.generation,
        conditions,
        nodes,
        ready_nodes,
        updated_nodes,
        nodes_by_state,
        nodes_by_mode,
        conflicting_nodes: input.conflicts.iter().map(|c| c.node.clone()).collect(),
        unassigned_nodes: input.unassigned_nodes,
        rollout: input.rollout.cloned(),
    }
}

struct Cond {
    type_: &'static str,
    ok: bool,
    reason: &'static str,
    message: String,
}

fn keep_transition_time(c: Cond, input: &StatusInput<'_>) -> Condition {
    let status = if c.ok { "True" } else { "False" };
    let since = input
        .previous_conditions
        .iter()
        .find(|p| p.type_ == c.type_ && p.status == status)
        .map_or(Time(input.now), |p| p.last_transition_time.clone());
    Condition {
        type_: c.type_.to_string(),
        status: status.to_string(),
        reason: c.reason.to_string(),
        message: c.message,
        observed_generation: input.generation,
        last_transition_time: since,
    }
}

/// Up to five names, then how many more.
fn name_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    match names.len() {
        0..=5 => shown,
        n => format!("{shown} and {} more", n - 5),
    }
}

/// "N nodes failed: a, b, …".
fn failed_nodes(r: &RolloutStatus) -> String {
    format!(
        "{} nodes failed: {}",
        r.failed_nodes.len(),
        name_list(r.failed_nodes.iter().map(String::as_str))
    )
}

fn ready_condition(input: &StatusInput<'_>, ready: u32, total: u32) -> Cond {
    let mode = input.mode;
    if !input.problems.is_empty() {
        return Cond {
            type_: "Ready",
            ok: false,
            reason: "InvalidSpec",
            message: input.problems.join("; "),
        };
    }
    if total == 0 {
        return Cond {
            type_: "Ready",
            ok: false,
            reason: "NoNodes",
            message:
                "spec.nodeSelector selects no node that is not claimed by a pool of higher priority"
                    .into(),
        };
    }
    if let Some(r) = input
        .rollout
        .filter(|r| r.phase == RolloutPhase::RolledBack && r.to == mode)
    {
        return Cond {
            type_: "Ready",
            ok: false,
            reason: "RolledBack",
            message: format!(
                "the pool runs {} because the switch to {mode} was rolled back; change the spec to try again",
                r.from
            ),
        };
    }
    if ready == total {
        return Cond {
            type_: "Ready",
            ok: true,
            reason: "AllNodesReady",
            message: format!("all {total} nodes run {mode}, verified"),
        };
    }
    let not_ready = name_list(
        input
            .nodes
            .iter()
            .filter(|n| !n.settled_on(mode))
            .map(|n| n.name.as_str()),
    );
    Cond {
        type_: "Ready",
        ok: false,
        reason: "NodesNotReady",
        message: format!("{ready} of {total} nodes run {mode}, verified; not yet: {not_ready}"),
    }
}

fn progressing_condition(input: &StatusInput<'_>) -> Cond {
    let (ok, reason, message) = match input.rollout {
        None => (
            false,
            "NoRollout",
            format!("every node was assigned {} directly", input.mode),
        ),
        Some(r) => {
            let progress = format!("{}/{} nodes run {}", r.updated, r.total, r.to);
            match r.phase {
                RolloutPhase::Progressing => {
                    let in_flight = input
                        .nodes
                        .iter()
                        .filter(|n| n.target == Some(r.to) && !n.settled_on(r.to))
                        .count();
                    (
                        true,
                        "RolloutInProgress",
                        format!(
                            "switching from {} to {}: {progress}; {in_flight} switching now (at most {} at once)",
                            r.from, r.to, input.max_unavailable
                        ),
                    )
                }
                RolloutPhase::Paused => (
                    false,
                    "RolloutPaused",
                    format!(
                        "the switch from {} to {} is paused (spec.rollout.paused): {progress}",
                        r.from, r.to
                    ),
                ),
                RolloutPhase::Halted => (
                    false,
                    "RolloutHalted",
                    format!(
                        "the switch from {} to {} stopped: {} nodes failed, more than spec.rollout.failureBudget allows and autoRollback is off; {progress}",
                        r.from,
                        r.to,
                        r.failed_nodes.len()
                    ),
                ),
                RolloutPhase::RollingBack => (
                    true,
                    "RollingBack",
                    format!(
                        "rolling back from {} to {} after {}",
                        r.to,
                        r.from,
                        failed_nodes(r)
                    ),
                ),
                RolloutPhase::Complete => (
                    false,
                    "RolloutComplete",
                    format!(
                        "the switch from {} to {} is complete: {progress}",
                        r.from, r.to
                    ),
                ),
                RolloutPhase::RolledBack => (
                    false,
                    "RolledBack",
                    format!(
                        "the switch from {} to {} was rolled back; change the spec to try again",
                        r.from, r.to
                    ),
                ),
            }
        }
    };
    Cond {
        type_: "Progressing",
        ok,
        reason,
        message,
    }
}

/// Whether the running rollout (or rollback) cuts connections on each node
/// it switches: set as the rollout is decided, before any node switches.
fn connections_cut_condition(input: &StatusInput<'_>) -> Cond {
    let switching = input.rollout.and_then(|r| match r.phase {
        RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Halted => {
            Some((r.from, r.to))
        }
        RolloutPhase::RollingBack => Some((r.to, r.from)),
        RolloutPhase::Complete | RolloutPhase::RolledBack => None,
    });
    let cut = switching.and_then(|(from, to)| {
        crate::migration::connections_cut(from, to).map(|what| (from, to, what))
    });
    let (ok, reason, message) = match (switching, cut) {
        (_, Some((from, to, what))) => (
            true,
            "RolloutCutsConnections",
            format!("switching a node from {from} to {to} cuts {what}"),
        ),
        (Some((from, to)), None) => (
            false,
            "NoConnectionsCut",
            format!("switching a node from {from} to {to} keeps every connection"),
        ),
        (None, None) => (
            false,
            "NoRollout",
            "no rollout is switching nodes".to_string(),
        ),
    };
    Cond {
        type_: "ConnectionsCut",
        ok,
        reason,
        message,
    }
}

/// kstatus' `Stalled`: the pool will not reach `spec.mode` on its own.
fn stalled_condition(input: &StatusInput<'_>, ready: bool) -> Cond {
    let stalled = |reason, message| Cond {
        type_: "Stalled",
        ok: true,
        reason,
        message,
    };
    if !input.problems.is_empty() {
        return stalled("InvalidSpec", input.problems.join("; "));
    }
    let rollout = input.rollout.filter(|r| r.to == input.mode);
    match rollout.map(|r| r.phase) {
        Some(RolloutPhase::Halted) => {
            return stalled(
                "RolloutHalted",
                "the rollout stopped: more nodes failed than spec.rollout.failureBudget allows; raise the budget or change spec.mode".into(),
            );
        }
        Some(RolloutPhase::RollingBack | RolloutPhase::RolledBack) => {
            return stalled(
                "RolledBack",
                format!(
                    "more nodes failed to switch to {} than spec.rollout.failureBudget allows and the pool goes back; change the spec to try again",
                    input.mode
                ),
            );
        }
        Some(RolloutPhase::Progressing | RolloutPhase::Paused) => {}
        Some(RolloutPhase::Complete) | None if !ready => {
            let failed: Vec<&str> = input
                .nodes
                .iter()
                .filter(|n| n.target == Some(input.mode) && n.failed == n.target)
                .map(|n| n.name.as_str())
                .chain(
                    rollout
                        .iter()
                        .flat_map(|r| r.failed_nodes.iter().map(String::as_str)),
                )
                .collect();
            if !failed.is_empty() {
                return stalled(
                    "NodesFailed",
                    format!(
                        "{} nodes failed to switch to {} and are not retried: {}",
                        failed.len(),
                        input.mode,
                        name_list(failed)
                    ),
                );
            }
        }
        Some(RolloutPhase::Complete) | None => {}
    }
    Cond {
        type_: "Stalled",
        ok: false,
        reason: "NotStalled",
        message: "nothing stops the pool from reaching spec.mode".into(),
    }
}

/// kstatus' `Reconciling`: the current generation is still being rolled out.
fn reconciling_condition(
    input: &StatusInput<'_>,
    ready: &Cond,
    progressing: &Cond,
    stalled: bool,
) -> Cond {
    let waiting = !ready.ok && !stalled && !input.nodes.is_empty();
    let (ok, reason, message) = match input.rollout.map(|r| r.phase) {
        _ if !waiting => (
            false,
            "Reconciled",
            format!("nothing left to do for generation {}", generation(input)),
        ),
        Some(RolloutPhase::Progressing | RolloutPhase::Paused) => {
            (true, progressing.reason, progressing.message.clone())
        }
        _ => (true, "NodesSwitching", ready.message.clone()),
    };
    Cond {
        type_: "Reconciling",
        ok,
        reason,
        message,
    }
}

fn generation(input: &StatusInput<'_>) -> String {
    input
        .generation
        .map_or_else(|| "unknown".into(), |g| g.to_string())
}

fn degraded_condition(input: &StatusInput<'_>) -> Cond {
    let failing: Vec<&str> = input
        .nodes
        .iter()
        .filter(|n| n.target.is_some_and(|t| n.failed == Some(t)))
        .map(|n| n.name.as_str())
        .collect();
    let (ok, reason, message) = if !input.problems.is_empty() {
        (true, "InvalidSpec", input.problems.join("; "))
    } else if let Some(r) = input.rollout.filter(|r| {
        matches!(
            r.phase,
            RolloutPhase::RollingBack | RolloutPhase::RolledBack
        )
    }) {
        (
            true,
            "RolledBack",
            format!(
                "the pool runs {} instead of spec.mode {} after {}",
                r.from,
                r.to,
                failed_nodes(r)
            ),
        )
    } else if let Some(r) = input.rollout.filter(|r| !r.failed_nodes.is_empty()) {
        (
            true,
            "NodesFailed",
            format!(
                "{} nodes failed to switch to {} and were moved back: {}",
                r.failed_nodes.len(),
                r.to,
                name_list(r.failed_nodes.iter().map(String::as_str))
            ),
        )
    } else if !failing.is_empty() {
        (
            true,
            "NodesFailing",
            format!(
                "{} nodes report their target mode failed: {}",
                failing.len(),
                name_list(failing)
            ),
        )
    } else {
        (false, "AsExpected", "no node failed".to_string())
    };
    Cond {
        type_: "Degraded",
        ok,
        reason,
        message,
    }
}

fn conflict_condition(input: &StatusInput<'_>) -> Cond {
    if input.conflicts.is_empty() {
        return Cond {
            type_: "Conflict",
            ok: false,
            reason: "NoConflict",
            message: "no node is selected by another ProxyConfig of the same priority".into(),
        };
    }
    let mut by_pools: BTreeMap<(String, i32), Vec<&str>> = BTreeMap::new();
    for c in input.conflicts {
        by_pools
            .entry((c.pools.join(", "), c.priority))
            .or_default()
            .push(&c.node);
    }
    let message = by_pools
        .into_iter()
        .map(|((pools, priority), nodes)| {
            format!(
                "nodes {} are selected by ProxyConfigs {pools}, all of priority {priority}",
                name_list(nodes)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Cond {
        type_: "Conflict",
        ok: true,
        reason: "PriorityTie",
        message: format!(
            "{message}; they stay as they are until one ProxyConfig's spec.priority is higher"
        ),
    }
}
