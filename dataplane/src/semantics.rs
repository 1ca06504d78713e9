//! What a mode does differently from the others, with given settings: the
//! facts in which kube-proxy's modes differ around the same frontends (and
//! ours, which keep kube-proxy's behaviour per mode). Each backend module
//! states its own (`iptables::semantics`, `ipvs::semantics`, …); [`of`] picks
//! the one of `settings.mode`; `switchyard diff` compares two.

use std::fmt;

use switchyard_api::Mode;
use switchyard_api::ruleset::Cidr;

use crate::settings::{NodePortAddresses, Settings};

/// What a packet to a cluster IP on a port no service uses meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownPort {
    /// Routed on as addressed.
    NotTranslated,
    /// ICMP port unreachable.
    Rejected,
}

impl fmt::Display for UnknownPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnknownPort::NotTranslated => "not translated (routed on as addressed)",
            UnknownPort::Rejected => "rejected (ICMP port unreachable)",
        })
    }
}

/// The node addresses NodePorts are served on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortScope {
    EveryLocalAddress,
    PrimaryAddresses,
    LocalAddressesIn(Vec<Cidr>),
}

impl fmt::Display for NodePortScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodePortScope::EveryLocalAddress => f.write_str("every local address"),
            NodePortScope::PrimaryAddresses => f.write_str("the node's primary addresses"),
            NodePortScope::LocalAddressesIn(cidrs) => {
                let cidrs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                write!(f, "local addresses in {}", cidrs.join(", "))
            }
        }
    }
}

/// The facts about one mode with its settings that differ between modes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeSemantics {
    pub unknown_cluster_ip_port: UnknownPort,
    pub node_port_addresses: NodePortScope,
    /// NodePorts answer on 127.0.0.1.
    pub localhost_node_ports: bool,
}

impl ModeSemantics {
    /// A mode's semantics: `default_node_ports` is what the mode serves
    /// NodePorts on when `nodePortAddresses` is left to the mode's default.
    pub fn new(
        settings: &Settings,
        unknown_cluster_ip_port: UnknownPort,
        default_node_ports: NodePortScope,
        localhost_node_ports: bool,
    ) -> ModeSemantics {
        let node_port_addresses = match &settings.node_port_addresses {
            NodePortAddresses::ModeDefault => default_node_ports,
            NodePortAddresses::Primary => NodePortScope::PrimaryAddresses,
            NodePortAddresses::Cidrs(cidrs) => NodePortScope::LocalAddressesIn(cidrs.clone()),
        };
        ModeSemantics {
            unknown_cluster_ip_port,
            node_port_addresses,
            localhost_node_ports,
        }
    }
}

/// The semantics of `settings.mode` with these settings, as its backend states them.
pub fn of(settings: &Settings) -> ModeSemantics {
    match settings.mode {
        Mode::Iptables => crate::iptables::semantics(settings),
        Mode::Ipvs => crate::ipvs::semantics(settings),
        Mode::Nftables => crate::nftables::semantics(settings),
        Mode::Ebpf => crate::ebpf::semantics(settings),
    }
}
