//! Render settings: the pool's ProxyConfig spec resolved for one node, with
//! kube-proxy's defaults filled in.

use std::time::Duration;

use switchyard_api::Mode;
use switchyard_api::proxyconfig::{IpvsScheduler, IpvsSchedulerFlag};
use switchyard_api::ruleset::Cidr;

/// How a backend tells traffic from the cluster (pods) from external traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LocalDetector {
    /// No detector: masquerade decisions cannot use "from a pod".
    #[default]
    None,
    /// Local when the source is in one of these ranges (clusterCIDRs or the node's podCIDRs).
    Cidrs(Vec<Cidr>),
}

/// Addresses NodePorts are served on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The mode's kube-proxy default: every local address for iptables and ipvs,
    /// the node's primary IPs for nftables and ebpf.
    #[default]
    ModeDefault,
    /// The node's primary IPs.
    Primary,
    /// Local addresses within these ranges.
    Cidrs(Vec<Cidr>),
}

/// IPVS-specific settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpvsRenderSettings {
    pub scheduler: IpvsScheduler,
    pub scheduler_flags: Vec<IpvsSchedulerFlag>,
    pub strict_arp: bool,
    pub tcp_timeout: Option<Duration>,
    pub tcp_fin_timeout: Option<Duration>,
    pub udp_timeout: Option<Duration>,
}

/// eBPF-specific settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbpfRenderSettings {
    pub socket_lb: bool,
    pub maglev_table_size: Option<u32>,
    pub host_devices: Vec<String>,
}

impl Default for EbpfRenderSettings {
    fn default() -> Self {
        EbpfRenderSettings {
            socket_lb: true,
            maglev_table_size: None,
            host_devices: Vec::new(),
        }
    }
}

/// Everything a backend's render needs besides the linked ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    /// The fwmark bit for masquerade (kube-proxy default 14: mark 0x4000).
    pub masquerade_bit: u8,
    pub masquerade_all: bool,
    pub local_detector: LocalDetector,
    pub node_port_addresses: NodePortAddresses,
    /// Serve NodePorts on loopback (iptables; sets route_localnet).
    pub localhost_node_ports: bool,
    /// The service CIDRs, when known (nftables drops unallocated addresses in them).
    pub service_cidrs: Vec<Cidr>,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    pub ipvs: IpvsRenderSettings,
    pub ebpf: EbpfRenderSettings,
}

impl Settings {
    /// kube-proxy's defaults for `mode`.
    pub fn defaults(mode: Mode) -> Settings {
        Settings {
            mode,
            masquerade_bit: 14,
            masquerade_all: false,
            local_detector: LocalDetector::None,
            node_port_addresses: NodePortAddresses::ModeDefault,
            localhost_node_ports: true,
            service_cidrs: Vec::new(),
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(3600),
            ipvs: IpvsRenderSettings::default(),
            ebpf: EbpfRenderSettings::default(),
        }
    }

    /// The masquerade mark value (`1 << masquerade_bit`).
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}
