//! The whole agent (watches, control loop, status writer) against a mock API
//! server (kube's `tower_test` pattern, as kube-rs/controller-rs does it): the
//! verifier answers the four initial lists, holds the watches open, and asserts
//! the exact status requests: method, path with field manager and force, body.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};
use switchyard_agent::agent::{Agent, AgentParts};
use switchyard_agent::fake::FakeKernel;
use switchyard_agent::health::ProxyHealth;
use switchyard_agent::metrics::Metrics;
use switchyard_agent::status::{ApiStatusWriter, StatusReporter};
use switchyard_agent::{sync, watch};
use switchyard_api::Mode;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

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
    /// Watch requests are held open (never answered), as a quiet API server does.
    held: Vec<tower_test::mock::SendResponse<Response<Body>>>,
    lists: Vec<String>,
}

impl Verifier {
    /// Serve until `patches` status patches arrived; return their bodies.
    async fn serve(mut self, patches: usize) -> (Vec<Value>, Vec<String>) {
        let mut bodies = Vec::new();
        while bodies.len() < patches {
            let (req, send) = self
                .handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("agent stopped calling"));
            let uri = req.uri().to_string();
            match *req.method() {
                Method::GET if uri.contains("watch=true") => self.held.push(send),
                Method::GET => {
                    let body = match req.uri().path() {
                        "/api/v1/nodes" => list(vec![(*node()).clone()]),
                        "/apis/switchyard.dev/v1alpha1/proxynodes" => {
                            list(vec![(*proxy_node(Some(Mode::Nftables), None)).clone()])
                        }
                        "/apis/switchyard.dev/v1alpha1/proxyconfigs" => {
                            list(vec![(*config(Mode::Nftables)).clone()])
                        }
                        "/apis/switchyard.dev/v1alpha1/proxyrulesets" => {
                            list(vec![(*shard(1, 0, 1, 1, vec![web()])).clone()])
                        }
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
                ref m => panic!("unexpected {m} {uri}"),
            }
        }
        // Quiet from here on: the periodic resync (1h) finds nothing changed
        // and writes nothing; watches stay held.
        let more = tokio::time::timeout(Duration::from_secs(2 * 3600), self.handle.next_request());
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

#[tokio::test(start_paused = true)]
async fn agent_lists_watches_switches_and_writes_status_by_server_side_apply() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let verifier = Verifier {
        handle,
        held: Vec::new(),
        lists: Vec::new(),
    };
    // Four switch checkpoints (from nothing to nftables), then the sync's status.
    let server = tokio::spawn(verifier.serve(5));

    let kernel = FakeKernel::default();
    let mut agent = Agent::new(AgentParts {
        node_name: NODE.into(),
        factory: Arc::new(kernel.factory()),
        probe: Arc::new(kernel.probe()),
        leftovers: vec![],
        reporter: StatusReporter::new(
            Box::new(ApiStatusWriter::new(client.clone(), NODE)),
            Duration::from_secs(5),
        ),
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(ProxyHealth::new(Duration::from_secs(60))),
        health_checks: None,
        wall_clock: fixed_clock,
    });
    let (watches, events) = watch::start(client, NODE);
    let (bodies, lists) = tokio::select! {
        r = server => r.unwrap(),
        () = sync::run(&mut agent, events, || watches.inputs(), std::future::pending()) => {
            panic!("loop ended")
        }
    };

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
                "appliedMode": "nftables",
                "appliedEpoch": 1,
                "appliedShards": {"switchyard-e1-0000": 1},
                "lastSyncTime": t,
                "lastSyncSeconds": 0.0,
                "counts": {"servicePorts": 1, "endpoints": 1, "objects": 1},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Synced",
                     "message": "nftables rules applied", "lastTransitionTime": t,
                     "observedGeneration": 1},
                    {"type": "Degraded", "status": "False", "reason": "AsExpected",
                     "message": "", "lastTransitionTime": t, "observedGeneration": 1},
                ],
            },
        })
    );
}
