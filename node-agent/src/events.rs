//! Kubernetes Events about this node's ProxyNode: what the agent refused.
//! Published once per distinct refusal; the status says the same for as
//! long as it holds.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The reporting controller of the agent's Events.
pub const REPORTER: &str = "switchyard-agent";

/// Publishes Events.
pub trait EventSink: Send + Sync {
    fn publish<'a>(
        &'a self,
        event: &'a Event,
        regarding: &'a ObjectReference,
    ) -> BoxFuture<'a, Result<(), kube::Error>>;
}

/// Publishes to the API server, each Event as a new one: kube's `Recorder`
/// folds an Event into an earlier one with the same reason whatever its
/// note says, so two different refusals would show as one repeated.
#[derive(Clone)]
pub struct ApiEvents {
    client: kube::Client,
    reporter: Reporter,
}

impl ApiEvents {
    pub fn new(client: kube::Client, node: &str) -> ApiEvents {
        ApiEvents {
            client,
            reporter: Reporter {
                controller: REPORTER.to_string(),
                instance: Some(node.to_string()),
            },
        }
    }
}

impl EventSink for ApiEvents {
    fn publish<'a>(
        &'a self,
        event: &'a Event,
        regarding: &'a ObjectReference,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            Recorder::new(self.client.clone(), self.reporter.clone())
                .publish(event, regarding)
                .await
        })
    }
}

/// The Warning Event of a refused ruleset shard.
pub fn refused_event(note: String) -> Event {
    Event {
        type_: EventType::Warning,
        reason: "InvalidRuleset".to_string(),
        note: Some(note),
        action: "Link".to_string(),
        secondary: None,
    }
}
