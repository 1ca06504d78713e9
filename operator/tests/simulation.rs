//! The operator's pool logic ([`plan_pool`], what every reconcile runs) against
//! an in-memory cluster of 1000 nodes whose simulated agents switch modes after
//! random delays and succeed, fail or hang at chosen rates. Time is tokio's
//! paused clock: agents "take" seconds, timeouts fire, nothing sleeps.
//!
//! Checked on every write: the pool never has more than `maxUnavailable` nodes
//! unavailable. At the end: the rollout finished or rolled back as the failure
//! budget says, every node runs what it should, and the status says so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use common::agent::{AgentState, Behaviour};
use common::clock::TokioClock;
use common::objects::{config, node, proxy_node, ready_condition, selector};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use switchyard_api::proxyconfig::{ProxyConfigStatus, RolloutPhase};
use switchyard_api::{Mode, ProxyConfig, ProxyNode};
use switchyard_operator::clock::Clock;
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
    /// `proxy_nodes[i]` is node-i's.
    proxy_nodes: Vec<ProxyNode>,
    max_unavailable: usize,
    max_seen_unavailable: usize,
    events: Vec<PoolEvent>,
    /// (second, node) of every ProxyNode spec write.
    target_writes: Vec<(u64, String)>,
    crashes: usize,
    /// ProxyNode writes a crash prevented.
    lost_writes: usize,
}

impl Cluster {
    fn unavailable(&self) -> usize {
        self.states().iter().filter(|n| n.unavailable()).count()
    }

    fn states(&self) -> Vec<NodeState> {
        self.proxy_nodes
            .iter()
            .map(|p| {
                switchyard_operator::plan::node_state(p.metadata.name.as_deref().unwrap(), Some(p))
            })
            .collect()
    }
}

/// `node-0042` → 42.
fn node_index(name: &str) -> usize {
    name.trim_start_matches("node-").parse().unwrap()
}

struct Outcome {
    status: ProxyConfigStatus,
    states: Vec<NodeState>,
    events: Vec<PoolEvent>,
    max_seen_unavailable: usize,
    elapsed: Duration,
    target_writes: Vec<(u64, String)>,
    crashes: usize,
    lost_writes: usize,
}

/// Rates in per mille.
struct Rates {
    fail: u64,
    hang: u64,
}

/// A change made to the cluster at a simulated time.
#[derive(Clone, Copy, Debug)]
enum Edit {
    /// A user edits `spec.mode`.
    Mode(Mode),
    /// A user sets `spec.rollout.paused`.
    Paused(bool),
    /// The operator dies after writing the status and before the node specs
    /// (in its next reconcile that writes any); a new one takes over from what
    /// the API holds.
    CrashAfterStatus,
}

async fn simulate(
    max_unavailable: IntOrString,
    failure_budget: u32,
    rates: Rates,
    seed: u64,
) -> (Outcome, Vec<Behaviour>, usize) {
    simulate_script(max_unavailable, failure_budget, rates, seed, Vec::new()).await
}

/// Run the rollout of `nftables` over the pool, applying `script` (seconds, edit) on the way.
async fn simulate_script(
    max_unavailable: IntOrString,
    failure_budget: u32,
    rates: Rates,
    seed: u64,
    mut script: Vec<(u64, Edit)>,
) -> (Outcome, Vec<Behaviour>, usize) {
    script.sort_by_key(|(at, _)| *at);
    script.reverse(); // pop() takes the earliest
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
            .map(|n| proxy_node(n, Some("main"), Mode::Iptables))
            .collect(),
        max_unavailable: max,
        max_seen_unavailable: 0,
        events: Vec::new(),
        target_writes: Vec::new(),
        crashes: 0,
        lost_writes: 0,
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
                    let status = c.proxy_nodes[i].status.as_mut().unwrap();
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
            let mut pending_crashes = 0;
            loop {
                while script
                    .last()
                    .is_some_and(|(at, _)| started.elapsed() >= Duration::from_secs(*at))
                {
                    let (_, edit) = script.pop().unwrap();
                    let mut c = cluster.borrow_mut();
                    let generation = c.config.metadata.generation.unwrap() + 1;
                    match edit {
                        Edit::Mode(m) => c.config.spec.mode = m,
                        Edit::Paused(p) => c.config.spec.rollout.paused = p,
                        Edit::CrashAfterStatus => {
                            pending_crashes += 1;
                            continue;
                        }
                    }
                    c.config.metadata.generation = Some(generation);
                }
                let (plan, done) = {
                    let c = cluster.borrow();
                    let configs = [c.config.clone()];
                    let assignment = assign_pools(&c.nodes, &configs);
                    let plan = plan_pool(&PoolInput {
                        config: &c.config,
                        assignment: &assignment,
                        nodes: &c.nodes,
                        proxy_nodes: &c.proxy_nodes,
                        now: clock.now(),
                        switch_margin: Duration::from_secs(60),
                    });
                    let finished = plan.status.rollout.as_ref().is_some_and(|r| {
                        matches!(r.phase, RolloutPhase::Complete | RolloutPhase::RolledBack)
                    });
                    let done = finished
                        && plan.proxy_nodes.is_empty()
                        && script.is_empty()
                        && pending_crashes == 0
                        && c.unavailable() == 0;
                    (plan, done)
                };
                {
                    let mut c = cluster.borrow_mut();
                    c.config.status = Some(plan.status.clone());
                    // A crash strikes the next reconcile that has node specs to write.
                    if pending_crashes > 0 && !plan.proxy_nodes.is_empty() {
                        pending_crashes -= 1;
                        c.crashes += 1;
                        c.lost_writes += plan.proxy_nodes.len();
                        continue;
                    }
                    let at = started.elapsed().as_secs();
                    for apply in &plan.proxy_nodes {
                        c.target_writes.push((at, apply.name.clone()));
                        c.proxy_nodes[node_index(&apply.name)].spec = apply.spec.clone();
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
                let next_edit = script.last().map_or(Duration::MAX, |(at, _)| {
                    Duration::from_secs(*at).saturating_sub(started.elapsed())
                });
                tokio::select! {
                    _ = tokio::time::sleep(next_edit.min(Duration::from_secs(24 * 3600))) => {}
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
        target_writes: c.target_writes.clone(),
        crashes: c.crashes,
        lost_writes: c.lost_writes,
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
    assert_eq!(
        condition(&out.status, "Reconciling"),
        ("False", "Reconciled")
    );
    assert_eq!(condition(&out.status, "Stalled"), ("False", "NotStalled"));
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
    assert_eq!(condition(&out.status, "Stalled"), ("True", "NodesFailed"));
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
    assert_eq!(condition(&out.status, "Stalled"), ("True", "RolledBack"));
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

#[tokio::test(start_paused = true)]
async fn a_new_mode_mid_rollout_takes_every_node_there() {
    let script = vec![(100, Edit::Mode(Mode::Ebpf))];
    let (out, _, _) = simulate_script(
        IntOrString::String("10%".into()),
        0,
        Rates { fail: 0, hang: 0 },
        5,
        script,
    )
    .await;
    assert!(out.max_seen_unavailable <= 100);
    assert!(out.events.iter().any(|e| matches!(
        e,
        PoolEvent::Rollout(RolloutEvent::Retargeted {
            previous_to: Mode::Nftables,
            to: Mode::Ebpf
        })
    )));
    let rollout = out.status.rollout.clone().unwrap();
    assert_eq!(
        (rollout.to, rollout.phase),
        (Mode::Ebpf, RolloutPhase::Complete)
    );
    assert!(out.states.iter().all(|n| n.settled_on(Mode::Ebpf)));
    assert_eq!(
        out.status.nodes_by_mode,
        BTreeMap::from([("ebpf".into(), 1000)])
    );
    assert_eq!(condition(&out.status, "Ready"), ("True", "AllNodesReady"));
}

#[tokio::test(start_paused = true)]
async fn a_paused_rollout_writes_nothing_until_resumed() {
    let script = vec![(50, Edit::Paused(true)), (5000, Edit::Paused(false))];
    let (out, _, _) = simulate_script(
        IntOrString::Int(100),
        0,
        Rates { fail: 0, hang: 0 },
        11,
        script,
    )
    .await;
    let paused_writes: Vec<&(u64, String)> = out
        .target_writes
        .iter()
        .filter(|(at, _)| (51..5000).contains(at))
        .collect();
    assert!(paused_writes.is_empty(), "{paused_writes:?}");
    assert!(
        out.target_writes.iter().any(|(at, _)| *at >= 5000),
        "the rollout resumed"
    );
    assert_eq!(
        out.status.rollout.clone().unwrap().phase,
        RolloutPhase::Complete
    );
    assert!(out.states.iter().all(|n| n.settled_on(Mode::Nftables)));
    assert!(out.max_seen_unavailable <= 100);
}

#[tokio::test(start_paused = true)]
async fn operator_crashes_between_writes_resume_from_the_api() {
    let script = (1..8).map(|i| (i * 37, Edit::CrashAfterStatus)).collect();
    let (out, behaviours, _) = simulate_script(
        IntOrString::String("10%".into()),
        10,
        Rates { fail: 3, hang: 3 },
        13,
        script,
    )
    .await;
    assert_eq!(out.crashes, 7);
    assert!(
        out.lost_writes > 0,
        "some crash came between a status and its node writes"
    );
    assert!(out.max_seen_unavailable <= 100);
    let bad = names_where(&behaviours, |b| b != Behaviour::Succeed);
    assert!(bad.len() <= 10, "{} bad nodes with this seed", bad.len());
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
    assert_eq!(out.status.ready_nodes, 1000 - bad.len() as u32);
}
