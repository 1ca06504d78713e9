//! The node agent's stand-in: one thread that entered the node namespace and
//! owns the node's dataplane, so every job — an apply, a render, a clean-up
//! — runs inside the namespace, in order, against the same instance
//! (incrementally, as a real agent's syncs do): the scenario runner's and the
//! dataplane bench's agent, and the migration matrix's, which starts it with
//! no dataplane and runs the agent's switch procedure on it.
//!
//! Dropping the handle stops the thread and leaves the dataplane's rules in
//! place, as an agent that exits does (a restart finds them);
//! [`NodeAgent::remove`] removes them first.

use std::sync::mpsc;
use std::thread::JoinHandle;

use switchyard_api::policy::LinkedRuleset;
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{ApplyStats, Dataplane};

use crate::HarnessError;
use crate::hooks::DataplaneFactory;
use crate::netns::{Netns, NetnsError};

/// The dataplane the agent thread owns; `None` until one is built.
pub type Active = Option<Box<dyn Dataplane>>;

/// Work for the agent thread: runs against its dataplane, answers on its own channel.
type Job = Box<dyn FnOnce(&mut Active) + Send>;

/// Handle to the agent thread.
pub struct NodeAgent {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<Result<(), NetnsError>>>,
}

/// The answer of a job [`NodeAgent::submit`] queued.
pub struct Answer<T> {
    what: String,
    answer: mpsc::Receiver<T>,
}

impl<T> Answer<T> {
    /// Wait for the job to run.
    pub fn wait(self) -> Result<T, HarnessError> {
        self.answer
            .recv()
            .map_err(|_| agent_err(&self.what, "agent thread ended"))
    }
}

fn agent_err(what: &str, message: impl Into<String>) -> HarnessError {
    HarnessError::Agent {
        what: what.to_string(),
        message: message.into(),
    }
}

impl NodeAgent {
    /// Start the agent thread in `node` owning the dataplane `factory` builds
    /// there; returns once it is built.
    pub fn start(node: &Netns, factory: DataplaneFactory) -> Result<NodeAgent, HarnessError> {
        let mut agent = NodeAgent::without_dataplane(node)?;
        let built = agent
            .submit("start dataplane", move |active| {
                factory().map(|made| *active = Some(made))
            })?
            .wait();
        match built {
            Ok(Ok(())) => Ok(agent),
            Ok(Err(e)) => Err(agent_err("start dataplane", e.to_string())),
            // The thread ended: why (it could not enter the namespace) is in its result.
            Err(ended) => Err(agent.stop().err().unwrap_or(ended)),
        }
    }

    /// Start the agent thread in `node` with no dataplane yet.
    pub fn without_dataplane(node: &Netns) -> Result<NodeAgent, HarnessError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = node.spawn(&format!("agent-{}", node.name()), move || {
            let mut active: Active = None;
            for job in queue {
                job(&mut active);
            }
        })?;
        Ok(NodeAgent {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queue `job` on the agent thread; its result comes with [`Answer::wait`].
    pub fn submit<T: Send + 'static>(
        &self,
        what: &str,
        job: impl FnOnce(&mut Active) -> T + Send + 'static,
    ) -> Result<Answer<T>, HarnessError> {
        let (reply, answer) = mpsc::channel();
        let job: Job = Box::new(move |active| {
            let _ = reply.send(job(active));
        });
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| agent_err(what, "agent thread ended"))?;
        Ok(Answer {
            what: what.to_string(),
            answer,
        })
    }

    /// Run `f` on the agent thread's dataplane and wait for its answer.
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&mut dyn Dataplane) -> Result<T, String> + Send + 'static,
    ) -> Result<T, HarnessError> {
        self.submit(what, |active| match active {
            Some(d) => f(d.as_mut()),
            None => Err("no dataplane".to_string()),
        })?
        .wait()?
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

    /// Remove the dataplane (if any) and stop the thread.
    pub fn remove(mut self) -> Result<(), HarnessError> {
        let removed = self
            .submit("remove the dataplane", |active| {
                active.take().map_or(Ok(()), |mut d| d.cleanup())
            })?
            .wait()?;
        self.stop()?;
        removed.map_err(|e| agent_err("remove the dataplane", e.to_string()))
    }

    fn stop(&mut self) -> Result<(), HarnessError> {
        self.jobs = None;
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e.into()),
            Some(Err(_)) => Err(agent_err("run", "agent thread panicked")),
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        // Best effort: a thread that never entered the namespace ran no job.
        let _ = self.stop();
    }
}
