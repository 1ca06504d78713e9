//! The four service dataplanes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A service dataplane.
#[derive(
    schemars::JsonSchema,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// kube-proxy-compatible iptables chains, applied with iptables-restore.
    #[default]
    Iptables,
    /// IPVS virtual servers over netlink, with ipsets and a few iptables rules.
    Ipvs,
    /// nftables tables per family (one up to 5000 service ports) with verdict maps.
    Nftables,
    /// Socket-level load balancing on cgroup hooks plus tc programs.
    Ebpf,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Iptables, Mode::Ipvs, Mode::Nftables, Mode::Ebpf];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Ipvs => "ipvs",
            Mode::Nftables => "nftables",
            Mode::Ebpf => "ebpf",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text is not one of the four modes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {0:?}: expected iptables, ipvs, nftables or ebpf")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Mode, UnknownMode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_string()))
    }
}
