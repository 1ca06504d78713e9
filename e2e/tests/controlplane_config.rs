//! `config/` against the real API server of the pinned release: the API part
//! (`config/base/`: namespace, CRDs, RBAC, the agent's admission policy)
//! installs with `kubectl apply -k`; the server accepts every sample and
//! refuses every manifest in `crds/tests/invalid/` with the message its
//! `# expect:` line names — the same line `crds/tests/samples.rs` holds the
//! client-side check (JSON schema + kube's CEL) to, so the two agree on every
//! file. The server judges ProxyRuleset shards as the agent's validation
//! does, at the bounds and past them. And the admission policy binds an
//! agent to its own ProxyNode, for real: a token bound to a Pod on node A
//! writes A's status and is refused B's, with exactly `config/rbac`'s rights.
//! The agent's watches, on that server, wake it for what it acts on and not
//! for a Node's heartbeat or its own status write coming back. The
//! operator's Lease requests, and only those, are served at the
//! `leader-election` priority level (`config/rbac/operator-flowschema.yaml`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use switchyard_agent::status::{ApiStatusWriter, StatusWriter};
use switchyard_agent::watch::{self, Source, WatchEvent, Watches};
use switchyard_api::validation::check_shard;
use switchyard_api::{Mode, ProxyNode, ProxyNodeSpec, ProxyNodeStatus, ProxyRuleset};
use switchyard_lab::controlplane::ControlPlane;
use switchyard_lab::controlplane::identity::{AGENT_SA, Identity, NAMESPACE, OPERATOR_SA};
use switchyard_lab::controlplane::kubeconfig;
use switchyard_lab::controlplane::kubectl::Kubectl;
use switchyard_lab::controlplane::workdir::Purpose;

/// Deadlock guard for the admission policy to take effect.
const POLICY_LOADS: Duration = Duration::from_secs(60);
const POLICY_MESSAGE: &str = "the switchyard agent may write only the ProxyNode of its own node";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The manifests of a directory, without its `kustomization.yaml`.
fn manifests(dir: &str) -> Vec<PathBuf> {
    let mut files = switchyard_api::manifests::files_in(&repo().join(dir), &["yaml"]).unwrap();
    files.retain(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"));
    assert!(!files.is_empty(), "no manifests in {dir}");
    files
}

/// A control plane with `config/base/` applied and its CRDs established.
async fn installed() -> ControlPlane {
    let cp = ControlPlane::start(Purpose::Test)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("control plane ready in {:.1?}", cp.started_in());
    cp.install(&repo().join("config/base"))
        .unwrap_or_else(|e| panic!("{e}"));
    cp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_installs_and_the_server_agrees_with_the_client_side_check() {
    let cp = installed().await;
    let kubectl = cp.kubectl();
    // The workloads are not part of base/.
    let workloads = kubectl
        .run(&["get", "deployments,daemonsets", "-A", "-o", "name"])
        .unwrap();
    assert_eq!(workloads.trim(), "", "base/ installed workloads");

    for sample in manifests("config/samples") {
        kubectl
            .run(&["apply", "-f", sample.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{} refused: {e}", sample.display()));
    }
    let listed = kubectl.run(&["get", "proxyconfigs"]).unwrap();
    println!("{listed}");
    assert!(
        listed.starts_with("NAME") && listed.contains("MODE"),
        "{listed}"
    );

    for bad in manifests("crds/tests/invalid") {
        let text = std::fs::read_to_string(&bad).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", bad.display()));
        let out = kubectl
            .output(&["apply", "--dry-run=server", "-f", bad.to_str().unwrap()])
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} accepted", bad.display());
        assert!(
            stderr.contains(expect),
            "{}: the server's message does not contain {expect:?}:\n{stderr}",
            bad.display()
        );
    }
}

/// A status as the agent reports it.
fn applied(mode: Mode) -> ProxyNodeStatus {
    ProxyNodeStatus {
        applied_mode: Some(mode),
        ..ProxyNodeStatus::default()
    }
}

/// The agent's own status write (`switchyard_agent::status`) with `kubeconfig`.
async fn write_status(kubeconfig: &Path, node: &str) -> Result<(), String> {
    let client = kubeconfig::client(kubeconfig).await.unwrap();
    ApiStatusWriter::new(client, node)
        .write(&applied(Mode::Nftables))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_may_write_only_its_own_proxynode_status() {
    let cp = installed().await;
    let proxynodes = Api::<ProxyNode>::all(cp.client());
    for node in ["node-a", "node-b"] {
        let object = ProxyNode {
            metadata: ObjectMeta {
                name: Some(node.into()),
                ..ObjectMeta::default()
            },
            spec: ProxyNodeSpec::default(),
            status: None,
        };
        proxynodes
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
    }
    let agent_a = cp
        .kubeconfig_for(&Identity::agent_on("node-a"))
        .await
        .unwrap();

    // The token is bound to a Pod on node-a: the server knows the node.
    let whoami = Kubectl::new(&cp.binaries().path("kubectl"), &agent_a)
        .run(&["auth", "whoami", "-o", "json"])
        .unwrap();
    assert!(
        whoami.contains(&format!("system:serviceaccount:{NAMESPACE}:{AGENT_SA}")),
        "{whoami}"
    );
    assert!(
        whoami.contains("authentication.kubernetes.io/node-name"),
        "{whoami}"
    );

    // Until the policy is loaded the write to node-b may pass; then it never does.
    let deadline = Instant::now() + POLICY_LOADS;
    let refused = loop {
        match write_status(&agent_a, "node-b").await {
            Err(e) => break e,
            Ok(()) => assert!(
                Instant::now() < deadline,
                "agent of node-a still writes node-b's status"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refused.contains(&format!("{POLICY_MESSAGE}, not node-b")),
        "{refused}"
    );
    write_status(&agent_a, "node-a")
        .await
        .unwrap_or_else(|e| panic!("agent of node-a writing its own status: {e}"));
    let written = proxynodes.get_status("node-a").await.unwrap();
    assert_eq!(written.status, Some(applied(Mode::Nftables)));

    // The same ServiceAccount without a node-bound token writes nothing.
    let unbound = cp
        .kubeconfig_for(&Identity::unbound(AGENT_SA))
        .await
        .unwrap();
    let refused = write_status(&unbound, "node-a").await.unwrap_err();
    assert!(refused.contains(POLICY_MESSAGE), "{refused}");

    // RBAC (config/rbac/agent.yaml): status only, never the spec.
    let spec_write = Kubectl::new(&cp.binaries().path("kubectl"), &agent_a)
        .run(&[
            "patch",
            "proxynode",
            "node-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"targetMode":"iptables"}}"#,
        ])
        .unwrap_err()
        .to_string();
    assert!(
        spec_write.contains("cannot patch resource \"proxynodes\""),
        "{spec_write}"
    );
}

/// The API Priority and Fairness classification of a GET of `path` by
/// `client`: the UIDs of the FlowSchema and the priority level the server
/// says it served the request under (its `X-Kubernetes-PF-*` headers).
async fn classified(client: &kube::Client, path: &str) -> (String, String) {
    let request = http::Request::get(path)
        .body(kube::client::Body::empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    (
        header("X-Kubernetes-PF-FlowSchema-UID"),
        header("X-Kubernetes-PF-PriorityLevel-UID"),
    )
}

/// A client of ServiceAccount `name` of Switchyard's namespace (a token
/// bound to no Pod).
async fn service_account_client(cp: &ControlPlane, name: &str) -> kube::Client {
    let kubeconfig = cp.kubeconfig_for(&Identity::unbound(name)).await.unwrap();
    kubeconfig::client(&kubeconfig).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_lease_requests_are_served_at_the_leader_election_priority_level() {
    let cp = installed().await;
    let kubectl = cp.kubectl();
    let uid = |kind: &str, name: &str| {
        kubectl
            .run(&["get", kind, name, "-o", "jsonpath={.metadata.uid}"])
            .unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
    };
    let ours = uid("flowschema", "switchyard-operator-leader-election");
    let leader_election = uid("prioritylevelconfiguration", "leader-election");
    let service_accounts = uid("flowschema", "service-accounts");
    let client = service_account_client(&cp, OPERATOR_SA).await;
    let lease =
        format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/switchyard-operator");
    // The server's flow-control configuration follows a new FlowSchema within seconds.
    let deadline = Instant::now() + POLICY_LOADS;
    loop {
        let (schema, level) = classified(&client, &lease).await;
        if schema == ours {
            assert_eq!(level, leader_election, "the operator's Lease GET");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the operator's Lease GET is still under FlowSchema {schema}, not {ours}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Only its Leases: its other requests stay where every ServiceAccount's are.
    let (schema, _) = classified(&client, "/apis/switchyard.dev/v1alpha1/proxyrulesets").await;
    assert_eq!(schema, service_accounts, "the operator's list of shards");
    // And only its own: the agent's Lease requests are not lifted.
    let agent = service_account_client(&cp, AGENT_SA).await;
    let (schema, _) = classified(&agent, &lease).await;
    assert_eq!(schema, service_accounts, "the agent's Lease GET");
}

/// Deadlock guard for one watch event.
const EVENT: Duration = Duration::from_secs(30);

/// The next event of the agent's watches.
async fn next_event(events: &mut (impl Stream<Item = WatchEvent> + Unpin)) -> WatchEvent {
    tokio::time::timeout(EVENT, events.next())
        .await
        .expect("a watch event in time")
        .expect("the watches run")
}

/// The node's heartbeat, as the kubelet writes it.
fn heartbeat(at: &str) -> Node {
    Node {
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_heartbeat_time: Some(serde_json::from_value(json!(at)).unwrap()),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

/// Every watch listed, and the node's Node and ProxyNode in their stores.
async fn listed(watches: &Watches, events: &mut (impl Stream<Item = WatchEvent> + Unpin)) {
    loop {
        let inputs = watches.inputs();
        if inputs.listed && inputs.node.is_some() && inputs.proxy_node.is_some() {
            return;
        }
        next_event(events).await;
    }
}

/// Each event the agent is woken by makes a sync pass, and a pass holds the
/// next real change back by the minimum sync period: a heartbeat or the
/// agent's own status write waking it cost every change about a second. The
/// stores are updated as the stream is polled, so the store an event comes
/// with shows the update that raised it: the first wake-up after a
/// heartbeat and a label change must be the label's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_woken_by_a_label_or_a_spec_not_by_a_heartbeat_or_its_own_status() {
    let cp = installed().await;
    let nodes = Api::<Node>::all(cp.client());
    let proxynodes = Api::<ProxyNode>::all(cp.client());
    let name = "node-a";
    let mut node = Node::default();
    node.metadata.name = Some(name.into());
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let object = ProxyNode::new(name, ProxyNodeSpec::default());
    proxynodes
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let (watches, mut events) = watch::start(cp.client(), name);
    listed(&watches, &mut events).await;

    let merge = PatchParams::default();
    for at in ["2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z"] {
        nodes
            .patch_status(name, &merge, &Patch::Merge(&heartbeat(at)))
            .await
            .unwrap();
    }
    let zone = json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "z1"}}});
    nodes
        .patch(name, &merge, &Patch::Merge(&zone))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut events).await,
        WatchEvent::Changed(Source::Node)
    );
    let labels = watches
        .inputs()
        .node
        .and_then(|n| n.metadata.labels.clone());
    assert!(
        labels.is_some_and(|l| l.contains_key("topology.kubernetes.io/zone")),
        "woken by the heartbeat"
    );

    let client = cp.client();
    let own = ApiStatusWriter::new(client, name);
    own.write(&applied(Mode::Nftables)).await.unwrap();
    own.write(&applied(Mode::Iptables)).await.unwrap();
    let target = json!({"spec": {"targetMode": "nftables"}});
    proxynodes
        .patch(name, &merge, &Patch::Merge(&target))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut events).await,
        WatchEvent::Changed(Source::ProxyNode)
    );
    let spec = watches.inputs().proxy_node.map(|p| p.spec.clone());
    assert_eq!(
        spec.and_then(|s| s.target_mode),
        Some(Mode::Nftables),
        "woken by the agent's own status write"
    );
}

/// A shard with every field of a service port set, as the operator writes it.
fn shard() -> Value {
    serde_json::from_str(include_str!("../../crds/tests/data/shard.json"))
        .expect("crds/tests/data/shard.json parses")
}

/// The agent's verdict on a shard: it parses, and passes `check_shard`.
fn agent_accepts(object: &Value) -> bool {
    serde_json::from_value::<ProxyRuleset>(object.clone())
        .is_ok_and(|r| check_shard(&r.spec).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_judges_proxyrulesets_as_the_agent_does() {
    let cp = installed().await;
    let resource = ApiResource::erase::<ProxyRuleset>(&());
    let api: Api<DynamicObject> = Api::all_with(cp.client(), &resource);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let svc = "/spec/services/0";
    let long = |n: usize| "a".repeat(n);
    let subdomain = format!("{}.{}.{}.{}", long(63), long(63), long(63), long(61));
    let cases: Vec<(String, Value)> = vec![
        (format!("{svc}/name"), json!(long(63))),
        (format!("{svc}/name"), json!(long(64))),
        (format!("{svc}/name"), json!("web\"\n-A INPUT -j ACCEPT")),
        (format!("{svc}/name"), json!("0web")),
        (format!("{svc}/namespace"), json!("Default")),
        (format!("{svc}/portName"), json!("")),
        (format!("{svc}/portName"), json!("http#")),
        (format!("{svc}/port"), json!(0)),
        (format!("{svc}/id"), json!(4_294_967_296u64)),
        (format!("{svc}/clusterIps/0"), json!("::ffff:10.96.0.10")),
        (format!("{svc}/clusterIps/0"), json!("10.96.0.010")),
        (format!("{svc}/clusterIps/0"), json!("10.96.0.10 -j ACCEPT")),
        (format!("{svc}/loadBalancerSourceRanges/1"), json!("::/0")),
        (
            format!("{svc}/loadBalancerSourceRanges/1"),
            json!("2001:db8::/129"),
        ),
        (
            format!("{svc}/sessionAffinity/timeoutSeconds"),
            json!(86_401),
        ),
        (
            format!("{svc}/trafficDistribution"),
            json!("PreferSameNode"),
        ),
        (format!("{svc}/trafficDistribution"), json!("PreferClose\n")),
        (format!("{svc}/backends/0/nodeName"), json!(subdomain)),
        (
            format!("{svc}/backends/0/nodeName"),
            json!(format!("{subdomain}a")),
        ),
        (format!("{svc}/backends/0/zone"), json!("")),
        (format!("{svc}/backends/0/zone"), json!("zone a")),
        (
            format!("{svc}/backends/0/zoneHints"),
            json!(["a", "b", "c", "d", "e", "f", "g", "h"]),
        ),
        (
            format!("{svc}/backends/0/zoneHints"),
            json!(["a", "b", "c", "d", "e", "f", "g", "h", "i"]),
        ),
        (format!("{svc}/backends/0/nodeHints/0"), json!("node_a")),
        ("/spec/shard".to_string(), json!(1)),
        ("/spec/serviceCount".to_string(), json!(0)),
    ];
    let base = shard();
    assert!(agent_accepts(&base));
    api.create(&dry_run, &serde_json::from_value(base.clone()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("the operator's shard refused: {e}"));
    let mut refused = 0;
    for (field, value) in cases {
        let mut object = base.clone();
        *object.pointer_mut(&field).unwrap() = value.clone();
        let server = api
            .create(&dry_run, &serde_json::from_value(object.clone()).unwrap())
            .await;
        let agent = agent_accepts(&object);
        assert_eq!(
            server.is_ok(),
            agent,
            "{field} = {value}: the server says {server:?}, the agent {agent}"
        );
        refused += usize::from(!agent);
    }
    println!("{refused} shards refused by both the server and the agent");
    assert!(refused >= 15);
}
