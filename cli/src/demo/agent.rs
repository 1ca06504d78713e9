//! One node's agent for the demo: a thread inside the node namespace that owns
//! the active dataplane and changes it only through the agent's switch
//! procedure (`switchyard_agent::switch::switch_to`: build beside, verify with a
//! real TCP probe from the node, remove the old). Dropping the handle removes
//! the node's dataplane.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use switchyard_agent::switch::{
    Checkpoint, Checkpoints, ProbeTarget, SwitchInput, TcpProbe, switch_to,
};
use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_api::proxynode::SwitchStep;
use switchyard_dataplane::Dataplane;
use switchyard_dataplane::settings::Settings;
use switchyard_lab::HarnessError;
use switchyard_lab::netns::Netns;

use super::nsthread::{runtime, spawn_in};

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

struct SwitchCommand {
    to: Mode,
    ruleset: Box<LinkedRuleset>,
    settings: Box<Settings>,
    probe: Option<ProbeTarget>,
}

/// Handle to a node's agent thread.
pub struct DemoAgent {
    node: String,
    commands: Option<mpsc::Sender<SwitchCommand>>,
    replies: mpsc::Receiver<SwitchReport>,
    thread: Option<JoinHandle<Result<Option<String>, String>>>,
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

impl DemoAgent {
    /// Start the agent of `node` inside namespace `ns`, with no dataplane yet.
    pub fn start(ns: &Netns, node: &str) -> Result<DemoAgent, HarnessError> {
        let (ctx, crx) = mpsc::channel::<SwitchCommand>();
        let (rtx, rrx) = mpsc::channel::<SwitchReport>();
        let name = node.to_string();
        let thread = spawn_in(ns, &format!("agent-{node}"), move || {
            let rt = runtime()?;
            let factory = crate::real_backends();
            let mut active: Option<Box<dyn Dataplane>> = None;
            for cmd in crx {
                let from = active.as_ref().map(|d| d.mode());
                let started = Instant::now();
                let mut clock = StepClock::new();
                let input = SwitchInput {
                    to: cmd.to,
                    ruleset: &cmd.ruleset,
                    settings: &cmd.settings,
                    probe: cmd.probe.map(Ok),
                };
                let result = rt.block_on(switch_to(
                    &mut active,
                    input,
                    &factory,
                    &TcpProbe,
                    &mut clock,
                ));
                let (objects, error, cleanup_error) = match result {
                    Ok(done) => (
                        done.stats.objects,
                        done.unverified.map(|e| e.to_string()),
                        done.old_cleanup.map(|e| e.to_string()),
                    ),
                    Err(e) => (0, Some(e.to_string()), None),
                };
                let report = SwitchReport {
                    node: name.clone(),
                    from,
                    to: cmd.to,
                    total: started.elapsed(),
                    build: clock.build,
                    verify: clock.verify,
                    remove_old: clock.remove_old,
                    objects,
                    error,
                    cleanup_error,
                };
                if rtx.send(report).is_err() {
                    break;
                }
            }
            // The handle is gone: remove whatever this node runs.
            Ok(active
                .as_mut()
                .and_then(|d| d.cleanup().err())
                .map(|e| e.to_string()))
        })?;
        Ok(DemoAgent {
            node: node.to_string(),
            commands: Some(ctx),
            replies: rrx,
            thread: Some(thread),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Ask for a switch to `to`; collect the answer with [`DemoAgent::wait`].
    pub fn begin_switch(
        &self,
        to: Mode,
        ruleset: &LinkedRuleset,
        settings: &Settings,
        probe: Option<ProbeTarget>,
    ) -> Result<(), String> {
        let cmd = SwitchCommand {
            to,
            ruleset: Box::new(ruleset.clone()),
            settings: Box::new(settings.clone()),
            probe,
        };
        self.commands
            .as_ref()
            .and_then(|c| c.send(cmd).ok())
            .ok_or_else(|| format!("agent of {} has stopped", self.node))
    }

    /// The report of the switch asked for last.
    pub fn wait(&self) -> Result<SwitchReport, String> {
        self.replies
            .recv()
            .map_err(|_| format!("agent of {} has stopped", self.node))
    }

    /// Remove the node's dataplane and stop the thread; the cleanup error, if any.
    pub fn stop(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        self.commands = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Ok(None))) | None => Ok(()),
            Some(Ok(Ok(Some(e)))) | Some(Ok(Err(e))) => Err(format!("{}: {e}", self.node)),
            Some(Err(_)) => Err(format!("agent of {} panicked", self.node)),
        }
    }
}

impl Drop for DemoAgent {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "removing the demo dataplane");
        }
    }
}
