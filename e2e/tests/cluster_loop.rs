//! The whole loop against the real API server of the pinned release, as a
//! user drives it: Nodes, Services and Pods made through the API (the
//! EndpointSlices by the real endpointslice controller); `kubectl apply` of a
//! ProxyConfig; the `switchyard-operator` binary publishes ProxyRulesets and
//! assigns the nodes; the `node-agent` binary, one process per node inside
//! its network namespace, programs real rules; pods reach the Service VIPs
//! over real TCP; `kubectl get proxyconfigs`, `get proxynodes` and
//! `get events` tell the story; a `kubectl patch` of the mode rolls out.
//! Then the API server is restarted under running traffic, a Node is
//! deleted (the real garbage collector removes its ProxyNode) and the
//! ProxyConfig is deleted (its finalizer releases the nodes). Every
//! operator and agent runs with exactly `config/rbac`'s rights: a refused
//! request, in their logs or the audit log, fails the test. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{
    all_on, finish, nodes_until, nothing_lost, patch_pool, pool_until, rows, start,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use switchyard_api::proxyconfig::RolloutPhase;
use switchyard_api::{Mode, ProxyRuleset};
use switchyard_lab::cluster::Cluster;
use switchyard_lab::cluster::layout::{Layout, NAMESPACE, SERVICE_HTTP_PORT};
use switchyard_lab::cluster::wait::until;

/// Deadlock guard for what is not a watch (log lines, a new Service reached).
const SETTLE: Duration = Duration::from_secs(120);

fn vip(k: u8) -> SocketAddr {
    SocketAddr::from((Layout::cluster_ip(k), SERVICE_HTTP_PORT))
}

/// Run `program args…` in node `i`'s network namespace; its output.
fn in_node(cluster: &Cluster, i: u8, program: &str, args: &[&str]) -> String {
    let ns = cluster.node_netns(i).expect("node namespace");
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} in node-{i}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Service `k`, asked from each node's client pod, answers from one of its endpoints.
fn every_client_pod_reaches(cluster: &Cluster, k: u8) {
    let endpoints: Vec<String> = cluster
        .layout()
        .endpoints(k)
        .iter()
        .map(|p| p.name())
        .collect();
    for i in 0..cluster.layout().nodes {
        let pod = cluster
            .ask_from_client_pod(i, vip(k))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(endpoints.contains(&pod), "{pod} answered for svc-{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_applies_a_proxyconfig_and_every_node_serves_it() {
    let began = Instant::now();
    let mut cluster = start(3, 3, 1).await;
    let mut timings = vec![("start", began.elapsed())];
    let mut phase = |name: &'static str, since: &mut Instant| {
        timings.push((name, since.elapsed()));
        *since = Instant::now();
    };
    let mut since = Instant::now();
    kubectl_apply_programs_every_node(&cluster).await;
    phase("apply", &mut since);
    a_mode_patch_rolls_out_and_kubectl_tells_the_story(&cluster).await;
    phase("patch", &mut since);
    an_api_server_restart_keeps_the_rules_and_the_agents_resync(&mut cluster).await;
    phase("restart", &mut since);
    deleting_a_node_and_the_proxyconfig_releases_them(&cluster).await;
    phase("deletes", &mut since);
    finish(cluster);
    phase("finish", &mut since);
    println!("phases: {timings:?}");
}

async fn kubectl_apply_programs_every_node(cluster: &Cluster) {
    let out = cluster.apply_proxy_config(Mode::Iptables, 3).unwrap();
    assert_eq!(out.trim(), "proxyconfig.switchyard.dev/demo created");

    // The operator publishes every Service's ports (and the API server's own).
    let services = usize::from(cluster.layout().services);
    until(
        Api::<ProxyRuleset>::all(cluster.client()),
        "ProxyRulesets with every Service",
        SETTLE,
        |shards| {
            let published: Vec<String> = shards
                .iter()
                .flat_map(|s| s.spec.ruleset.services.iter())
                .filter(|r| r.namespace == NAMESPACE && r.port == SERVICE_HTTP_PORT)
                .map(|r| format!("{} {:?} {}", r.name, r.cluster_ips, r.endpoints.len()))
                .collect();
            (published.len() == services)
                .then_some(())
                .ok_or(format!("published: {published:?}"))
        },
    )
    .await
    .unwrap();

    all_on(cluster, Mode::Iptables).await;
    let status = pool_until(cluster, "the pool's status counts every node", |s| {
        (s.ready_nodes == 3)
            .then(|| s.clone())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert_eq!((status.nodes, status.updated_nodes), (3, 3));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.nodes_by_mode,
        BTreeMap::from([("iptables".into(), 3)])
    );
    assert_eq!(status.nodes_by_state, BTreeMap::from([("ready".into(), 3)]));
    let conditions: BTreeMap<&str, (&str, &str)> = status
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), (c.status.as_str(), c.reason.as_str())))
        .collect();
    assert_eq!(
        conditions,
        BTreeMap::from([
            ("Ready", ("True", "AllNodesReady")),
            ("Progressing", ("False", "NoRollout")),
            ("Degraded", ("False", "AsExpected")),
            ("Conflict", ("False", "NoConflict")),
            ("ConnectionsCut", ("False", "NoRollout")),
            ("Reconciling", ("False", "Reconciled")),
            ("Stalled", ("False", "NotStalled")),
        ])
    );
    assert_eq!(status.rollout, None);

    // Real rules in each node, and pods reach the VIPs through them.
    for i in 0..3 {
        let nat = in_node(cluster, i, "iptables-save", &["-t", "nat"]);
        assert!(
            nat.contains("-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp"),
            "node-{i}:\n{nat}"
        );
    }
    for k in 0..3 {
        every_client_pod_reaches(cluster, k);
    }
}

async fn a_mode_patch_rolls_out_and_kubectl_tells_the_story(cluster: &Cluster) {
    patch_pool(cluster, r#"{"spec":{"mode":"nftables"}}"#);
    pool_until(cluster, "the rollout to nftables complete", |s| {
        let done = s
            .rollout
            .as_ref()
            .is_some_and(|r| r.to == Mode::Nftables && r.phase == RolloutPhase::Complete);
        (done && s.ready_nodes == 3)
            .then_some(())
            .ok_or(format!("{:?}", s.rollout))
    })
    .await;
    all_on(cluster, Mode::Nftables).await;
    for i in 0..3 {
        let table = in_node(cluster, i, "nft", &["list", "table", "ip", "switchyard"]);
        assert!(table.contains("10.96.0.10"), "node-{i}:\n{table}");
        let nat = in_node(cluster, i, "iptables-save", &["-t", "nat"]);
        assert!(
            !nat.contains("KUBE-SERVICES"),
            "iptables left on node-{i}:\n{nat}"
        );
    }
    every_client_pod_reaches(cluster, 0);

    let kubectl = cluster.kubectl();
    let configs = rows(&kubectl.run(&["get", "proxyconfigs"]).unwrap());
    assert_eq!(
        configs[0],
        ["NAME", "MODE", "NODES", "READY", "UPDATED", "AGE"]
    );
    assert_eq!(configs[1][..5], ["demo", "nftables", "3", "3", "3"]);
    let nodes = rows(&kubectl.run(&["get", "proxynodes"]).unwrap());
    assert_eq!(
        nodes[0],
        ["NAME", "POOL", "TARGET", "APPLIED", "SYNCED", "AGE"]
    );
    for (i, row) in nodes[1..].iter().enumerate() {
        let name = format!("node-{i}");
        assert_eq!(row[..4], [name.as_str(), "demo", "nftables", "nftables"]);
    }
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    let events = kubectl.run(&["get", "events", "-n", "default"]).unwrap();
    println!("{events}");
    for (reason, message) in [
        (
            "RolloutStarted",
            "switching 3 nodes from iptables to nftables",
        ),
        (
            "BatchStarted",
            "switching 3 nodes to nftables: node-0, node-1, node-2",
        ),
        ("BatchDone", "batch finished: 3/3 nodes run nftables"),
        (
            "RolloutComplete",
            "every node that could switch runs nftables",
        ),
    ] {
        let told = events
            .lines()
            .filter(|l| l.contains(reason) && l.contains("proxyconfig/demo") && l.contains(message))
            .count();
        assert_eq!(told, 1, "{reason}: {message}\n{events}");
    }
}

/// Lines of node 0's nftables table that carry a kernel handle: recreating
/// the table or rewriting a chain or rule changes them.
/// Node 0's `ip switchyard` table, listed with handles.
fn table(cluster: &Cluster) -> String {
    in_node(
        cluster,
        0,
        "nft",
        &["-a", "list", "table", "ip", "switchyard"],
    )
}

/// The objects of a table listing that have a handle: its chains, rules and sets.
fn handles(table: &str) -> Vec<String> {
    table
        .lines()
        .filter(|l| l.contains("# handle"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Wait until every agent has written `text` to its log after `offsets`.
fn agents_logged(offsets: &[(std::path::PathBuf, usize)], text: &str) {
    let deadline = Instant::now() + SETTLE;
    for (log, from) in offsets {
        loop {
            let all = std::fs::read_to_string(log).unwrap_or_default();
            if all.get(*from..).is_some_and(|new| new.contains(text)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {text:?}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn an_api_server_restart_keeps_the_rules_and_the_agents_resync(cluster: &mut Cluster) {
    let clients = cluster.start_clients().unwrap();
    let before = handles(&table(cluster));
    let ports_before = nodes_until(cluster, "node-0's counts", |nodes| {
        nodes[0]
            .status
            .as_ref()
            .and_then(|s| s.counts.as_ref())
            .map(|c| c.service_ports)
            .ok_or("no counts".to_string())
    })
    .await;
    assert!(before.len() > 10, "{before:?}");
    let agent_logs: Vec<(std::path::PathBuf, usize)> = cluster
        .logs()
        .into_iter()
        .filter(|l| l.to_string_lossy().contains("agent-"))
        .map(|l| {
            let len = std::fs::metadata(&l).map_or(0, |m| m.len() as usize);
            (l, len)
        })
        .collect();
    let exchanges = || clients.counts().exchanges;

    cluster.control_plane_mut().stop_apiserver();
    let down = Instant::now();
    let at_stop = exchanges();
    // Every agent notices; the rules carry the traffic without it.
    agents_logged(&agent_logs, "watch failed; keeping the last applied rules");
    let pod = cluster
        .ask_from_client_pod(1, vip(1))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("API server down; a new connection answered by {pod}");
    // Three rounds of requests on every long-lived connection, API server down.
    let deadline = Instant::now() + SETTLE;
    while exchanges() < at_stop + 30 {
        assert!(
            Instant::now() < deadline,
            "the long-lived connections stalled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.control_plane_mut().start_apiserver().await.unwrap();
    let restarted = k8s_openapi::jiff::Timestamp::now();
    let up = Instant::now();
    println!("API server down for {:.1?}", down.elapsed());

    // Reconnected and resynced: a Service made after the restart is published
    // by the operator and programmed by every agent.
    let late = Ipv4Addr::new(10, 96, 0, 50);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "late", "namespace": NAMESPACE},
        "spec": {
            "clusterIP": late.to_string(),
            "selector": {"app": "web", "group": "g0"},
            "ports": [{"name": "http", "port": SERVICE_HTTP_PORT, "targetPort": 8080}],
        },
    }))
    .unwrap();
    Api::<Service>::namespaced(cluster.client(), NAMESPACE)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let deadline = Instant::now() + SETTLE;
    for i in 0..3 {
        while let Err(e) =
            cluster.ask_from_client_pod(i, SocketAddr::from((late, SERVICE_HTTP_PORT)))
        {
            assert!(Instant::now() < deadline, "service late never served: {e}");
        }
    }
    println!(
        "a Service made after the restart served everywhere {:.1?} after it",
        up.elapsed()
    );
    nodes_until(cluster, "every agent reporting the late service", |nodes| {
        let stale: Vec<String> = nodes
            .iter()
            .filter(|n| {
                let s = n.status.clone().unwrap_or_default();
                s.last_sync_time.is_none_or(|t| t.0 < restarted)
                    || s.counts.is_none_or(|c| c.service_ports <= ports_before)
            })
            .map(|n| n.name_any())
            .collect();
        stale
            .is_empty()
            .then_some(())
            .ok_or(format!("stale: {stale:?}"))
    })
    .await;

    // Nothing flushed: every table, chain and rule of before is still there, unchanged.
    let listed = table(cluster);
    let after = handles(&listed);
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    assert!(
        gone.is_empty(),
        "rewritten or removed across the restart: {gone:#?}"
    );
    // Its ClusterIP is an element (of the dispatch map and of a pick map):
    // a Service of a size already present adds no chain and no rule.
    assert!(
        listed.contains(&late.to_string()),
        "the late service added nothing:\n{listed}"
    );

    nothing_lost(clients, "across the restart");
}

async fn deleting_a_node_and_the_proxyconfig_releases_them(cluster: &Cluster) {
    let kubectl = cluster.kubectl();
    let began = Instant::now();
    kubectl.run(&["delete", "node", "node-2"]).unwrap();
    nodes_until(
        cluster,
        "the garbage collector deleting ProxyNode node-2",
        |nodes| {
            let names: Vec<String> = nodes.iter().map(|n| n.name_any()).collect();
            (names == ["node-0", "node-1"])
                .then_some(())
                .ok_or(format!("{names:?}"))
        },
    )
    .await;
    println!(
        "ProxyNode node-2 collected {:.1?} after its Node's deletion",
        began.elapsed()
    );
    pool_until(cluster, "the pool counting two nodes", |s| {
        (s.nodes == 2 && s.ready_nodes == 2)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    println!("the pool counts two nodes {:.1?} after", began.elapsed());

    // kubectl waits for the finalizer.
    let out = kubectl
        .run(&["delete", "proxyconfig", "demo", "--timeout=120s"])
        .unwrap();
    assert!(out.contains("\"demo\" deleted"), "{out}");
    println!("ProxyConfig deleted {:.1?} after", began.elapsed());
    nodes_until(cluster, "the deleted pool's nodes released", |nodes| {
        let kept: Vec<String> = nodes
            .iter()
            .filter(|n| n.spec.pool.is_some() || n.spec.target_mode != Some(Mode::Nftables))
            .map(|n| format!("{} {:?}", n.name_any(), n.spec))
            .collect();
        (kept.is_empty() && nodes.len() == 2)
            .then_some(())
            .ok_or(format!("{kept:?}"))
    })
    .await;
    let configs = kubectl.output(&["get", "proxyconfigs"]).unwrap();
    assert!(String::from_utf8_lossy(&configs.stderr).contains("No resources found"));
    // Released nodes keep their mode and keep serving.
    every_client_pod_reaches(cluster, 0);
}
