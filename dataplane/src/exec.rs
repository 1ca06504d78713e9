//! The one chokepoint through which backends run kernel tools
//! (`iptables-restore`, `nft`, `ipset`; `sysctl` writes go elsewhere), and
//! which names the conntrack table of the namespace those tools act in. A
//! fake records calls for unit tests (compiled only for them).

use std::sync::Arc;
#[cfg(test)]
use std::sync::Mutex;

pub use switchyard_exec::ExecError;

#[cfg(test)]
use crate::conntrack::fake::FakeConntrack;
use crate::conntrack::{ConntrackTable, netlink::NetlinkConntrack};

/// Runs a program with arguments and optional standard input, returning its standard output.
pub trait Runner: Send + Sync {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ExecError>;

    /// Whether the tools act on the calling thread's network namespace, so a
    /// backend may also talk to that kernel directly over netlink (a runner
    /// that records calls, or enters another namespace, says no).
    fn acts_here(&self) -> bool {
        false
    }

    /// The conntrack table of the namespace the tools act in (stale UDP
    /// flows are deleted there, never in another namespace's table).
    fn conntrack(&self) -> Arc<dyn ConntrackTable>;
}

/// Runs real programs.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealRunner;

impl Runner for RealRunner {
    fn acts_here(&self) -> bool {
        true
    }

    fn conntrack(&self) -> Arc<dyn ConntrackTable> {
        Arc::new(NetlinkConntrack::calling_thread())
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ExecError> {
        switchyard_exec::run(program, args, stdin)
    }
}

/// One recorded call of a [`FakeRunner`].
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: Option<String>,
}

/// Records calls and answers from a queue of canned results (default: empty success).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeRunner {
    calls: Mutex<Vec<Call>>,
    failures: Mutex<Vec<(String, String)>>,
    conntrack: Arc<FakeConntrack>,
}

#[cfg(test)]
impl FakeRunner {
    /// Make every later call of `program` fail with `stderr`.
    pub fn fail(&self, program: &str, stderr: &str) {
        lock(&self.failures).push((program.to_string(), stderr.to_string()));
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// The conntrack table its backends see.
    pub fn conntrack_table(&self) -> &FakeConntrack {
        &self.conntrack
    }
}

#[cfg(test)]
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
impl Runner for FakeRunner {
    fn conntrack(&self) -> Arc<dyn ConntrackTable> {
        self.conntrack.clone()
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ExecError> {
        lock(&self.calls).push(Call {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: stdin.map(|s| String::from_utf8_lossy(s).into_owned()),
        });
        if let Some((_, stderr)) = lock(&self.failures).iter().find(|(p, _)| p == program) {
            return Err(ExecError::Failed {
                program: program.to_string(),
                args: args.join(" "),
                status: "exit status: 1".to_string(),
                stderr: stderr.clone(),
            });
        }
        Ok(String::new())
    }
}
