//! The node agent's stand-in: one thread that entered the node namespace and
//! owns the dataplane, so every apply of every step goes through the same
//! backend instance, incrementally, inside the node namespace.

use std::sync::mpsc;
use std::thread::JoinHandle;

use switchyard_api::policy::LinkedRuleset;
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{ApplyStats, Dataplane};

use crate::HarnessError;
use crate::hooks::DataplaneFactory;
use crate::netns::{self, Netns};

/// Work for the agent thread: runs against the dataplane, answers on its own channel.
type Job = Box<dyn FnOnce(&mut dyn Dataplane) + Send>;

/// Handle to the agent thread.
pub struct NodeAgent {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

fn agent_err(what: &str, message: impl Into<String>) -> HarnessError {
    HarnessError::Agent {
        what: what.to_string(),
        message: message.into(),
    }
}

impl NodeAgent {
    pub fn start(node: &Netns, factory: DataplaneFactory) -> Result<NodeAgent, HarnessError> {
        let file = node.open()?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (started, start_result) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let made = netns::enter(&file)
                .map_err(|e| e.to_string())
                .and_then(|()| factory().map_err(|e| e.to_string()));
            match made {
                Ok(mut dataplane) => {
                    let _ = started.send(Ok(()));
                    for job in queue {
                        job(dataplane.as_mut());
                    }
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                }
            }
        });
        let agent = NodeAgent {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        start_result
            .recv()
            .map_err(|_| agent_err("start dataplane", "agent thread ended"))?
            .map_err(|e| agent_err("start dataplane", e))?;
        Ok(agent)
    }

    /// Run `f` on the agent thread and wait for its answer.
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&mut dyn Dataplane) -> Result<T, String> + Send + 'static,
    ) -> Result<T, HarnessError> {
        let (reply, answer) = mpsc::channel();
        let job: Job = Box::new(move |d| {
            let _ = reply.send(f(d));
        });
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| agent_err(what, "agent thread ended"))?;
        answer
            .recv()
            .map_err(|_| agent_err(what, "agent thread ended"))?
            .map_err(|e| agent_err(what, e))
    }

    pub fn sync(
        &self,
        ruleset: &LinkedRuleset,
        settings: &Settings,
    ) -> Result<ApplyStats, HarnessError> {
        let (r, s) = (ruleset.clone(), settings.clone());
        self.call("apply rules", move |d| {
            d.sync(&r, &s).map_err(|e| e.to_string())
        })
    }

    pub fn render(
        &self,
        ruleset: &LinkedRuleset,
        settings: &Settings,
    ) -> Result<String, HarnessError> {
        let (r, s) = (ruleset.clone(), settings.clone());
        self.call("render rules", move |d| Ok(d.render_text(&r, &s)))
    }

    /// Clean up; true when no trace of the mode is left.
    pub fn cleanup(&self) -> Result<bool, HarnessError> {
        self.call("clean up", |d| {
            d.cleanup()
                .and_then(|()| d.present())
                .map(|present| !present)
                .map_err(|e| e.to_string())
        })
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
