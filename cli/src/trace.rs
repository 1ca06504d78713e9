//! Checking a mode's rendered plan against the behaviour the linked ruleset
//! asks for, with the backend's own packet tracer over its typed plan.
//!
//! Probe packets: every cluster IP frontend from a pod, and every node port,
//! external IP and load-balancer IP frontend from outside, plus every cluster
//! IP on a port no service uses. The expected outcome is the endpoint set
//! `link` chose (or reject/drop when it is empty), and for the unused port
//! what the mode's backend says it does ([`semantics::of`]);
//! the traced outcome is every verdict the plan allows for the packet.
//! Modes whose backend exposes no tracer are reported as not traced.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use switchyard_api::Mode;
use switchyard_api::policy::{LinkedRuleset, LinkedServicePort};
use switchyard_api::ruleset::IpFamily;
use switchyard_dataplane::iptables::render::render;
use switchyard_dataplane::iptables::trace::{Origin, Packet, Verdict, trace};
use switchyard_dataplane::semantics::{self, UnknownPort};
use switchyard_dataplane::settings::{LocalDetector, Settings};

/// A client outside the cluster (TEST-NET-3 / the IPv6 documentation prefix).
const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 7);

/// One probe packet and what it met.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    /// `default/web:http TCP 10.96.0.10:80 from a pod`.
    pub probe: String,
    pub expected: BTreeSet<String>,
    pub traced: BTreeSet<String>,
}

/// A mode's tracer run over every probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceCheck {
    pub mode: Mode,
    /// False when the backend exposes no tracer (nothing was checked).
    pub traced: bool,
    pub probes: usize,
    /// Probes whose traced outcome is not the expected one.
    pub mismatches: Vec<ProbeResult>,
}

struct Probe {
    label: String,
    packet: Packet,
    expected: BTreeSet<String>,
}

fn expected(port: &LinkedServicePort, from_outside: bool) -> BTreeSet<String> {
    let endpoints: BTreeSet<String> = if from_outside {
        port.external_endpoints().map(|b| b.endpoint()).collect()
    } else {
        port.internal_endpoints().map(|b| b.endpoint()).collect()
    };
    if !endpoints.is_empty() {
        endpoints
    } else if port.has_any_endpoints {
        BTreeSet::from(["DROP".to_string()])
    } else {
        BTreeSet::from(["REJECT".to_string()])
    }
}

/// A pod address: inside the local-traffic ranges when there are any.
fn pod_source(settings: &Settings, family: IpFamily) -> Option<IpAddr> {
    let LocalDetector::Cidrs(cidrs) = &settings.local_detector else {
        return None;
    };
    let cidr = cidrs.iter().find(|c| c.family() == family)?;
    Some(match cidr.addr() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) | 0x4d)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) | 0x4d)),
    })
}

/// A port no service port of `ip` uses.
fn unused_port(linked: &LinkedRuleset, ip: &IpAddr) -> u16 {
    let used: BTreeSet<u16> = linked
        .services
        .iter()
        .filter(|s| s.rule.cluster_ips.contains(ip))
        .map(|s| s.rule.port)
        .collect();
    (1..=u16::MAX).find(|p| !used.contains(p)).unwrap_or(1)
}

fn probes(linked: &LinkedRuleset, settings: &Settings) -> Vec<Probe> {
    let mut out = Vec::new();
    // Every cluster IP on a port no service uses, as the mode's semantics say.
    let unknown = semantics::of(settings).unknown_cluster_ip_port;
    let cluster_ips: BTreeSet<IpAddr> = linked
        .services
        .iter()
        .flat_map(|s| s.rule.cluster_ips.iter().copied())
        .collect();
    for ip in cluster_ips {
        if let Some(pod) = pod_source(settings, IpFamily::of(&ip)) {
            let port = unused_port(linked, &ip);
            out.push(Probe {
                label: format!(
                    "TCP {} (no service port) from a pod",
                    std::net::SocketAddr::new(ip, port)
                ),
                packet: Packet {
                    origin: Origin::Remote,
                    protocol: switchyard_api::ruleset::Protocol::Tcp,
                    source: pod,
                    destination: ip,
                    port,
                },
                expected: BTreeSet::from([traced(unknown).to_string()]),
            });
        }
    }
    for port in &linked.services {
        let rule = &port.rule;
        let name = format!("{} {}", rule.service_port_name(), rule.protocol);
        let packet = |source, destination, port| Packet {
            origin: Origin::Remote,
            protocol: rule.protocol,
            source,
            destination,
            port,
        };
        for ip in &rule.cluster_ips {
            if let Some(pod) = pod_source(settings, IpFamily::of(ip)) {
                out.push(Probe {
                    label: format!(
                        "{name} {} from a pod",
                        std::net::SocketAddr::new(*ip, rule.port)
                    ),
                    packet: packet(pod, *ip, rule.port),
                    expected: expected(port, false),
                });
            }
        }
        let outside = |ip: &IpAddr| match ip {
            IpAddr::V4(_) => IpAddr::V4(OUTSIDE_V4),
            IpAddr::V6(_) => IpAddr::V6(OUTSIDE_V6),
        };
        for ip in rule.external_ips.iter().chain(&rule.load_balancer_ips) {
            out.push(Probe {
                label: format!(
                    "{name} {} from outside",
                    std::net::SocketAddr::new(*ip, rule.port)
                ),
                packet: packet(outside(ip), *ip, rule.port),
                expected: expected(port, true),
            });
        }
        if let (Some(node_port), Some(node_ip)) = (rule.node_port, linked.node.addresses.first()) {
            out.push(Probe {
                label: format!("{name} node port {node_port} on {node_ip} from outside"),
                packet: packet(outside(node_ip), *node_ip, node_port),
                expected: expected(port, true),
            });
        }
    }
    out
}

/// The outcome a packet tracer reports for a port no service uses.
fn traced(unknown: UnknownPort) -> &'static str {
    match unknown {
        UnknownPort::NotTranslated => "not translated",
        UnknownPort::Rejected => "REJECT",
    }
}

fn shown(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Endpoint(addr) => addr.to_string(),
        Verdict::Reject => "REJECT".to_string(),
        Verdict::Drop => "DROP".to_string(),
        Verdict::Accept | Verdict::Untranslated => "not translated".to_string(),
    }
}

/// Trace every probe through `settings.mode`'s plan for this node.
pub fn check(linked: &LinkedRuleset, settings: &Settings) -> TraceCheck {
    check_plan(linked, linked, settings)
}

/// Render the plan from `rendered`, expect what `expected` says.
fn check_plan(
    rendered: &LinkedRuleset,
    expected: &LinkedRuleset,
    settings: &Settings,
) -> TraceCheck {
    let linked = rendered;
    let probes = probes(expected, settings);
    let count = probes.len();
    let mode = settings.mode;
    let traced: Option<Vec<BTreeSet<String>>> = match mode {
        Mode::Iptables => {
            let plan = render(linked, settings);
            Some(
                probes
                    .iter()
                    .map(|p| {
                        let family = IpFamily::of(&p.packet.destination);
                        plan.families
                            .iter()
                            .filter(|f| f.family == family)
                            .flat_map(|f| trace(f, &linked.node.addresses, &p.packet))
                            .map(|o| shown(&o.verdict))
                            .collect()
                    })
                    .collect(),
            )
        }
        Mode::Ipvs | Mode::Nftables | Mode::Ebpf => None,
    };
    let Some(traced) = traced else {
        return TraceCheck {
            mode,
            traced: false,
            probes: count,
            mismatches: Vec::new(),
        };
    };
    let mismatches = probes
        .into_iter()
        .zip(traced)
        .filter(|(p, got)| &p.expected != got)
        .map(|(p, got)| ProbeResult {
            probe: p.label,
            expected: p.expected,
            traced: got,
        })
        .collect();
    TraceCheck {
        mode,
        traced: true,
        probes: count,
        mismatches,
    }
}

#[cfg(test)]
mod tests {
    use switchyard_api::policy::{NodeInfo, link};
    use switchyard_api::ruleset::{Endpoint, Protocol, Ruleset, ServicePortRule};

    use super::*;

    fn endpoint(id: u32, node: &str) -> Endpoint {
        Endpoint {
            node_name: Some(node.to_string()),
            ..Endpoint::new(id, format!("10.244.1.{id}").parse().unwrap(), 8080)
        }
    }

    fn ruleset(endpoints: Vec<Endpoint>) -> Ruleset {
        Ruleset {
            services: vec![ServicePortRule {
                port_name: "http".into(),
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                node_port: Some(30080),
                endpoints,
                ..ServicePortRule::new(1, "default", "web", Protocol::Tcp, 80)
            }],
        }
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "me".into(),
            zone: None,
            addresses: vec!["192.0.2.1".parse().unwrap()],
        }
    }

    fn settings() -> Settings {
        let mut s = Settings::defaults(Mode::Iptables);
        s.local_detector = LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]);
        s
    }

    #[test]
    fn the_iptables_plan_reaches_exactly_the_linked_endpoints() {
        let linked = link(
            &ruleset(vec![endpoint(1, "me"), endpoint(2, "other")]),
            &node(),
        );
        let c = check(&linked, &settings());
        assert!(c.traced);
        assert_eq!(
            c.probes, 3,
            "cluster IP from a pod, an unused port of it, node port from outside"
        );
        assert_eq!(c.mismatches, vec![]);
    }

    #[test]
    fn a_plan_missing_an_endpoint_is_a_mismatch() {
        let full = link(
            &ruleset(vec![endpoint(1, "me"), endpoint(2, "other")]),
            &node(),
        );
        let short = link(&ruleset(vec![endpoint(1, "me")]), &node());
        let c = check_plan(&short, &full, &settings());
        assert_eq!(c.mismatches.len(), 2, "{:#?}", c.mismatches);
        assert_eq!(
            c.mismatches[0].traced,
            BTreeSet::from(["10.244.1.1:8080".to_string()])
        );
    }

    #[test]
    fn no_endpoint_anywhere_is_expected_to_reject() {
        let linked = link(&ruleset(vec![]), &node());
        let c = check(&linked, &settings());
        assert_eq!(c.mismatches, vec![], "the plan rejects as link says");
        assert_eq!(
            expected(&linked.services[0], false),
            BTreeSet::from(["REJECT".to_string()])
        );
    }

    #[test]
    fn modes_without_a_tracer_are_reported_untraced() {
        let linked = link(&ruleset(vec![endpoint(1, "me")]), &node());
        let mut s = settings();
        s.mode = Mode::Nftables;
        let c = check(&linked, &s);
        assert!(!c.traced);
        assert_eq!(c.probes, 3);
    }
}
