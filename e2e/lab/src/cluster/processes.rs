//! Switchyard's own processes in the cluster, each under its own identity and
//! with exactly `config/rbac`'s rights:
//!
//! - operator replicas in a namespace of their own (a control-plane node,
//!   reaching the API server through its forwarder), as ServiceAccount
//!   `switchyard-operator` with a token bound to a Pod of their own
//!   (`switchyard-operator-<i>`), so the audit log tells them apart;
//!   `/metrics` on 127.0.0.1:8080+i there.
//! - one node agent per node, inside the node's namespace, reaching the API
//!   server through the node's forwarder, as ServiceAccount `switchyard-agent`
//!   with a token bound to a Pod on its Node (what the admission policy checks).
//!
//! Every one works in the control plane's directory (so its leftover check
//! covers them), logs to `<name>.log` there, and is killed on drop, on
//! SIGINT/SIGTERM and with the harness ([`crate::controlplane::process`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ClusterError;
use crate::HarnessError;
use crate::controlplane::ControlPlane;
use crate::controlplane::access::ApiAccess;
use crate::controlplane::forward::Forwarder;
use crate::controlplane::identity::{Identity, NAMESPACE};
use crate::controlplane::process::{Daemon, Launch};
use crate::netns::Netns;

/// How to start a program: the executable and the arguments before its own
/// (`switchyard __operator` runs the operator from the CLI's executable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<String>,
}

impl Program {
    /// A program run as itself.
    pub fn new(path: impl Into<PathBuf>) -> Program {
        Program {
            path: path.into(),
            args: Vec::new(),
        }
    }

    /// This very executable (it has the lab's traffic roles: [`crate::traffic::role`]).
    pub fn this_executable() -> Result<Program, HarnessError> {
        std::env::current_exe()
            .map(Program::new)
            .map_err(|source| HarnessError::Spawn {
                what: "this executable".into(),
                source,
            })
    }

    /// `path` run in a role: `path role …`.
    pub fn role(path: impl Into<PathBuf>, role: &str) -> Program {
        Program {
            path: path.into(),
            args: vec![role.to_string()],
        }
    }
}

/// The operator, the node agent, and the program with the lab's traffic
/// roles (`__serve`, `__traffic`: [`crate::traffic::role`]) that runs the
/// cluster's servers and clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programs {
    pub operator: Program,
    pub agent: Program,
    pub traffic: Program,
}

/// The operators' leader election, in whole seconds (client-go's three
/// durations): short, so a test sees a take-over quickly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    pub lease: u64,
    pub renew_deadline: u64,
    pub retry_period: u64,
}

impl LeaseTiming {
    /// The longest a standby may take to lead after the leader died: it sees
    /// the last renewal up to one retry late, the lease runs out from then,
    /// and it takes over at its next attempt.
    pub fn takeover_bound(&self) -> Duration {
        Duration::from_secs(self.lease + 2 * self.retry_period)
    }
}

/// How often agents may write their status (the default of 5s would hold
/// every rollout batch up that long).
const STATUS_MIN_INTERVAL: &str = "1s";

/// Where a program runs: a network namespace, and for an agent its node's cgroup.
#[derive(Clone, Copy)]
struct Within<'a> {
    netns: &'a Netns,
    cgroup: Option<&'a Path>,
}

fn launch(
    cp: &dyn ApiAccess,
    name: &'static str,
    program: &Program,
    args: &[String],
    log: &str,
    within: Within<'_>,
    env: Vec<(String, String)>,
) -> Result<Daemon, ClusterError> {
    let mut all = program.args.clone();
    all.extend_from_slice(args);
    // Logs go to a file: no colour codes.
    let mut env = env;
    env.push(("NO_COLOR".to_string(), "1".to_string()));
    Ok(Daemon::start(Launch {
        name,
        program: program.path.clone(),
        args: all,
        cwd: cp.dir().to_path_buf(),
        log: cp.dir().join(format!("{log}.log")),
        netns: Some(within.netns.open().map_err(HarnessError::from)?),
        env,
        cgroup: within.cgroup.map(Path::to_path_buf),
    })?)
}

fn kubeconfig_env(path: &Path) -> (String, String) {
    ("KUBECONFIG".to_string(), path.display().to_string())
}

/// Replica `i` serves `/metrics` on this port plus `i`.
const OPERATOR_HTTP_PORT: u16 = 8080;

/// One operator replica.
#[derive(Debug)]
pub struct Operator {
    pod: String,
    metrics: SocketAddr,
    daemon: Daemon,
}

impl Operator {
    /// Start replica `index` in `ns` (which has a forwarder), its Pod bound to `node`.
    pub async fn start(
        cp: &dyn ApiAccess,
        ns: &Netns,
        index: u8,
        node: &str,
        program: &Program,
        lease: LeaseTiming,
    ) -> Result<Operator, ClusterError> {
        let pod = format!("switchyard-operator-{index}");
        let kubeconfig = cp
            .kubeconfig_for(&Identity::operator_replica(&pod, node))
            .await?;
        let port = OPERATOR_HTTP_PORT + u16::from(index);
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let args = [
            format!("--http-addr={metrics}"),
            format!("--lease-seconds={}", lease.lease),
            format!("--renew-deadline-seconds={}", lease.renew_deadline),
            format!("--retry-period-seconds={}", lease.retry_period),
        ];
        let env = vec![
            kubeconfig_env(&kubeconfig),
            ("POD_NAME".to_string(), pod.clone()),
            ("POD_NAMESPACE".to_string(), NAMESPACE.to_string()),
        ];
        let daemon = launch(
            cp,
            "switchyard-operator",
            program,
            &args,
            &pod,
            Within {
                netns: ns,
                cgroup: None,
            },
            env,
        )?;
        Ok(Operator {
            pod,
            metrics,
            daemon,
        })
    }

    /// Its Pod's name: its identity in the Lease, in Events and in the audit log.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Where it serves `/healthz`, `/readyz` and `/metrics` (in its namespace).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn log(&self) -> &Path {
        self.daemon.log()
    }

    /// SIGKILL: no chance to release the Lease.
    pub fn kill(&mut self) {
        self.daemon.stop();
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a held replica does nothing,
    /// renews no Lease and reads none of its watches, as if its node froze.
    pub fn hold(&mut self, stop: bool) -> Result<(), ClusterError> {
        Ok(self.daemon.hold(stop)?)
    }
}

/// Where an agent's eBPF mode keeps its pins and attaches its socket
/// programs (`--bpf-pin-root`, `--bpf-cgroup`): a scratch bpffs and cgroup of
/// the lab's ([`super::bpf`]). The agent runs in that cgroup itself, as an
/// agent on a real node runs under the cgroup root it attaches to, so its
/// verification probe meets the socket programs. An agent started without
/// one attaches to the cgroup v2 root, the host's: the lab never switches
/// such an agent to eBPF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbpfPlace {
    pub pin_root: PathBuf,
    pub cgroup: PathBuf,
}

impl EbpfPlace {
    fn args(&self) -> [String; 2] {
        [
            format!("--bpf-pin-root={}", self.pin_root.display()),
            format!("--bpf-cgroup={}", self.cgroup.display()),
        ]
    }
}

/// One node's agent and its way to the API server. Field order is drop
/// order: the process goes before its forwarder.
#[derive(Debug)]
pub struct Agent {
    node: String,
    daemon: Daemon,
    _forwarder: Option<Forwarder>,
}

impl Agent {
    /// Start the agent of `node` inside its namespace `ns`.
    pub async fn start(
        cp: &ControlPlane,
        ns: &Netns,
        node: &str,
        program: &Program,
        ebpf: Option<&EbpfPlace>,
    ) -> Result<Agent, ClusterError> {
        let forwarder = cp.forward_into(ns)?;
        Agent::start_with(cp, ns, node, program, ebpf, Some(forwarder)).await
    }

    /// As [`Agent::start`] in a namespace that reaches the API server
    /// already (another program there has its forwarder).
    pub async fn start_beside(
        cp: &dyn ApiAccess,
        ns: &Netns,
        node: &str,
        program: &Program,
        ebpf: Option<&EbpfPlace>,
    ) -> Result<Agent, ClusterError> {
        Agent::start_with(cp, ns, node, program, ebpf, None).await
    }

    async fn start_with(
        cp: &dyn ApiAccess,
        ns: &Netns,
        node: &str,
        program: &Program,
        ebpf: Option<&EbpfPlace>,
        forwarder: Option<Forwarder>,
    ) -> Result<Agent, ClusterError> {
        let kubeconfig = cp.kubeconfig_for(&Identity::agent_on(node)).await?;
        let mut args = vec![
            "run".to_string(),
            format!("--node-name={node}"),
            format!("--status-min-interval={STATUS_MIN_INTERVAL}"),
        ];
        args.extend(ebpf.into_iter().flat_map(EbpfPlace::args));
        let env = vec![kubeconfig_env(&kubeconfig)];
        let log = format!("agent-{node}");
        let within = Within {
            netns: ns,
            cgroup: ebpf.map(|e| e.cgroup.as_path()),
        };
        let daemon = launch(cp, "node-agent", program, &args, &log, within, env)?;
        Ok(Agent {
            node: node.to_string(),
            daemon,
            _forwarder: forwarder,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The process, for its memory.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn log(&self) -> &Path {
        self.daemon.log()
    }

    /// An error naming the agent, with the end of its log, if it has exited.
    pub fn check_running(&mut self, during: &str) -> Result<(), ClusterError> {
        Ok(self.daemon.check_running(during)?)
    }
}
