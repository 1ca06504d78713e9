//! The lab's one traffic generator, for the migration matrix and for the
//! cluster (the end-to-end tests' and the demo's). Every stream of clients is
//! a process (`__traffic`, [`stream`]) started in its source's network
//! namespace and, where its sockets are a node's under eBPF, in that node's
//! cgroup (the socket programs act on the sockets of the cgroup they are
//! attached to); the endpoints are `__serve` processes
//! ([`crate::probe::serve`]) in theirs. [`Streams`] starts the clients and
//! adds up what they report, while they run and when they stop.
//!
//! - [`stream`]: the child: one stream, counting every outcome ([`Counts`]).
//! - [`role`]: the hidden roles a program runs the children in, and their arguments.

pub mod role;
pub mod stream;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

pub use stream::{Counts, Stream};

use crate::HarnessError;
use crate::cleanup::Registration;
use crate::cluster::processes::Program;
use crate::controlplane::process::spawn_guarded;
use crate::netns::{self, Netns};
use crate::probe::Listen;

/// Deadlock guard for a child to print `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Failures kept in full.
const KEPT_FAILURES: usize = 20;

fn setup(what: &str, message: impl Into<String>) -> HarnessError {
    HarnessError::Setup {
        what: what.to_string(),
        message: message.into(),
    }
}

/// A child process of the traffic: killed and reaped on drop, and on
/// SIGINT/SIGTERM through the cleanup registry.
pub struct Child {
    process: std::process::Child,
    registered: Option<Registration>,
}

impl Child {
    /// `program args…` inside `ns`, stdin and stdout piped.
    fn spawn(program: &Program, ns: &Netns, args: &[String]) -> Result<Child, HarnessError> {
        let mut command = Command::new(&program.path);
        command
            .args(&program.args)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        netns::enter_on_exec(&mut command, ns.open()?);
        let (process, registered) =
            spawn_guarded(command).map_err(|source| HarnessError::Spawn {
                what: format!(
                    "{} in {}",
                    args.first().map_or("", String::as_str),
                    ns.name()
                ),
                source,
            })?;
        Ok(Child {
            process,
            registered: Some(registered),
        })
    }

    fn stdout(&mut self) -> Option<ChildStdout> {
        self.process.stdout.take()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // The registration goes before the pid can be reaped and reused.
        self.registered = None;
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The first line of `out` (empty when the child exited first).
fn first_line(out: Option<ChildStdout>) -> String {
    let mut line = String::new();
    if let Some(out) = out {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    line.trim().to_string()
}

/// A `__serve` child of `program` in `ns` answering on `listens`; returns
/// once it has bound them all.
pub fn serve(program: &Program, ns: &Netns, listens: &[Listen]) -> Result<Child, HarnessError> {
    let mut child = Child::spawn(program, ns, &role::serve_args(listens))?;
    let ready = first_line(child.stdout());
    if ready != "ready" {
        return Err(setup(
            &format!("the servers in {}", ns.name()),
            format!("did not start: {ready}"),
        ));
    }
    Ok(child)
}

/// One client process: its stream, where it runs, and its name for messages.
pub struct Client<'a> {
    pub name: String,
    pub netns: &'a Netns,
    /// The cgroup it joins (a node's, whose eBPF socket programs then act on it).
    pub cgroup: Option<PathBuf>,
    pub stream: Stream,
}

#[derive(Default)]
struct Reported {
    /// The last counts of each stream, by index.
    latest: Vec<Counts>,
    failures: Vec<String>,
}

/// What the streams reported so far: a cheap handle, cloned for a live display.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<Reported>>);

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Reported> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every stream's counts added up.
    pub fn total(&self) -> Counts {
        self.lock()
            .latest
            .iter()
            .fold(Counts::default(), |mut t, c| {
                t.add(c);
                t
            })
    }

    /// The first failures, in full, each with its stream's name.
    pub fn failures(&self) -> Vec<String> {
        self.lock().failures.clone()
    }

    /// Take in one line of stream `index`'s output.
    fn record(&self, index: usize, name: &str, line: &str) {
        let mut reported = self.lock();
        if let Ok(counts) = line.parse::<Counts>() {
            reported.latest[index] = counts;
        } else if let Some(failure) = line.strip_prefix(stream::FAILURE)
            && reported.failures.len() < KEPT_FAILURES
        {
            reported.failures.push(format!("{name}: {failure}"));
        }
    }

    /// Follow one child's output until it ends. Its first line (`ready`, or
    /// why not) goes to `ready`, after the counts that follow `ready` at once.
    fn follow(
        &self,
        index: usize,
        name: String,
        out: Option<ChildStdout>,
        ready: mpsc::Sender<(usize, String)>,
    ) -> JoinHandle<()> {
        let tally = self.clone();
        std::thread::spawn(move || {
            let mut lines = out
                .into_iter()
                .flat_map(|o| BufReader::new(o).lines().map_while(Result::ok));
            let first = lines.next().unwrap_or_default();
            if first == "ready"
                && let Some(line) = lines.next()
            {
                tally.record(index, &name, &line);
            }
            let _ = ready.send((index, first));
            for line in lines {
                tally.record(index, &name, &line);
            }
        })
    }
}

/// What the streams saw, once stopped.
#[derive(Debug, Default)]
pub struct Stopped {
    pub total: Counts,
    /// Each stream's name and counts.
    pub streams: Vec<(String, Counts)>,
    /// The first failures, in full.
    pub failures: Vec<String>,
    /// Children that did not end well (their counts may be short).
    pub errors: Vec<String>,
}

struct Running {
    name: String,
    child: Child,
    reader: JoinHandle<()>,
}

/// Running client processes. Stopping lets the requests in flight finish,
/// so stopping is never counted as a loss.
pub struct Streams {
    running: Vec<Running>,
    tally: Tally,
}

impl Streams {
    /// Start every client as a `__traffic` child of `program`; returns once
    /// each has had the first answer on its long-lived sockets.
    pub fn start(program: &Program, clients: Vec<Client<'_>>) -> Result<Streams, HarnessError> {
        let tally = Tally::default();
        tally.lock().latest = vec![Counts::default(); clients.len()];
        let mut running = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        for (index, client) in clients.into_iter().enumerate() {
            let args = role::traffic_args(&client.stream, client.cgroup.as_deref());
            let mut child = Child::spawn(program, client.netns, &args)?;
            let out = child.stdout();
            let reader = tally.follow(index, client.name.clone(), out, ready_tx.clone());
            running.push(Running {
                name: client.name,
                child,
                reader,
            });
        }
        let streams = Streams { running, tally };
        for _ in 0..streams.running.len() {
            let (index, line) = ready_rx
                .recv_timeout(START_TIMEOUT)
                .map_err(|_| setup("traffic", "a client did not start"))?;
            if line.trim() != "ready" {
                let name = &streams.running[index].name;
                return Err(setup(&format!("traffic of {name}"), line));
            }
        }
        Ok(streams)
    }

    /// A handle on what they report, for a live display.
    pub fn tally(&self) -> Tally {
        self.tally.clone()
    }

    /// Stop every stream (close its stdin), wait for its last counts.
    pub fn stop(self) -> Stopped {
        let mut running = self.running;
        for r in &mut running {
            drop(r.child.process.stdin.take());
        }
        let mut stopped = Stopped::default();
        for (index, mut r) in running.into_iter().enumerate() {
            let _ = r.reader.join();
            match r.child.process.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => stopped.errors.push(format!("{}: {status}", r.name)),
                Err(e) => stopped.errors.push(format!("{}: {e}", r.name)),
            }
            stopped
                .streams
                .push((r.name, self.tally.lock().latest[index]));
        }
        stopped.total = self.tally.total();
        stopped.failures = self.tally.failures();
        stopped
    }
}
