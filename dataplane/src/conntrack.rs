//! Stale UDP conntrack cleanup, as kube-proxy does it, shared by the iptables
//! and nftables backends. UDP has no connection teardown, so a conntrack entry
//! DNATed to an endpoint that went away (or created while a service had no
//! endpoints) would keep blackholing a client's flow until it idles out.
//!
//! [`UdpSnapshot`] is the pure summary of what a ruleset programs for UDP;
//! [`stale_entries`] diffs two of them; [`delete`] runs `conntrack -D` through
//! the [`Runner`] chokepoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use switchyard_api::policy::{LinkedRuleset, LinkedServicePort};
use switchyard_api::ruleset::Protocol;

use crate::exec::{ExecError, Runner};

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

/// One `conntrack -D` filter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StaleEntry {
    /// Entries to `vip:port` (made while the service had no endpoints).
    ToVip { vip: IpAddr, port: u16 },
    /// Entries to the node port on any address (made while there were no endpoints).
    ToNodePort { port: u16, ipv6: bool },
    /// Entries to `vip` DNATed to an endpoint that is gone.
    VipToEndpoint { vip: IpAddr, endpoint: IpAddr },
    /// Entries to the node port DNATed to an endpoint that is gone.
    NodePortToEndpoint { port: u16, endpoint: IpAddr },
}

impl StaleEntry {
    /// The `conntrack` arguments deleting these entries.
    pub fn args(&self) -> Vec<String> {
        let family = |ipv6: bool| if ipv6 { "ipv6" } else { "ipv4" };
        let s = |v: &dyn ToString| v.to_string();
        let (ipv6, rest): (bool, Vec<String>) = match self {
            StaleEntry::ToVip { vip, port } => (
                vip.is_ipv6(),
                vec![s(&"--orig-dst"), s(vip), s(&"--dport"), s(port)],
            ),
            StaleEntry::ToNodePort { port, ipv6 } => (*ipv6, vec![s(&"--dport"), s(port)]),
            StaleEntry::VipToEndpoint { vip, endpoint } => (
                vip.is_ipv6(),
                vec![s(&"--orig-dst"), s(vip), s(&"--dst-nat"), s(endpoint)],
            ),
            StaleEntry::NodePortToEndpoint { port, endpoint } => (
                endpoint.is_ipv6(),
                vec![s(&"--dport"), s(port), s(&"--dst-nat"), s(endpoint)],
            ),
        };
        let mut args = vec![
            "-D".to_string(),
            "-f".to_string(),
            family(ipv6).to_string(),
            "-p".to_string(),
            "udp".to_string(),
        ];
        args.extend(rest);
        args
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

/// A conntrack deletion failed.
#[derive(Debug, thiserror::Error)]
#[error("conntrack {args}: {source}")]
pub struct ConntrackError {
    pub args: String,
    #[source]
    pub source: ExecError,
}

/// Delete `entries`; a filter that matches nothing is not an error.
pub fn delete(runner: &dyn Runner, entries: &[StaleEntry]) -> Result<usize, ConntrackError> {
    let mut ran = 0;
    for entry in entries {
        let args = entry.args();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        match runner.run("conntrack", &argv, None) {
            Ok(_) => {}
            Err(ExecError::Failed { stderr, .. }) if stderr.contains("0 flow entries") => {}
            Err(source) => {
                return Err(ConntrackError {
                    args: args.join(" "),
                    source,
                });
            }
        }
        ran += 1;
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::FakeRunner;

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

    #[test]
    fn delete_runs_conntrack_and_tolerates_no_match() {
        let runner = FakeRunner::default();
        runner.fail(
            "conntrack",
            "conntrack v1.4.7: 0 flow entries have been deleted.",
        );
        let entries = [StaleEntry::VipToEndpoint {
            vip: ip("172.30.0.10"),
            endpoint: ip("10.1.0.2"),
        }];
        assert_eq!(delete(&runner, &entries).unwrap(), 1);
        assert_eq!(
            runner.calls()[0].args.join(" "),
            "-D -f ipv4 -p udp --orig-dst 172.30.0.10 --dst-nat 10.1.0.2"
        );
        let failing = FakeRunner::default();
        failing.fail("conntrack", "Operation not permitted");
        assert!(delete(&failing, &entries).is_err());
    }
}
