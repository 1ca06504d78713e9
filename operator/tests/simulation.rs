//! The operator's pool logic ([`plan_pool`], what every reconcile runs) against
//! an in-memory cluster of 1000 nodes whose simulated agents switch modes after
//! random delays and succeed, fail or hang at chosen rates. Time is tokio's
//! paused clock: agents "take" seconds, timeouts fire, nothing sleeps.
//!
//! Checked on every write: the pool never has more than `maxUnavailable` nodes
//! unavailable. At the end: the rollout finished or rolled back as the failure
//! budget says, every node runs what it should, and the status says so.

#![allow(clippy::expect_used)] // tests may expect

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use common::agent::{AgentState, Behaviour};
use common::objects::{config, node, proxy_node, ready_condition, selector};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use switchyard_api::proxyconfig::{ProxyConfigStatus, RolloutPhase};
use switchyard_api::{Mode, ProxyConfig, ProxyNode};
use switchyard_operator::clock::{Clock, TokioClock};
use switchyard_operator::controller::DEBOUNCE;
use switchyard_operator::plan::{PoolEvent, PoolInput, plan_pool};
use switchyard_operator::pools::assign_pools;
use switchyard_operator::rollout::{NodeState, RolloutEvent};
use tokio::sync::{Notify, watch};

const NODES: usize = 1000;

/// A tiny deterministic generator (no dependency, reproducible runs).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

struct Cluster {
    nodes: Vec<Arc<Node>>,
    config: ProxyConfig,
    proxy_nodes: BTreeMap<String, ProxyNode>,
    max_unavailable: usize,
    max_seen_unavailable: usize,
    events: Vec<PoolEvent>,
}

impl Cluster {
    fn unavailable(&self) -> usize {
        self.proxy_nodes
            .values()
            .filter(|p| {
                switchyard_operator::plan::node_state(&p.metadata.name.clone().unwrap(), Some(p))
                    .unavailable()
            })
            .count()
    }

    fn states(&self) -> Vec<NodeState> {
        self.proxy_nodes
            .iter()
            .map(|(n, p)| switchyard_operator::plan::node_state(n, Some(p)))
            .collect()
    }
}

struct Outcome {
    status: ProxyConfigStatus,
    states: Vec<NodeState>,
    events: Vec<PoolEvent>,
    max_seen_unavailable: usize,
    elapsed: Duration,
}

/// Rates in per mille.
struct Rates {
    fail: u64,
    hang: u64,
}

async fn simulate(
    max_unavailable: IntOrString,
    failure_budget: u32,
    rates: Rates,
    seed: u64,
) -> (Outcome, Vec<Behaviour>, usize) {
    let mut rng = Lcg(seed);
    let behaviours: Vec<Behaviour> = (0..NODES)
        .map(|_| {
            if rng.chance(rates.fail) {
                Behaviour::Fail
            } else if rng.chance(rates.hang) {
                Behaviour::Hang
            } else {
                Behaviour::Succeed
            }
        })
        .collect();
    let names: Vec<String> = (0..NODES).map(|i| format!("node-{i:04}")).collect();
    let mut pool = config(
        "main",
        Mode::Nftables,
        0,
        selector(&[("pool", "main")], &[]),
    );
    pool.metadata.generation = Some(2);
    pool.spec.rollout.max_unavailable = Some(max_unavailable.clone());
    pool.spec.rollout.failure_budget = Some(failure_budget);
    let max = switchyard_operator::policy::max_unavailable(Some(&max_unavailable), NODES as u32)
        .unwrap() as usize;
    let cluster = Rc::new(RefCell::new(Cluster {
        nodes: names
            .iter()
            .map(|n| Arc::new(node(n, &[("pool", "main")])))
            .collect(),
        config: pool,
        proxy_nodes: names
            .iter()
            .map(|n| (n.clone(), proxy_node(n, Some("main"), Mode::Iptables)))
            .collect(),
        max_unavailable: max,
        max_seen_unavailable: 0,
        events: Vec::new(),
    }));
    let operator_wake = Rc::new(Notify::new());
    let clock = TokioClock::starting_at(Timestamp::from_second(1_800_000_000).unwrap());
    let started = tokio::time::Instant::now();

    // One agent task per node: wait for a new target, take a while, report.
    let mut targets = BTreeMap::new();
    let local = tokio::task::LocalSet::new();
    for (i, name) in names.iter().enumerate() {
        let (tx, mut rx) = watch::channel(Some(Mode::Iptables));
        targets.insert(name.clone(), tx);
        let cluster = cluster.clone();
        let wake = operator_wake.clone();
        let name = name.clone();
        let behaviour = behaviours[i];
        let switch_secs = 5 + rng.next() % 30;
        local.spawn_local(async move {
            let mut agent = AgentState::running(Mode::Iptables);
            while rx.changed().await.is_ok() {
                let target = *rx.borrow_and_update();
                tokio::time::sleep(Duration::from_secs(switch_secs)).await;
                if rx.has_changed().unwrap_or(false) {
                    continue; // retargeted meanwhile: converge to the newest target
                }
                if agent.react(target, behaviour) {
                    let mut c = cluster.borrow_mut();
                    let status = c
                        .proxy_nodes
                        .get_mut(&name)
                        .unwrap()
                        .status
                        .as_mut()
                        .unwrap();
                    status.applied_mode = agent.applied;
                    status.failed_mode = agent.failed;
                    status.conditions = if agent.ready {
                        vec![ready_condition(clock.now())]
                    } else {
                        vec![]
                    };
                    drop(c);
                    wake.notify_one();
                }
            }
        });
    }

    // The operator: reconcile on every change or when the plan asks to be woken.
    let operator = {
        let cluster = cluster.clone();
        let wake = operator_wake.clone();
        async move {
            loop {
                let (plan, done) = {
                    let c = cluster.borrow();
                    let configs = [c.config.clone()];
                    let assignment = assign_pools(&c.nodes, &configs);
                    let proxy_nodes: Vec<ProxyNode> = c.proxy_nodes.values().cloned().collect();
                    let plan = plan_pool(&PoolInput {
                        config: &c.config,
                        assignment: &assignment,
                        nodes: &c.nodes,
                        proxy_nodes: &proxy_nodes,
                        now: clock.now(),
                        switch_margin: Duration::from_secs(60),
                    });
                    let finished = plan.status.rollout.as_ref().is_some_and(|r| {
                        matches!(r.phase, RolloutPhase::Complete | RolloutPhase::RolledBack)
                    });
                    let settled = c.states().iter().all(|n| !n.unavailable());
                    let done = finished && settled && plan.proxy_nodes.is_empty();
                    (plan, done)
                };
                {
                    let mut c = cluster.borrow_mut();
                    c.config.status = Some(plan.status.clone());
                    for apply in &plan.proxy_nodes {
                        c.proxy_nodes.get_mut(&apply.name).unwrap().spec = apply.spec.clone();
                        targets[&apply.name].send_replace(apply.spec.target_mode);
                    }
                    let unavailable = c.unavailable();
                    assert!(
                        unavailable <= c.max_unavailable,
                        "{unavailable} nodes unavailable, maxUnavailable is {}",
                        c.max_unavailable
                    );
                    c.max_seen_unavailable = c.max_seen_unavailable.max(unavailable);
                    c.events.extend(plan.events.iter().cloned());
                }
                if done {
                    break;
                }
                let requeue = plan.requeue_after.unwrap_or(Duration::from_secs(300));
                tokio::select! {
                    _ = wake.notified() => {
                        // As the controller's debounce: let changes of the same moment pile up.
                        tokio::time::sleep(DEBOUNCE).await;
                    }
                    _ = tokio::time::sleep(requeue) => {}
                }
            }
        }
    };
    local
        .run_until(async {
            tokio::time::timeout(Duration::from_secs(24 * 3600), operator)
                .await
                .expect("the rollout ends within a simulated day")
        })
        .await;
    let c = cluster.borrow();
    let outcome = Outcome {
        status: c.config.status.clone().unwrap(),
        states: c.states(),
        events: c.events.clone(),
        max_seen_unavailable: c.max_seen_unavailable,
        elapsed: started.elapsed(),
    };
    (outcome, behaviours, max)
}

fn condition<'a>(status: &'a ProxyConfigStatus, type_: &str) -> (&'a str, &'a str) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

fn batches(events: &[PoolEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, PoolEvent::Rollout(RolloutEvent::BatchStarted { .. })))
        .count()
}

fn names_where(behaviours: &[Behaviour], f: impl Fn(Behaviour) -> bool) -> BTreeSet<String> {
    behaviours
        .iter()
        .enumerate()
        .filter(|(_, b)| f(**b))
        .map(|(i, _)| format!("node-{i:04}"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_healthy_nodes_switch_in_batches_of_ten_percent() {
    let (out, _, max) = simulate(
        IntOrString::String("10%".into()),
        0,
        Rates { fail: 0, hang: 0 },
        1,
    )
    .await;
    assert_eq!(max, 100);
    assert_eq!(out.max_seen_unavailable, 100);
    assert_eq!(batches(&out.events), 10);
    let rollout = out.status.rollout.clone().unwrap();
    assert_eq!(rollout.phase, RolloutPhase::Complete);
    assert_eq!((rollout.updated, rollout.total), (1000, 1000));
    assert!(rollout.failed_nodes.is_empty());
    assert_eq!(
        (
            out.status.nodes,
            out.status.ready_nodes,
            out.status.updated_nodes
        ),
        (1000, 1000, 1000)
    );
    assert_eq!(
        out.status.nodes_by_mode,
        BTreeMap::from([("nftables".into(), 1000)])
    );
    assert_eq!(
        out.status.nodes_by_state,
        BTreeMap::from([("ready".into(), 1000)])
    );
    assert_eq!(condition(&out.status, "Ready"), ("True", "AllNodesReady"));
    assert_eq!(
        condition(&out.status, "Progressing"),
        ("False", "RolloutComplete")
    );
    assert_eq!(condition(&out.status, "Degraded"), ("False", "AsExpected"));
    // Ten batches of at most 34 simulated seconds each.
    assert!(
        out.elapsed <= Duration::from_secs(10 * 37),
        "{:?}",
        out.elapsed
    );
}

#[tokio::test(start_paused = true)]
async fn failures_within_the_budget_finish_with_those_nodes_on_the_old_mode() {
    let (out, behaviours, _) =
        simulate(IntOrString::Int(50), 15, Rates { fail: 5, hang: 5 }, 7).await;
    let bad = names_where(&behaviours, |b| b != Behaviour::Succeed);
    assert!(
        !bad.is_empty() && bad.len() <= 15,
        "{} bad nodes with this seed",
        bad.len()
    );
    assert!(out.max_seen_unavailable <= 50);
    let rollout = out.status.rollout.clone().unwrap();
    assert_eq!(rollout.phase, RolloutPhase::Complete);
    assert_eq!(
        rollout
            .failed_nodes
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        bad
    );
    for n in &out.states {
        let expected = if bad.contains(&n.name) {
            Mode::Iptables
        } else {
            Mode::Nftables
        };
        assert_eq!(n.target, Some(expected), "{}", n.name);
        assert!(n.settled_on(expected), "{n:?}");
    }
    let good = 1000 - bad.len() as u32;
    assert_eq!(
        (out.status.ready_nodes, out.status.updated_nodes),
        (good, good)
    );
    assert_eq!(condition(&out.status, "Degraded"), ("True", "NodesFailed"));
    assert_eq!(condition(&out.status, "Ready"), ("False", "NodesNotReady"));
    let timed_out = names_where(&behaviours, |b| b == Behaviour::Hang);
    let reported_timeouts = out
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                PoolEvent::Rollout(RolloutEvent::NodeFailed {
                    cause: switchyard_operator::rollout::FailureCause::TimedOut,
                    ..
                })
            )
        })
        .count();
    assert_eq!(reported_timeouts, timed_out.len());
}

#[tokio::test(start_paused = true)]
async fn failures_over_the_budget_roll_the_whole_pool_back() {
    let (out, _, _) = simulate(
        IntOrString::String("5%".into()),
        3,
        Rates { fail: 20, hang: 0 },
        3,
    )
    .await;
    assert!(out.max_seen_unavailable <= 50);
    let rollout = out.status.rollout.clone().unwrap();
    assert_eq!(rollout.phase, RolloutPhase::RolledBack);
    assert_eq!(
        rollout.failed_nodes.len(),
        4,
        "the rollout reverses at the first failure over budget"
    );
    assert!(
        out.states
            .iter()
            .all(|n| n.target == Some(Mode::Iptables) && n.settled_on(Mode::Iptables))
    );
    assert_eq!(
        out.status.nodes_by_mode,
        BTreeMap::from([("iptables".into(), 1000)])
    );
    assert_eq!(out.status.updated_nodes, 0);
    assert_eq!(condition(&out.status, "Degraded"), ("True", "RolledBack"));
    assert_eq!(
        condition(&out.status, "Progressing"),
        ("False", "RolledBack")
    );
    assert!(out.events.iter().any(|e| matches!(
        e,
        PoolEvent::Rollout(RolloutEvent::RollbackStarted {
            failed: 4,
            budget: 3,
            ..
        })
    )));
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, PoolEvent::Rollout(RolloutEvent::RolledBack { .. })))
    );
}
