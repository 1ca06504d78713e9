//! One pool's plan: which ProxyNodes are written, released or left alone, and
//! the conditions a person reads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::clock::now;
use common::objects::{config, node, proxy_node, selector};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::SignedDuration;
use switchyard_api::{Mode, ProxyConfig, ProxyNode, ProxyNodeSpec};
use switchyard_operator::plan::{PoolInput, PoolPlan, ProxyNodeApply, plan_pool};
use switchyard_operator::pools::assign_pools;

fn plan(
    config: &ProxyConfig,
    nodes: &[Node],
    proxy_nodes: &[ProxyNode],
    at: k8s_openapi::jiff::Timestamp,
) -> PoolPlan {
    let nodes: Vec<Arc<Node>> = nodes.iter().cloned().map(Arc::new).collect();
    let assignment = assign_pools(&nodes, std::slice::from_ref(config));
    plan_pool(&PoolInput {
        config,
        assignment: &assignment,
        nodes: &nodes,
        proxy_nodes,
        now: at,
        switch_margin: Duration::from_secs(60),
    })
}

fn condition<'a>(
    plan: &'a PoolPlan,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    plan.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap()
}

#[test]
fn a_node_no_pool_selects_is_released_with_its_mode_kept() {
    let pool = config(
        "edge",
        Mode::Nftables,
        0,
        selector(&[("role", "edge")], &[]),
    );
    let nodes = vec![
        node("a", &[("role", "edge")]),
        node("b", &[("role", "core")]),
    ];
    let proxy_nodes = vec![
        proxy_node("a", Some("edge"), Mode::Nftables),
        proxy_node("b", Some("edge"), Mode::Nftables),
    ];
    let p = plan(&pool, &nodes, &proxy_nodes, now());
    assert_eq!(
        p.proxy_nodes,
        vec![ProxyNodeApply {
            name: "b".into(),
            node_uid: "uid-b".into(),
            spec: ProxyNodeSpec {
                pool: None,
                target_mode: Some(Mode::Nftables),
            },
        }]
    );
    assert_eq!(
        (
            p.status.nodes,
            p.status.ready_nodes,
            p.status.unassigned_nodes
        ),
        (1, 1, 1)
    );
    let ready = condition(&p, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.message.as_str()),
        ("True", "all 1 nodes run nftables, verified")
    );
}

#[test]
fn a_node_of_another_pool_is_not_touched() {
    let pool = config(
        "edge",
        Mode::Nftables,
        0,
        selector(&[("role", "edge")], &[]),
    );
    let nodes = vec![node("c", &[("role", "core")])];
    let proxy_nodes = vec![proxy_node("c", Some("core"), Mode::Iptables)];
    let p = plan(&pool, &nodes, &proxy_nodes, now());
    assert!(p.proxy_nodes.is_empty());
    let ready = condition(&p, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NoNodes")
    );
}

#[test]
fn an_unusable_selector_is_reported_as_degraded() {
    let pool = config(
        "edge",
        Mode::Nftables,
        0,
        selector(&[], &[("role", "Near", &["x"])]),
    );
    let p = plan(&pool, &[node("a", &[])], &[], now());
    let degraded = condition(&p, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        degraded
            .message
            .starts_with("spec.nodeSelector cannot be used"),
        "{}",
        degraded.message
    );
}

#[test]
fn a_condition_keeps_its_transition_time_while_its_status_holds() {
    let mut pool = config("edge", Mode::Nftables, 0, selector(&[], &[]));
    let nodes = vec![node("a", &[])];
    let proxy_nodes = vec![proxy_node("a", Some("edge"), Mode::Nftables)];
    let first = plan(&pool, &nodes, &proxy_nodes, now());
    pool.status = Some(first.status.clone());
    let later = now() + SignedDuration::from_secs(600);
    let second = plan(&pool, &nodes, &proxy_nodes, later);
    assert_eq!(
        condition(&second, "Ready").last_transition_time,
        condition(&first, "Ready").last_transition_time
    );
    assert_eq!(
        second.status, first.status,
        "nothing changed, so nothing is written"
    );
    // A node failing flips Ready, with a new transition time.
    let mut failing = proxy_nodes.clone();
    failing[0].status.as_mut().unwrap().conditions.clear();
    let third = plan(&pool, &nodes, &failing, later);
    let ready = condition(&third, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.last_transition_time.0),
        ("False", later)
    );
    assert_eq!(
        ready.message,
        "0 of 1 nodes run nftables, verified; not yet: a"
    );
}

/// A rollout whose mode pair the migration matrix measured as cutting
/// connections says so before any node switches; one that keeps them does not warn.
#[test]
fn a_rollout_that_cuts_connections_warns_before_it_starts() {
    use switchyard_operator::plan::PoolEvent;
    use switchyard_operator::rollout::RolloutEvent;
    let nodes = vec![node("a", &[]), node("b", &[])];
    let on = |mode| -> Vec<ProxyNode> {
        ["a", "b"]
            .iter()
            .map(|n| proxy_node(n, Some("edge"), mode))
            .collect()
    };
    let to_ebpf = plan(
        &config("edge", Mode::Ebpf, 0, selector(&[], &[])),
        &nodes,
        &on(Mode::Iptables),
        now(),
    );
    let cut = condition(&to_ebpf, "ConnectionsCut");
    assert_eq!(
        (cut.status.as_str(), cut.reason.as_str()),
        ("True", "RolloutCutsConnections")
    );
    assert!(
        cut.message
            .starts_with("switching a node from iptables to ebpf cuts answers to UDP sockets connected to a service"),
        "{}",
        cut.message
    );
    assert!(matches!(
        to_ebpf.events.as_slice(),
        [
            PoolEvent::ConnectionsCut {
                from: Mode::Iptables,
                to: Mode::Ebpf,
                ..
            },
            PoolEvent::Rollout(RolloutEvent::Started { .. }),
            ..
        ]
    ));

    let to_ipvs = plan(
        &config("edge", Mode::Ipvs, 0, selector(&[], &[])),
        &nodes,
        &on(Mode::Iptables),
        now(),
    );
    let kept = condition(&to_ipvs, "ConnectionsCut");
    assert_eq!(
        (kept.status.as_str(), kept.reason.as_str()),
        ("False", "NoConnectionsCut")
    );
    assert!(
        !to_ipvs
            .events
            .iter()
            .any(|e| matches!(e, PoolEvent::ConnectionsCut { .. }))
    );
}

/// A switch to iptables at 5000 Services × 5 endpoints outlived the fixed
/// deadline (verification timeout + margin) while `iptables-restore` still
/// ran, and the node counted as failed: the deadline grows with the
/// ruleset the pool's nodes report.
#[test]
fn a_node_building_a_large_ruleset_is_not_timed_out_at_the_fixed_deadline() {
    use switchyard_api::proxynode::AppliedCounts;
    let nodes = vec![node("a", &[])];
    let with_counts = |endpoints: u32, target: Mode| {
        let mut p = proxy_node("a", Some("edge"), Mode::Nftables);
        p.spec.target_mode = Some(target);
        p.status.as_mut().unwrap().counts = Some(AppliedCounts {
            service_ports: 5_000,
            endpoints,
            objects: 0,
        });
        vec![p]
    };
    let failed_after = |endpoints: u32| {
        let mut pool = config("edge", Mode::Iptables, 0, selector(&[], &[]));
        let first = plan(
            &pool,
            &nodes,
            &with_counts(endpoints, Mode::Nftables),
            now(),
        );
        pool.status = Some(first.status.clone());
        // The node took the target and is still building 2 minutes later.
        let later = now() + SignedDuration::from_secs(120);
        let second = plan(
            &pool,
            &nodes,
            &with_counts(endpoints, Mode::Iptables),
            later,
        );
        second.status.rollout.unwrap().failed_nodes
    };
    assert_eq!(
        failed_after(25_000),
        Vec::<String>::new(),
        "given time to build"
    );
    assert_eq!(
        failed_after(0),
        vec!["a".to_string()],
        "a small ruleset is not"
    );
}
