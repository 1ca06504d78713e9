//! What GitOps tools read from a ProxyConfig in every phase of a rollout: the
//! status comes from the operator's own aggregation, then it is read the way
//! `kubectl wait --for=condition=Ready` does, the way kstatus (Flux) does, and
//! by the Argo CD health check in `config/argocd/` run in Lua 5.1, as Argo CD
//! runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::clock::now;
use common::objects::{config, selector};
use mlua::{Lua, LuaSerdeExt, SerializeOptions, Value};
use switchyard_api::proxyconfig::{RolloutPhase, RolloutStatus};
use switchyard_api::{Mode, ProxyConfig};
use switchyard_operator::rollout::NodeState;
use switchyard_operator::status::{StatusInput, aggregate};

const HEALTH_LUA: &str = include_str!("../../config/argocd/health-proxyconfig.lua");
const ARGOCD_CM: &str = include_str!("../../config/argocd/argocd-cm.yaml");

/// A pool of four nodes switching from iptables to nftables: `settled` of them
/// run nftables, `switching` target it without running it yet, `failed`
/// reported it failed (and were moved back), the rest still run iptables.
fn nodes(settled: usize, switching: usize, failed: usize) -> Vec<NodeState> {
    (0..4)
        .map(|i| {
            let (target, applied, failed) = if i < settled {
                (Mode::Nftables, Mode::Nftables, None)
            } else if i < settled + switching {
                (Mode::Nftables, Mode::Iptables, None)
            } else if i < settled + switching + failed {
                (Mode::Iptables, Mode::Iptables, Some(Mode::Nftables))
            } else {
                (Mode::Iptables, Mode::Iptables, None)
            };
            NodeState {
                name: format!("node-{i}"),
                target: Some(target),
                applied: Some(applied),
                failed,
                ready: true,
            }
        })
        .collect()
}

fn rollout(phase: RolloutPhase, updated: u32, failed: usize) -> RolloutStatus {
    RolloutStatus {
        from: Mode::Iptables,
        to: Mode::Nftables,
        phase,
        updated,
        total: 4,
        failed_nodes: (4 - failed..4).map(|i| format!("node-{i}")).collect(),
        generation: Some(1),
        batch_started: None,
    }
}

/// A ProxyConfig for nftables with the status the operator writes for these
/// nodes and this rollout.
fn pool(nodes: &[NodeState], rollout: Option<&RolloutStatus>, problems: &[String]) -> ProxyConfig {
    let mut c = config("pool", Mode::Nftables, 0, selector(&[("pool", "a")], &[]));
    c.status = Some(aggregate(&StatusInput {
        mode: Mode::Nftables,
        generation: c.metadata.generation,
        nodes,
        rollout,
        conflicts: &[],
        unassigned_nodes: 0,
        problems,
        previous_conditions: &[],
        max_unavailable: 1,
        now: now(),
    }));
    c
}

fn condition<'a>(c: &'a ProxyConfig, type_: &str) -> (&'a str, &'a str) {
    let cond = c
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (cond.status.as_str(), cond.reason.as_str())
}

/// `kubectl wait --for=condition=Ready` is satisfied: Ready is True and was
/// written for the object's current generation (kubectl compares the
/// condition's observedGeneration, else status.observedGeneration).
fn kubectl_wait_ready(c: &ProxyConfig) -> bool {
    let status = c.status.as_ref().unwrap();
    status.conditions.iter().any(|x| {
        x.type_ == "Ready"
            && x.status == "True"
            && x.observed_generation.or(status.observed_generation) >= c.metadata.generation
    })
}

/// kstatus' generic rules for a custom resource, as Flux applies them.
fn kstatus(c: &ProxyConfig) -> &'static str {
    let status = c.status.as_ref().unwrap();
    if status.observed_generation != c.metadata.generation {
        return "InProgress";
    }
    for x in &status.conditions {
        match (x.type_.as_str(), x.status.as_str()) {
            ("Reconciling", "True") => return "InProgress",
            ("Stalled", "True") => return "Failed",
            _ => {}
        }
    }
    "Current"
}

/// Argo CD's verdict: the Lua health check run on the object as JSON.
fn argo_health(c: &ProxyConfig) -> (String, String) {
    let lua = Lua::new();
    let obj = lua
        .to_value_with(
            &serde_json::to_value(c).unwrap(),
            SerializeOptions::new().serialize_none_to_null(false),
        )
        .unwrap();
    lua.globals().set("obj", obj).unwrap();
    let Value::Table(hs) = lua.load(HEALTH_LUA).eval::<Value>().unwrap() else {
        panic!("the health check returned no table");
    };
    (hs.get("status").unwrap(), hs.get("message").unwrap())
}

/// Every reader agrees with what the phase means.
#[track_caller]
fn assert_reads(c: &ProxyConfig, ready: bool, kstatus_says: &str, argo_says: &str) {
    assert_eq!(kubectl_wait_ready(c), ready, "kubectl wait");
    assert_eq!(kstatus(c), kstatus_says, "kstatus");
    let (health, message) = argo_health(c);
    assert_eq!(health, argo_says, "Argo CD: {message}");
    assert!(!message.is_empty(), "Argo CD health without a message");
    let status = c.status.as_ref().unwrap();
    assert!(
        status
            .conditions
            .iter()
            .all(|x| x.observed_generation == c.metadata.generation),
        "every condition names the generation it describes"
    );
    assert!(
        !(condition(c, "Reconciling").0 == "True" && condition(c, "Stalled").0 == "True"),
        "Reconciling and Stalled at once"
    );
}

#[test]
fn a_rollout_in_progress_is_not_ready_and_reads_as_progressing() {
    let r = rollout(RolloutPhase::Progressing, 1, 0);
    let c = pool(&nodes(1, 1, 0), Some(&r), &[]);
    assert_eq!(condition(&c, "Ready"), ("False", "NodesNotReady"));
    assert_eq!(condition(&c, "Reconciling"), ("True", "RolloutInProgress"));
    assert_eq!(condition(&c, "Stalled"), ("False", "NotStalled"));
    assert_reads(&c, false, "InProgress", "Progressing");
}

#[test]
fn a_node_still_switching_after_the_last_batch_is_not_ready_yet() {
    // Every node targets nftables and the rollout has no batch left to start,
    // but one agent has not reported it applied: the wait must go on.
    let r = rollout(RolloutPhase::Progressing, 3, 0);
    let c = pool(&nodes(3, 1, 0), Some(&r), &[]);
    assert_reads(&c, false, "InProgress", "Progressing");
    let c = pool(&nodes(3, 1, 0), None, &[]);
    assert_eq!(condition(&c, "Reconciling"), ("True", "NodesSwitching"));
    assert_reads(&c, false, "InProgress", "Progressing");
}

#[test]
fn a_paused_rollout_reads_as_suspended() {
    let r = rollout(RolloutPhase::Paused, 1, 0);
    let c = pool(&nodes(1, 0, 0), Some(&r), &[]);
    assert_eq!(condition(&c, "Reconciling"), ("True", "RolloutPaused"));
    assert_reads(&c, false, "InProgress", "Suspended");
}

#[test]
fn a_halted_rollout_is_stalled_so_pipelines_fail_fast() {
    let r = rollout(RolloutPhase::Halted, 1, 2);
    let c = pool(&nodes(1, 0, 2), Some(&r), &[]);
    assert_eq!(condition(&c, "Stalled"), ("True", "RolloutHalted"));
    assert_eq!(condition(&c, "Reconciling").0, "False");
    assert_reads(&c, false, "Failed", "Degraded");
}

#[test]
fn a_rollout_rolling_back_or_rolled_back_is_stalled() {
    let r = rollout(RolloutPhase::RollingBack, 1, 2);
    let c = pool(&nodes(1, 0, 2), Some(&r), &[]);
    assert_eq!(condition(&c, "Stalled"), ("True", "RolledBack"));
    assert_reads(&c, false, "Failed", "Degraded");
    let r = rollout(RolloutPhase::RolledBack, 0, 2);
    let c = pool(&nodes(0, 0, 2), Some(&r), &[]);
    assert_eq!(condition(&c, "Ready"), ("False", "RolledBack"));
    assert_eq!(condition(&c, "Stalled"), ("True", "RolledBack"));
    assert_reads(&c, false, "Failed", "Degraded");
}

#[test]
fn a_rollout_complete_with_failed_nodes_is_stalled_not_ready() {
    let r = rollout(RolloutPhase::Complete, 3, 1);
    let c = pool(&nodes(3, 0, 1), Some(&r), &[]);
    assert_eq!(condition(&c, "Ready"), ("False", "NodesNotReady"));
    assert_eq!(condition(&c, "Stalled"), ("True", "NodesFailed"));
    assert_reads(&c, false, "Failed", "Degraded");
}

#[test]
fn a_complete_rollout_is_ready_and_healthy() {
    let r = rollout(RolloutPhase::Complete, 4, 0);
    let c = pool(&nodes(4, 0, 0), Some(&r), &[]);
    assert_eq!(condition(&c, "Ready"), ("True", "AllNodesReady"));
    assert_eq!(condition(&c, "Reconciling"), ("False", "Reconciled"));
    assert_eq!(condition(&c, "Stalled"), ("False", "NotStalled"));
    assert_reads(&c, true, "Current", "Healthy");
}

#[test]
fn a_ready_status_of_an_older_generation_does_not_satisfy_the_wait() {
    let r = rollout(RolloutPhase::Complete, 4, 0);
    let mut c = pool(&nodes(4, 0, 0), Some(&r), &[]);
    c.metadata.generation = Some(2);
    assert!(!kubectl_wait_ready(&c));
    assert_eq!(kstatus(&c), "InProgress");
    assert_eq!(argo_health(&c).0, "Progressing");
}

#[test]
fn a_pool_without_status_yet_reads_as_progressing() {
    let c = config("pool", Mode::Nftables, 0, selector(&[("pool", "a")], &[]));
    assert_eq!(argo_health(&c).0, "Progressing");
}

#[test]
fn an_invalid_spec_is_stalled() {
    let c = pool(
        &nodes(4, 0, 0),
        None,
        &["spec.rollout.maxUnavailable: 0% is not a count".to_string()],
    );
    assert_eq!(condition(&c, "Ready"), ("False", "InvalidSpec"));
    assert_eq!(condition(&c, "Stalled"), ("True", "InvalidSpec"));
    assert_reads(&c, false, "Failed", "Degraded");
}

#[test]
fn a_pool_selecting_no_node_is_current_but_not_ready() {
    let c = pool(&[], None, &[]);
    assert_eq!(condition(&c, "Ready"), ("False", "NoNodes"));
    assert_reads(&c, false, "Current", "Healthy");
}

#[test]
fn the_argocd_cm_snippet_carries_the_tested_health_check() {
    let cm: serde_json::Value = serde_norway::from_str(ARGOCD_CM).unwrap();
    assert_eq!(
        cm["data"]["resource.customizations.health.switchyard.dev_ProxyConfig"],
        HEALTH_LUA
    );
}
