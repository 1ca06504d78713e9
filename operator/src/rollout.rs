//! The rollout state machine: one pure step from what the API says now to the
//! ProxyNode targets to write and the rollout status to record.
//!
//! All state lives in the API — `ProxyConfig.status.rollout` (from, to, phase,
//! failed nodes, when the batch in flight started) and each node's
//! `ProxyNode.spec.targetMode` — so a restarted operator resumes where it stopped.
//!
//! Flow of a change of `spec.mode` from A to B:
//!
//! * `Progressing`: while no node is in flight (targeting B but not yet
//!   reporting B applied and Ready), the next batch of nodes still targeting
//!   another mode is moved to B. A batch never takes the pool's unavailable
//!   nodes (any node not settled on its target) above `maxUnavailable`.
//! * A node whose agent reports `failedMode: B`, or that has not settled when
//!   the batch's switch timeout passes, is moved back to the mode it still runs
//!   (A when unknown) and recorded in `failedNodes`; it is not retried in this
//!   rollout.
//! * More failures than `failureBudget`: with `autoRollback` the rollout turns
//!   `RollingBack` (every node targeting B goes back, in batches), without it it
//!   is `Halted` (no new batches until the budget is raised or the spec changes).
//! * `paused` freezes everything: no target is touched.
//! * A new `spec.mode` mid-rollout starts a new rollout from the current state.
//! * Ends in `Complete` (no node left to move) or `RolledBack`. A rolled-back
//!   rollout stays so until the spec changes again (a new generation).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use switchyard_api::Mode;
use switchyard_api::proxyconfig::{RolloutPhase, RolloutStatus};

use crate::policy::RolloutPolicy;

/// What the rollout needs to know about one node of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    /// `ProxyNode.spec.targetMode`; `None` for a node new to the pool.
    pub target: Option<Mode>,
    /// `ProxyNode.status.appliedMode`.
    pub applied: Option<Mode>,
    /// `ProxyNode.status.failedMode`.
    pub failed: Option<Mode>,
    /// The agent's `Ready` condition is True.
    pub ready: bool,
}

impl NodeState {
    /// The agent reports `mode` applied, verified and healthy.
    pub fn settled_on(&self, mode: Mode) -> bool {
        self.applied == Some(mode) && self.ready && self.failed != Some(mode)
    }

    /// Targeted at a mode it does not run settled yet.
    pub fn unavailable(&self) -> bool {
        self.target.is_some_and(|t| !self.settled_on(t))
    }

    /// Where a node that failed to reach `to` goes back to: the mode it still runs.
    fn rollback_mode(&self, from: Mode, to: Mode) -> Mode {
        match self.applied {
            Some(m) if m != to => m,
            _ => from,
        }
    }
}

/// Why a node was rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// The agent reported the switch failed.
    Failed,
    /// The node did not settle before the batch's switch timeout.
    TimedOut,
}

/// Something worth a Kubernetes Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutEvent {
    Started {
        from: Mode,
        to: Mode,
        nodes: u32,
    },
    Retargeted {
        previous_to: Mode,
        to: Mode,
    },
    BatchStarted {
        to: Mode,
        nodes: Vec<String>,
    },
    BatchDone {
        to: Mode,
        updated: u32,
        total: u32,
    },
    NodeFailed {
        node: String,
        to: Mode,
        back_to: Mode,
        cause: FailureCause,
    },
    RollbackStarted {
        from: Mode,
        to: Mode,
        failed: u32,
        budget: u32,
    },
    Halted {
        to: Mode,
        failed: u32,
        budget: u32,
    },
    Complete {
        to: Mode,
        failed: u32,
    },
    RolledBack {
        to: Mode,
        from: Mode,
    },
}

/// Everything one step reads.
#[derive(Clone, Debug)]
pub struct RolloutInput<'a> {
    /// `spec.mode`.
    pub mode: Mode,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    pub policy: &'a RolloutPolicy,
    /// `status.rollout` as last recorded.
    pub previous: Option<&'a RolloutStatus>,
    /// The pool's nodes.
    pub nodes: &'a [NodeState],
    pub now: Timestamp,
}

/// What one step decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutStep {
    /// The new `status.rollout` (`None` while the pool never had one).
    pub status: Option<RolloutStatus>,
    /// Node → new `targetMode`, only for nodes whose target changes.
    pub targets: BTreeMap<String, Mode>,
    pub events: Vec<RolloutEvent>,
    /// When to look again even if nothing changes (the batch's timeout).
    pub requeue_after: Option<Duration>,
}

fn is_active(phase: RolloutPhase) -> bool {
    match phase {
        RolloutPhase::Progressing
        | RolloutPhase::Paused
        | RolloutPhase::Halted
        | RolloutPhase::RollingBack => true,
        RolloutPhase::Complete | RolloutPhase::RolledBack => false,
    }
}

/// One step of the rollout of `input.mode` over `input.nodes`.
pub fn step(input: &RolloutInput<'_>) -> RolloutStep {
    let mut run = Run {
        nodes: input.nodes.to_vec(),
        out: RolloutStep::default(),
        policy: input.policy,
        now: input.now,
    };
    let status = run.choose_rollout(input);
    let status = status.map(|s| run.advance(s));
    let joining_mode = match &status {
        Some(s)
            if matches!(
                s.phase,
                RolloutPhase::RollingBack | RolloutPhase::RolledBack
            ) =>
        {
            s.from
        }
        _ => input.mode,
    };
    for i in 0..run.nodes.len() {
        if run.nodes[i].target.is_none() {
            run.set_target(i, joining_mode);
        }
    }
    run.out.status = status.map(|mut s| {
        s.total = count_u32(run.nodes.len());
        s.updated = count_u32(run.nodes.iter().filter(|n| n.settled_on(s.to)).count());
        s
    });
    run.out
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

struct Run<'a> {
    nodes: Vec<NodeState>,
    out: RolloutStep,
    policy: &'a RolloutPolicy,
    now: Timestamp,
}

impl Run<'_> {
    fn set_target(&mut self, index: usize, mode: Mode) {
        let node = &mut self.nodes[index];
        if node.target != Some(mode) {
            node.target = Some(mode);
            self.out.targets.insert(node.name.clone(), mode);
        }
    }

    /// Continue the recorded rollout, keep a finished one, or start a new one.
    fn choose_rollout(&mut self, input: &RolloutInput<'_>) -> Option<RolloutStatus> {
        let mode = input.mode;
        let previous = input.previous.cloned();
        let mut kept_failures = BTreeSet::new();
        if let Some(prev) = &previous
            && prev.to == mode
        {
            let same_generation = prev.generation == input.generation;
            match prev.phase {
                phase if is_active(phase) => return previous,
                RolloutPhase::RolledBack if same_generation => return previous,
                RolloutPhase::Complete if same_generation => {
                    kept_failures = prev.failed_nodes.iter().cloned().collect();
                }
                _ => {}
            }
        }
        let Some(from) = self.most_common_other_target(mode, &kept_failures) else {
            return previous;
        };
        let event = match &previous {
            Some(prev) if is_active(prev.phase) && prev.to != mode => RolloutEvent::Retargeted {
                previous_to: prev.to,
                to: mode,
            },
            _ => RolloutEvent::Started {
                from,
                to: mode,
                nodes: count_u32(self.nodes.len()),
            },
        };
        self.out.events.push(event);
        Some(RolloutStatus {
            from,
            to: mode,
            phase: RolloutPhase::Progressing,
            updated: 0,
            total: 0,
            failed_nodes: kept_failures.into_iter().collect(),
            generation: input.generation,
            batch_started: None,
        })
    }

    /// The mode most nodes that must move to `to` are targeting now (ties: the first mode).
    fn most_common_other_target(&self, to: Mode, excluded: &BTreeSet<String>) -> Option<Mode> {
        let mut counts: BTreeMap<Mode, usize> = BTreeMap::new();
        for node in &self.nodes {
            if let Some(t) = node.target
                && t != to
                && !excluded.contains(&node.name)
            {
                *counts.entry(t).or_default() += 1;
            }
        }
        let top = counts.values().copied().max()?;
        counts.into_iter().find(|(_, c)| *c == top).map(|(m, _)| m)
    }

    fn advance(&mut self, mut status: RolloutStatus) -> RolloutStatus {
        if self.policy.paused {
            if matches!(
                status.phase,
                RolloutPhase::Progressing | RolloutPhase::Halted
            ) {
                status.phase = RolloutPhase::Paused;
            }
            return status;
        }
        if status.phase == RolloutPhase::Paused {
            status.phase = RolloutPhase::Progressing;
        }
        match status.phase {
            RolloutPhase::Progressing | RolloutPhase::Halted => self.forward(status),
            RolloutPhase::RollingBack => self.backward(status),
            RolloutPhase::Paused | RolloutPhase::Complete | RolloutPhase::RolledBack => status,
        }
    }

    fn timed_out(&self, status: &RolloutStatus) -> bool {
        let Some(Time(started)) = status.batch_started else {
            return false;
        };
        let timeout =
            SignedDuration::try_from(self.policy.switch_timeout).unwrap_or(SignedDuration::MAX);
        self.now.duration_since(started) >= timeout
    }

    fn forward(&mut self, mut status: RolloutStatus) -> RolloutStatus {
        let (from, to) = (status.from, status.to);
        let timed_out = self.timed_out(&status);
        let mut in_flight = 0;
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.target != Some(to) || node.settled_on(to) {
                continue;
            }
            let cause = if node.failed == Some(to) {
                FailureCause::Failed
            } else if timed_out {
                FailureCause::TimedOut
            } else {
                in_flight += 1;
                continue;
            };
            let back_to = node.rollback_mode(from, to);
            let name = node.name.clone();
            self.set_target(i, back_to);
            if !status.failed_nodes.contains(&name) {
                status.failed_nodes.push(name.clone());
            }
            self.out.events.push(RolloutEvent::NodeFailed {
                node: name,
                to,
                back_to,
                cause,
            });
        }
        status.failed_nodes.sort();
        if in_flight == 0 && status.batch_started.take().is_some() {
            self.out.events.push(RolloutEvent::BatchDone {
                to,
                updated: count_u32(self.nodes.iter().filter(|n| n.settled_on(to)).count()),
                total: count_u32(self.nodes.len()),
            });
        }
        let failed = count_u32(status.failed_nodes.len());
        let budget = self.policy.failure_budget;
        if failed > budget {
            if self.policy.auto_rollback {
                status.phase = RolloutPhase::RollingBack;
                status.batch_started = None;
                self.out.events.push(RolloutEvent::RollbackStarted {
                    from,
                    to,
                    failed,
                    budget,
                });
                return self.backward(status);
            }
            if status.phase != RolloutPhase::Halted {
                self.out
                    .events
                    .push(RolloutEvent::Halted { to, failed, budget });
            }
            status.phase = RolloutPhase::Halted;
            return self.keep_batch_timer(status);
        }
        status.phase = RolloutPhase::Progressing;
        if in_flight > 0 {
            return self.keep_batch_timer(status);
        }
        let failed_nodes: BTreeSet<&str> = status.failed_nodes.iter().map(String::as_str).collect();
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.target.is_some_and(|t| t != to) && !failed_nodes.contains(n.name.as_str())
            })
            .collect();
        if candidates.is_empty() {
            status.phase = RolloutPhase::Complete;
            self.out.events.push(RolloutEvent::Complete { to, failed });
            return status;
        }
        let batch = self.move_within_budget(&candidates, |_| to);
        if !batch.is_empty() {
            status.batch_started = Some(Time(self.now));
            self.out
                .events
                .push(RolloutEvent::BatchStarted { to, nodes: batch });
        }
        self.keep_batch_timer(status)
    }

    fn backward(&mut self, mut status: RolloutStatus) -> RolloutStatus {
        let (from, to) = (status.from, status.to);
        let returning: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].target == Some(to))
            .collect();
        if returning.is_empty() {
            status.phase = RolloutPhase::RolledBack;
            self.out.events.push(RolloutEvent::RolledBack { to, from });
            return status;
        }
        self.move_within_budget(&returning, |node| node.rollback_mode(from, to));
        status
    }

    /// Nodes that may still be made unavailable without exceeding `maxUnavailable`.
    fn free_slots(&self) -> usize {
        let unavailable = self.nodes.iter().filter(|n| n.unavailable()).count();
        usize::try_from(self.policy.max_unavailable)
            .unwrap_or(usize::MAX)
            .saturating_sub(unavailable)
    }

    /// Move `candidates` (in order) to the mode `target_of` gives them, as far
    /// as `maxUnavailable` allows: a node already unavailable moves for free, a
    /// settled one takes a free slot. Returns the names moved.
    fn move_within_budget(
        &mut self,
        candidates: &[usize],
        target_of: impl Fn(&NodeState) -> Mode,
    ) -> Vec<String> {
        let mut slots = self.free_slots();
        let mut moved = Vec::new();
        for &i in candidates {
            let node = &self.nodes[i];
            if !node.unavailable() {
                if slots == 0 {
                    continue;
                }
                slots -= 1;
            }
            let mode = target_of(node);
            moved.push(node.name.clone());
            self.set_target(i, mode);
        }
        moved
    }

    /// Ask to be woken when the batch in flight times out.
    fn keep_batch_timer(&mut self, status: RolloutStatus) -> RolloutStatus {
        if let Some(Time(started)) = status.batch_started {
            let elapsed = self.now.duration_since(started);
            let left = SignedDuration::try_from(self.policy.switch_timeout)
                .unwrap_or(SignedDuration::MAX)
                - elapsed;
            self.out.requeue_after = Some(Duration::try_from(left).unwrap_or(Duration::ZERO));
        }
        status
    }
}
