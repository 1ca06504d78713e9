//! The rollout state machine, step by step: success, node failure, timeout,
//! rollback, halt, pause, retarget, operator restart, and a property test over
//! random agent behaviours.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::time::Duration;

use common::agent::{AgentState, Behaviour};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use switchyard_api::Mode::{self, Ebpf, Iptables, Nftables};
use switchyard_api::proxyconfig::{RolloutPhase, RolloutStatus};
use switchyard_operator::policy::RolloutPolicy;
use switchyard_operator::rollout::{
    FailureCause, NodeState, RolloutEvent, RolloutInput, RolloutStep, step,
};

struct Pool {
    nodes: Vec<NodeState>,
    agents: Vec<AgentState>,
    behaviours: Vec<Behaviour>,
    status: Option<RolloutStatus>,
    policy: RolloutPolicy,
    mode: Mode,
    generation: i64,
    now: Timestamp,
    max_seen_unavailable: usize,
}

fn policy(max_unavailable: u32) -> RolloutPolicy {
    RolloutPolicy {
        max_unavailable,
        auto_rollback: true,
        failure_budget: 0,
        paused: false,
        switch_timeout: Duration::from_secs(70),
        problems: vec![],
    }
}

impl Pool {
    /// `n` nodes settled on `mode`, agents succeeding unless told otherwise.
    fn new(n: usize, mode: Mode, max_unavailable: u32) -> Pool {
        Pool {
            nodes: (0..n)
                .map(|i| NodeState {
                    name: format!("node-{i:02}"),
                    target: Some(mode),
                    applied: Some(mode),
                    failed: None,
                    ready: true,
                })
                .collect(),
            agents: vec![AgentState::running(mode); n],
            behaviours: vec![Behaviour::Succeed; n],
            status: None,
            policy: policy(max_unavailable),
            mode,
            generation: 1,
            now: Timestamp::from_second(1_800_000_000).unwrap(),
            max_seen_unavailable: 0,
        }
    }

    fn edit_mode(&mut self, mode: Mode) {
        self.mode = mode;
        self.generation += 1;
    }

    /// One operator step; applies the new targets and status as the API would.
    fn operator(&mut self) -> RolloutStep {
        let out = step(&RolloutInput {
            mode: self.mode,
            generation: Some(self.generation),
            policy: &self.policy,
            previous: self.status.as_ref(),
            nodes: &self.nodes,
            now: self.now,
        });
        for node in &mut self.nodes {
            if let Some(m) = out.targets.get(&node.name) {
                node.target = Some(*m);
            }
        }
        self.status = out.status.clone();
        let unavailable = self.nodes.iter().filter(|n| n.unavailable()).count();
        self.max_seen_unavailable = self.max_seen_unavailable.max(unavailable);
        out
    }

    /// Every agent reacts to its target once.
    fn agents(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            self.agents[i].react(node.target, self.behaviours[i]);
            node.applied = self.agents[i].applied;
            node.failed = self.agents[i].failed;
            node.ready = self.agents[i].ready;
        }
    }

    fn advance(&mut self, secs: i64) {
        self.now += SignedDuration::from_secs(secs);
    }

    fn phase(&self) -> Option<RolloutPhase> {
        self.status.as_ref().map(|s| s.phase)
    }

    fn targets(&self) -> Vec<Mode> {
        self.nodes.iter().map(|n| n.target.unwrap()).collect()
    }

    /// Operator and agents alternate until the rollout ends (or `limit` steps).
    fn run(&mut self, limit: usize) -> Vec<RolloutEvent> {
        let mut events = Vec::new();
        for _ in 0..limit {
            let out = self.operator();
            events.extend(out.events);
            if matches!(
                self.phase(),
                Some(RolloutPhase::Complete | RolloutPhase::RolledBack | RolloutPhase::Halted)
            ) {
                return events;
            }
            self.agents();
            self.advance(10);
        }
        events
    }
}

/// The run ended with the rollout to `to` complete, `failed` nodes left behind.
fn assert_completed(events: &[RolloutEvent], to: Mode, failed: u32) {
    assert_eq!(events.last(), Some(&RolloutEvent::Complete { to, failed }));
}

fn batch_sizes(events: &[RolloutEvent]) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            RolloutEvent::BatchStarted { nodes, .. } => Some(nodes.len()),
            _ => None,
        })
        .collect()
}

#[test]
fn no_rollout_while_every_node_runs_the_mode() {
    let mut pool = Pool::new(3, Iptables, 1);
    let out = pool.operator();
    assert_eq!(out, RolloutStep::default());
}

#[test]
fn new_nodes_get_the_pool_mode_directly() {
    let mut pool = Pool::new(2, Nftables, 1);
    pool.nodes[1].target = None;
    let out = pool.operator();
    assert_eq!(out.targets.len(), 1);
    assert_eq!(out.targets["node-01"], Nftables);
    assert!(out.status.is_none());
}

#[test]
fn success_moves_in_batches_of_max_unavailable_then_completes() {
    let mut pool = Pool::new(5, Iptables, 2);
    pool.edit_mode(Nftables);
    let first = pool.operator();
    assert_eq!(
        first.events,
        vec![
            RolloutEvent::Started {
                from: Iptables,
                to: Nftables,
                nodes: 5
            },
            RolloutEvent::BatchStarted {
                to: Nftables,
                nodes: vec!["node-00".into(), "node-01".into()]
            },
        ]
    );
    assert_eq!(first.requeue_after, Some(Duration::from_secs(70)));
    // The next batch waits for the current one.
    let waiting = pool.operator();
    assert!(waiting.targets.is_empty() && waiting.events.is_empty());
    pool.agents();
    let events = pool.run(20);
    assert_eq!(batch_sizes(&events), vec![2, 1]);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, RolloutEvent::BatchDone { .. }))
            .count(),
        3
    );
    assert_completed(&events, Nftables, 0);
    let status = pool.status.clone().unwrap();
    assert_eq!((status.updated, status.total), (5, 5));
    assert_eq!(status.generation, Some(2));
    assert_eq!(status.batch_started, None);
    assert!(pool.targets().iter().all(|m| *m == Nftables));
    assert_eq!(pool.max_seen_unavailable, 2);
}

#[test]
fn a_failed_node_is_moved_back_and_the_rollout_reverses_over_budget() {
    let mut pool = Pool::new(4, Iptables, 2);
    pool.behaviours[1] = Behaviour::Fail;
    pool.edit_mode(Nftables);
    let events = pool.run(20);
    assert!(events.contains(&RolloutEvent::NodeFailed {
        node: "node-01".into(),
        to: Nftables,
        back_to: Iptables,
        cause: FailureCause::Failed,
    }));
    assert!(events.contains(&RolloutEvent::RollbackStarted {
        from: Iptables,
        to: Nftables,
        failed: 1,
        budget: 0
    }));
    assert_eq!(
        events.last(),
        Some(&RolloutEvent::RolledBack {
            to: Nftables,
            from: Iptables
        })
    );
    assert_eq!(pool.phase(), Some(RolloutPhase::RolledBack));
    assert_eq!(pool.status.as_ref().unwrap().failed_nodes, vec!["node-01"]);
    assert!(pool.targets().iter().all(|m| *m == Iptables));
    assert!(pool.max_seen_unavailable <= 2);
    // The agents come back to iptables.
    pool.agents();
    assert!(pool.nodes.iter().all(|n| n.settled_on(Iptables)));
}

#[test]
fn failures_within_budget_complete_with_the_failed_nodes_on_the_old_mode() {
    let mut pool = Pool::new(6, Iptables, 3);
    pool.policy.failure_budget = 1;
    pool.behaviours[4] = Behaviour::Fail;
    pool.edit_mode(Ebpf);
    let events = pool.run(20);
    assert_completed(&events, Ebpf, 1);
    let mut expected = vec![Ebpf; 6];
    expected[4] = Iptables;
    assert_eq!(pool.targets(), expected);
    assert_eq!(pool.status.as_ref().unwrap().updated, 5);
}

#[test]
fn a_node_that_does_not_settle_in_time_is_rolled_back() {
    let mut pool = Pool::new(3, Iptables, 1);
    pool.policy.failure_budget = 5;
    pool.behaviours[0] = Behaviour::Hang;
    pool.edit_mode(Nftables);
    let out = pool.operator();
    assert_eq!(out.targets.len(), 1);
    pool.agents();
    pool.advance(69);
    let still_waiting = pool.operator();
    assert!(still_waiting.events.is_empty());
    assert_eq!(still_waiting.requeue_after, Some(Duration::from_secs(1)));
    pool.advance(1);
    let out = pool.operator();
    assert_eq!(
        out.events[0],
        RolloutEvent::NodeFailed {
            node: "node-00".into(),
            to: Nftables,
            back_to: Iptables,
            cause: FailureCause::TimedOut,
        }
    );
    // The rolled-back node must settle before the next batch takes its slot.
    assert!(
        !out.events
            .iter()
            .any(|e| matches!(e, RolloutEvent::BatchStarted { .. }))
    );
    pool.agents();
    let events = pool.run(20);
    assert_completed(&events, Nftables, 1);
    assert_eq!(pool.targets(), vec![Iptables, Nftables, Nftables]);
    assert_eq!(pool.max_seen_unavailable, 1);
}

#[test]
fn without_auto_rollback_the_rollout_halts_and_resumes_when_the_budget_is_raised() {
    let mut pool = Pool::new(4, Iptables, 1);
    pool.policy.auto_rollback = false;
    pool.behaviours[0] = Behaviour::Fail;
    pool.edit_mode(Nftables);
    let events = pool.run(20);
    assert_eq!(
        events.last(),
        Some(&RolloutEvent::Halted {
            to: Nftables,
            failed: 1,
            budget: 0
        })
    );
    pool.agents();
    let halted = pool.operator();
    assert!(halted.targets.is_empty() && halted.events.is_empty());
    assert_eq!(pool.phase(), Some(RolloutPhase::Halted));
    pool.policy.failure_budget = 1;
    let events = pool.run(20);
    assert_completed(&events, Nftables, 1);
    assert_eq!(pool.targets(), vec![Iptables, Nftables, Nftables, Nftables]);
}

#[test]
fn pause_freezes_the_rollout_and_resume_continues_it() {
    let mut pool = Pool::new(4, Iptables, 1);
    pool.edit_mode(Nftables);
    pool.operator();
    pool.agents();
    pool.policy.paused = true;
    for _ in 0..3 {
        let out = pool.operator();
        assert!(out.targets.is_empty() && out.events.is_empty());
        assert_eq!(pool.phase(), Some(RolloutPhase::Paused));
        pool.agents();
        pool.advance(1000);
    }
    assert_eq!(pool.targets(), vec![Nftables, Iptables, Iptables, Iptables]);
    pool.policy.paused = false;
    let events = pool.run(20);
    assert_completed(&events, Nftables, 0);
}

#[test]
fn a_new_mode_mid_rollout_retargets_every_node() {
    let mut pool = Pool::new(4, Iptables, 2);
    pool.edit_mode(Nftables);
    pool.operator();
    pool.agents();
    pool.operator(); // batch done, next batch of 2 in flight
    pool.edit_mode(Ebpf);
    let out = pool.operator();
    assert_eq!(
        out.events[0],
        RolloutEvent::Retargeted {
            previous_to: Nftables,
            to: Ebpf
        }
    );
    // The two nodes still switching to nftables move to ebpf at once (they are
    // unavailable already); the two on nftables wait for them.
    assert_eq!(out.targets.len(), 2);
    assert!(out.targets.values().all(|m| *m == Ebpf));
    pool.agents();
    let events = pool.run(20);
    assert_completed(&events, Ebpf, 0);
    assert!(pool.targets().iter().all(|m| *m == Ebpf));
    assert_eq!(pool.status.as_ref().unwrap().from, Nftables);
    assert!(pool.max_seen_unavailable <= 2);
}

#[test]
fn reverting_the_mode_mid_rollout_moves_the_switched_nodes_back() {
    let mut pool = Pool::new(3, Iptables, 1);
    pool.edit_mode(Nftables);
    pool.operator();
    pool.agents();
    pool.edit_mode(Iptables);
    let events = pool.run(20);
    assert_eq!(
        events[0],
        RolloutEvent::Retargeted {
            previous_to: Nftables,
            to: Iptables
        }
    );
    assert_completed(&events, Iptables, 0);
    assert!(pool.targets().iter().all(|m| *m == Iptables));
}

#[test]
fn a_rolled_back_rollout_stays_rolled_back_until_the_spec_changes() {
    let mut pool = Pool::new(2, Iptables, 1);
    pool.behaviours[0] = Behaviour::Fail;
    pool.edit_mode(Nftables);
    pool.run(20);
    assert_eq!(pool.phase(), Some(RolloutPhase::RolledBack));
    pool.agents();
    // A node joining now gets the mode the pool really runs.
    pool.nodes.push(NodeState {
        name: "node-99".into(),
        target: None,
        applied: None,
        failed: None,
        ready: false,
    });
    pool.agents.push(AgentState {
        applied: None,
        failed: None,
        ready: false,
    });
    pool.behaviours.push(Behaviour::Succeed);
    let out = pool.operator();
    assert_eq!(out.targets.len(), 1);
    assert_eq!(out.targets["node-99"], Iptables);
    assert!(out.events.is_empty());
    // Fixing the node and touching the spec retries.
    pool.behaviours[0] = Behaviour::Succeed;
    pool.agents();
    pool.generation += 1;
    let events = pool.run(20);
    assert!(matches!(
        events[0],
        RolloutEvent::Started {
            from: Iptables,
            to: Nftables,
            nodes: 3
        }
    ));
    assert_completed(&events, Nftables, 0);
}

#[test]
fn a_node_moved_into_a_completed_pool_is_rolled_to_its_mode() {
    let mut pool = Pool::new(3, Iptables, 1);
    pool.policy.failure_budget = 1;
    pool.behaviours[2] = Behaviour::Fail;
    pool.edit_mode(Nftables);
    pool.run(20);
    assert_eq!(pool.phase(), Some(RolloutPhase::Complete));
    pool.agents();
    // node-01 arrives from a pool that ran ebpf.
    pool.nodes[1].target = Some(Ebpf);
    pool.agents();
    let events = pool.run(20);
    assert!(matches!(
        events[0],
        RolloutEvent::Started {
            from: Ebpf,
            to: Nftables,
            ..
        }
    ));
    assert_completed(&events, Nftables, 1);
    // The node that failed in this generation is not retried.
    assert_eq!(pool.targets(), vec![Nftables, Nftables, Iptables]);
}

#[test]
fn an_operator_restart_resumes_from_what_the_api_holds() {
    let mut pool = Pool::new(6, Iptables, 2);
    pool.behaviours[3] = Behaviour::Hang;
    pool.policy.failure_budget = 3;
    pool.edit_mode(Nftables);
    pool.operator();
    pool.agents();
    pool.operator();
    pool.agents();
    // "Restart": the status goes through the API (JSON) and the next step is
    // taken by a fresh process holding nothing but that and the node specs.
    let stored = serde_json::to_string(&pool.status).unwrap();
    let mut resumed = Pool::new(6, Iptables, 2);
    resumed.nodes = pool.nodes.clone();
    resumed.agents = pool.agents.clone();
    resumed.behaviours = pool.behaviours.clone();
    resumed.status = serde_json::from_str(&stored).unwrap();
    resumed.mode = pool.mode;
    resumed.generation = pool.generation;
    resumed.policy = pool.policy.clone();
    resumed.now = pool.now;
    let a = pool.run(30);
    let b = resumed.run(30);
    assert_eq!(a, b);
    assert_eq!(pool.status, resumed.status);
    assert_eq!(pool.targets(), resumed.targets());
    assert!(a.contains(&RolloutEvent::NodeFailed {
        node: "node-03".into(),
        to: Nftables,
        back_to: Iptables,
        cause: FailureCause::TimedOut,
    }));
    assert_eq!(
        a.last(),
        Some(&RolloutEvent::Complete {
            to: Nftables,
            failed: 1
        })
    );
}

#[test]
fn a_status_written_before_the_node_specs_is_repaired_on_resume() {
    // The operator records status before node targets; a crash in between
    // leaves a batch time with no node moved. The next step starts the batch again.
    let mut pool = Pool::new(3, Iptables, 1);
    pool.edit_mode(Nftables);
    let out = pool.operator();
    for node in &mut pool.nodes {
        node.target = Some(Iptables); // the target writes were lost
    }
    assert_eq!(out.targets.len(), 1);
    pool.advance(5);
    let again = pool.operator();
    assert_eq!(again.targets, out.targets);
    pool.agents();
    let events = pool.run(20);
    assert_completed(&events, Nftables, 0);
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        6 => Just(Behaviour::Succeed),
        1 => Just(Behaviour::Fail),
        1 => Just(Behaviour::Hang),
    ]
}

proptest! {
    #[test]
    fn any_rollout_respects_max_unavailable_and_ends_as_the_budget_says(
        behaviours in prop::collection::vec(behaviour(), 1..14),
        max_unavailable in 1u32..5,
        budget in 0u32..4,
        auto_rollback in any::<bool>(),
    ) {
        let n = behaviours.len();
        let mut pool = Pool::new(n, Iptables, max_unavailable);
        pool.behaviours = behaviours.clone();
        pool.policy.failure_budget = budget;
        pool.policy.auto_rollback = auto_rollback;
        pool.edit_mode(Nftables);
        pool.run(40 * n);
        let bad: Vec<bool> = behaviours.iter().map(|b| *b != Behaviour::Succeed).collect();
        let bad_count = u32::try_from(bad.iter().filter(|b| **b).count()).unwrap();
        prop_assert!(pool.max_seen_unavailable <= max_unavailable as usize);
        let status = pool.status.clone().unwrap();
        if bad_count > budget {
            let expected = if auto_rollback { RolloutPhase::RolledBack } else { RolloutPhase::Halted };
            prop_assert_eq!(status.phase, expected);
            if auto_rollback {
                prop_assert!(pool.targets().iter().all(|m| *m == Iptables));
            }
        } else {
            prop_assert_eq!(status.phase, RolloutPhase::Complete);
            let expected: Vec<Mode> = bad.iter().map(|b| if *b { Iptables } else { Nftables }).collect();
            prop_assert_eq!(pool.targets(), expected);
            prop_assert_eq!(status.failed_nodes.len() as u32, bad_count);
        }
    }
}
