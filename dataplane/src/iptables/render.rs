//! Pure: a linked ruleset and settings → the typed [`Plan`], following
//! kube-proxy's `syncProxyRules` rule for rule, per IP family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use switchyard_api::policy::{LinkedRuleset, LinkedServicePort};
use switchyard_api::ruleset::{Cidr, Endpoint, IpFamily, Protocol};

use super::names::{
    self, KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_NODEPORTS,
    KUBE_POSTROUTING, KUBE_PROXY_FIREWALL, KUBE_SERVICES, ServiceChains,
};
use super::plan::{Chain, FamilyPlan, JumpRule, Plan};
use super::rule::{Match, Rule, Side, Table, Target};
use crate::conntrack::UdpSnapshot;
use crate::settings::{LocalDetector, NodePortAddresses, Settings};

/// Render the plan for both IP families.
pub fn render(ruleset: &LinkedRuleset, settings: &Settings) -> Plan {
    Plan {
        families: [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .map(|family| render_family(ruleset, settings, family))
            .collect(),
        udp: UdpSnapshot::of(ruleset),
    }
}

/// The tables being built for one family.
struct Builder {
    filter: Tables,
    nat: Tables,
}

/// Chains in creation order.
#[derive(Default)]
struct Tables {
    chains: Vec<Chain>,
}

impl Tables {
    fn chain(&mut self, name: &str) -> &mut Vec<Rule> {
        let at = match self.chains.iter().position(|c| c.name == name) {
            Some(at) => at,
            None => {
                self.chains.push(Chain {
                    name: name.to_string(),
                    rules: Vec::new(),
                });
                self.chains.len() - 1
            }
        };
        &mut self.chains[at].rules
    }

    fn push(&mut self, chain: &str, rule: Rule) {
        self.chain(chain).push(rule);
    }
}

fn fixed_chains(names: &[&str]) -> Tables {
    let mut t = Tables::default();
    for n in names {
        t.chain(n);
    }
    t
}

fn loopback(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn render_family(ruleset: &LinkedRuleset, settings: &Settings, family: IpFamily) -> FamilyPlan {
    let localhost_node_ports = family == IpFamily::V4 && settings.localhost_node_ports;
    let mut filter_names = vec![
        KUBE_NODEPORTS,
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_FORWARD,
        KUBE_PROXY_FIREWALL,
    ];
    if localhost_node_ports {
        filter_names.push(KUBE_FIREWALL);
    }
    let mut b = Builder {
        filter: fixed_chains(&filter_names),
        nat: fixed_chains(&[
            KUBE_NODEPORTS,
            KUBE_SERVICES,
            KUBE_MARK_MASQ,
            KUBE_POSTROUTING,
        ]),
    };
    let mark = settings.masquerade_mark();
    let local_cidr = match &settings.local_detector {
        LocalDetector::None => None,
        LocalDetector::Cidrs(cidrs) => cidrs.iter().find(|c| c.family() == family).copied(),
    };
    let ctx = Ctx {
        family,
        settings,
        local_cidr,
        node_ips: ruleset
            .node
            .addresses
            .iter()
            .filter(|ip| IpFamily::of(ip) == family)
            .copied()
            .collect(),
    };

    b.nat.push(KUBE_MARK_MASQ, Rule::new(Target::OrMark(mark)));
    b.nat.push(
        KUBE_POSTROUTING,
        Rule::new(Target::Return).with(Match::Mark { mark, negate: true }),
    );
    b.nat
        .push(KUBE_POSTROUTING, Rule::new(Target::XorMark(mark)));
    b.nat.push(
        KUBE_POSTROUTING,
        Rule::new(Target::Masquerade { random_fully: true })
            .comment("kubernetes service traffic requiring SNAT"),
    );
    if localhost_node_ports {
        b.filter.push(
            KUBE_FIREWALL,
            Rule::new(Target::Drop)
                .comment("block incoming localnet connections")
                .with(Match::Destination {
                    cidr: cidr("127.0.0.0/8"),
                    negate: false,
                })
                .with(Match::Source {
                    cidr: cidr("127.0.0.0/8"),
                    negate: true,
                })
                .with(Match::CtState {
                    states: "RELATED,ESTABLISHED,DNAT",
                    negate: true,
                }),
        );
    }
    b.filter.push(
        KUBE_FORWARD,
        Rule::new(Target::Drop).with(Match::CtState {
            states: "INVALID",
            negate: false,
        }),
    );
    b.filter.push(
        KUBE_FORWARD,
        Rule::new(Target::Accept)
            .comment("kubernetes forwarding rules")
            .with(Match::Mark {
                mark,
                negate: false,
            }),
    );
    b.filter.push(
        KUBE_FORWARD,
        Rule::new(Target::Accept)
            .comment("kubernetes forwarding conntrack rule")
            .with(Match::CtState {
                states: "RELATED,ESTABLISHED",
                negate: false,
            }),
    );

    for sp in &ruleset.services {
        render_service_port(&mut b, &ctx, sp);
    }
    render_node_ports_jump(&mut b, &ctx, localhost_node_ports);

    FamilyPlan {
        family,
        route_localnet: localhost_node_ports,
        filter: b.filter.chains,
        nat: b.nat.chains,
        jumps: jump_rules(localhost_node_ports),
    }
}

fn cidr(text: &str) -> Cidr {
    // Only called with the literal prefixes above.
    text.parse()
        .unwrap_or_else(|_| Cidr::host(IpAddr::V4(Ipv4Addr::LOCALHOST)))
}

struct Ctx<'a> {
    family: IpFamily,
    settings: &'a Settings,
    local_cidr: Option<Cidr>,
    node_ips: Vec<IpAddr>,
}

/// The family's view of one service port.
struct FamilyPort<'a> {
    name: String,
    protocol: Protocol,
    port: u16,
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<Cidr>,
    cluster: Vec<&'a Endpoint>,
    local: Vec<&'a Endpoint>,
    reachable: Vec<&'a Endpoint>,
    has_endpoints: bool,
}

fn of_family(ips: &[IpAddr], family: IpFamily) -> Vec<IpAddr> {
    ips.iter()
        .filter(|ip| IpFamily::of(ip) == family)
        .copied()
        .collect()
}

fn family_port(sp: &LinkedServicePort, family: IpFamily) -> Option<FamilyPort<'_>> {
    let rule = &sp.rule;
    let cluster_ip = *of_family(&rule.cluster_ips, family).first()?;
    let in_family = |b: &&Endpoint| IpFamily::of(&b.ip) == family;
    let usable = rule
        .endpoints
        .iter()
        .filter(in_family)
        .any(|b| b.ready || (b.serving && b.terminating));
    Some(FamilyPort {
        name: rule.service_port_name(),
        protocol: rule.protocol,
        port: rule.port,
        cluster_ip,
        external_ips: of_family(&rule.external_ips, family),
        lb_ips: of_family(&rule.load_balancer_ips, family),
        source_ranges: rule
            .load_balancer_source_ranges
            .iter()
            .filter(|c| c.family() == family)
            .copied()
            .collect(),
        cluster: sp.cluster_endpoints().filter(in_family).collect(),
        local: sp.local_endpoints().filter(in_family).collect(),
        reachable: sp.all_reachable_endpoints().filter(in_family).collect(),
        has_endpoints: sp.has_any_endpoints && usable,
    })
}

fn render_service_port(b: &mut Builder, ctx: &Ctx<'_>, sp: &LinkedServicePort) {
    let Some(fp) = family_port(sp, ctx.family) else {
        return;
    };
    let rule = &sp.rule;
    let chains = ServiceChains::of(rule);
    let name = fp.name.as_str();
    let proto = fp.protocol;
    let has_endpoints = fp.has_endpoints;
    let uses_cluster =
        !fp.cluster.is_empty() && (!sp.internal_policy_local() || rule.has_external());
    let uses_local =
        !fp.local.is_empty() && (sp.internal_policy_local() || sp.external_policy_local());

    // A policy chain is only jumped to when it exists (has endpoints in this family).
    let (internal_chain, has_internal) = if sp.internal_policy_local() {
        (&chains.local, has_endpoints && uses_local)
    } else {
        (&chains.cluster, has_endpoints && uses_cluster)
    };
    let (external_policy_chain, has_external) = if sp.external_policy_local() {
        (&chains.local, has_endpoints && uses_local)
    } else {
        (&chains.cluster, has_endpoints && uses_cluster)
    };
    let uses_ext_chain = has_endpoints && rule.has_external();
    let uses_fw_chain = has_endpoints && !fp.lb_ips.is_empty() && !fp.source_ranges.is_empty();
    let lb_chain = if uses_fw_chain {
        &chains.firewall
    } else {
        &chains.external
    };

    let no_endpoints = format!("{name} has no endpoints");
    let no_local = format!("{name} has no local endpoints");
    let (internal_filter, external_filter) = if !has_endpoints {
        (
            (Target::Reject, no_endpoints.clone()),
            (Target::Reject, no_endpoints),
        )
    } else {
        ((Target::Drop, no_local.clone()), (Target::Drop, no_local))
    };
    let host = Cidr::host;

    // Cluster IP.
    if has_internal {
        b.nat.push(
            KUBE_SERVICES,
            Rule::new(Target::Jump(internal_chain.clone()))
                .comment(format!("{name} cluster IP"))
                .to_port(proto, Some(host(fp.cluster_ip)), fp.port),
        );
    } else {
        b.filter.push(
            KUBE_SERVICES,
            Rule::new(internal_filter.0.clone())
                .comment(internal_filter.1.clone())
                .to_port(proto, Some(host(fp.cluster_ip)), fp.port),
        );
    }

    // External IPs.
    for ip in &fp.external_ips {
        if has_endpoints {
            b.nat.push(
                KUBE_SERVICES,
                Rule::new(Target::Jump(chains.external.clone()))
                    .comment(format!("{name} external IP"))
                    .to_port(proto, Some(host(*ip)), fp.port),
            );
        }
        if !has_external {
            b.filter.push(
                KUBE_EXTERNAL_SERVICES,
                Rule::new(external_filter.0.clone())
                    .comment(external_filter.1.clone())
                    .to_port(proto, Some(host(*ip)), fp.port),
            );
        }
    }

    // Load-balancer IPs.
    for ip in &fp.lb_ips {
        if has_endpoints {
            b.nat.push(
                KUBE_SERVICES,
                Rule::new(Target::Jump(lb_chain.clone()))
                    .comment(format!("{name} loadbalancer IP"))
                    .to_port(proto, Some(host(*ip)), fp.port),
            );
        }
        if uses_fw_chain {
            b.filter.push(
                KUBE_PROXY_FIREWALL,
                Rule::new(Target::Drop)
                    .comment(format!(
                        "{name} traffic not accepted by {}",
                        chains.firewall
                    ))
                    .to_port(proto, Some(host(*ip)), fp.port),
            );
        }
    }
    if !has_external {
        for ip in &fp.lb_ips {
            b.filter.push(
                KUBE_EXTERNAL_SERVICES,
                Rule::new(external_filter.0.clone())
                    .comment(external_filter.1.clone())
                    .to_port(proto, Some(host(*ip)), fp.port),
            );
        }
    }

    // Node port.
    if let Some(node_port) = rule.node_port {
        if has_endpoints {
            b.nat.push(
                KUBE_NODEPORTS,
                Rule::new(Target::Jump(chains.external.clone()))
                    .comment(name)
                    .to_port(proto, None, node_port),
            );
        }
        if !has_external {
            b.filter.push(
                KUBE_EXTERNAL_SERVICES,
                Rule::new(external_filter.0.clone())
                    .comment(external_filter.1.clone())
                    .with(Match::LocalAddress(Side::Destination))
                    .to_port(proto, None, node_port),
            );
        }
    }
    if let Some(hc) = rule.health_check_node_port {
        b.filter.push(
            KUBE_NODEPORTS,
            Rule::new(Target::Accept)
                .comment(format!("{name} health check node port"))
                .to_port(Protocol::Tcp, None, hc),
        );
    }

    // Internal traffic: masquerade off-cluster sources.
    if has_internal {
        let base = Rule::new(Target::Jump(KUBE_MARK_MASQ.into()))
            .comment(format!("{name} cluster IP"))
            .to_port(proto, Some(host(fp.cluster_ip)), fp.port);
        if ctx.settings.masquerade_all {
            b.nat.push(internal_chain, base);
        } else if let Some(cidr) = ctx.local_cidr {
            b.nat.push(
                internal_chain,
                base.with(Match::Source { cidr, negate: true }),
            );
        }
    }

    // External traffic.
    if uses_ext_chain {
        let ext = &chains.external;
        b.nat.chain(ext);
        if !sp.external_policy_local() {
            b.nat.push(
                ext,
                Rule::new(Target::Jump(KUBE_MARK_MASQ.into())).comment(format!(
                    "masquerade traffic for {name} external destinations"
                )),
            );
        } else if uses_cluster {
            // Pods and the node itself are short-circuited to the Cluster chain.
            if let Some(cidr) = ctx.local_cidr {
                b.nat.push(
                    ext,
                    Rule::new(Target::Jump(chains.cluster.clone()))
                        .comment(format!("pod traffic for {name} external destinations"))
                        .with(Match::Source {
                            cidr,
                            negate: false,
                        }),
                );
            }
            b.nat.push(
                ext,
                Rule::new(Target::Jump(KUBE_MARK_MASQ.into()))
                    .comment(format!(
                        "masquerade LOCAL traffic for {name} external destinations"
                    ))
                    .with(Match::LocalAddress(Side::Source)),
            );
            b.nat.push(
                ext,
                Rule::new(Target::Jump(chains.cluster.clone()))
                    .comment(format!(
                        "route LOCAL traffic for {name} external destinations"
                    ))
                    .with(Match::LocalAddress(Side::Source)),
            );
        }
        if has_external {
            b.nat
                .push(ext, Rule::new(Target::Jump(external_policy_chain.clone())));
        }
    }

    // Load-balancer source ranges.
    if uses_fw_chain {
        let fw = &chains.firewall;
        let allow = |source: Cidr| {
            Rule::new(Target::Jump(chains.external.clone()))
                .comment(format!("{name} loadbalancer IP"))
                .with(Match::Source {
                    cidr: source,
                    negate: false,
                })
        };
        for range in &fp.source_ranges {
            b.nat.push(fw, allow(*range));
        }
        let allow_from_node = fp
            .source_ranges
            .iter()
            .any(|r| ctx.node_ips.iter().any(|ip| r.contains(ip)));
        if allow_from_node {
            for ip in &fp.lb_ips {
                b.nat.push(fw, allow(host(*ip)));
            }
        }
        b.nat.push(
            fw,
            Rule::new(Target::Nothing).comment(format!(
                "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
            )),
        );
    }

    let affinity = rule.session_affinity.map(|a| a.timeout_seconds);
    if uses_cluster {
        service_to_endpoints(b, rule, &chains.cluster, &fp.cluster, affinity);
    }
    if uses_local {
        service_to_endpoints(b, rule, &chains.local, &fp.local, affinity);
    }
    for ep in &fp.reachable {
        let chain = names::endpoint_chain(rule, ep);
        b.nat.push(
            &chain,
            Rule::new(Target::Jump(KUBE_MARK_MASQ.into()))
                .comment(name)
                .with(Match::Source {
                    cidr: host(ep.ip),
                    negate: false,
                }),
        );
        let mut dnat = Rule::new(Target::Dnat(SocketAddr::new(ep.ip, ep.port))).comment(name);
        if affinity.is_some() {
            dnat = dnat.with(Match::RecentSet {
                name: chain.clone(),
            });
        }
        b.nat.push(&chain, dnat.with(Match::Protocol(proto)));
    }
}

/// kube-proxy's `writeServiceToEndpointRules`: affinity checks, then random choice.
fn service_to_endpoints(
    b: &mut Builder,
    rule: &switchyard_api::ruleset::ServicePortRule,
    chain: &str,
    endpoints: &[&Endpoint],
    affinity: Option<u32>,
) {
    let name = rule.service_port_name();
    if let Some(seconds) = affinity {
        for ep in endpoints {
            let ep_chain = names::endpoint_chain(rule, ep);
            b.nat.push(
                chain,
                Rule::new(Target::Jump(ep_chain.clone()))
                    .comment(format!("{name} -> {}", ep.endpoint()))
                    .with(Match::RecentCheck {
                        name: ep_chain,
                        seconds,
                    }),
            );
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut r = Rule::new(Target::Jump(names::endpoint_chain(rule, ep)))
            .comment(format!("{name} -> {}", ep.endpoint()));
        if i + 1 < n {
            r = r.with(Match::RandomOneOf(n - i));
        }
        b.nat.push(chain, r);
    }
}

/// The last rule of KUBE-SERVICES: hand node-port traffic to KUBE-NODEPORTS.
fn render_node_ports_jump(b: &mut Builder, ctx: &Ctx<'_>, localhost_node_ports: bool) {
    let comment = "kubernetes service nodeports; NOTE: this must be the last rule in this chain";
    let cidrs = match &ctx.settings.node_port_addresses {
        NodePortAddresses::ModeDefault => {
            let mut rule = Rule::new(Target::Jump(KUBE_NODEPORTS.into()))
                .comment(comment)
                .with(Match::LocalAddress(Side::Destination));
            if !localhost_node_ports {
                let lo = match ctx.family {
                    IpFamily::V4 => cidr("127.0.0.0/8"),
                    IpFamily::V6 => Cidr::host(loopback(IpFamily::V6)),
                };
                rule = rule.with(Match::Destination {
                    cidr: lo,
                    negate: true,
                });
            }
            b.nat.push(KUBE_SERVICES, rule);
            return;
        }
        NodePortAddresses::Primary => ctx.node_ips.first().map(|ip| vec![Cidr::host(*ip)]),
        NodePortAddresses::Cidrs(cidrs) => Some(cidrs.clone()),
    };
    let candidates = ctx.node_ips.iter().copied().chain([loopback(ctx.family)]);
    let cidrs = cidrs.unwrap_or_default();
    for ip in candidates.filter(|ip| cidrs.iter().any(|c| c.contains(ip))) {
        if ip.is_loopback() && !localhost_node_ports {
            continue;
        }
        b.nat.push(
            KUBE_SERVICES,
            Rule::new(Target::Jump(KUBE_NODEPORTS.into()))
                .comment(comment)
                .with(Match::Destination {
                    cidr: Cidr::host(ip),
                    negate: false,
                }),
        );
    }
}

/// kube-proxy's `iptablesJumpChains`, in evaluation order per builtin chain.
fn jump_rules(localhost_node_ports: bool) -> Vec<JumpRule> {
    let new = || Match::CtState {
        states: "NEW",
        negate: false,
    };
    let jump = |table, builtin, chain: &str, comment: &str, ctnew: bool| {
        let mut rule = Rule::new(Target::Jump(chain.into())).comment(comment);
        if ctnew {
            rule.matches.insert(0, new());
        }
        JumpRule {
            table,
            builtin,
            rule,
        }
    };
    let fw = "kubernetes load balancer firewall";
    let portals = "kubernetes service portals";
    let external = "kubernetes externally-visible service portals";
    let mut jumps = vec![
        jump(Table::Filter, "INPUT", KUBE_PROXY_FIREWALL, fw, true),
        jump(
            Table::Filter,
            "INPUT",
            KUBE_NODEPORTS,
            "kubernetes health check service ports",
            false,
        ),
        jump(
            Table::Filter,
            "INPUT",
            KUBE_EXTERNAL_SERVICES,
            external,
            true,
        ),
        jump(Table::Filter, "FORWARD", KUBE_PROXY_FIREWALL, fw, true),
        jump(
            Table::Filter,
            "FORWARD",
            KUBE_FORWARD,
            "kubernetes forwarding rules",
            false,
        ),
        jump(Table::Filter, "FORWARD", KUBE_SERVICES, portals, true),
        jump(
            Table::Filter,
            "FORWARD",
            KUBE_EXTERNAL_SERVICES,
            external,
            true,
        ),
        jump(Table::Filter, "OUTPUT", KUBE_PROXY_FIREWALL, fw, true),
        jump(Table::Filter, "OUTPUT", KUBE_SERVICES, portals, true),
        jump(Table::Nat, "OUTPUT", KUBE_SERVICES, portals, false),
        jump(Table::Nat, "PREROUTING", KUBE_SERVICES, portals, false),
        jump(
            Table::Nat,
            "POSTROUTING",
            KUBE_POSTROUTING,
            "kubernetes postrouting rules",
            false,
        ),
    ];
    if localhost_node_ports {
        for builtin in ["INPUT", "OUTPUT"] {
            jumps.push(JumpRule {
                table: Table::Filter,
                builtin,
                rule: Rule::new(Target::Jump(KUBE_FIREWALL.into())),
            });
        }
    }
    jumps
}
