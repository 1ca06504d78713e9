//! A leader change against the real API server, with two replicas of the
//! `switchyard-operator` binary and a `node-agent` process: the replica that
//! takes the Lease over adopts the published shard layout. It writes no
//! ProxyRuleset (every resourceVersion stays), where a republication would
//! have made every agent fetch a whole new layout and wait for all of it;
//! and a Service made after the take-over reaches the agent. A layout left
//! incomplete (a leader that lost its Lease while writing it) is finished:
//! the next leader writes the missing shard and keeps the others.
//!
//! Nothing is refused to the operators or agents (`config/rbac` exactly).
//! Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{CONVERGE, all_on, finish, kill_the_leader, leader_other_than, start};
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use switchyard_api::{Mode, ProxyRuleset};
use switchyard_lab::cluster::Cluster;
use switchyard_lab::cluster::layout::{Layout, NAMESPACE, SERVICE_HTTP_PORT};

/// Every ProxyRuleset's layout epoch and resourceVersion, by name.
async fn versions(cluster: &Cluster) -> BTreeMap<String, (u64, String)> {
    Api::<ProxyRuleset>::all(cluster.client())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| {
            let version = r.resource_version().unwrap_or_default();
            (r.name_any(), (r.spec.layout.epoch, version))
        })
        .collect()
}

/// The line of `log` that contains `text`, once one does.
async fn logged(log: &Path, text: &str) -> String {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let all = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = all.lines().find(|l| l.contains(text)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{} never logged {text:?}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Node 0's client pod reaches `addr`, within the deadline.
fn served(cluster: &Cluster, addr: SocketAddr) {
    let deadline = Instant::now() + CONVERGE;
    while let Err(e) = cluster.ask_from_client_pod(0, addr) {
        assert!(Instant::now() < deadline, "{addr} never served: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cluster of one node and `services` Services served in iptables mode by
/// two operator replicas: the leader, and the shards it published.
async fn served_by_two_replicas(
    services: u8,
) -> (Cluster, String, BTreeMap<String, (u64, String)>) {
    let cluster = start(1, services, 2).await;
    cluster.apply_proxy_config(Mode::Iptables, 1).unwrap();
    all_on(&cluster, Mode::Iptables).await;
    for k in 0..services {
        served(
            &cluster,
            SocketAddr::from((Layout::cluster_ip(k), SERVICE_HTTP_PORT)),
        );
    }
    let leader = leader_other_than(&cluster, None).await;
    let published = versions(&cluster).await;
    assert!(!published.is_empty());
    (cluster, leader, published)
}

/// Kill `leader`; the next leader's log.
async fn take_over(cluster: &mut Cluster, leader: &str) -> PathBuf {
    let (second, _) = kill_the_leader(cluster, leader).await;
    println!("{second} leads");
    cluster
        .operators()
        .iter()
        .find(|o| o.pod() == second)
        .expect("the new leader is a replica")
        .log()
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_does_not_republish_every_shard() {
    let services = 3;
    let (mut cluster, first, before) = served_by_two_replicas(services).await;
    let log = take_over(&mut cluster, &first).await;
    let line = logged(&log, "layout epoch").await;
    let (epoch, _) = before.values().next().unwrap();
    let kept = before.len();
    assert!(
        line.contains(&format!(
            "adopted layout epoch {epoch}: {kept} shards kept, 0 rewritten, 0 deleted"
        )),
        "{line}"
    );
    assert_eq!(
        versions(&cluster).await,
        before,
        "the new leader wrote shards"
    );

    // The adopted layout carries on: a new Service reaches the agent.
    let late = services;
    let service: Service = serde_json::from_value(cluster.layout().service(late)).unwrap();
    Api::<Service>::namespaced(cluster.client(), NAMESPACE)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    served(
        &cluster,
        SocketAddr::from((Layout::cluster_ip(late), SERVICE_HTTP_PORT)),
    );
    let after = versions(&cluster).await;
    assert_eq!(after.len(), before.len(), "a new layout: {after:?}");
    finish(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_finishes_an_incomplete_layout() {
    let (mut cluster, first, before) = served_by_two_replicas(8).await;
    // Eight Services take more than one shard of the default budget.
    assert!(before.len() > 1, "one shard: {before:?}");
    // One shard of the layout gone, as when its leader stopped before
    // writing it (the leader does not watch its shards).
    let (gone, (epoch, _)) = before
        .iter()
        .next()
        .map(|(n, v)| (n.clone(), v.clone()))
        .unwrap();
    Api::<ProxyRuleset>::all(cluster.client())
        .delete(&gone, &DeleteParams::default())
        .await
        .unwrap();
    let log = take_over(&mut cluster, &first).await;
    let count = before.len();
    logged(
        &log,
        &format!("layout epoch {epoch} is incomplete (1 of {count} shards missing)"),
    )
    .await;
    let adopted = logged(&log, "adopted layout epoch").await;
    assert!(
        adopted.contains(&format!(
            "adopted layout epoch {epoch}: {} shards kept, 1 rewritten, 0 deleted",
            count - 1
        )),
        "{adopted}"
    );
    // Every shard of the layout again: the missing one written, the others kept.
    let deadline = Instant::now() + CONVERGE;
    let after = loop {
        let now = versions(&cluster).await;
        if now.len() == count {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the missing shard is never written: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (name, version) in &before {
        if *name != gone {
            assert_eq!(after.get(name), Some(version), "{name} was rewritten");
        }
    }
    assert!(
        after.values().all(|(e, _)| e == &epoch),
        "a new layout: {after:?}"
    );
    finish(cluster);
}
