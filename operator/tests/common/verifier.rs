//! A mock API server (kube-rs/controller-rs's `ApiServerVerifier` pattern):
//! the client under test talks to a `tower_test` handle, and the test asserts
//! each request's method, path and body and answers it.

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use tower_test::mock::{Handle, SendResponse};

pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

/// One request the test expects.
pub struct Expected {
    pub method: Method,
    /// The path, and the query when it matters (`?` included).
    pub path: String,
    pub body: Option<Value>,
    send: SendResponse<Response<Body>>,
}

impl Expected {
    pub fn reply(self, status: StatusCode, body: &Value) {
        self.send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    pub fn ok(self, body: &Value) {
        self.reply(StatusCode::OK, body);
    }

    /// Answer a write with what was written (as the API server echoes objects).
    pub fn echo(self) {
        let body = self.body.clone().unwrap_or(Value::Null);
        self.ok(&body);
    }
}

/// A client wired to a verifier.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

impl ApiServerVerifier {
    /// The next request, asserted to be `method` on `path` (compared up to the
    /// query string unless `path` has one).
    pub async fn expect(&mut self, method: Method, path: &str) -> Expected {
        let (request, send) = self
            .0
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {path}, but the client went away"));
        let uri = request.uri().to_string();
        let got = if path.contains('?') {
            uri.clone()
        } else {
            uri.split('?').next().unwrap().to_string()
        };
        assert_eq!(
            (request.method().clone(), got.as_str()),
            (method.clone(), path),
            "unexpected request {} {uri}",
            request.method()
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
        Expected {
            method,
            path: uri,
            body,
            send,
        }
    }

    /// Assert the client makes no further request (every client clone must be dropped).
    pub async fn done(mut self) {
        if let Some((request, _)) = self.0.next_request().await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}
