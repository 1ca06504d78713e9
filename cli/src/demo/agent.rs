//! One node's agent for the demo: the lab's agent thread inside the node
//! namespace ([`NodeAgent`]), starting with no dataplane, whose dataplane
//! changes only through the agent's switch procedure
//! (`switchyard_agent::switch::switch_to`: build beside, verify with a real
//! TCP probe from the node, remove the old). [`DemoNode::remove`] removes the
//! node's dataplane; the namespace's removal takes whatever is left.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use switchyard_agent::switch::{
    Checkpoint, Checkpoints, ProbeTarget, SwitchInput, TcpProbe, switch_to,
};
use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_api::proxynode::SwitchStep;
use switchyard_dataplane::settings::Settings;
use switchyard_lab::HarnessError;
use switchyard_lab::agent::{Active, Answer, NodeAgent};
use switchyard_lab::netns::Netns;

use super::runtime;

/// How one switch went.
#[derive(Clone, Debug)]
pub struct SwitchReport {
    pub node: String,
    pub from: Option<Mode>,
    pub to: Mode,
    pub total: Duration,
    /// Time spent building (and syncing) the new dataplane.
    pub build: Duration,
    /// Time of the verification probe.
    pub verify: Duration,
    /// Time removing the old dataplane (and rewriting the new one whole).
    pub remove_old: Duration,
    /// Objects in the new dataplane.
    pub objects: u32,
    /// Set when the switch failed (the old dataplane still runs).
    pub error: Option<String>,
    /// Removing the old dataplane failed (the switch itself succeeded).
    pub cleanup_error: Option<String>,
}

/// A node of the demo: its name and its agent thread.
pub struct DemoNode {
    name: String,
    agent: NodeAgent,
}

/// Times the steps of a switch as the procedure reaches its checkpoints.
struct StepClock {
    last: Instant,
    current: Option<SwitchStep>,
    build: Duration,
    verify: Duration,
    remove_old: Duration,
}

impl StepClock {
    fn new() -> StepClock {
        StepClock {
            last: Instant::now(),
            current: None,
            build: Duration::ZERO,
            verify: Duration::ZERO,
            remove_old: Duration::ZERO,
        }
    }

    fn close_step(&mut self) {
        let now = Instant::now();
        let spent = now - self.last;
        match self.current {
            Some(SwitchStep::Building) => self.build += spent,
            Some(SwitchStep::Verifying) => self.verify += spent,
            Some(SwitchStep::RemovingOld) => self.remove_old += spent,
            None => {}
        }
        self.last = now;
    }
}

impl Checkpoints for StepClock {
    fn reached<'a>(&'a mut self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, ()> {
        self.close_step();
        self.current = match checkpoint {
            Checkpoint::Step(s) => Some(s.step),
            Checkpoint::Done { .. } | Checkpoint::Failed { .. } => None,
        };
        Box::pin(async {})
    }
}

impl DemoNode {
    /// Start the agent of `node` inside namespace `ns`, with no dataplane yet.
    pub fn start(ns: &Netns, node: &str) -> Result<DemoNode, HarnessError> {
        Ok(DemoNode {
            name: node.to_string(),
            agent: NodeAgent::without_dataplane(ns)?,
        })
    }

    pub fn node(&self) -> &str {
        &self.name
    }

    /// Ask for a switch to `to`; its report comes with [`Answer::wait`].
    pub fn begin_switch(
        &self,
        to: Mode,
        ruleset: &LinkedRuleset,
        settings: &Settings,
        probe: Option<ProbeTarget>,
    ) -> Result<Answer<SwitchReport>, HarnessError> {
        let (node, ruleset, settings) = (self.name.clone(), ruleset.clone(), settings.clone());
        self.agent.submit("switch modes", move |active| {
            switch(active, node, to, &ruleset, &settings, probe)
        })
    }

    /// Remove the node's dataplane and stop its thread.
    pub fn remove(self) -> Result<(), String> {
        let node = self.name;
        self.agent.remove().map_err(|e| format!("{node}: {e}"))
    }
}

/// Switch the agent thread's dataplane to `to` with the agent's procedure.
fn switch(
    active: &mut Active,
    node: String,
    to: Mode,
    ruleset: &LinkedRuleset,
    settings: &Settings,
    probe: Option<ProbeTarget>,
) -> SwitchReport {
    let from = active.as_ref().map(|d| d.mode());
    let started = Instant::now();
    let mut clock = StepClock::new();
    let input = SwitchInput {
        to,
        ruleset,
        settings,
        probe: probe.map(Ok),
    };
    let result = runtime().and_then(|rt| {
        rt.block_on(switch_to(
            active,
            input,
            &crate::real_backends(),
            &TcpProbe,
            &mut clock,
        ))
        .map_err(|e| e.to_string())
    });
    let (objects, error, cleanup_error) = match result {
        Ok(done) => (
            done.stats.objects,
            done.unverified.map(|e| e.to_string()),
            done.old_cleanup.map(|e| e.to_string()),
        ),
        Err(e) => (0, Some(e), None),
    };
    SwitchReport {
        node,
        from,
        to,
        total: started.elapsed(),
        build: clock.build,
        verify: clock.verify,
        remove_old: clock.remove_old,
        objects,
        error,
        cleanup_error,
    }
}
