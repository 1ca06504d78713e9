//! The whole agent (watches, control loop, status writer) against a mock API
//! server (kube's `tower_test` pattern, as kube-rs/controller-rs does it): the
//! verifier answers the four initial lists, holds the watches open, and asserts
//! the exact status requests: method, path with field manager and force, body.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake::FakeKernel;
use common::*;
use http::{Method, Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};
use switchyard_agent::agent::Agent;
use switchyard_agent::events::ApiEvents;
use switchyard_agent::status::ApiStatusWriter;
use switchyard_agent::{sync, watch};
use switchyard_api::{Mode, ProxyRuleset};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const STATUS_PATH: &str = "/apis/switchyard.dev/v1alpha1/proxynodes/node-a/status?&force=true&fieldManager=switchyard-agent";

fn list<K: Resource<DynamicType = ()> + serde::Serialize>(items: Vec<K>) -> Vec<u8> {
    let kind = format!("{}List", K::kind(&()));
    serde_json::to_vec(&json!({
        "apiVersion": K::api_version(&()),
        "kind": kind,
        "metadata": {"resourceVersion": "100"},
        "items": items,
    }))
    .unwrap()
}

struct Verifier {
    handle: Handle,
    /// Answer the ProxyRuleset list with an internal error (an API server in trouble).
    rulesets_fail: bool,
    /// The ProxyRulesets listed.
    shards: Vec<ProxyRuleset>,
    /// Events created, as their bodies.
    events: Arc<Mutex<Vec<Value>>>,
    /// Watch requests are held open (never answered), as a quiet API server does.
    held: Vec<tower_test::mock::SendResponse<Response<Body>>>,
    lists: Vec<String>,
}

impl Verifier {
    /// Serve until `done` holds for the status patches received; return their
    /// bodies and the list requests. With `quiet`, then check that nothing more
    /// is requested for 90 minutes (the hourly resync writes nothing new).
    async fn serve(mut self, done: fn(&[Value]) -> bool, quiet: bool) -> (Vec<Value>, Vec<String>) {
        let mut bodies = Vec::new();
        while !done(&bodies) {
            let (req, send) = self
                .handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("agent stopped calling"));
            let uri = req.uri().to_string();
            match *req.method() {
                Method::GET if uri.contains("watch=true") => self.held.push(send),
                Method::GET
                    if self.rulesets_fail
                        && req.uri().path() == "/apis/switchyard.dev/v1alpha1/proxyrulesets" =>
                {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
                    let mut resp = Response::new(Body::from(serde_json::to_vec(&status).unwrap()));
                    *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    send.send_response(resp);
                }
                Method::GET => {
                    let body = match req.uri().path() {
                        "/api/v1/nodes" => list(vec![(*node()).clone()]),
                        "/apis/switchyard.dev/v1alpha1/proxynodes" => {
                            list(vec![(*proxy_node(Some(Mode::Nftables), None)).clone()])
                        }
                        "/apis/switchyard.dev/v1alpha1/proxyconfigs" => {
                            list(vec![(*config(Mode::Nftables)).clone()])
                        }
                        "/apis/switchyard.dev/v1alpha1/proxyrulesets" => list(self.shards.clone()),
                        other => panic!("unexpected list {other}"),
                    };
                    self.lists.push(uri);
                    send.send_response(Response::new(Body::from(body)));
                }
                Method::PATCH => {
                    assert_eq!(uri, STATUS_PATH);
                    assert_eq!(
                        req.headers().get("content-type").unwrap(),
                        "application/apply-patch+yaml"
                    );
                    let bytes = req.into_body().collect_bytes().await.unwrap();
                    let body: Value = serde_json::from_slice(&bytes).unwrap();
                    let mut obj =
                        serde_json::to_value(&*proxy_node(Some(Mode::Nftables), None)).unwrap();
                    obj["status"] = body["status"].clone();
                    bodies.push(body);
                    send.send_response(Response::new(Body::from(
                        serde_json::to_vec(&obj).unwrap(),
                    )));
                }
                Method::POST if uri.starts_with(EVENTS_PATH) => {
                    let bytes = req.into_body().collect_bytes().await.unwrap();
                    let event: Value = serde_json::from_slice(&bytes).unwrap();
                    self.events.lock().unwrap().push(event);
                    send.send_response(Response::new(Body::from(bytes)));
                }
                ref m => panic!("unexpected {m} {uri}"),
            }
        }
        if !quiet {
            return (bodies, self.lists);
        }
        // Quiet from here on: the periodic resync (1h) finds nothing changed
        // and writes nothing; watches stay held.
        let more = tokio::time::timeout(Duration::from_secs(90 * 60), self.handle.next_request());
        if let Ok(Some((req, _))) = more.await {
            panic!(
                "unexpected request after the sync: {} {}",
                req.method(),
                req.uri()
            );
        }
        (bodies, self.lists)
    }
}

fn agent_for(kernel: &FakeKernel, client: Client) -> Agent {
    agent_with_events(
        Arc::new(kernel.factory()),
        Arc::new(kernel.probe()),
        Box::new(ApiStatusWriter::new(client.clone(), NODE)),
        Box::new(ApiEvents::new(client, NODE)),
        vec![],
    )
}

fn verifier(handle: Handle, shards: Vec<ProxyRuleset>) -> Verifier {
    Verifier {
        handle,
        rulesets_fail: false,
        shards,
        events: Arc::default(),
        held: Vec::new(),
        lists: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn agent_lists_watches_switches_and_writes_status_by_server_side_apply() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    // Served as the operator's server-side apply leaves it: with its field set.
    let mut served = (*shard(1, 0, 1, 1, vec![web()])).clone();
    served.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("switchyard-operator".into()),
        operation: Some("Apply".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(json!({"f:spec": {"f:services": {}}}))),
        ..ManagedFieldsEntry::default()
    }]);
    let verifier = verifier(handle, vec![served]);
    // Four switch checkpoints (from nothing to nftables), then the sync's status.
    let server = tokio::spawn(verifier.serve(|b| b.len() == 5, true));
    let kernel = FakeKernel::default();
    let mut agent = agent_for(&kernel, client.clone());
    let (watches, events) = watch::start(client, NODE);
    let (bodies, lists) = tokio::select! {
        r = server => r.unwrap(),
        () = sync::run(&mut agent, events, || watches.inputs(), std::future::pending()) => {
            panic!("loop ended")
        }
    };

    let kept = watches.inputs().shards;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        kept[0].metadata.managed_fields, None,
        "the store keeps no field sets (the agent never reads them)"
    );
    let mut lists = lists;
    lists.sort();
    assert_eq!(
        lists,
        vec![
            "/api/v1/nodes?&fieldSelector=metadata.name%3Dnode-a&limit=500",
            "/apis/switchyard.dev/v1alpha1/proxyconfigs?&limit=500",
            "/apis/switchyard.dev/v1alpha1/proxynodes?&fieldSelector=metadata.name%3Dnode-a&limit=500",
            "/apis/switchyard.dev/v1alpha1/proxyrulesets?&limit=500",
        ]
    );
    assert_eq!(kernel.installed(), vec![Mode::Nftables]);
    let syncs = kernel.syncs();
    assert_eq!(
        syncs.len(),
        2,
        "the switch's sync, then the hourly resync: {syncs:?}"
    );
    assert!(
        syncs[1].full,
        "the resync rewrote everything and wrote no status"
    );
    assert_eq!(
        bodies[0],
        json!({
            "apiVersion": "switchyard.dev/v1alpha1",
            "kind": "ProxyNode",
            "status": {"switch": {"to": "nftables", "step": "Building"}},
        })
    );
    assert_eq!(bodies[1]["status"]["switch"]["step"], "Verifying");
    assert_eq!(
        bodies[2]["status"],
        json!({"appliedMode": "nftables", "switch": {"to": "nftables", "step": "RemovingOld"}})
    );
    assert_eq!(bodies[3]["status"], json!({"appliedMode": "nftables"}));
    let t = "2027-01-15T08:00:00Z";
    assert_eq!(
        bodies[4],
        json!({
            "apiVersion": "switchyard.dev/v1alpha1",
            "kind": "ProxyNode",
            "status": {
                "observedGeneration": 1,
                "appliedMode": "nftables",
                "appliedEpoch": 1,
                "appliedShardCount": 1,
                "appliedGenerationSum": 1,
                "lastSyncTime": t,
                "lastSyncSeconds": 0.0,
                "counts": {"servicePorts": 1, "endpoints": 1, "objects": 1},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Synced",
                     "message": "nftables rules applied", "lastTransitionTime": t,
                     "observedGeneration": 1},
                    {"type": "Degraded", "status": "False", "reason": "AsExpected",
                     "message": "", "lastTransitionTime": t, "observedGeneration": 1},
                    {"type": "RulesetAccepted", "status": "True", "reason": "Valid",
                     "message": "every shard applied passed validation",
                     "lastTransitionTime": t, "observedGeneration": 1},
                ],
            },
        })
    );
}

fn degraded(body: &Value) -> Option<&Value> {
    body["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Degraded" && c["status"] == "True")
}

#[tokio::test(start_paused = true)]
async fn failing_api_server_keeps_the_kernel_untouched_and_reports_degraded() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let verifier = Verifier {
        rulesets_fail: true,
        ..verifier(handle, vec![])
    };
    let server = tokio::spawn(verifier.serve(|b| b.iter().any(|b| degraded(b).is_some()), false));
    let kernel = FakeKernel::default();
    kernel.install(Mode::Iptables, vec!["rules of the last run".into()]);
    let mut agent = agent_for(&kernel, client.clone());
    let (watches, events) = watch::start(client, NODE);
    let (bodies, _) = tokio::select! {
        r = server => r.unwrap(),
        () = sync::run(&mut agent, events, || watches.inputs(), std::future::pending()) => {
            panic!("loop ended")
        }
    };
    let body = bodies.last().unwrap();
    assert_eq!(
        body["status"]["appliedMode"], "iptables",
        "recovered from the kernel"
    );
    let d = degraded(body).unwrap();
    assert_eq!(d["reason"], "APIUnreachable");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("etcdserver: request timed out"),
        "{d}"
    );
    let ready = &body["status"]["conditions"][0];
    assert_eq!(
        (
            ready["type"].as_str(),
            ready["status"].as_str(),
            ready["reason"].as_str()
        ),
        (Some("Ready"), Some("False"), Some("Waiting"))
    );
    assert!(
        kernel.syncs().is_empty() && kernel.cleanups().is_empty(),
        "kernel untouched"
    );
    assert_eq!(
        kernel.rules(Mode::Iptables),
        Some(vec!["rules of the last run".to_string()])
    );
}

#[tokio::test(start_paused = true)]
async fn refused_shard_is_reported_as_an_event_on_the_proxynode_and_in_its_status() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut hostile = web();
    hostile.endpoints[0].zone = Some("zone-a\"; drop".into());
    let verifier = verifier(handle, vec![(*shard(1, 0, 1, 1, vec![hostile])).clone()]);
    let events = verifier.events.clone();
    let refused = |b: &[Value]| {
        b.iter().any(|b| {
            b["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "RulesetAccepted" && c["status"] == "False")
            })
        })
    };
    let server = tokio::spawn(verifier.serve(refused, false));
    let kernel = FakeKernel::default();
    let mut agent = agent_for(&kernel, client.clone());
    let (watches, watch_events) = watch::start(client, NODE);
    let (bodies, _) = tokio::select! {
        r = server => r.unwrap(),
        () = sync::run(&mut agent, watch_events, || watches.inputs(), std::future::pending()) => {
            panic!("loop ended")
        }
    };
    assert!(
        kernel.installed().is_empty(),
        "nothing applied from a refused generation"
    );
    let why = r#"ProxyRuleset switchyard-e1-0000 (generation 1) refused: services[0].backends[0].zone: "zone-a\"; drop""#;
    let status = &bodies.last().unwrap()["status"];
    let accepted = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "RulesetAccepted")
        .unwrap();
    assert_eq!(accepted["reason"], "InvalidShard");
    assert!(
        accepted["message"].as_str().unwrap().starts_with(why),
        "{accepted}"
    );

    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidRuleset");
    assert_eq!(event["reportingController"], "switchyard-agent");
    assert_eq!(event["reportingInstance"], NODE);
    assert_eq!(event["regarding"]["kind"], "ProxyNode");
    assert_eq!(event["regarding"]["name"], NODE);
    assert!(event["note"].as_str().unwrap().starts_with(why), "{event}");
}
