//! A leader change against the real API server, with two replicas of the
//! `switchyard-operator` binary and a `node-agent` process: the replica that
//! takes the Lease over adopts the published shard layout. It writes no
//! ProxyRuleset (every resourceVersion stays), where a republication would
//! have made every agent fetch a whole new layout and wait for all of it;
//! and a Service made after the take-over reaches the agent.
//!
//! Nothing is refused to the operators or agents (`config/rbac` exactly).
//! Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{CONVERGE, all_on, finish, kill_the_leader, leader_other_than, start};
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, PostParams};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_does_not_republish_every_shard() {
    let services = 3;
    let mut cluster = start(1, services, 2).await;
    cluster.apply_proxy_config(Mode::Iptables, 1).unwrap();
    all_on(&cluster, Mode::Iptables).await;
    for k in 0..services {
        served(
            &cluster,
            SocketAddr::from((Layout::cluster_ip(k), SERVICE_HTTP_PORT)),
        );
    }
    let first = leader_other_than(&cluster, None).await;
    let before = versions(&cluster).await;
    assert!(!before.is_empty());

    let (second, _) = kill_the_leader(&mut cluster, &first).await;
    let log = cluster
        .operators()
        .iter()
        .find(|o| o.pod() == second)
        .expect("the new leader is a replica")
        .log()
        .to_path_buf();
    let line = logged(&log, "layout epoch").await;
    println!("{second} leads: {line}");
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
