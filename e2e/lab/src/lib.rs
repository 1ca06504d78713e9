//! Switchyard's network-namespace lab, shared by the end-to-end tests and the
//! CLI's demo: scenario files run against a real kernel dataplane in network
//! namespaces the runner creates (and always removes).
//!
//! - [`scenario`]: the file format (kube-proxy packet-flow test semantics).
//! - [`topology`]: the namespaces of one scenario and their links.
//! - [`probe`]: the endpoint server and client child processes.
//! - [`agent`]: the thread in the node namespace that owns the backend.
//! - [`hooks`]: where a mode plugs in (dataplane, client cgroup, skips).
//! - [`migration`]: the migration matrix: a node switches modes under traffic.
//! - [`traffic`]: the one traffic generator (client and server processes)
//!   of the matrix and the cluster.
//! - [`runner`]: compile, link, apply, send connections, judge, report.
//! - [`vm`]: Debian's stock kernel in qemu, for IPVS when the host lacks it.
//! - [`controlplane`]: etcd, kube-apiserver and kube-controller-manager on loopback.
//! - [`cluster`]: a cluster on it: nodes, pods and servers in namespaces, the
//!   real operator and node agent processes (the tests' and the demo's).
//! - [`reference`]: the real kube-proxy in a node of its own, the reference.
//! - [`scale`]: the control path at scale: the operator and hundreds of
//!   recording agents against the real API server (`control-scale`).
//! - [`procstat`]: a process's CPU time and resident memory.
//! - [`metrics`]: kube-proxy's and the agent's `/metrics`, fetched and read.
//! - [`bench`]: what the benches share: cluster states at scale and the
//!   table they print.
//! - [`netns`], [`cleanup`]: the test kit's network namespaces and its cleanup
//!   registry (what is undone on drop and on SIGINT/SIGTERM), which the lab's
//!   users reach through it (`switchyard-testkit`).

pub mod agent;
pub mod bench;
pub mod cluster;
pub mod controlplane;
pub mod ebpf;
pub mod hooks;
pub mod metrics;
pub mod migration;
pub mod probe;
pub mod procstat;
pub mod reference;
pub mod runner;
pub mod scale;
pub mod scenario;
pub mod topology;
pub mod traffic;
pub mod vm;

pub use switchyard_testkit::{cleanup, netns};

/// The harness could not set a scenario up or run it.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("could not start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up {what}: {message}")]
    Setup { what: String, message: String },
    #[error("agent could not {what}: {message}")]
    Agent { what: String, message: String },
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error(transparent)]
    ControlPlane(#[from] controlplane::ControlPlaneError),
}
