//! Render settings: the pool's ProxyConfig spec resolved for one node, with
//! kube-proxy's defaults filled in.

use std::time::Duration;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use switchyard_api::Mode;
use switchyard_api::ProxyConfigSpec;
use switchyard_api::duration::{DurationError, parse_duration};
use switchyard_api::proxyconfig::{DetectLocalMode, IpvsScheduler, IpvsSchedulerFlag};

use switchyard_api::ruleset::{Cidr, CidrError, IpFamily, Protocol};

use crate::ebpf::masq_ports::MasqueradePorts;

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
    /// Local addresses within these ranges (build with
    /// [`NodePortAddresses::cidrs`]).
    Cidrs(Vec<Cidr>),
}

impl NodePortAddresses {
    /// Local addresses within `list`; a family without a range in it gets
    /// every address (`0.0.0.0/0`, `::/0`), as kube-proxy's
    /// `NewNodePortAddresses` does per family.
    pub fn cidrs(mut list: Vec<Cidr>) -> NodePortAddresses {
        for family in [IpFamily::V4, IpFamily::V6] {
            if !list.iter().any(|c| c.family() == family) {
                let any = match family {
                    IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                list.extend(Cidr::new(any, 0).ok());
            }
        }
        NodePortAddresses::Cidrs(list)
    }
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

/// The protocols whose masquerade ports [`Settings::masquerade_ports`]
/// restricts: those eBPF's tc masquerade translates.
pub const MASQUERADED_PROTOCOLS: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

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
    /// The source ports the masquerade of [`MASQUERADED_PROTOCOLS`] picks from; `None`:
    /// the kernel's (1024-65535). Set by the agent while a retired eBPF mode
    /// drains beside this one ([`MasqueradePorts::beside`]).
    pub masquerade_ports: Option<MasqueradePorts>,
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
            masquerade_ports: None,
        }
    }

    /// The masquerade mark value (`1 << masquerade_bit`).
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}

/// A setting of the pool's ProxyConfig that could not be used: it was skipped
/// (the default applies) and is reported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("ProxyConfig {field}: {source}")]
    Duration {
        field: &'static str,
        #[source]
        source: DurationError,
    },
    #[error("ProxyConfig {field}: {source}")]
    Cidr {
        field: &'static str,
        #[source]
        source: CidrError,
    },
    #[error(
        "ProxyConfig nodePortAddresses: 'primary' cannot be combined with CIDRs; using the CIDRs"
    )]
    PrimaryWithCidrs,
}

impl Settings {
    /// The settings of `mode` from a pool's ProxyConfig spec, for a node whose
    /// `spec.podCIDRs` are `node_pod_cidrs`. Unusable fields are skipped (their
    /// default applies) and returned as errors to report.
    pub fn from_spec(
        spec: &ProxyConfigSpec,
        mode: Mode,
        node_pod_cidrs: &[Cidr],
    ) -> (Settings, Vec<SettingsError>) {
        let mut errors = Vec::new();
        let mut s = Settings::defaults(mode);
        s.masquerade_all = spec.masquerade_all;
        s.local_detector = local_detector(spec, node_pod_cidrs, &mut errors);
        s.node_port_addresses = node_port_addresses(&spec.node_port_addresses, &mut errors);

        let sync = match mode {
            Mode::Iptables => spec.iptables.as_ref().map(|b| &b.sync),
            Mode::Ipvs => spec.ipvs.as_ref().map(|b| &b.sync),
            Mode::Nftables => spec.nftables.as_ref().map(|b| &b.sync),
            Mode::Ebpf => None,
        };
        if let Some(sync) = sync {
            let min = duration(
                "minSyncPeriod",
                sync.min_sync_period.as_deref(),
                &mut errors,
            );
            s.min_sync_period = min.unwrap_or(s.min_sync_period);
            let full = duration("syncPeriod", sync.sync_period.as_deref(), &mut errors);
            s.sync_period = full.unwrap_or(s.sync_period);
        }
        if let Some(b) = &spec.iptables {
            s.masquerade_bit = b.masquerade_bit.unwrap_or(s.masquerade_bit);
            s.localhost_node_ports = b.localhost_node_ports.unwrap_or(s.localhost_node_ports);
        }
        if let Some(b) = &spec.nftables {
            s.masquerade_bit = b.masquerade_bit.unwrap_or(s.masquerade_bit);
        }
        if let Some(b) = &spec.ipvs {
            s.ipvs = IpvsRenderSettings {
                scheduler: b.scheduler.unwrap_or_default(),
                scheduler_flags: b.scheduler_flags.clone(),
                strict_arp: b.strict_arp,
                tcp_timeout: duration("ipvs.tcpTimeout", b.tcp_timeout.as_deref(), &mut errors),
                tcp_fin_timeout: duration(
                    "ipvs.tcpFinTimeout",
                    b.tcp_fin_timeout.as_deref(),
                    &mut errors,
                ),
                udp_timeout: duration("ipvs.udpTimeout", b.udp_timeout.as_deref(), &mut errors),
            };
        }
        if let Some(b) = &spec.ebpf {
            s.ebpf = EbpfRenderSettings {
                socket_lb: b.socket_lb.unwrap_or(true),
                maglev_table_size: b.maglev_table_size,
                host_devices: b.host_devices.clone(),
            };
        }
        (s, errors)
    }
}

fn duration(
    field: &'static str,
    text: Option<&str>,
    errors: &mut Vec<SettingsError>,
) -> Option<Duration> {
    let text = text?;
    parse_duration(text)
        .map_err(|source| errors.push(SettingsError::Duration { field, source }))
        .ok()
}

fn cidrs<'a>(
    field: &'static str,
    texts: impl IntoIterator<Item = &'a String>,
    errors: &mut Vec<SettingsError>,
) -> Vec<Cidr> {
    texts
        .into_iter()
        .filter_map(|t| {
            t.parse()
                .map_err(|source| errors.push(SettingsError::Cidr { field, source }))
                .ok()
        })
        .collect()
}

/// kube-proxy's `--detect-local-mode`; unset means ClusterCIDR when cluster
/// CIDRs are given (kube-proxy's default), no detector otherwise.
fn local_detector(
    spec: &ProxyConfigSpec,
    node_pod_cidrs: &[Cidr],
    errors: &mut Vec<SettingsError>,
) -> LocalDetector {
    let mut cluster = || {
        let list = cidrs("clusterCIDRs", &spec.cluster_cidrs, errors);
        if list.is_empty() {
            LocalDetector::None
        } else {
            LocalDetector::Cidrs(list)
        }
    };
    match spec.detect_local_mode {
        Some(DetectLocalMode::ClusterCidr) => cluster(),
        Some(DetectLocalMode::NodeCidr) if !node_pod_cidrs.is_empty() => {
            LocalDetector::Cidrs(node_pod_cidrs.to_vec())
        }
        Some(DetectLocalMode::NodeCidr) | Some(DetectLocalMode::None) => LocalDetector::None,
        None => cluster(),
    }
}

impl Settings {
    /// Whether NodePorts answer on 127.0.0.1: asked for, and 127.0.0.1 is
    /// among the node-port addresses (kube-proxy's `localhostNodePorts` and
    /// `ContainsIPv4Loopback`); only then route_localnet and the martian guard.
    pub fn ipv4_localhost_node_ports(&self) -> bool {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        self.localhost_node_ports
            && match &self.node_port_addresses {
                NodePortAddresses::ModeDefault => true,
                NodePortAddresses::Primary => false,
                NodePortAddresses::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains(&loopback)),
            }
    }
}

fn node_port_addresses(entries: &[String], errors: &mut Vec<SettingsError>) -> NodePortAddresses {
    let primary = entries.iter().any(|e| e == "primary");
    let list = cidrs(
        "nodePortAddresses",
        entries.iter().filter(|e| *e != "primary"),
        errors,
    );
    match (primary, list.is_empty()) {
        (true, true) => NodePortAddresses::Primary,
        (true, false) => {
            errors.push(SettingsError::PrimaryWithCidrs);
            NodePortAddresses::cidrs(list)
        }
        (false, true) => NodePortAddresses::ModeDefault,
        (false, false) => NodePortAddresses::cidrs(list),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_api::proxyconfig::{IptablesSettings, NftablesSettings, SyncSettings};

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_spec_gives_kube_proxy_defaults() {
        let (s, errors) = Settings::from_spec(&ProxyConfigSpec::default(), Mode::Nftables, &[]);
        assert_eq!(s, Settings::defaults(Mode::Nftables));
        assert!(errors.is_empty());
    }

    #[test]
    fn mode_block_sync_periods_and_mark_are_used() {
        let spec = ProxyConfigSpec {
            mode: Mode::Nftables,
            nftables: Some(NftablesSettings {
                masquerade_bit: Some(5),
                sync: SyncSettings {
                    min_sync_period: Some("250ms".into()),
                    sync_period: Some("1m".into()),
                },
            }),
            masquerade_all: true,
            ..Default::default()
        };
        let (s, errors) = Settings::from_spec(&spec, Mode::Nftables, &[]);
        assert!(errors.is_empty());
        assert_eq!(s.min_sync_period, Duration::from_millis(250));
        assert_eq!(s.sync_period, Duration::from_secs(60));
        assert_eq!(s.masquerade_mark(), 1 << 5);
        assert!(s.masquerade_all);
    }

    #[test]
    fn bad_fields_are_skipped_and_reported() {
        let spec = ProxyConfigSpec {
            mode: Mode::Iptables,
            iptables: Some(IptablesSettings {
                sync: SyncSettings {
                    min_sync_period: Some("soon".into()),
                    sync_period: None,
                },
                ..Default::default()
            }),
            cluster_cidrs: vec!["10.0.0.0/8".into(), "bogus".into()],
            node_port_addresses: vec!["primary".into(), "192.168.0.0/16".into()],
            ..Default::default()
        };
        let (s, errors) = Settings::from_spec(&spec, Mode::Iptables, &[]);
        assert_eq!(s.min_sync_period, Duration::from_secs(1));
        assert_eq!(
            s.local_detector,
            LocalDetector::Cidrs(vec![cidr("10.0.0.0/8")])
        );
        assert_eq!(
            s.node_port_addresses,
            NodePortAddresses::Cidrs(vec![cidr("192.168.0.0/16"), cidr("::/0")]),
            "a family without a range gets every address, as in kube-proxy"
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.contains(&SettingsError::PrimaryWithCidrs));
    }

    #[test]
    fn node_cidr_detection_uses_the_nodes_pod_cidrs() {
        let spec = ProxyConfigSpec {
            detect_local_mode: Some(DetectLocalMode::NodeCidr),
            cluster_cidrs: vec!["10.0.0.0/8".into()],
            node_port_addresses: vec!["primary".into()],
            ..Default::default()
        };
        let pods = [cidr("10.1.2.0/24")];
        let (s, _) = Settings::from_spec(&spec, Mode::Ipvs, &pods);
        assert_eq!(s.local_detector, LocalDetector::Cidrs(pods.to_vec()));
        assert_eq!(s.node_port_addresses, NodePortAddresses::Primary);
        let (none, _) = Settings::from_spec(&spec, Mode::Ipvs, &[]);
        assert_eq!(none.local_detector, LocalDetector::None);
    }
}
