//! A fake Lease API with the API server's optimistic concurrency, for
//! several candidates at once: GET, POST (409 AlreadyExists when the Lease
//! exists) and PUT (409 Conflict unless the body carries the stored
//! resourceVersion). The test plays other replicas by writing the Lease
//! directly, and can stall the API: a stalled request is never answered.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower_test::mock::{Handle, SendResponse};

pub const NAMESPACE: &str = "switchyard-system";
pub const NAME: &str = "switchyard-operator";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/switchyard-system/leases";

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub method: Method,
    /// `None`: the API was stalled and never answered.
    pub status: Option<StatusCode>,
    /// The Lease a write carried.
    pub body: Option<Lease>,
}

#[derive(Default)]
struct State {
    lease: Option<Lease>,
    version: u64,
    stalled: bool,
    seen: Vec<Seen>,
    /// Answers never sent, kept so the requests stay pending.
    unanswered: Vec<SendResponse<Response<Body>>>,
}

#[derive(Clone, Default)]
pub struct LeaseApi(Arc<Mutex<State>>);

fn status(code: StatusCode, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code.as_u16(), "message": reason})
}

impl State {
    fn store(&mut self, mut lease: Lease) -> Value {
        self.version += 1;
        lease.metadata.name = Some(NAME.into());
        lease.metadata.namespace = Some(NAMESPACE.into());
        lease.metadata.resource_version = Some(self.version.to_string());
        self.lease = Some(lease.clone());
        serde_json::to_value(lease).unwrap()
    }

    fn answer(&mut self, method: &Method, path: &str, body: Option<&Lease>) -> (StatusCode, Value) {
        let stored = self
            .lease
            .as_ref()
            .map(|l| l.metadata.resource_version.clone());
        let lease_path = format!("{LEASES}/{NAME}");
        match (method, path, stored) {
            (&Method::GET, p, Some(_)) if p == lease_path => (
                StatusCode::OK,
                serde_json::to_value(self.lease.as_ref()).unwrap(),
            ),
            (&Method::GET | &Method::PUT, p, None) if p == lease_path => (
                StatusCode::NOT_FOUND,
                status(StatusCode::NOT_FOUND, "NotFound"),
            ),
            (&Method::POST, LEASES, Some(_)) => (
                StatusCode::CONFLICT,
                status(StatusCode::CONFLICT, "AlreadyExists"),
            ),
            (&Method::POST, LEASES, None) => {
                (StatusCode::CREATED, self.store(body.unwrap().clone()))
            }
            (&Method::PUT, p, Some(version)) if p == lease_path => {
                let sent = body.unwrap().metadata.resource_version.clone();
                assert!(sent.is_some(), "a Lease write without a resourceVersion");
                if sent == version {
                    (StatusCode::OK, self.store(body.unwrap().clone()))
                } else {
                    (
                        StatusCode::CONFLICT,
                        status(StatusCode::CONFLICT, "Conflict"),
                    )
                }
            }
            _ => panic!("unexpected request {method} {path}"),
        }
    }
}

impl LeaseApi {
    /// A client of this fake; clients of one fake share its Lease.
    pub fn client(&self) -> Client {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(self.clone().serve(handle));
        Client::new(service, "default")
    }

    /// Write the Lease as another replica would (a new resourceVersion).
    pub fn set(&self, spec: LeaseSpec) {
        let lease = Lease {
            spec: Some(spec),
            ..Lease::default()
        };
        self.0.lock().unwrap().store(lease);
    }

    pub fn spec(&self) -> Option<LeaseSpec> {
        self.0.lock().unwrap().lease.as_ref()?.spec.clone()
    }

    /// While stalled, requests are taken but never answered.
    pub fn stall(&self, stalled: bool) {
        self.0.lock().unwrap().stalled = stalled;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().seen.clone()
    }

    /// The writes received (POST and PUT).
    pub fn writes(&self) -> Vec<Seen> {
        let mut seen = self.seen();
        seen.retain(|s| s.method != Method::GET);
        seen
    }

    async fn serve(self, mut handle: Handle<Request<Body>, Response<Body>>) {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Option<Lease> =
                (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
            let mut state = self.0.lock().unwrap();
            let mut seen = Seen {
                at: Instant::now(),
                method: method.clone(),
                status: None,
                body: body.clone(),
            };
            if state.stalled {
                state.seen.push(seen);
                state.unanswered.push(send);
                continue;
            }
            let (code, answer) = state.answer(&method, &path, body.as_ref());
            seen.status = Some(code);
            state.seen.push(seen);
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    }
}
