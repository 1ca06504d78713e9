//! The demo's control plane: the state goes through the real loader, compiler
//! and pool assignment (`plan`'s [`Cluster`]); the mode change rolls out in the
//! batches the operator's rollout state machine picks, each node switching
//! through its agent.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use switchyard_agent::switch::{ProbeTarget, probe_target};
use switchyard_api::Mode;
use switchyard_api::duration::parse_duration;
use switchyard_api::proxyconfig::{RolloutPhase, RolloutStatus};
use switchyard_compiler::parse_objects;
use switchyard_lab::agent::Answer;
use switchyard_operator::policy::RolloutPolicy;
use switchyard_operator::rollout::{self, NodeState, RolloutEvent, RolloutInput};

use super::agent::{DemoNode, SwitchReport};
use super::layout::Layout;
use super::{DemoError, Progress};
use crate::plan::{Cluster, Placement};

/// Added to the verification timeout for a node's switch deadline.
const SWITCH_MARGIN: Duration = Duration::from_secs(30);

/// The compiled demo state and its pool.
pub struct DemoCluster {
    cluster: Cluster,
    probe: Option<ProbeTarget>,
    policy: RolloutPolicy,
}

impl DemoCluster {
    pub fn new(layout: &Layout, mode: Mode, batch: u32) -> Result<DemoCluster, DemoError> {
        let objects = parse_objects(&layout.state_yaml(mode, batch))
            .map_err(|e| DemoError::State(e.to_string()))?;
        let cluster = Cluster::new(objects);
        if let Some(d) = cluster.diagnostics.first() {
            return Err(DemoError::State(d.to_string()));
        }
        let config = cluster
            .configs
            .first()
            .ok_or_else(|| DemoError::State("no ProxyConfig".to_string()))?;
        let pool_size = u32::from(layout.nodes);
        let policy = RolloutPolicy::resolve(&config.spec.rollout, pool_size, SWITCH_MARGIN);
        let probe = match &config.spec.rollout.verification {
            None => None,
            Some(v) => {
                let timeout = v
                    .timeout
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| DemoError::State(e.to_string()))?
                    .unwrap_or(Duration::from_secs(10));
                let target = probe_target(&cluster.ruleset.services, &v.service, v.port, timeout)
                    .ok_or_else(|| {
                    DemoError::State(format!(
                        "verification service {} is not in the ruleset",
                        v.service
                    ))
                })?;
                Some(target)
            }
        };
        Ok(DemoCluster {
            cluster,
            probe,
            policy,
        })
    }

    /// Ask `agent` to switch to `mode` with the node's linked ruleset and its pool's settings.
    fn begin(&self, agent: &DemoNode, mode: Mode) -> Result<Answer<SwitchReport>, DemoError> {
        let node = self
            .cluster
            .nodes
            .iter()
            .find(|n| n.name_any() == agent.node())
            .ok_or_else(|| DemoError::State(format!("no Node {}", agent.node())))?;
        let Placement::Placed(placed) = self.cluster.place(node, Some(mode)) else {
            return Err(DemoError::State(format!(
                "{} is in no single pool",
                agent.node()
            )));
        };
        agent
            .begin_switch(mode, &placed.linked, &placed.settings, self.probe)
            .map_err(|e| DemoError::Thread(e.to_string()))
    }

    /// Switch `agents` at once; their reports in order.
    fn switch_batch(
        &self,
        agents: &[&DemoNode],
        mode: Mode,
    ) -> Result<Vec<SwitchReport>, DemoError> {
        let answers = agents
            .iter()
            .map(|a| self.begin(a, mode))
            .collect::<Result<Vec<_>, _>>()?;
        answers
            .into_iter()
            .map(|a| a.wait().map_err(|e| DemoError::Thread(e.to_string())))
            .collect()
    }

    /// Bring every node up in `mode` (all at once: there is no old mode to protect).
    pub fn apply_everywhere(
        &self,
        agents: &[DemoNode],
        mode: Mode,
        progress: &Progress,
    ) -> Result<(), DemoError> {
        let all: Vec<&DemoNode> = agents.iter().collect();
        let reports = self.switch_batch(&all, mode)?;
        for r in &reports {
            if let Some(e) = &r.error {
                return Err(DemoError::InitialApply {
                    node: r.node.clone(),
                    mode,
                    message: e.clone(),
                });
            }
            progress.line(&format!(
                "{}: {mode} applied and verified in {:.1} ms ({} objects)",
                r.node,
                r.total.as_secs_f64() * 1000.0,
                r.objects
            ));
        }
        Ok(())
    }

    /// Roll `to` out over the pool (every node runs `from`) in the operator's batches, letting traffic
    /// run `settle` after each batch. Every node switch, in order, and the
    /// phase the rollout ended in.
    pub fn migrate(
        &self,
        agents: &[DemoNode],
        from: Mode,
        to: Mode,
        settle: Duration,
        progress: &Progress,
    ) -> Result<(Vec<SwitchReport>, Option<RolloutPhase>), DemoError> {
        let mut nodes: Vec<NodeState> = agents
            .iter()
            .map(|a| NodeState {
                name: a.node().to_string(),
                target: Some(from),
                applied: Some(from),
                failed: None,
                ready: true,
            })
            .collect();
        progress.nodes_switched(0, nodes.len());
        let mut previous: Option<RolloutStatus> = None;
        let mut switches = Vec::new();
        // Each pass moves at least one node or ends; the bound is a deadlock guard.
        for _ in 0..=(2 * agents.len() + 2) {
            let step = rollout::step(&RolloutInput {
                mode: to,
                generation: Some(2),
                policy: &self.policy,
                previous: previous.as_ref(),
                nodes: &nodes,
                now: Timestamp::now(),
            });
            for event in &step.events {
                progress.line(&describe(event));
            }
            previous = step.status.clone();
            let mut batch = Vec::new();
            for (name, mode) in &step.targets {
                if let Some(i) = nodes.iter().position(|n| &n.name == name) {
                    nodes[i].target = Some(*mode);
                    if nodes[i].applied != Some(*mode) {
                        batch.push((i, *mode));
                    }
                }
            }
            let phase = step.status.as_ref().map(|s| s.phase);
            if batch.is_empty() {
                return Ok((switches, phase));
            }
            for (i, mode) in &batch {
                progress.line(&format!(
                    "{}: switching {} -> {mode} (build beside, verify, remove old)",
                    nodes[*i].name,
                    nodes[*i].applied.map_or("nothing", Mode::as_str)
                ));
            }
            let batch_agents: Vec<&DemoNode> = batch.iter().map(|(i, _)| &agents[*i]).collect();
            let modes: Vec<Mode> = batch.iter().map(|(_, m)| *m).collect();
            let mut reports = Vec::new();
            // One mode per batch: a rollback batch moves nodes back to `from` together.
            for mode in dedup(&modes) {
                let group: Vec<&DemoNode> = batch_agents
                    .iter()
                    .zip(&modes)
                    .filter(|(_, m)| **m == mode)
                    .map(|(a, _)| *a)
                    .collect();
                reports.extend(self.switch_batch(&group, mode)?);
            }
            for r in reports {
                if let Some(i) = nodes.iter().position(|n| n.name == r.node) {
                    match &r.error {
                        None => nodes[i].applied = Some(r.to),
                        Some(_) => nodes[i].failed = Some(r.to),
                    }
                }
                progress.line(&describe_switch(&r));
                switches.push(r);
            }
            let done = nodes.iter().filter(|n| n.applied == Some(to)).count();
            progress.nodes_switched(done, nodes.len());
            std::thread::sleep(settle);
        }
        Err(DemoError::Rollout("no progress".to_string()))
    }
}

fn dedup(modes: &[Mode]) -> Vec<Mode> {
    let mut out: Vec<Mode> = Vec::new();
    for m in modes {
        if !out.contains(m) {
            out.push(*m);
        }
    }
    out
}

fn describe_switch(r: &SwitchReport) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match &r.error {
        None => format!(
            "{}: now {} (build {:.1} ms, verify {:.1} ms, remove old {:.1} ms; {} objects)",
            r.node,
            r.to,
            ms(r.build),
            ms(r.verify),
            ms(r.remove_old),
            r.objects
        ),
        Some(e) => format!("{}: switch to {} FAILED, old mode kept: {e}", r.node, r.to),
    }
}

fn describe(event: &RolloutEvent) -> String {
    match event {
        RolloutEvent::Started { from, to, nodes } => {
            format!("rollout started: {from} -> {to} over {nodes} nodes")
        }
        RolloutEvent::Retargeted { previous_to, to } => {
            format!("rollout retargeted from {previous_to} to {to}")
        }
        RolloutEvent::BatchStarted { to, nodes } => {
            format!("batch to {to}: {}", nodes.join(", "))
        }
        RolloutEvent::BatchDone { to, updated, total } => {
            format!("batch done: {updated}/{total} nodes on {to}")
        }
        RolloutEvent::NodeFailed {
            node,
            to,
            back_to,
            cause,
        } => format!("{node} failed to reach {to} ({cause:?}); back to {back_to}"),
        RolloutEvent::RollbackStarted {
            from,
            to,
            failed,
            budget,
        } => format!("rolling back {to} -> {from}: {failed} failed nodes, budget {budget}"),
        RolloutEvent::Halted { to, failed, budget } => {
            format!("rollout to {to} halted: {failed} failed nodes, budget {budget}")
        }
        RolloutEvent::Complete { to, failed } => {
            format!("rollout to {to} complete ({failed} failed nodes)")
        }
        RolloutEvent::RolledBack { to, from } => format!("rolled back from {to} to {from}"),
    }
}
