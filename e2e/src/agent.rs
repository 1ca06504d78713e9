//! The node agent's stand-in: one thread that entered the node namespace and
//! owns the dataplane, so every apply of every step goes through the same
//! backend instance, incrementally, inside the node namespace.

use std::sync::mpsc;
use std::thread::JoinHandle;

use switchyard_agent::backend::ApplyStats;
use switchyard_agent::settings::Settings;
use switchyard_api::policy::LinkedRuleset;

use crate::HarnessError;
use crate::hooks::DataplaneFactory;
use crate::netns::{self, Netns};

enum Command {
    Sync(Box<LinkedRuleset>, Box<Settings>),
    Render(Box<LinkedRuleset>, Box<Settings>),
    Cleanup,
}

type Reply = Result<Answer, String>;

enum Answer {
    Applied(ApplyStats),
    Text(String),
    /// After cleanup: whether the mode's objects are still present.
    Present(bool),
}

/// Handle to the agent thread.
pub struct NodeAgent {
    commands: Option<mpsc::Sender<Command>>,
    replies: mpsc::Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
}

impl NodeAgent {
    pub fn start(node: &Netns, factory: DataplaneFactory) -> Result<NodeAgent, HarnessError> {
        let file = node.open()?;
        let (ctx, crx) = mpsc::channel::<Command>();
        let (rtx, rrx) = mpsc::channel::<Reply>();
        let thread = std::thread::spawn(move || {
            let made = netns::enter(&file)
                .map_err(|e| e.to_string())
                .and_then(|()| factory().map_err(|e| e.to_string()));
            let mut dataplane = match made {
                Ok(d) => d,
                Err(e) => {
                    let _ = rtx.send(Err(e));
                    return;
                }
            };
            let _ = rtx.send(Ok(Answer::Text(String::new())));
            for cmd in crx {
                let reply = match cmd {
                    Command::Sync(r, s) => dataplane
                        .sync(&r, &s)
                        .map(Answer::Applied)
                        .map_err(|e| e.to_string()),
                    Command::Render(r, s) => Ok(Answer::Text(dataplane.render_text(&r, &s))),
                    Command::Cleanup => dataplane
                        .cleanup()
                        .and_then(|()| dataplane.present())
                        .map(Answer::Present)
                        .map_err(|e| e.to_string()),
                };
                let _ = rtx.send(reply);
            }
        });
        let agent = NodeAgent {
            commands: Some(ctx),
            replies: rrx,
            thread: Some(thread),
        };
        agent.wait("start dataplane")?;
        Ok(agent)
    }

    fn wait(&self, what: &str) -> Result<Answer, HarnessError> {
        let agent_err = |message: String| HarnessError::Agent {
            what: what.to_string(),
            message,
        };
        self.replies
            .recv()
            .map_err(|_| agent_err("agent thread ended".into()))?
            .map_err(agent_err)
    }

    fn send(&self, cmd: Command, what: &str) -> Result<Answer, HarnessError> {
        self.commands
            .as_ref()
            .and_then(|c| c.send(cmd).ok())
            .ok_or_else(|| HarnessError::Agent {
                what: what.to_string(),
                message: "agent thread ended".into(),
            })?;
        self.wait(what)
    }

    pub fn sync(
        &self,
        ruleset: &LinkedRuleset,
        settings: &Settings,
    ) -> Result<ApplyStats, HarnessError> {
        let cmd = Command::Sync(Box::new(ruleset.clone()), Box::new(settings.clone()));
        match self.send(cmd, "apply rules")? {
            Answer::Applied(stats) => Ok(stats),
            _ => Ok(ApplyStats::default()),
        }
    }

    pub fn render(
        &self,
        ruleset: &LinkedRuleset,
        settings: &Settings,
    ) -> Result<String, HarnessError> {
        let cmd = Command::Render(Box::new(ruleset.clone()), Box::new(settings.clone()));
        match self.send(cmd, "render rules")? {
            Answer::Text(t) => Ok(t),
            _ => Ok(String::new()),
        }
    }

    /// Clean up; true when no trace of the mode is left.
    pub fn cleanup(&self) -> Result<bool, HarnessError> {
        match self.send(Command::Cleanup, "clean up")? {
            Answer::Present(present) => Ok(!present),
            _ => Ok(false),
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
