//! Stale UDP conntrack cleanup, as kube-proxy does it, shared by the
//! iptables, nftables and IPVS backends. UDP has no connection teardown, so a
//! conntrack entry DNATed to an endpoint that went away (or created while a
//! service had no endpoints) would keep blackholing a client's flow until it
//! idles out.
//!
//! [`UdpSnapshot`] is the pure summary of what a ruleset programs for UDP;
//! [`stale_entries`] diffs two of them into filters ([`StaleEntry`]), and
//! [`delete_stale`] dumps the UDP flows of each family concerned once and
//! deletes exactly those a filter matches, through the [`ConntrackTable`]
//! chokepoint ([`netlink::NetlinkConntrack`] in the kernel, as kube-proxy
//! does since 1.32 instead of running `conntrack` per filter).

pub mod netlink;

#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod kernel_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use switchyard_api::policy::{LinkedRuleset, LinkedServicePort};
use switchyard_api::ruleset::{IpFamily, Protocol};

/// What a ruleset programs for one UDP service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpPort {
    /// Cluster, external and load-balancer IPs.
    pub vips: BTreeSet<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Endpoint addresses traffic may be DNATed to.
    pub endpoints: BTreeSet<IpAddr>,
}

/// Every UDP service port of a linked ruleset, by `namespace/name:port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpSnapshot {
    pub ports: BTreeMap<String, UdpPort>,
}

impl UdpSnapshot {
    pub fn of(ruleset: &LinkedRuleset) -> UdpSnapshot {
        UdpSnapshot {
            ports: ruleset
                .services
                .iter()
                .filter_map(|s| UdpPort::of(s))
                .collect(),
        }
    }
}

impl UdpPort {
    /// A UDP service port, by `namespace/name:port`; `None` for other protocols.
    pub fn of(sp: &LinkedServicePort) -> Option<(String, UdpPort)> {
        let r = &sp.rule;
        if r.protocol != Protocol::Udp {
            return None;
        }
        let vips = r
            .cluster_ips
            .iter()
            .chain(&r.external_ips)
            .chain(&r.load_balancer_ips)
            .copied()
            .collect();
        let endpoints = sp.all_reachable_endpoints().map(|b| b.ip).collect();
        let port = UdpPort {
            vips,
            port: r.port,
            node_port: r.node_port,
            endpoints,
        };
        Some((r.service_port_name(), port))
    }
}

/// Which UDP flows became stale (kube-proxy's filters).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StaleEntry {
    /// Untranslated flows to `vip:port` (made while the service had no endpoints).
    ToVip { vip: IpAddr, port: u16 },
    /// Untranslated flows to the node port on any address (made while there were no endpoints).
    ToNodePort { port: u16, ipv6: bool },
    /// Flows to `vip` DNATed to an endpoint that is gone.
    VipToEndpoint { vip: IpAddr, endpoint: IpAddr },
    /// Flows to the node port DNATed to an endpoint that is gone.
    NodePortToEndpoint { port: u16, endpoint: IpAddr },
}

impl StaleEntry {
    /// The family of the flows this filter matches.
    pub fn family(&self) -> IpFamily {
        match self {
            StaleEntry::ToVip { vip, .. } | StaleEntry::VipToEndpoint { vip, .. } => {
                IpFamily::of(vip)
            }
            StaleEntry::ToNodePort { ipv6: true, .. } => IpFamily::V6,
            StaleEntry::ToNodePort { ipv6: false, .. } => IpFamily::V4,
            StaleEntry::NodePortToEndpoint { endpoint, .. } => IpFamily::of(endpoint),
        }
    }

    /// Whether `flow` is one of these (kube-proxy matches the original
    /// destination and the reply source, the endpoint a DNAT chose).
    pub fn matches(&self, flow: &UdpFlow) -> bool {
        let dst = flow.orig_dst;
        let same_family = IpFamily::of(&dst.ip()) == self.family();
        match *self {
            StaleEntry::ToVip { vip, port } => {
                dst.ip() == vip && dst.port() == port && !flow.translated()
            }
            StaleEntry::ToNodePort { port, .. } => {
                same_family && dst.port() == port && !flow.translated()
            }
            StaleEntry::VipToEndpoint { vip, endpoint } => {
                dst.ip() == vip && flow.reply_src.ip() == endpoint
            }
            StaleEntry::NodePortToEndpoint { port, endpoint } => {
                same_family && dst.port() == port && flow.reply_src.ip() == endpoint
            }
        }
    }
}

/// One UDP conntrack entry, as a dump shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UdpFlow {
    /// The original direction: client to service address.
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    /// The reply direction's source: the endpoint a DNAT chose (the
    /// original destination when nothing translated it).
    pub reply_src: SocketAddr,
    /// The conntrack zone, when not the default one.
    pub zone: Option<u16>,
}

impl UdpFlow {
    /// Whether a DNAT (or IPVS) sent the flow elsewhere.
    pub fn translated(&self) -> bool {
        self.reply_src != self.orig_dst
    }
}

/// Entries that became stale going from `before` to `after` (kube-proxy's
/// `deleteStaleEntries`): endpoints that went away, and services that gained
/// their first endpoint.
pub fn stale_entries(before: &UdpSnapshot, after: &UdpSnapshot) -> Vec<StaleEntry> {
    let mut out = BTreeSet::new();
    for (name, old) in &before.ports {
        let new = after.ports.get(name);
        for ep in &old.endpoints {
            if new.is_some_and(|n| n.endpoints.contains(ep)) {
                continue;
            }
            for vip in old.vips.iter().filter(|v| v.is_ipv6() == ep.is_ipv6()) {
                out.insert(StaleEntry::VipToEndpoint {
                    vip: *vip,
                    endpoint: *ep,
                });
            }
            if let Some(port) = old.node_port {
                out.insert(StaleEntry::NodePortToEndpoint {
                    port,
                    endpoint: *ep,
                });
            }
        }
    }
    for (name, new) in &after.ports {
        let had_endpoints = before
            .ports
            .get(name)
            .is_some_and(|o| !o.endpoints.is_empty());
        if new.endpoints.is_empty() || had_endpoints {
            continue;
        }
        for vip in &new.vips {
            out.insert(StaleEntry::ToVip {
                vip: *vip,
                port: new.port,
            });
        }
        if let Some(port) = new.node_port {
            for ipv6 in [false, true] {
                if new.endpoints.iter().any(|e| e.is_ipv6() == ipv6) {
                    out.insert(StaleEntry::ToNodePort { port, ipv6 });
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Reading or deleting conntrack entries failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("dump the {family:?} {protocol} conntrack entries: {source}")]
    Dump {
        family: IpFamily,
        protocol: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("delete conntrack entry {flow}: {source}")]
    Delete {
        flow: String,
        #[source]
        source: std::io::Error,
    },
}

/// The conntrack table of a network namespace: one dump of a family's UDP
/// flows, and deletes of given flows.
pub trait ConntrackTable: Send + Sync {
    fn udp_flows(&self, family: IpFamily) -> Result<Vec<UdpFlow>, ConntrackError>;
    /// How many established TCP connections of `family` had their
    /// destination translated (DNAT): what a retired mode's NAT still serves.
    fn translated_tcp_open(&self, family: IpFamily) -> Result<usize, ConntrackError>;
    /// Delete `flows`; one that is gone already is not an error. Returns how
    /// many were deleted.
    fn delete(&self, flows: &[UdpFlow]) -> Result<usize, ConntrackError>;
}

/// Delete the flows `stale` matches: one dump per family concerned, then
/// one delete per matching flow. Returns how many were deleted.
pub fn delete_stale(
    table: &dyn ConntrackTable,
    stale: &[StaleEntry],
) -> Result<usize, ConntrackError> {
    let mut deleted = 0;
    for family in [IpFamily::V4, IpFamily::V6] {
        let filters: Vec<&StaleEntry> = stale.iter().filter(|e| e.family() == family).collect();
        if filters.is_empty() {
            continue;
        }
        let flows: Vec<UdpFlow> = table
            .udp_flows(family)?
            .into_iter()
            .filter(|f| filters.iter().any(|e| e.matches(f)))
            .collect();
        deleted += table.delete(&flows)?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn snapshot(endpoints: &[&str]) -> UdpSnapshot {
        let port = UdpPort {
            vips: [ip("172.30.0.10")].into(),
            port: 53,
            node_port: Some(30053),
            endpoints: endpoints.iter().map(|e| ip(e)).collect(),
        };
        UdpSnapshot {
            ports: [("kube-system/dns:dns".to_string(), port)].into(),
        }
    }

    #[test]
    fn removed_endpoint_flows_are_deleted() {
        let stale = stale_entries(
            &snapshot(&["10.1.0.1", "10.1.0.2"]),
            &snapshot(&["10.1.0.1"]),
        );
        assert_eq!(
            stale,
            vec![
                StaleEntry::VipToEndpoint {
                    vip: ip("172.30.0.10"),
                    endpoint: ip("10.1.0.2")
                },
                StaleEntry::NodePortToEndpoint {
                    port: 30053,
                    endpoint: ip("10.1.0.2")
                },
            ]
        );
    }

    #[test]
    fn first_endpoint_clears_flows_to_the_vip() {
        let stale = stale_entries(&snapshot(&[]), &snapshot(&["10.1.0.1"]));
        assert_eq!(
            stale,
            vec![
                StaleEntry::ToVip {
                    vip: ip("172.30.0.10"),
                    port: 53
                },
                StaleEntry::ToNodePort {
                    port: 30053,
                    ipv6: false
                },
            ]
        );
        assert!(stale_entries(&snapshot(&["10.1.0.1"]), &snapshot(&["10.1.0.1"])).is_empty());
    }

    fn flow(src: &str, dst: &str, reply_src: &str) -> UdpFlow {
        UdpFlow {
            orig_src: src.parse().unwrap(),
            orig_dst: dst.parse().unwrap(),
            reply_src: reply_src.parse().unwrap(),
            zone: None,
        }
    }

    #[test]
    fn filters_match_on_original_destination_and_reply_source() {
        let vip = ip("172.30.0.10");
        let gone = ip("10.1.0.2");
        let to_gone = flow("10.9.0.1:4000", "172.30.0.10:53", "10.1.0.2:5353");
        let to_live = flow("10.9.0.1:4001", "172.30.0.10:53", "10.1.0.1:5353");
        let untranslated = flow("10.9.0.1:4002", "172.30.0.10:53", "172.30.0.10:53");
        let node_port = flow("10.9.0.1:4003", "192.168.0.1:30053", "10.1.0.2:5353");
        let node_port_open = flow("10.9.0.1:4004", "192.168.0.1:30053", "192.168.0.1:30053");
        let vip_to = StaleEntry::VipToEndpoint {
            vip,
            endpoint: gone,
        };
        assert!(vip_to.matches(&to_gone));
        assert!(!vip_to.matches(&to_live) && !vip_to.matches(&node_port));
        let to_vip = StaleEntry::ToVip { vip, port: 53 };
        assert!(to_vip.matches(&untranslated));
        assert!(
            !to_vip.matches(&to_gone),
            "DNATed flows are not untranslated"
        );
        assert!(!StaleEntry::ToVip { vip, port: 54 }.matches(&untranslated));
        let np_to = StaleEntry::NodePortToEndpoint {
            port: 30053,
            endpoint: gone,
        };
        assert!(np_to.matches(&node_port) && !np_to.matches(&to_live));
        let to_np = |ipv6| StaleEntry::ToNodePort { port: 30053, ipv6 };
        assert!(to_np(false).matches(&node_port_open));
        assert!(!to_np(true).matches(&node_port_open));
        assert!(!to_np(false).matches(&node_port));
        assert!(!vip_to.matches(&flow("[fd00::9]:4000", "[fd00::10]:53", "[fd00::2]:53")));
    }

    #[test]
    fn delete_stale_dumps_each_family_once_and_deletes_only_matches() {
        let table = fake::FakeConntrack::with(vec![
            flow("10.9.0.1:4000", "172.30.0.10:53", "10.1.0.2:5353"),
            flow("10.9.0.1:4001", "172.30.0.10:53", "10.1.0.1:5353"),
            flow("[fd00::9]:4000", "[fd00::10]:53", "[fd00::2]:53"),
        ]);
        let stale = [
            StaleEntry::VipToEndpoint {
                vip: ip("172.30.0.10"),
                endpoint: ip("10.1.0.2"),
            },
            StaleEntry::NodePortToEndpoint {
                port: 30053,
                endpoint: ip("10.1.0.2"),
            },
        ];
        assert_eq!(delete_stale(&table, &stale).unwrap(), 1);
        assert_eq!(table.dumps(), [IpFamily::V4]);
        assert_eq!(table.flows().len(), 2);
        assert!(delete_stale(&table, &[]).unwrap() == 0 && table.dumps().len() == 1);
    }
}
