//! A small Kubernetes cluster on this machine, for the end-to-end tests and
//! the demo: one mechanism for both.
//!
//! [`Cluster::start`] starts the lab's control plane
//! ([`crate::controlplane`]) with `config/base` installed; builds the
//! nodes, their pods and an external client as network namespaces
//! ([`topology`]); creates the Nodes, Services and Pods through the API and
//! waits for the real endpointslice controller to list the pods ([`objects`]);
//! runs every pod's servers ([`traffic`]); gives every node a scratch bpffs
//! and cgroup for eBPF ([`bpf`]); and starts the node agents (one process per
//! node, inside it and its cgroup) and the operator replicas ([`processes`]).
//! What happens next — a ProxyConfig applied, a mode patched — is up to the
//! caller, through the API as a user would.
//!
//! Dropping it stops the processes, then the servers, removes the
//! namespaces, then stops the control plane and removes its directory; a
//! signal does the same through the cleanup registry. [`Cluster::shutdown`]
//! says what, if anything, was left behind.
//!
//! - [`layout`]: addresses and objects on paper.
//! - [`wait`]: watch-driven waits.

pub mod bpf;
pub mod layout;
pub mod objects;
pub mod processes;
pub mod topology;
pub mod traffic;
pub mod wait;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use switchyard_api::Mode;
use switchyard_api::ruleset::Protocol;
use switchyard_dataplane::ebpf::scratch;

use self::bpf::NodeBpf;
use self::layout::{Layout, PROXY_CONFIG};
use self::processes::{Agent, LeaseTiming, Operator, Program, Programs};
use self::topology::Topology;
use self::traffic::Clients;
use crate::HarnessError;
use crate::controlplane::access::ApiAccess;
use crate::controlplane::forward::Forwarder;
use crate::controlplane::identity::NAMESPACE;
use crate::controlplane::kubectl::Kubectl;
use crate::controlplane::workdir::{self, Purpose};
use crate::controlplane::{ControlPlane, ControlPlaneError, config_base};
use crate::netns::{self, Netns};
use crate::probe::{self, Attempt};

/// The Lease the operator replicas compete for (the operator's default).
pub const LEASE: &str = "switchyard-operator";

/// How long [`Cluster::ask_from_client_pod`] waits for its answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Users whose refusals fail a test: Switchyard's ServiceAccounts.
const SWITCHYARD_USERS: &str = "system:serviceaccount:switchyard-system:";

/// The cluster could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("{operation}: {source}")]
    Api {
        operation: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the layout's object {object} is not valid: {message}")]
    Layout { object: String, message: String },
    #[error("{what}: not within {waited:?}; last seen: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
    #[error("{what} from {from}: {message}")]
    Request {
        what: String,
        from: String,
        message: String,
    },
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub layout: Layout,
    /// Operator replicas (they elect a leader).
    pub operators: u8,
    pub programs: Programs,
    pub lease: LeaseTiming,
    pub purpose: Purpose,
    /// Namespaces are named `sy<tag>-<pid>-<n>-…`.
    pub tag: &'static str,
}

impl ClusterOptions {
    /// `layout` with one operator replica and test-speed leases.
    pub fn new(layout: Layout, programs: Programs, purpose: Purpose) -> ClusterOptions {
        ClusterOptions {
            layout,
            operators: 1,
            programs,
            lease: LeaseTiming {
                lease: 6,
                renew_deadline: 4,
                retry_period: 1,
            },
            purpose,
            tag: "cl",
        }
    }
}

/// A running cluster. Field order is drop order: the processes go before
/// the nodes' cgroups they run in.
pub struct Cluster {
    agents: Vec<Agent>,
    operators: Vec<Operator>,
    _operator_forwarder: Forwarder,
    /// Where the operator replicas run (a control-plane node with no links).
    operator_ns: Netns,
    _servers: Vec<crate::traffic::Child>,
    /// Node `i`'s eBPF place at index `i`.
    bpf: Vec<NodeBpf>,
    /// Runs the clients ([`Cluster::start_clients`]).
    traffic: Program,
    topology: Topology,
    layout: Layout,
    lease: LeaseTiming,
    prefix: String,
    started_in: Duration,
    cp: ControlPlane,
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let began = Instant::now();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        netns::sweep_orphans(&[options.tag]);
        for path in scratch::sweep_orphans(&format!("sy{}", options.tag)) {
            eprintln!("removed {} left by a killed run", path.display());
        }
        let prefix = format!(
            "sy{}-{}-{}-",
            options.tag,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cp = ControlPlane::start(options.purpose).await?;
        cp.install(&config_base())?;
        let layout = options.layout;
        let topology = Topology::build(&prefix, &layout)?;
        objects::create(&cp.client(), &layout).await?;
        objects::endpoints_listed(&cp.client(), &layout).await?;
        let servers = traffic::start_servers(&options.programs.traffic, &topology)?;
        let mut agents = Vec::new();
        let mut bpf = Vec::new();
        for n in &topology.nodes {
            let node = Layout::node_name(n.index);
            let place = NodeBpf::create(&format!("{prefix}n{}", n.index))?;
            let program = &options.programs.agent;
            agents.push(Agent::start(&cp, &n.node, &node, program, Some(place.place())).await?);
            bpf.push(place);
        }
        let operator_ns = Netns::create(&format!("{prefix}cp")).map_err(HarnessError::from)?;
        let operator_forwarder = cp.forward_into(&operator_ns)?;
        let mut operators = Vec::new();
        for i in 0..options.operators {
            let node = Layout::node_name(0);
            let program = &options.programs.operator;
            let lease = options.lease;
            operators.push(Operator::start(&cp, &operator_ns, i, &node, program, lease).await?);
        }
        Ok(Cluster {
            agents,
            operators,
            _operator_forwarder: operator_forwarder,
            operator_ns,
            _servers: servers,
            bpf,
            traffic: options.programs.traffic,
            topology,
            layout,
            lease: options.lease,
            prefix,
            started_in: began.elapsed(),
            cp,
        })
    }

    /// How long [`Cluster::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// For restarting the API server.
    pub fn control_plane_mut(&mut self) -> &mut ControlPlane {
        &mut self.cp
    }

    pub fn client(&self) -> kube::Client {
        self.cp.client()
    }

    /// kubectl as the admin.
    pub fn kubectl(&self) -> Kubectl {
        self.cp.kubectl()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn lease_timing(&self) -> LeaseTiming {
        self.lease
    }

    /// Node `i`'s network namespace (where its agent and rules are).
    pub fn node_netns(&self, i: u8) -> Option<&Netns> {
        self.topology
            .nodes
            .iter()
            .find(|n| n.index == i)
            .map(|n| &n.node)
    }

    /// The cgroup node `i`'s agent attaches its socket programs to: a client
    /// in it is one of the node's processes.
    pub fn ebpf_cgroup(&self, i: u8) -> Option<&Path> {
        self.bpf
            .get(usize::from(i))
            .map(|b| b.place().cgroup.as_path())
    }

    /// The prefix of every namespace name of this cluster.
    pub fn netns_prefix(&self) -> &str {
        &self.prefix
    }

    /// The operator replicas' network namespace.
    pub fn operator_netns(&self) -> &Netns {
        &self.operator_ns
    }

    pub fn operators(&self) -> &[Operator] {
        &self.operators
    }

    pub fn operators_mut(&mut self) -> &mut [Operator] {
        &mut self.operators
    }

    pub fn agents_mut(&mut self) -> &mut [Agent] {
        &mut self.agents
    }

    /// `kubectl apply -f` of the pool's ProxyConfig in `mode` (batches of
    /// `max_unavailable` nodes), written to a file as a user would; kubectl's answer.
    pub fn apply_proxy_config(
        &self,
        mode: Mode,
        max_unavailable: u32,
    ) -> Result<String, ClusterError> {
        apply_proxy_config(&self.cp, &Layout::proxy_config(mode, max_unavailable))
    }

    /// `kubectl patch proxyconfig <pool> --type=merge -p <patch>`, as a user
    /// changes the pool; kubectl's answer.
    pub fn patch_proxy_config(&self, patch: &str) -> Result<String, ClusterError> {
        let args = [
            "patch",
            "proxyconfig",
            PROXY_CONFIG,
            "--type=merge",
            "-p",
            patch,
        ];
        Ok(self.kubectl().run(&args)?)
    }

    /// The replica holding the operators' Lease, if any.
    pub async fn leader(&self) -> Result<Option<String>, ClusterError> {
        let lease = Api::<Lease>::namespaced(self.client(), NAMESPACE)
            .get_opt(LEASE)
            .await
            .map_err(|source| ClusterError::Api {
                operation: format!("read Lease {NAMESPACE}/{LEASE}"),
                source,
            })?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// Start clients in every client namespace, each client pod in its
    /// node's cgroup (see [`traffic::Clients`]).
    pub fn start_clients(&self) -> Result<Clients, ClusterError> {
        let cgroups: Vec<PathBuf> = self.bpf.iter().map(|b| b.place().cgroup.clone()).collect();
        Ok(Clients::start(
            &self.traffic,
            &self.topology,
            &self.layout,
            &cgroups,
        )?)
    }

    /// One TCP request from node `i`'s client pod to `addr`: the pod that
    /// answered. The request is made by a thread of this process in the
    /// client pod's namespace, outside the node's cgroup: eBPF's socket
    /// programs do not see it.
    pub fn ask_from_client_pod(&self, i: u8, addr: SocketAddr) -> Result<String, ClusterError> {
        let err = |message: String| ClusterError::Request {
            what: format!("a request to {addr}"),
            from: format!("the client pod of {}", Layout::node_name(i)),
            message,
        };
        let client = self
            .topology
            .nodes
            .iter()
            .find(|n| n.index == i)
            .map(|n| &n.client)
            .ok_or_else(|| err("no such node".into()))?;
        let source = SocketAddr::from((Layout::client_pod_ip(i), 0));
        let attempt = client
            .run(|| probe::attempt(Protocol::Tcp, source, addr, ASK_TIMEOUT))
            .map_err(|e| err(e.to_string()))?;
        match attempt {
            Attempt::Reply {
                server: SocketAddr::V4(server),
                ..
            } => self
                .layout
                .pod_at(*server.ip())
                .map(|p| p.name())
                .ok_or_else(|| err(format!("answered by {server}, not a pod"))),
            other => Err(err(other.to_string())),
        }
    }

    /// Every operator and agent log.
    pub fn logs(&self) -> Vec<PathBuf> {
        let operators = self.operators.iter().map(|o| o.log().to_path_buf());
        operators
            .chain(self.agents.iter().map(|a| a.log().to_path_buf()))
            .collect()
    }

    /// Lines of the operator and agent logs telling of a refused request.
    pub fn refusals_logged(&self) -> Vec<String> {
        self.logs()
            .iter()
            .flat_map(|log| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let name = log.file_name().map(|n| n.to_string_lossy().into_owned());
                text.lines()
                    .filter(|l| {
                        l.to_ascii_lowercase().contains("forbidden") || l.contains("code: 403")
                    })
                    .map(|l| format!("{}: {l}", name.clone().unwrap_or_default()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Requests of Switchyard's identities the API server answered 403, from its audit log.
    pub fn refusals_audited(&self) -> Result<Vec<String>, ClusterError> {
        Ok(self
            .cp
            .audit()?
            .iter()
            .filter(|e| e.user.username.starts_with(SWITCHYARD_USERS) && e.code() == 403)
            .map(|e| e.describe())
            .collect())
    }

    /// Stop and remove everything; what was left behind (empty when nothing).
    pub fn shutdown(self) -> Vec<String> {
        let dir = self.cp.dir().to_path_buf();
        let prefix = self.prefix.clone();
        drop(self);
        let mut left = workdir::left_behind(&dir);
        left.extend(
            netns::named(&prefix)
                .into_iter()
                .map(|n| format!("network namespace {n}")),
        );
        left
    }
}

/// `kubectl apply -f` of `proxy_config`, written to a file as a user would; kubectl's answer.
pub fn apply_proxy_config(
    cp: &dyn ApiAccess,
    proxy_config: &serde_json::Value,
) -> Result<String, ClusterError> {
    let file = cp.dir().join("proxyconfig.yaml");
    let yaml = serde_norway::to_string(proxy_config).map_err(|e| ClusterError::Layout {
        object: "ProxyConfig".into(),
        message: e.to_string(),
    })?;
    std::fs::write(&file, yaml).map_err(|source| ClusterError::Io {
        what: "write the ProxyConfig manifest",
        source,
    })?;
    let path = file.display().to_string();
    Ok(cp.kubectl().run(&["apply", "-f", &path])?)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in self.logs() {
                eprintln!(
                    "--- the end of {}:\n{}",
                    log.display(),
                    crate::controlplane::process::log_tail(&log)
                );
            }
        }
    }
}
