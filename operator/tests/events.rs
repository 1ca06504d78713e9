//! How the operator's Events reach the API server (mock API server).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::verifier::mock_client;
use http::Method;
use kube::Resource;
use switchyard_api::{Mode, ProxyConfig};
use switchyard_operator::controller::reporter;
use switchyard_operator::events::{EventPublisher, to_event};
use switchyard_operator::plan::PoolEvent;
use switchyard_operator::rollout::RolloutEvent;

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

/// Against a real API server, `kubectl get events` showed a rollout's second
/// batch as "x2" of the first, naming the first batch's node: kube's
/// `Recorder` patched the first Event's series count instead of creating the
/// second. Each batch must be its own Event, naming its own nodes.
#[tokio::test]
async fn second_batch_event_is_its_own_event_not_a_repeat_of_the_first() {
    let (client, mut api) = mock_client();
    let events = EventPublisher::new(client, reporter(Some("switchyard-operator-0".into())));
    let pool = ProxyConfig::new("demo", Default::default()).object_ref(&());
    let batch = |node: &str| {
        to_event(&PoolEvent::Rollout(RolloutEvent::BatchStarted {
            to: Mode::Nftables,
            nodes: vec![node.to_string()],
        }))
    };
    let publishing = tokio::spawn(async move {
        for node in ["node-0", "node-1"] {
            events.publish(&batch(node), &pool).await.unwrap();
        }
    });
    for node in ["node-0", "node-1"] {
        let request = api.expect(Method::POST, EVENTS).await;
        let body = request.body.clone().unwrap();
        assert_eq!(body["reason"], "BatchStarted");
        assert_eq!(
            body["note"],
            format!("switching 1 nodes to nftables: {node}")
        );
        assert!(body.get("series").is_none(), "{body}");
        request.echo();
    }
    publishing.await.unwrap();
    api.done().await;
}
