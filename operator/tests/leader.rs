//! Leader election: the decision table, and the Lease requests against a mock API server.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::clock::{FixedClock, now};
use common::verifier::mock_client;
use http::{Method, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::SignedDuration;
use kube::Api;
use serde_json::json;
use switchyard_operator::http::Health;
use switchyard_operator::leader::{Decision, LeaderElector, LeaseSettings, decide};

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/switchyard-system/leases/switchyard-operator";

fn held_by(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        renew_time: Some(MicroTime(
            now() - SignedDuration::from_secs(renewed_secs_ago),
        )),
        lease_transitions: Some(2),
        ..LeaseSpec::default()
    }
}

#[test]
fn a_lease_is_taken_only_when_free_or_expired() {
    assert_eq!(decide(None, "a", now()), Decision::Acquire);
    assert_eq!(
        decide(Some(&LeaseSpec::default()), "a", now()),
        Decision::Acquire
    );
    assert_eq!(decide(Some(&held_by("a", 3)), "a", now()), Decision::Renew);
    assert_eq!(
        decide(Some(&held_by("b", 14)), "a", now()),
        Decision::Wait { holder: "b".into() }
    );
    assert_eq!(
        decide(Some(&held_by("b", 15)), "a", now()),
        Decision::Acquire
    );
}

fn elector(client: kube::Client, health: Arc<Health>) -> LeaderElector {
    LeaderElector::new(
        Api::<Lease>::namespaced(client, "switchyard-system"),
        LeaseSettings {
            name: "switchyard-operator".into(),
            holder: "replica-a".into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        },
        Arc::new(FixedClock(now())),
        health,
    )
}

fn lease(spec: LeaseSpec) -> serde_json::Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "switchyard-operator", "namespace": "switchyard-system", "resourceVersion": "7"},
        "spec": spec,
    })
}

fn not_found() -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

#[tokio::test]
async fn a_missing_lease_is_created_with_us_as_holder() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, LEASE)
            .await
            .reply(StatusCode::NOT_FOUND, &not_found());
        let req = api
            .expect(
                Method::POST,
                "/apis/coordination.k8s.io/v1/namespaces/switchyard-system/leases",
            )
            .await;
        let body = req.body.clone().unwrap();
        assert_eq!(body["metadata"]["name"], "switchyard-operator");
        assert_eq!(body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        req.echo();
        api.done().await;
    });
    let health = Arc::new(Health::default());
    let e = elector(client, health.clone());
    assert!(e.try_acquire_or_renew().await.unwrap());
    drop(e);
    server.await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, LEASE)
            .await
            .ok(&lease(held_by("replica-b", 60)));
        let req = api.expect(Method::PUT, LEASE).await;
        let body = req.body.clone().unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        req.echo();
        api.done().await;
    });
    let e = elector(client, Arc::new(Health::default()));
    assert!(e.try_acquire_or_renew().await.unwrap());
    drop(e);
    server.await.unwrap();
}

#[tokio::test]
async fn losing_the_race_for_a_lease_is_not_an_error() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, LEASE)
            .await
            .ok(&lease(held_by("replica-b", 60)));
        api.expect(Method::PUT, LEASE).await.reply(
            StatusCode::CONFLICT,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
        );
        api.done().await;
    });
    let e = elector(client, Arc::new(Health::default()));
    assert!(!e.try_acquire_or_renew().await.unwrap());
    drop(e);
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_standby_waits_while_the_leader_renews_and_reports_ready() {
    let (client, mut api) = mock_client();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, LEASE)
            .await
            .ok(&lease(held_by("replica-b", 1)));
        api.expect(Method::GET, LEASE)
            .await
            .ok(&lease(LeaseSpec::default()));
        let req = api.expect(Method::PUT, LEASE).await;
        assert_eq!(
            req.body.as_ref().unwrap()["spec"]["holderIdentity"],
            "replica-a"
        );
        req.echo();
        api.done().await;
    });
    let health = Arc::new(Health::default());
    let e = elector(client, health.clone());
    let acquired = e.acquire();
    tokio::time::timeout(Duration::from_secs(60), acquired)
        .await
        .unwrap();
    assert!(health.leader.load(Ordering::Relaxed));
    assert!(health.api_reachable.load(Ordering::Relaxed));
    drop(e);
    server.await.unwrap();
}
