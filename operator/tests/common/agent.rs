//! A simulated node agent: how a node reacts to its target mode.

use switchyard_api::Mode;

/// How a simulated agent handles a switch to a new mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Builds, verifies and reports the new mode.
    Succeed,
    /// Reports the switch failed and keeps the old mode.
    Fail,
    /// Never finishes a switch to a new mode (but goes back to the old one fine).
    Hang,
}

/// The agent-written part of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentState {
    pub applied: Option<Mode>,
    pub failed: Option<Mode>,
    pub ready: bool,
}

impl AgentState {
    pub fn running(mode: Mode) -> AgentState {
        AgentState {
            applied: Some(mode),
            failed: None,
            ready: true,
        }
    }

    /// React once to `target`; true when the reported state changed.
    pub fn react(&mut self, target: Option<Mode>, behaviour: Behaviour) -> bool {
        let before = *self;
        match target {
            None => {}
            Some(t) if self.applied == Some(t) => {
                // Back on (or still on) the mode it runs: healthy again.
                self.ready = true;
            }
            Some(t) => match behaviour {
                Behaviour::Succeed => *self = AgentState::running(t),
                Behaviour::Fail => {
                    self.failed = Some(t);
                    self.ready = false;
                }
                Behaviour::Hang => self.ready = false,
            },
        }
        *self != before
    }
}
