//! The `versus` bench's parts: Switchyard's operator and agent processes and
//! the real kube-proxy of the pinned release on one real control plane and
//! the same states (see the binary's header for the procedure).
//!
//! - [`rig`]: the cluster, the states on it and the node that measures.
//! - [`kube_proxy`]: kube-proxy in a node of its own.
//! - [`switchyard`]: the agent's figures and its pool's mode switch.
//! - [`fresh`]: the agent's first sync on a node new to the pool.
//! - [`measure`]: one size and mode on both: syncs, programming latency,
//!   connect latency, memory.
//! - [`table`]: the one table of ratios.

pub mod fresh;
pub mod kube_proxy;
pub mod measure;
pub mod rig;
pub mod switchyard;
pub mod table;

use std::time::Duration;

use crate::bench::connect::Latency;
use crate::bench::states::Size;
use crate::cluster::ClusterError;
use crate::procstat::Memory;
use switchyard_api::Mode;

#[derive(Debug, thiserror::Error)]
pub enum VersusError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Harness(#[from] crate::HarnessError),
    #[error(transparent)]
    ControlPlane(#[from] crate::controlplane::ControlPlaneError),
    #[error("{0}")]
    Size(String),
    #[error("{what}: {message}")]
    Measure { what: String, message: String },
    #[error("{at}: {source}")]
    At {
        at: String,
        source: Box<VersusError>,
    },
}

impl VersusError {
    /// This error, saying which size (and mode) it stopped.
    pub fn at(self, size: Size, mode: Option<Mode>) -> VersusError {
        let at = match mode {
            Some(mode) => format!("{size} {mode}"),
            None => size.to_string(),
        };
        VersusError::At {
            at,
            source: Box::new(self),
        }
    }
}

pub fn measure_error(what: impl Into<String>, message: impl Into<String>) -> VersusError {
    VersusError::Measure {
        what: what.into(),
        message: message.into(),
    }
}

/// Deadlock guard of the waits for the operator and the agent.
const WAIT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(20);
/// The deadline of one sync at a size, kube-proxy's and the agent's switch
/// (the ProxyConfig's verification timeout, which the operator's switch
/// deadline follows): a base, and a share per endpoint (kube-proxy's iptables
/// mode writes a chain per endpoint): 155 s at 1000x5, 655 s at 5000x5,
/// 5530 s at 44000x5.
pub const SYNC_BASE: Duration = Duration::from_secs(30);
const SYNC_PER_ENDPOINT: Duration = Duration::from_millis(25);

pub fn sync_deadline(size: Size) -> Duration {
    let endpoints = u32::try_from(size.services * size.endpoints).unwrap_or(u32::MAX);
    SYNC_BASE + SYNC_PER_ENDPOINT * endpoints
}

/// What one program measured at one size in one mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    /// Mean first full sync: kube-proxy's, a fresh agent's.
    pub first: Option<Duration>,
    /// Mean full sync of the agent's mode switch.
    pub switch: Option<Duration>,
    /// Mean endpoint change sync.
    pub partial: Option<Duration>,
    /// An EndpointSlice write until the new endpoint answers on the node.
    pub programming: Option<Latency>,
    /// First-packet connect through the Service address, and direct.
    pub connect: Option<(Latency, Latency)>,
    pub memory: Memory,
}

/// One size and mode: kube-proxy's figures (none in a mode it lacks) and Switchyard's.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub kube_proxy: Option<Figures>,
    pub switchyard: Figures,
}
