//! A dataplane that records when a node applied something instead of
//! programming the kernel: the control-path scale bench's agents use it, so
//! hundreds of them fit on one machine. It sees exactly what a real backend
//! would (the linked ruleset of each sync) and touches nothing.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use switchyard_agent::switch::DataplaneFactory;
use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{ApplyStats, BackendError, Dataplane};

/// What the bench waits for every node to have applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Goal {
    /// A ruleset of at least this many service ports (the initial list).
    ServicePorts(usize),
    /// The service `namespace/name` with an endpoint at `ip`.
    Endpoint {
        namespace: String,
        name: String,
        ip: IpAddr,
    },
}

impl Goal {
    fn reached(&self, ruleset: &LinkedRuleset) -> bool {
        match self {
            Goal::ServicePorts(count) => ruleset.services.len() >= *count,
            Goal::Endpoint {
                namespace,
                name,
                ip,
            } => ruleset.services.iter().any(|s| {
                s.rule.namespace == *namespace
                    && s.rule.name == *name
                    && s.rule.endpoints.iter().any(|e| e.ip == *ip)
            }),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    goal: Option<Goal>,
    /// Per node: when its first sync that reached the goal finished.
    reached: Vec<Option<Instant>>,
}

/// The apply times of every node of the bench, for one goal at a time.
#[derive(Debug, Default)]
pub struct ApplyLog {
    state: Mutex<State>,
}

impl ApplyLog {
    pub fn new(nodes: usize) -> Arc<ApplyLog> {
        Arc::new(ApplyLog {
            state: Mutex::new(State {
                goal: None,
                reached: vec![None; nodes],
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start waiting for `goal`: every node's time is cleared.
    pub fn expect(&self, goal: Goal) {
        let mut state = self.lock();
        state.goal = Some(goal);
        state.reached.iter_mut().for_each(|t| *t = None);
    }

    /// When each node reached the current goal, once all have.
    pub fn all_reached(&self) -> Option<Vec<Instant>> {
        self.lock().reached.iter().copied().collect()
    }

    pub fn nodes(&self) -> usize {
        self.lock().reached.len()
    }

    /// How many nodes have reached the current goal.
    pub fn count_reached(&self) -> usize {
        self.lock().reached.iter().flatten().count()
    }

    fn applied(&self, node: usize, ruleset: &LinkedRuleset) {
        let mut state = self.lock();
        let State { goal, reached } = &mut *state;
        if let (Some(goal), Some(slot @ None)) = (goal.as_ref(), reached.get_mut(node))
            && goal.reached(ruleset)
        {
            *slot = Some(Instant::now());
        }
    }
}

/// Node `node`'s recording dataplane, whatever mode it is asked for.
pub struct RecordingFactory {
    pub node: usize,
    pub log: Arc<ApplyLog>,
}

impl DataplaneFactory for RecordingFactory {
    fn build(&self, mode: Mode) -> Result<Box<dyn Dataplane>, BackendError> {
        Ok(Box::new(Recording {
            mode,
            node: self.node,
            log: self.log.clone(),
        }))
    }
}

struct Recording {
    mode: Mode,
    node: usize,
    log: Arc<ApplyLog>,
}

impl Dataplane for Recording {
    fn mode(&self) -> Mode {
        self.mode
    }

    fn sync(
        &mut self,
        ruleset: &LinkedRuleset,
        _settings: &Settings,
    ) -> Result<ApplyStats, BackendError> {
        self.log.applied(self.node, ruleset);
        let objects = u32::try_from(ruleset.services.len()).unwrap_or(u32::MAX);
        Ok(ApplyStats {
            objects,
            written: objects,
            full: true,
        })
    }

    fn render_text(&self, ruleset: &LinkedRuleset, _settings: &Settings) -> String {
        format!(
            "{} service ports (recorded, not programmed)",
            ruleset.services.len()
        )
    }

    fn invalidate(&mut self) {}

    fn present(&self) -> Result<bool, BackendError> {
        Ok(false)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}
