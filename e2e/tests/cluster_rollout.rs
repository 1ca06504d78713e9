//! Rollouts against the real API server, with two replicas of the
//! `switchyard-operator` binary and a `node-agent` process per node:
//!
//! - a `kubectl patch` of the mode rolls out in batches that never make more
//!   nodes unavailable than `maxUnavailable` (every ProxyNode state the API
//!   server went through, watched), each switch verified by its agent, while
//!   long-lived TCP connections through the Services keep working;
//! - `paused: true` stops it after the batch in flight, resuming finishes it;
//! - the leader is SIGKILLed mid-rollout: the other replica takes the Lease
//!   over within the lease time and finishes the rollout; the API server's
//!   audit log shows no write by a replica that did not hold the Lease;
//! - a rollout whose verification cannot pass (its Service has no endpoints)
//!   rolls back by itself;
//! - `kubectl wait --for=condition=Ready` started right after the mode patch
//!   returns only with the rollout of that generation complete, and one for
//!   `Stalled` returns as soon as the failing rollout rolls back (the
//!   README's fail-fast recipe), while Ready stays unmet.
//!
//! Nothing is refused to the operators or agents (`config/rbac` exactly).
//! Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{
    CONVERGE, all_on, finish, kill_the_leader, kubectl_wait, leader_other_than, nodes_until,
    nothing_lost, patch_pool, pool_until, settled_on, start, summary,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use switchyard_api::proxyconfig::RolloutPhase;
use switchyard_api::proxynode::SwitchStep;
use switchyard_api::{Mode, ProxyNode};
use switchyard_lab::cluster::layout::{NAMESPACE, PROXY_CONFIG, SERVICE_HTTP_PORT};
use switchyard_lab::cluster::wait::until;
use switchyard_lab::cluster::{Cluster, LEASE};
use switchyard_lab::controlplane::audit::AuditEvent;
use switchyard_lab::controlplane::identity::{NAMESPACE as SYSTEM, OPERATOR_SA};
use switchyard_operator::plan::node_state;

/// What the ProxyNode watch saw during the rollout.
#[derive(Debug, Default)]
struct Seen {
    /// The most nodes unavailable at once (targeted at a mode they have not
    /// settled on: the operator's own definition).
    most_unavailable: usize,
    /// Nodes seen in the `Verifying` step of a switch to the new mode.
    verified: BTreeSet<String>,
}

/// Watch the ProxyNodes until all settle on `to`, recording what was seen.
async fn rollout_watched(client: kube::Client, to: Mode, nodes: usize) -> Seen {
    let mut seen = Seen::default();
    until(
        Api::<ProxyNode>::all(client),
        &format!("every node settled on {to}"),
        CONVERGE,
        move |all| {
            let unavailable = all
                .iter()
                .filter(|n| node_state(&n.name_any(), Some(n)).unavailable())
                .count();
            seen.most_unavailable = seen.most_unavailable.max(unavailable);
            for n in all {
                let switch = n.status.as_ref().and_then(|s| s.switch.as_ref());
                if switch.is_some_and(|s| s.to == to && s.step == SwitchStep::Verifying) {
                    seen.verified.insert(n.name_any());
                }
            }
            let settled = all.iter().filter(|n| settled_on(n, to)).count();
            if settled == nodes {
                Ok(std::mem::take(&mut seen))
            } else {
                Err(format!("{settled} of {nodes} settled: {}", summary(all)))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Nodes targeting `mode`, once at least `count` do.
async fn targeting(cluster: &Cluster, mode: Mode, count: usize) -> Vec<String> {
    nodes_until(cluster, &format!("{count} nodes targeting {mode}"), |all| {
        let names: Vec<String> = all
            .iter()
            .filter(|n| n.spec.target_mode == Some(mode))
            .map(|n| n.name_any())
            .collect();
        (names.len() >= count)
            .then_some(names.clone())
            .ok_or(summary(all))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mode_patch_rolls_out_in_batches_across_a_leader_kill() {
    let mut cluster = start(3, 3, 2).await;
    let began = Instant::now();
    cluster.apply_proxy_config(Mode::Iptables, 1).unwrap();
    all_on(&cluster, Mode::Iptables).await;
    let first = leader_other_than(&cluster, None).await;
    println!(
        "every node on iptables {:.1?} after the apply; {first} leads",
        began.elapsed()
    );

    let clients = cluster.start_clients().unwrap();
    let watched = tokio::spawn(rollout_watched(cluster.client(), Mode::Nftables, 3));
    let rollout = Instant::now();
    patch_pool(&cluster, r#"{"spec":{"mode":"nftables"}}"#);
    let waited_ready = kubectl_wait(&cluster, "Ready");

    // Paused after the first batch: the batch in flight finishes, no other starts.
    let first_batch = targeting(&cluster, Mode::Nftables, 1).await;
    patch_pool(&cluster, r#"{"spec":{"rollout":{"paused":true}}}"#);
    pool_until(
        &cluster,
        "the rollout paused with its first batch done",
        |s| {
            let r = s.rollout.as_ref().ok_or("no rollout")?;
            (r.phase == RolloutPhase::Paused && r.updated == 1 && s.observed_generation == Some(3))
                .then_some(())
                .ok_or(format!("{r:?}"))
        },
    )
    .await;
    let frozen = targeting(&cluster, Mode::Nftables, 1).await;
    assert_eq!(frozen, first_batch, "a batch started while paused");
    nodes_until(&cluster, "the paused pool settled", |all| {
        let on_new = all.iter().filter(|n| settled_on(n, Mode::Nftables)).count();
        let on_old = all.iter().filter(|n| settled_on(n, Mode::Iptables)).count();
        ((on_new, on_old) == (1, 2))
            .then_some(())
            .ok_or(summary(all))
    })
    .await;

    // Resumed; the leader is killed once the second batch is under way.
    patch_pool(&cluster, r#"{"spec":{"rollout":{"paused":false}}}"#);
    targeting(&cluster, Mode::Nftables, 2).await;
    let (second, takeover) = kill_the_leader(&mut cluster, &first).await;
    let bound = cluster.lease_timing().takeover_bound();
    println!("{first} killed; {second} leads {takeover:.1?} later (bound {bound:?})");
    // Slack for a loaded machine on top of the Lease's own bound.
    assert!(
        takeover <= bound + Duration::from_secs(3),
        "take-over took {takeover:?}"
    );

    let seen = watched.await.unwrap();
    pool_until(&cluster, "the rollout complete", |s| {
        let r = s.rollout.as_ref().ok_or("no rollout")?;
        (r.phase == RolloutPhase::Complete && s.ready_nodes == 3)
            .then(|| s.clone())
            .ok_or(format!("{r:?}"))
    })
    .await;
    println!("rollout done in {:.1?}: {seen:?}", rollout.elapsed());
    // What kubectl saw when its wait returned: no earlier than the end.
    let waited = waited_ready.await.unwrap();
    let status = waited.status.clone().unwrap();
    let r = status.rollout.clone().unwrap();
    assert_eq!(
        (
            r.to,
            r.phase,
            status.ready_nodes,
            status.observed_generation
        ),
        (
            Mode::Nftables,
            RolloutPhase::Complete,
            3,
            waited.metadata.generation
        ),
        "kubectl wait returned before the rollout was complete: {status:?}"
    );
    assert_eq!(seen.most_unavailable, 1, "maxUnavailable is 1");
    assert_eq!(seen.verified.len(), 3, "every switch verified: {seen:?}");

    assert_eq!(
        clients.counts().established,
        15,
        "6 node ports from outside, 9 cluster IPs from the client pods"
    );
    nothing_lost(clients, "through the rollout");

    a_rollout_that_cannot_verify_rolls_back(&cluster).await;
    let writes = only_the_leader_wrote(&cluster.control_plane().audit().unwrap());
    println!("operator writes by replica: {writes:?}");
    assert!(writes.get(&first).is_some_and(|n| *n > 0), "{writes:?}");
    assert!(writes.get(&second).is_some_and(|n| *n > 0), "{writes:?}");
    finish(cluster);
}

/// Verification through a Service without endpoints fails on the first node
/// of the rollout; with `autoRollback` (the default) the pool rolls back.
async fn a_rollout_that_cannot_verify_rolls_back(cluster: &Cluster) {
    let empty: Service = serde_json::from_value(json!({
        "metadata": {"name": "empty", "namespace": NAMESPACE},
        "spec": {
            "clusterIP": "10.96.0.60",
            "selector": {"app": "nothing-runs-this"},
            "ports": [{"port": SERVICE_HTTP_PORT, "targetPort": 8080}],
        },
    }))
    .unwrap();
    Api::<Service>::namespaced(cluster.client(), NAMESPACE)
        .create(&PostParams::default(), &empty)
        .await
        .unwrap();
    patch_pool(
        cluster,
        &json!({"spec": {"mode": "iptables", "rollout": {"verification": {
            "service": format!("{NAMESPACE}/empty"), "port": SERVICE_HTTP_PORT, "timeout": "2s"
        }}}})
        .to_string(),
    );
    let stalled = kubectl_wait(cluster, "Stalled");
    let status = pool_until(cluster, "the failed rollout rolled back", |s| {
        let r = s.rollout.as_ref().ok_or("no rollout")?;
        (r.to == Mode::Iptables && r.phase == RolloutPhase::RolledBack)
            .then(|| s.clone())
            .ok_or(format!("{r:?}"))
    })
    .await;
    let rollout = status.rollout.clone().expect("a rollout");
    assert_eq!(
        (rollout.from, rollout.failed_nodes.len()),
        (Mode::Nftables, 1)
    );
    let conditions: BTreeMap<&str, (&str, &str)> = status
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), (c.status.as_str(), c.reason.as_str())))
        .collect();
    assert_eq!(conditions["Ready"], ("False", "RolledBack"));
    assert_eq!(conditions["Degraded"], ("True", "RolledBack"));
    assert_eq!(conditions["Stalled"], ("True", "RolledBack"));
    let seen = stalled.await.unwrap().status.unwrap();
    let phase = seen.rollout.as_ref().map(|r| (r.to, r.phase));
    assert!(
        matches!(
            phase,
            Some((
                Mode::Iptables,
                RolloutPhase::RollingBack | RolloutPhase::RolledBack
            ))
        ),
        "kubectl wait for Stalled returned at {phase:?}"
    );
    let verdict = cluster
        .kubectl()
        .output(&[
            "wait",
            "--for=condition=Ready",
            &format!("proxyconfig/{PROXY_CONFIG}"),
            "--timeout=0",
        ])
        .unwrap();
    assert!(
        !verdict.status.success(),
        "Ready holds after a rollback: {}",
        String::from_utf8_lossy(&verdict.stdout)
    );
    all_on(cluster, Mode::Nftables).await;

    let events = cluster
        .kubectl()
        .run(&["get", "events", "-n", "default"])
        .unwrap();
    println!("{events}");
    for (reason, message) in [
        (
            "NodeFailed",
            "did not switch to iptables: its agent reported the switch failed",
        ),
        ("RollbackStarted", "rolling every node back to nftables"),
        (
            "RolledBack",
            "the switch to iptables was rolled back: the pool runs nftables",
        ),
    ] {
        assert!(
            events
                .lines()
                .any(|l| l.contains(reason) && l.contains(message)),
            "{reason}: {message}\n{events}"
        );
    }
}

/// Walk the audit log in order: the Lease is held by whichever replica last
/// wrote it successfully; every other successful write by an operator must
/// come from that replica. Returns the writes per replica.
fn only_the_leader_wrote(events: &[AuditEvent]) -> BTreeMap<String, usize> {
    let operator = format!("system:serviceaccount:{SYSTEM}:{OPERATOR_SA}");
    let mut holder: Option<String> = None;
    let mut writes: BTreeMap<String, usize> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.user.username == operator && e.is_write() && (200..300).contains(&e.code()))
    {
        let pod = e
            .pod()
            .expect("operator tokens are bound to their Pod")
            .to_string();
        let object = e.object_ref.clone().unwrap_or_default();
        if object.resource == "leases" && object.name.as_deref() == Some(LEASE) {
            holder = Some(pod);
            continue;
        }
        assert_eq!(
            holder.as_deref(),
            Some(pod.as_str()),
            "a write by a replica not holding the Lease: {}",
            e.describe()
        );
        *writes.entry(pod).or_default() += 1;
    }
    writes
}
