//! The ProxyConfig reconciler against a mock API server: every request it
//! makes is asserted (method, path, body) and answered, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::clock::{FixedClock, now};
use common::objects::{config, node, proxy_node, selector};
use common::verifier::{ApiServerVerifier, Expected, mock_client};
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use switchyard_api::{Mode, ProxyConfig, ProxyNode};
use switchyard_operator::controller::{Context, FINALIZER, error_policy, reconcile, reporter};
use switchyard_operator::events::EventPublisher;
use switchyard_operator::metrics::Metrics;

const CONFIGS: &str = "/apis/switchyard.dev/v1alpha1/proxyconfigs";
const PROXY_NODES: &str = "/apis/switchyard.dev/v1alpha1/proxynodes";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const APPLY_QUERY: &str = "?&force=true&fieldManager=switchyard-operator";

fn context(client: Client, nodes: &[Node], configs: &[ProxyConfig]) -> Arc<Context> {
    let (node_store, mut node_writer) = reflector::store();
    node_writer.apply_watcher_event(&watcher::Event::Init);
    for n in nodes {
        node_writer.apply_watcher_event(&watcher::Event::InitApply(n.clone()));
    }
    node_writer.apply_watcher_event(&watcher::Event::InitDone);
    let (config_store, mut config_writer) = reflector::store();
    for c in configs {
        config_writer.apply_watcher_event(&watcher::Event::Apply(c.clone()));
    }
    Arc::new(Context {
        events: EventPublisher::new(client.clone(), reporter(Some("test".into()))),
        client,
        nodes: node_store,
        configs: config_store,
        metrics: Arc::new(Metrics::default()),
        clock: Arc::new(FixedClock(now())),
        switch_margin: Duration::from_secs(60),
    })
}

fn with_finalizer(mut c: ProxyConfig) -> ProxyConfig {
    c.metadata.finalizers = Some(vec![FINALIZER.into()]);
    c
}

fn list(items: &[ProxyNode]) -> Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ProxyNodeList",
        "metadata": {"resourceVersion": "1"},
        "items": items,
    })
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The reconcile's fresh reads (the ProxyConfig, every ProxyNode), answered;
/// then its status apply, returned to be checked.
async fn expect_reads_then_status(
    api: &mut ApiServerVerifier,
    config: &ProxyConfig,
    proxy_nodes: &[ProxyNode],
) -> Expected {
    api.expect(Method::GET, &format!("{CONFIGS}/edge"))
        .await
        .ok(&serde_json::to_value(config).unwrap());
    api.expect(Method::GET, PROXY_NODES)
        .await
        .ok(&list(proxy_nodes));
    api.expect(
        Method::PATCH,
        &format!("{CONFIGS}/edge/status{APPLY_QUERY}"),
    )
    .await
}

/// What the API server sees, in order, for one reconcile.
enum Scenario {
    /// First sight of a ProxyConfig: only the finalizer is added.
    FinalizerCreation(ProxyConfig),
    /// A new pool over nodes without ProxyNodes: status, then one ProxyNode per
    /// node, owned by the Node, targeting the pool's mode.
    PoolCreated {
        config: ProxyConfig,
        nodes: Vec<&'static str>,
    },
    /// `spec.mode` changed: a rollout starts with a first batch of one node.
    RolloutStarts {
        config: ProxyConfig,
        proxy_nodes: Vec<ProxyNode>,
    },
    /// A node tied between two pools: Conflict on the status and an Event,
    /// and the node's ProxyNode is not touched.
    ConflictReported {
        config: ProxyConfig,
        proxy_nodes: Vec<ProxyNode>,
    },
    /// Deleting a pool releases its nodes, then drops the finalizer.
    Cleanup {
        config: ProxyConfig,
        proxy_nodes: Vec<ProxyNode>,
    },
    /// The API fails the read: the reconcile errors, nothing is written.
    ReadFails,
}

impl Scenario {
    async fn run(self, mut api: ApiServerVerifier) {
        match self {
            Scenario::FinalizerCreation(config) => {
                let req = api.expect(Method::PATCH, &format!("{CONFIGS}/edge")).await;
                let body = req.body.clone().unwrap();
                assert!(body.to_string().contains(FINALIZER), "{body}");
                req.ok(&serde_json::to_value(with_finalizer(config)).unwrap());
            }
            Scenario::PoolCreated { config, nodes } => {
                let req = expect_reads_then_status(&mut api, &config, &[]).await;
                let body = req.body.clone().unwrap();
                assert_eq!(body["kind"], "ProxyConfig");
                let status = &body["status"];
                assert_eq!(status["nodes"], nodes.len());
                assert_eq!(status["updatedNodes"], nodes.len());
                assert_eq!(status["readyNodes"], 0);
                assert_eq!(status["observedGeneration"], 1);
                assert_eq!(status["nodesByState"], json!({"unknown": nodes.len()}));
                assert_eq!(status["unassignedNodes"], 1);
                let ready = condition(status, "Ready");
                assert_eq!(
                    (&ready["status"], &ready["reason"]),
                    (&json!("False"), &json!("NodesNotReady"))
                );
                assert_eq!(condition(status, "Conflict")["status"], "False");
                assert!(status.get("rollout").is_none());
                req.ok(&json!({"metadata": {"name": "edge"}, "spec": {"mode": "nftables"}}));
                for name in nodes {
                    let req = api
                        .expect(Method::PATCH, &format!("{PROXY_NODES}/{name}{APPLY_QUERY}"))
                        .await;
                    assert_eq!(
                        req.body,
                        Some(json!({
                            "apiVersion": "switchyard.dev/v1alpha1",
                            "kind": "ProxyNode",
                            "metadata": {
                                "name": name,
                                "ownerReferences": [{
                                    "apiVersion": "v1", "kind": "Node",
                                    "name": name, "uid": format!("uid-{name}"),
                                }],
                            },
                            "spec": {"pool": "edge", "targetMode": "nftables"},
                        }))
                    );
                    req.echo();
                }
            }
            Scenario::RolloutStarts {
                config,
                proxy_nodes,
            } => {
                let req = expect_reads_then_status(&mut api, &config, &proxy_nodes).await;
                let status = req.body.clone().unwrap()["status"].clone();
                assert_eq!(
                    status["rollout"],
                    json!({
                        "from": "iptables", "to": "nftables", "phase": "Progressing",
                        "updated": 0, "total": 3, "generation": 2,
                        "batchStarted": serde_json::to_value(Time(now())).unwrap(),
                    })
                );
                assert_eq!(status["updatedNodes"], 1);
                assert_eq!(status["nodesByMode"], json!({"iptables": 3}));
                let progressing = condition(&status, "Progressing");
                assert_eq!(progressing["reason"], "RolloutInProgress");
                assert_eq!(
                    progressing["message"],
                    "switching from iptables to nftables: 0/3 nodes run nftables; 1 switching now (at most 1 at once)"
                );
                req.ok(&serde_json::to_value(&config).unwrap());
                let req = api
                    .expect(Method::PATCH, &format!("{PROXY_NODES}/a{APPLY_QUERY}"))
                    .await;
                assert_eq!(
                    req.body.as_ref().unwrap()["spec"],
                    json!({"pool": "edge", "targetMode": "nftables"})
                );
                req.echo();
                for (reason, note) in [
                    (
                        "RolloutStarted",
                        "switching 3 nodes from iptables to nftables",
                    ),
                    ("BatchStarted", "switching 1 nodes to nftables: a"),
                ] {
                    let req = api.expect(Method::POST, EVENTS).await;
                    let body = req.body.clone().unwrap();
                    assert_eq!(
                        (&body["reason"], &body["note"]),
                        (&json!(reason), &json!(note))
                    );
                    assert_eq!(body["regarding"]["name"], "edge");
                    assert_eq!(body["reportingController"], "switchyard-operator");
                    req.echo();
                }
            }
            Scenario::ConflictReported {
                config,
                proxy_nodes,
            } => {
                let req = expect_reads_then_status(&mut api, &config, &proxy_nodes).await;
                let status = req.body.clone().unwrap()["status"].clone();
                assert_eq!(status["conflictingNodes"], json!(["b"]));
                assert_eq!(status["nodes"], 1);
                let conflict = condition(&status, "Conflict");
                assert_eq!(
                    (&conflict["status"], &conflict["reason"]),
                    (&json!("True"), &json!("PriorityTie"))
                );
                let message = "nodes b are selected by ProxyConfigs edge, other, all of priority 0; \
                    they stay as they are until one ProxyConfig's spec.priority is higher";
                assert_eq!(conflict["message"], message);
                req.ok(&serde_json::to_value(&config).unwrap());
                let req = api.expect(Method::POST, EVENTS).await;
                let body = req.body.clone().unwrap();
                assert_eq!(
                    (&body["reason"], &body["type"]),
                    (&json!("Conflict"), &json!("Warning"))
                );
                assert_eq!(body["note"], message);
                req.echo();
            }
            Scenario::Cleanup {
                config,
                proxy_nodes,
            } => {
                api.expect(Method::GET, PROXY_NODES)
                    .await
                    .ok(&list(&proxy_nodes));
                let req = api
                    .expect(Method::PATCH, &format!("{PROXY_NODES}/a{APPLY_QUERY}"))
                    .await;
                assert_eq!(
                    req.body.as_ref().unwrap()["spec"],
                    json!({"targetMode": "nftables"})
                );
                req.echo();
                let req = api.expect(Method::PATCH, &format!("{CONFIGS}/edge")).await;
                let body = req.body.clone().unwrap();
                assert_eq!(
                    body[1],
                    json!({"op": "remove", "path": "/metadata/finalizers/0"})
                );
                req.ok(&serde_json::to_value(&config).unwrap());
            }
            Scenario::ReadFails => {
                api.expect(Method::GET, &format!("{CONFIGS}/edge"))
                    .await
                    .reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "etcd is down", "reason": "InternalError", "code": 500}),
                    );
            }
        }
        api.done().await;
    }
}

fn edge(mode: Mode) -> ProxyConfig {
    config("edge", mode, 0, selector(&[("role", "edge")], &[]))
}

async fn run(
    scenario: Scenario,
    config: ProxyConfig,
    nodes: &[Node],
    others: &[ProxyConfig],
) -> (Result<Action, switchyard_operator::Error>, Arc<Metrics>) {
    let (client, api) = mock_client();
    let mut configs = others.to_vec();
    configs.push(config.clone());
    let ctx = context(client, nodes, &configs);
    let metrics = ctx.metrics.clone();
    let server = tokio::spawn(scenario.run(api));
    let result = reconcile(Arc::new(config.clone()), ctx.clone()).await;
    if let Err(e) = &result {
        error_policy(Arc::new(config), e, ctx.clone());
    }
    drop(ctx);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the scenario finished")
        .expect("the scenario's assertions hold");
    (result, metrics)
}

fn edge_nodes() -> Vec<Node> {
    vec![
        node("a", &[("role", "edge")]),
        node("b", &[("role", "edge")]),
        node("c", &[("role", "core")]),
    ]
}

#[tokio::test]
async fn a_new_proxyconfig_gets_the_finalizer_first() {
    let config = edge(Mode::Nftables);
    let (result, _) = run(
        Scenario::FinalizerCreation(config.clone()),
        config,
        &edge_nodes(),
        &[],
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_new_pool_creates_one_owned_proxynode_per_selected_node() {
    let config = with_finalizer(edge(Mode::Nftables));
    let scenario = Scenario::PoolCreated {
        config: config.clone(),
        nodes: vec!["a", "b"],
    };
    let (result, metrics) = run(scenario, config, &edge_nodes(), &[]).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("switchyard_operator_reconciliations_total 1"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_operator_rollout_total_nodes{pool=\"edge\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_mode_change_starts_a_rollout_with_one_node() {
    let mut config = with_finalizer(edge(Mode::Nftables));
    config.metadata.generation = Some(2);
    let nodes = vec![
        node("a", &[("role", "edge")]),
        node("b", &[("role", "edge")]),
        node("d", &[("role", "edge")]),
    ];
    let proxy_nodes: Vec<ProxyNode> = ["a", "b", "d"]
        .iter()
        .map(|n| proxy_node(n, Some("edge"), Mode::Iptables))
        .collect();
    let scenario = Scenario::RolloutStarts {
        config: config.clone(),
        proxy_nodes,
    };
    let (result, _) = run(scenario, config, &nodes, &[]).await;
    // Woken when the batch times out: 10s verification + 60s margin.
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(70)));
}

#[tokio::test]
async fn a_priority_tie_is_reported_and_the_node_left_alone() {
    let other = config("other", Mode::Ebpf, 0, selector(&[("tier", "x")], &[]));
    let config = with_finalizer(edge(Mode::Nftables));
    let nodes = vec![
        node("a", &[("role", "edge")]),
        node("b", &[("role", "edge"), ("tier", "x")]),
    ];
    let proxy_nodes = vec![
        proxy_node("a", Some("edge"), Mode::Nftables),
        proxy_node("b", Some("other"), Mode::Ebpf),
    ];
    let scenario = Scenario::ConflictReported {
        config: config.clone(),
        proxy_nodes,
    };
    let (result, _) = run(scenario, config, &nodes, &[other]).await;
    assert!(result.is_ok());
}

#[tokio::test]
async fn deleting_a_pool_releases_its_nodes_and_keeps_their_mode() {
    let mut config = with_finalizer(edge(Mode::Nftables));
    config.metadata.deletion_timestamp = Some(Time(now()));
    let proxy_nodes = vec![
        proxy_node("a", Some("edge"), Mode::Nftables),
        proxy_node("c", Some("core"), Mode::Iptables),
    ];
    let scenario = Scenario::Cleanup {
        config: config.clone(),
        proxy_nodes,
    };
    let (result, _) = run(scenario, config, &edge_nodes(), &[]).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_failed_read_writes_nothing_and_is_counted() {
    let config = with_finalizer(edge(Mode::Nftables));
    let (result, metrics) = run(Scenario::ReadFails, config, &edge_nodes(), &[]).await;
    let error = result.unwrap_err();
    assert!(
        error.to_string().contains("reading ProxyConfig edge"),
        "{error}"
    );
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("switchyard_operator_reconcile_errors_total{error=\"finalizer\"} 1"),
        "{text}"
    );
}
