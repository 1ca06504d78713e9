//! Pure: a linked ruleset and settings → the typed [`Plan`], following
//! kube-proxy's `syncProxyRules` rule for rule, per IP family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use switchyard_api::policy::{FamilyEndpoints, LinkedRuleset, LinkedServicePort};
use switchyard_api::ruleset::{Cidr, Endpoint, IpFamily, Protocol, ServicePortRule};

use super::names::{
    self, KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_NODEPORTS,
    KUBE_POSTROUTING, KUBE_PROXY_FIREWALL, KUBE_SERVICES, ServiceChains,
};
use super::plan::{ChainList, FamilyPlan, JumpRule, Plan};
use super::rule::{Match, Rule, Side, Table, Target};
use crate::conntrack::UdpSnapshot;
use crate::settings::{LocalDetector, MASQUERADED_PROTOCOLS, NodePortAddresses, Settings};

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
    filter: ChainList,
    nat: ChainList,
}

impl Builder {
    /// The fixed chains, in kube-proxy's order. KUBE-FIREWALL is there in
    /// both families even when empty, as kube-proxy keeps it (kubelet's
    /// chain, which it duplicates).
    fn new() -> Builder {
        Builder {
            filter: ChainList::of(&[
                KUBE_NODEPORTS,
                KUBE_SERVICES,
                KUBE_EXTERNAL_SERVICES,
                KUBE_FORWARD,
                KUBE_PROXY_FIREWALL,
                KUBE_FIREWALL,
            ]),
            nat: ChainList::of(&[
                KUBE_NODEPORTS,
                KUBE_SERVICES,
                KUBE_MARK_MASQ,
                KUBE_POSTROUTING,
            ]),
        }
    }
}

fn loopback(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn render_family(ruleset: &LinkedRuleset, settings: &Settings, family: IpFamily) -> FamilyPlan {
    let localhost_node_ports = family == IpFamily::V4 && settings.ipv4_localhost_node_ports();
    let mut b = Builder::new();
    let local_cidr = match &settings.local_detector {
        LocalDetector::None => None,
        LocalDetector::Cidrs(cidrs) => cidrs.iter().find(|c| c.family() == family).copied(),
    };
    let ctx = Ctx {
        family,
        settings,
        local_cidr,
        node_ips: of_family(&ruleset.node.addresses, family),
        large_cluster: endpoint_count(ruleset, family) > LARGE_CLUSTER_ENDPOINTS,
    };
    fixed_rules(&mut b, settings, localhost_node_ports);
    for sp in &ruleset.services {
        render_service_port(&mut b, &ctx, sp);
    }
    render_node_ports_jump(&mut b, &ctx, localhost_node_ports);

    FamilyPlan {
        family,
        route_localnet: localhost_node_ports,
        filter: b.filter.chains,
        nat: b.nat.chains,
        jumps: jump_rules(),
    }
}

/// The rules of the fixed chains: marking, masquerading, the localnet guard, forwarding.
fn fixed_rules(b: &mut Builder, settings: &Settings, localhost_node_ports: bool) {
    let mark = settings.masquerade_mark();
    b.nat.push(KUBE_MARK_MASQ, Rule::new(Target::OrMark(mark)));
    for rule in masquerade_marked(settings) {
        b.nat.push(KUBE_POSTROUTING, rule);
    }
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
}

/// KUBE-POSTROUTING's rules in both layouts (this mode's and the IPVS
/// mode's): masquerade the packets marked for it, clearing the mark so a
/// packet that passes the stack again is not masqueraded twice. With
/// [`Settings::masquerade_ports`], TCP and UDP take their ports from there.
pub fn masquerade_marked(settings: &Settings) -> Vec<Rule> {
    let mark = settings.masquerade_mark();
    let masquerade = |ports| {
        Rule::new(Target::Masquerade {
            random_fully: true,
            ports,
        })
        .comment("kubernetes service traffic requiring SNAT")
    };
    let mut rules = vec![
        Rule::new(Target::Return).with(Match::Mark { mark, negate: true }),
        Rule::new(Target::XorMark(mark)),
    ];
    if let Some(ports) = settings.masquerade_ports {
        for protocol in MASQUERADED_PROTOCOLS {
            rules.push(masquerade(Some(ports)).with(Match::ProtocolOnly(protocol)));
        }
    }
    rules.push(masquerade(None));
    rules
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
    /// kube-proxy's `largeClusterMode`.
    large_cluster: bool,
}

impl Ctx<'_> {
    /// kube-proxy's `appendServiceCommentLocked`: the rules of and to
    /// endpoint chains carry a comment unless the cluster is large.
    fn endpoint_comment(&self, rule: Rule, comment: impl FnOnce() -> String) -> Rule {
        if self.large_cluster {
            rule
        } else {
            rule.comment(comment())
        }
    }
}

/// kube-proxy's `largeClusterEndpointsThreshold`: with more endpoints than
/// this in a family, its proxier leaves the comments off the rules of and to
/// endpoint chains (its `largeClusterMode`), which makes the restore input
/// 30% smaller and a full sync's restore about 15% cheaper.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// kube-proxy's `totalEndpoints`: the endpoints of `family` of every service
/// port that has a cluster IP of `family`, whatever their conditions.
fn endpoint_count(ruleset: &LinkedRuleset, family: IpFamily) -> usize {
    let in_family = |ip: &IpAddr| IpFamily::of(ip) == family;
    ruleset
        .services
        .iter()
        .filter(|sp| sp.rule.cluster_ips.iter().any(in_family))
        .map(|sp| {
            sp.rule
                .endpoints
                .iter()
                .filter(|e| in_family(&e.ip))
                .count()
        })
        .sum()
}

/// kube-proxy's order of a port's endpoints (its `byEndpoint`): by their
/// `ip:port` text, so `10.0.0.10:80` comes before `10.0.0.9:80`. The order
/// decides which rule of a policy chain jumps to which endpoint.
fn in_kube_proxy_order(mut endpoints: FamilyEndpoints<'_>) -> FamilyEndpoints<'_> {
    for list in [
        &mut endpoints.cluster,
        &mut endpoints.local,
        &mut endpoints.all_reachable,
    ] {
        list.sort_by_cached_key(|ep| ep.endpoint());
    }
    endpoints
}

fn of_family(ips: &[IpAddr], family: IpFamily) -> Vec<IpAddr> {
    ips.iter()
        .filter(|ip| IpFamily::of(ip) == family)
        .copied()
        .collect()
}

/// One service port in one family, with what kube-proxy's per-service loop
/// derives from the linked endpoints before it writes a rule.
struct Port<'a> {
    rule: &'a ServicePortRule,
    name: String,
    chains: ServiceChains,
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<Cidr>,
    endpoints: FamilyEndpoints<'a>,
    external_policy_local: bool,
    /// The chains the internal and external policies send to.
    internal_chain: String,
    external_policy_chain: String,
    /// The internal / external policy chain exists (has endpoints in this family).
    has_internal: bool,
    has_external: bool,
    uses_ext_chain: bool,
    uses_fw_chain: bool,
    /// What the filter table does with traffic that finds no endpoint.
    no_endpoint: (Target, String),
}

impl<'a> Port<'a> {
    fn of(sp: &'a LinkedServicePort, family: IpFamily) -> Option<Port<'a>> {
        let rule = &sp.rule;
        let cluster_ip = *of_family(&rule.cluster_ips, family).first()?;
        let name = rule.service_port_name();
        let chains = ServiceChains::of(rule);
        let endpoints = in_kube_proxy_order(sp.family(family));
        let has_endpoints = endpoints.has_any_endpoints;
        // A policy chain is only jumped to when it exists (has endpoints in this family).
        let policy_chain = |local: bool| {
            if local {
                (
                    chains.local.clone(),
                    has_endpoints && !endpoints.local.is_empty(),
                )
            } else {
                (
                    chains.cluster.clone(),
                    has_endpoints && !endpoints.cluster.is_empty(),
                )
            }
        };
        let (internal_chain, has_internal) = policy_chain(sp.internal_policy_local());
        let (external_policy_chain, has_external) = policy_chain(sp.external_policy_local());
        let lb_ips = of_family(&rule.load_balancer_ips, family);
        let source_ranges: Vec<Cidr> = rule
            .load_balancer_source_ranges
            .iter()
            .filter(|c| c.family() == family)
            .copied()
            .collect();
        let no_endpoint = if has_endpoints {
            (Target::Drop, format!("{name} has no local endpoints"))
        } else {
            (Target::Reject, format!("{name} has no endpoints"))
        };
        Some(Port {
            uses_ext_chain: has_endpoints && rule.has_external(),
            uses_fw_chain: has_endpoints && !lb_ips.is_empty() && !source_ranges.is_empty(),
            rule,
            name,
            chains,
            cluster_ip,
            external_ips: of_family(&rule.external_ips, family),
            lb_ips,
            source_ranges,
            endpoints,
            external_policy_local: sp.external_policy_local(),
            internal_chain,
            external_policy_chain,
            has_internal,
            has_external,
            no_endpoint,
        })
    }

    fn has_endpoints(&self) -> bool {
        self.endpoints.has_any_endpoints
    }

    /// `-m <proto> -p <proto> [-d <ip>] --dport <port>` of this port.
    fn to(&self, rule: Rule, ip: Option<IpAddr>, port: u16) -> Rule {
        rule.to_port(self.rule.protocol, ip.map(Cidr::host), port)
    }

    /// The filter rule for traffic that finds no endpoint.
    fn no_endpoint_rule(&self) -> Rule {
        let (target, comment) = &self.no_endpoint;
        Rule::new(target.clone()).comment(comment.clone())
    }
}

fn render_service_port(b: &mut Builder, ctx: &Ctx<'_>, sp: &LinkedServicePort) {
    let Some(port) = Port::of(sp, ctx.family) else {
        return;
    };
    cluster_ip_rules(b, &port);
    external_ip_rules(b, &port);
    load_balancer_rules(b, &port);
    node_port_rules(b, &port);
    internal_traffic_rules(b, ctx, &port);
    external_traffic_rules(b, ctx, &port);
    source_range_rules(b, ctx, &port);
    endpoint_rules(b, ctx, &port);
}

/// Cluster IP: to the internal policy chain, or rejected / dropped in filter.
fn cluster_ip_rules(b: &mut Builder, p: &Port<'_>) {
    let (ip, port) = (Some(p.cluster_ip), p.rule.port);
    if p.has_internal {
        let jump = Rule::new(Target::Jump(p.internal_chain.clone()))
            .comment(format!("{} cluster IP", p.name));
        b.nat.push(KUBE_SERVICES, p.to(jump, ip, port));
    } else {
        b.filter
            .push(KUBE_SERVICES, p.to(p.no_endpoint_rule(), ip, port));
    }
}

/// External IPs: to the external chain; rejected / dropped without an external policy chain.
fn external_ip_rules(b: &mut Builder, p: &Port<'_>) {
    for ip in &p.external_ips {
        let (ip, port) = (Some(*ip), p.rule.port);
        if p.has_endpoints() {
            let jump = Rule::new(Target::Jump(p.chains.external.clone()))
                .comment(format!("{} external IP", p.name));
            b.nat.push(KUBE_SERVICES, p.to(jump, ip, port));
        }
        if !p.has_external {
            b.filter
                .push(KUBE_EXTERNAL_SERVICES, p.to(p.no_endpoint_rule(), ip, port));
        }
    }
}

/// Load-balancer IPs: to the firewall chain when source ranges apply, else the external chain.
fn load_balancer_rules(b: &mut Builder, p: &Port<'_>) {
    let lb_chain = if p.uses_fw_chain {
        &p.chains.firewall
    } else {
        &p.chains.external
    };
    for ip in &p.lb_ips {
        let (ip, port) = (Some(*ip), p.rule.port);
        if p.has_endpoints() {
            let jump = Rule::new(Target::Jump(lb_chain.clone()))
                .comment(format!("{} loadbalancer IP", p.name));
            b.nat.push(KUBE_SERVICES, p.to(jump, ip, port));
        }
        if p.uses_fw_chain {
            let drop = Rule::new(Target::Drop).comment(format!(
                "{} traffic not accepted by {}",
                p.name, p.chains.firewall
            ));
            b.filter.push(KUBE_PROXY_FIREWALL, p.to(drop, ip, port));
        }
    }
    if !p.has_external {
        for ip in &p.lb_ips {
            let rule = p.to(p.no_endpoint_rule(), Some(*ip), p.rule.port);
            b.filter.push(KUBE_EXTERNAL_SERVICES, rule);
        }
    }
}

/// Node port and health check node port.
fn node_port_rules(b: &mut Builder, p: &Port<'_>) {
    if let Some(node_port) = p.rule.node_port {
        if p.has_endpoints() {
            let jump = Rule::new(Target::Jump(p.chains.external.clone())).comment(&p.name);
            b.nat.push(KUBE_NODEPORTS, p.to(jump, None, node_port));
        }
        if !p.has_external {
            let rule = p
                .no_endpoint_rule()
                .with(Match::LocalAddress(Side::Destination));
            b.filter
                .push(KUBE_EXTERNAL_SERVICES, p.to(rule, None, node_port));
        }
    }
    if let Some(hc) = p.rule.health_check_node_port {
        b.filter.push(
            KUBE_NODEPORTS,
            Rule::new(Target::Accept)
                .comment(format!("{} health check node port", p.name))
                .to_port(Protocol::Tcp, None, hc),
        );
    }
}

/// Internal traffic: masquerade off-cluster sources.
fn internal_traffic_rules(b: &mut Builder, ctx: &Ctx<'_>, p: &Port<'_>) {
    if !p.has_internal {
        return;
    }
    let masq =
        Rule::new(Target::Jump(KUBE_MARK_MASQ.into())).comment(format!("{} cluster IP", p.name));
    let base = p.to(masq, Some(p.cluster_ip), p.rule.port);
    if ctx.settings.masquerade_all {
        b.nat.push(&p.internal_chain, base);
    } else if let Some(cidr) = ctx.local_cidr {
        b.nat.push(
            &p.internal_chain,
            base.with(Match::Source { cidr, negate: true }),
        );
    }
}

/// External traffic: masquerade, or short-circuit pods and the node to the
/// Cluster chain under eTP Local, then the external policy chain.
fn external_traffic_rules(b: &mut Builder, ctx: &Ctx<'_>, p: &Port<'_>) {
    if !p.uses_ext_chain {
        return;
    }
    let (name, ext) = (&p.name, &p.chains.external);
    b.nat.chain(ext);
    if !p.external_policy_local {
        b.nat.push(
            ext,
            Rule::new(Target::Jump(KUBE_MARK_MASQ.into())).comment(format!(
                "masquerade traffic for {name} external destinations"
            )),
        );
    } else if !p.endpoints.cluster.is_empty() {
        // Pods and the node itself are short-circuited to the Cluster chain.
        if let Some(cidr) = ctx.local_cidr {
            b.nat.push(
                ext,
                Rule::new(Target::Jump(p.chains.cluster.clone()))
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
            Rule::new(Target::Jump(p.chains.cluster.clone()))
                .comment(format!(
                    "route LOCAL traffic for {name} external destinations"
                ))
                .with(Match::LocalAddress(Side::Source)),
        );
    }
    if p.has_external {
        b.nat.push(
            ext,
            Rule::new(Target::Jump(p.external_policy_chain.clone())),
        );
    }
}

/// Load-balancer source ranges: the firewall chain lets the ranges (and the
/// node itself when a range holds it) on to the external chain.
fn source_range_rules(b: &mut Builder, ctx: &Ctx<'_>, p: &Port<'_>) {
    if !p.uses_fw_chain {
        return;
    }
    let fw = &p.chains.firewall;
    let allow = |source: Cidr| {
        Rule::new(Target::Jump(p.chains.external.clone()))
            .comment(format!("{} loadbalancer IP", p.name))
            .with(Match::Source {
                cidr: source,
                negate: false,
            })
    };
    for range in &p.source_ranges {
        b.nat.push(fw, allow(*range));
    }
    let allow_from_node = p
        .source_ranges
        .iter()
        .any(|r| ctx.node_ips.iter().any(|ip| r.contains(ip)));
    if allow_from_node {
        for ip in &p.lb_ips {
            b.nat.push(fw, allow(Cidr::host(*ip)));
        }
    }
    b.nat.push(
        fw,
        Rule::new(Target::Nothing).comment(format!(
            "other traffic to {} will be dropped by KUBE-PROXY-FIREWALL",
            p.name
        )),
    );
}

/// The policy chains' choice among endpoints, and one chain per endpoint.
fn endpoint_rules(b: &mut Builder, ctx: &Ctx<'_>, p: &Port<'_>) {
    let (rule, name) = (p.rule, &p.name);
    let affinity = rule.session_affinity.map(|a| a.timeout_seconds);
    let cluster = &p.endpoints.cluster;
    let local = &p.endpoints.local;
    if !cluster.is_empty() {
        service_to_endpoints(b, ctx, p, &p.chains.cluster, cluster);
    }
    if !local.is_empty() {
        service_to_endpoints(b, ctx, p, &p.chains.local, local);
    }
    for ep in &p.endpoints.all_reachable {
        let chain = names::endpoint_chain(rule, ep);
        let masq = Rule::new(Target::Jump(KUBE_MARK_MASQ.into()));
        b.nat.push(
            &chain,
            ctx.endpoint_comment(masq, || name.clone())
                .with(Match::Source {
                    cidr: Cidr::host(ep.ip),
                    negate: false,
                }),
        );
        let dnat = Rule::new(Target::Dnat(SocketAddr::new(ep.ip, ep.port)));
        let mut dnat = ctx.endpoint_comment(dnat, || name.clone());
        if affinity.is_some() {
            dnat = dnat.with(Match::RecentSet {
                name: chain.clone(),
            });
        }
        b.nat
            .push(&chain, dnat.with(Match::Protocol(rule.protocol)));
    }
}

/// kube-proxy's `writeServiceToEndpointRules`: affinity checks, then random choice.
fn service_to_endpoints(
    b: &mut Builder,
    ctx: &Ctx<'_>,
    p: &Port<'_>,
    chain: &str,
    endpoints: &[&Endpoint],
) {
    let (rule, name) = (p.rule, &p.name);
    let to = |ep: &Endpoint| {
        let jump = Rule::new(Target::Jump(names::endpoint_chain(rule, ep)));
        ctx.endpoint_comment(jump, || format!("{name} -> {}", ep.endpoint()))
    };
    if let Some(affinity) = rule.session_affinity {
        for ep in endpoints {
            b.nat.push(
                chain,
                to(ep).with(Match::RecentCheck {
                    name: names::endpoint_chain(rule, ep),
                    seconds: affinity.timeout_seconds,
                }),
            );
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut r = to(ep);
        if i + 1 < n {
            r = r.with(Match::RandomOneOf(n - i));
        }
        b.nat.push(chain, r);
    }
}

/// The last rule of KUBE-SERVICES: hand node-port traffic to KUBE-NODEPORTS.
fn render_node_ports_jump(b: &mut Builder, ctx: &Ctx<'_>, localhost_node_ports: bool) {
    let comment = "kubernetes service nodeports; NOTE: this must be the last rule in this chain";
    let match_all = |cidrs: &[Cidr]| {
        cidrs
            .iter()
            .any(|c| c.family() == ctx.family && c.prefix() == 0)
    };
    let cidrs = match &ctx.settings.node_port_addresses {
        // kube-proxy's `MatchAll`: every local address.
        NodePortAddresses::Cidrs(cidrs) if !match_all(cidrs) => Some(cidrs.clone()),
        NodePortAddresses::ModeDefault | NodePortAddresses::Cidrs(_) => {
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

/// kube-proxy's `iptablesJumpChains` and `iptablesKubeletJumpChains`, in
/// evaluation order per builtin chain (kube-proxy prepends each in turn:
/// the kubelet's KUBE-FIREWALL comes first).
fn jump_rules() -> Vec<JumpRule> {
    let new = || Match::CtState {
        states: "NEW",
        negate: false,
    };
    let jump = |table, builtin, chain: &str, comment: &str, ctnew: bool| {
        let rule = if ctnew {
            Rule::new(Target::Jump(chain.into()))
                .with(new())
                .with(Match::Comment(comment.into()))
        } else {
            Rule::new(Target::Jump(chain.into())).comment(comment)
        };
        JumpRule {
            table,
            builtin,
            rule,
        }
    };
    let fw = "kubernetes load balancer firewall";
    let portals = "kubernetes service portals";
    let external = "kubernetes externally-visible service portals";
    let firewall = |builtin| JumpRule {
        table: Table::Filter,
        builtin,
        rule: Rule::new(Target::Jump(KUBE_FIREWALL.into())),
    };
    vec![
        firewall("INPUT"),
        firewall("OUTPUT"),
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
    ]
}
