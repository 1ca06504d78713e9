//! A ruleset shard that fails validation is refused with its whole
//! generation: the rules applied before stay, the ProxyNode's status and an
//! Event name the shard and the field, and a fixed shard is then applied.

mod common;

use std::sync::Arc;

use common::fake::FakeKernel;
use common::*;
use switchyard_agent::agent::{Agent, SyncOutcome, Waiting};
use switchyard_api::{Mode, ProxyNodeStatus};

const HOSTILE: &str = "web\"\n-A INPUT -j ACCEPT";

fn condition(status: &ProxyNodeStatus, type_: &str) -> (String, String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn agent(kernel: &FakeKernel, events: &RecordingEvents) -> Agent {
    agent_with_events(
        Arc::new(kernel.factory()),
        Arc::new(kernel.probe()),
        Box::new(RecordingWriter::default()),
        Box::new(events.clone()),
        vec![],
    )
}

fn hostile_web() -> switchyard_api::ruleset::ServicePortRule {
    let mut rule = web();
    rule.name = HOSTILE.into();
    rule
}

#[tokio::test(start_paused = true)]
async fn invalid_shard_is_refused_the_last_rules_stay_and_status_and_event_say_why() {
    let kernel = FakeKernel::default();
    let events = RecordingEvents::default();
    let mut agent = agent(&kernel, &events);
    let good = inputs(Some(Mode::Nftables), None);
    let out = agent.sync(&good, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    let applied = kernel.rules(Mode::Nftables).unwrap();

    // Generation 2 of the shard carries a Service name that would end a rule line.
    let mut hostile = good.clone();
    hostile.shards = vec![shard(1, 0, 1, 2, vec![hostile_web(), api()])];
    let out = agent.sync(&hostile, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(
        kernel.rules(Mode::Nftables),
        Some(applied.clone()),
        "the rules of generation 1 stay"
    );
    let status = agent.status();
    assert_eq!(status.applied_generation_sum, Some(1));
    let (accepted, reason, message) = condition(status, "RulesetAccepted");
    assert_eq!(
        (accepted.as_str(), reason.as_str()),
        ("False", "InvalidShard")
    );
    let why = r#"ProxyRuleset switchyard-e1-0000 (generation 2) refused: services[0].name: "web\"\n-A INPUT -j ACCEPT": a DNS-1035 label"#;
    assert!(message.starts_with(why), "{message}");
    let (degraded, reason, _) = condition(status, "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidRuleset")
    );
    assert_eq!(
        condition(status, "Ready").0,
        "True",
        "the kept rules are applied"
    );

    let published = events.all();
    assert_eq!(published.len(), 1, "{published:?}");
    let (regarding, type_, reason, note) = &published[0];
    assert_eq!(
        (regarding.as_str(), type_.as_str(), reason.as_str()),
        (NODE, "Warning", "InvalidRuleset")
    );
    assert!(note.starts_with(why), "{note}");
    assert!(!note.contains('\n'));

    // Still refused after a full resync: no second Event for the same refusal.
    agent.invalidate();
    agent.sync(&hostile, None).await;
    assert_eq!(events.all().len(), 1);
    assert_eq!(kernel.rules(Mode::Nftables), Some(applied));

    // Fixed in generation 3: applied, and the conditions clear.
    let mut fixed = good.clone();
    fixed.shards = vec![shard(1, 0, 1, 3, vec![web(), api()])];
    let out = agent.sync(&fixed, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(kernel.rules(Mode::Nftables).unwrap().len(), 2);
    let status = agent.status();
    assert_eq!(status.applied_generation_sum, Some(3));
    assert_eq!(condition(status, "RulesetAccepted").0, "True");
    assert_eq!(condition(status, "Degraded").1, "AsExpected");
    assert_eq!(events.all().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_first_generation_that_is_refused_applies_nothing() {
    let kernel = FakeKernel::default();
    let events = RecordingEvents::default();
    let mut agent = agent(&kernel, &events);
    let mut hostile = inputs(Some(Mode::Iptables), None);
    let mut bad = web();
    bad.endpoints[0].node_name = Some("node-a\n".into());
    hostile.shards = vec![shard(1, 0, 1, 1, vec![bad])];
    let out = agent.sync(&hostile, None).await;
    let SyncOutcome::Waiting(Waiting::Refused(why)) = out else {
        panic!("{out:?}")
    };
    assert!(
        why.contains("services[0].backends[0].nodeName: \"node-a\\n\""),
        "{why}"
    );
    assert!(kernel.installed().is_empty(), "nothing applied");
    assert_eq!(events.all().len(), 1);
    assert_eq!(condition(agent.status(), "RulesetAccepted").0, "False");
}

fn api() -> switchyard_api::ruleset::ServicePortRule {
    rule(
        2,
        "api",
        "10.96.0.20",
        vec![endpoint(2, "10.0.2.5", "node-b")],
    )
}
