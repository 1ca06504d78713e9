//! Kubernetes Events for what happens to a pool, and how they are published.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use switchyard_api::ProxyNode;

use crate::plan::PoolEvent;
use crate::rollout::{FailureCause, RolloutEvent};

fn proxy_node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(ProxyNode::api_version(&()).into_owned()),
        kind: Some(ProxyNode::kind(&()).into_owned()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    }
}

/// Publishes every Event as a new one.
///
/// kube's `Recorder` counts an Event as a repeat of one it published before
/// (a patched series, shown as "x2") when type, reason, action and objects
/// match, whatever its note says: a rollout's second `BatchStarted` showed in
/// `kubectl get events` as a repeat of the first, naming the first batch's
/// nodes, and a rollback's `RolloutStarted` as a repeat of the forward one.
/// The operator publishes only on transitions, so there is nothing worth
/// folding: each Event goes through a fresh `Recorder`, which creates it.
#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
}

impl EventPublisher {
    pub fn new(client: Client, reporter: Reporter) -> EventPublisher {
        EventPublisher { client, reporter }
    }

    /// Create `event` about `regarding`.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(event, regarding)
            .await
    }
}

fn event(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    }
}

/// The Event a pool event is published as.
pub fn to_event(pool_event: &PoolEvent) -> Event {
    use EventType::{Normal, Warning};
    let e = match pool_event {
        PoolEvent::Conflict(message) => return event(Warning, "Conflict", message.clone()),
        PoolEvent::ConnectionsCut { from, to, what } => {
            return event(
                Warning,
                "RolloutCutsConnections",
                format!("switching a node from {from} to {to} cuts {what}"),
            );
        }
        PoolEvent::Rollout(e) => e,
    };
    match e {
        RolloutEvent::Started { from, to, nodes } => event(
            Normal,
            "RolloutStarted",
            format!("switching {nodes} nodes from {from} to {to}"),
        ),
        RolloutEvent::Retargeted { previous_to, to } => event(
            Normal,
            "RolloutRetargeted",
            format!("spec.mode changed mid-rollout: nodes now go to {to} instead of {previous_to}"),
        ),
        RolloutEvent::BatchStarted { to, nodes } => event(
            Normal,
            "BatchStarted",
            format!(
                "switching {} nodes to {to}: {}",
                nodes.len(),
                nodes.join(", ")
            ),
        ),
        RolloutEvent::BatchDone { to, updated, total } => event(
            Normal,
            "BatchDone",
            format!("batch finished: {updated}/{total} nodes run {to}"),
        ),
        RolloutEvent::NodeFailed {
            node,
            to,
            back_to,
            cause,
        } => {
            let why = match cause {
                FailureCause::Failed => "its agent reported the switch failed",
                FailureCause::TimedOut => "it did not report the new mode in time",
            };
            Event {
                secondary: Some(proxy_node_ref(node)),
                ..event(
                    Warning,
                    "NodeFailed",
                    format!("node {node} did not switch to {to}: {why}; moved back to {back_to}"),
                )
            }
        }
        RolloutEvent::RollbackStarted {
            from,
            to,
            failed,
            budget,
        } => event(
            Warning,
            "RollbackStarted",
            format!(
                "{failed} nodes failed the switch to {to} (failureBudget {budget}): rolling every node back to {from}"
            ),
        ),
        RolloutEvent::Halted { to, failed, budget } => event(
            Warning,
            "RolloutHalted",
            format!(
                "{failed} nodes failed the switch to {to} (failureBudget {budget}) and autoRollback is off: no further batches"
            ),
        ),
        RolloutEvent::Complete { to, failed } => event(
            Normal,
            "RolloutComplete",
            format!(
                "every node that could switch runs {to} ({failed} failed and stayed on their old mode)"
            ),
        ),
        RolloutEvent::RolledBack { to, from } => event(
            Warning,
            "RolledBack",
            format!("the switch to {to} was rolled back: the pool runs {from}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use switchyard_api::Mode;

    use super::*;

    #[test]
    fn a_failed_node_is_a_warning_naming_its_proxynode() {
        let e = to_event(&PoolEvent::Rollout(RolloutEvent::NodeFailed {
            node: "worker-3".into(),
            to: Mode::Ebpf,
            back_to: Mode::Iptables,
            cause: FailureCause::TimedOut,
        }));
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.reason, "NodeFailed");
        assert_eq!(
            e.note.as_deref(),
            Some(
                "node worker-3 did not switch to ebpf: it did not report the new mode in time; moved back to iptables"
            )
        );
        let secondary = e.secondary.unwrap();
        assert_eq!(
            (secondary.kind.as_deref(), secondary.name.as_deref()),
            (Some("ProxyNode"), Some("worker-3"))
        );
    }

    #[test]
    fn a_rollback_is_a_warning_and_a_finished_batch_is_normal() {
        let rollback = to_event(&PoolEvent::Rollout(RolloutEvent::RollbackStarted {
            from: Mode::Iptables,
            to: Mode::Nftables,
            failed: 2,
            budget: 1,
        }));
        assert_eq!(
            (rollback.type_, rollback.reason.as_str()),
            (EventType::Warning, "RollbackStarted")
        );
        let batch = to_event(&PoolEvent::Rollout(RolloutEvent::BatchDone {
            to: Mode::Nftables,
            updated: 20,
            total: 100,
        }));
        assert_eq!(
            (batch.type_, batch.reason.as_str()),
            (EventType::Normal, "BatchDone")
        );
        assert_eq!(
            batch.note.as_deref(),
            Some("batch finished: 20/100 nodes run nftables")
        );
    }
}
