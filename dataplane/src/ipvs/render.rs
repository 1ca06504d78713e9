//! Pure: linked ruleset + settings → [`IpvsPlan`], following kube-proxy's IPVS
//! proxier (`pkg/proxy/ipvs/proxier.go`): one virtual server per frontend
//! address and port, every real server weight 1, every service address on
//! `kube-ipvs0`, ipsets naming the frontends for the few iptables rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use switchyard_api::policy::{LinkedRuleset, LinkedServicePort};
use switchyard_api::proxyconfig::{IpvsScheduler, IpvsSchedulerFlag};
use switchyard_api::ruleset::{Endpoint, IpFamily, Protocol};

use super::genl::{SVC_F_PERSISTENT, SVC_F_SCHED1, SVC_F_SCHED2};
use super::objects::{RealServer, ServiceKey, Timeouts, VirtualServer};
use super::plan::{IpSet, IpvsPlan, Limitation, PlannedService, SetEntry, SetType};
use super::rules;
use crate::conntrack::UdpSnapshot;
use crate::settings::{NodePortAddresses, Settings};

/// kube-proxy's ipsets: (name, type, comment). IPv6 sets are named `KUBE-6-…`.
const SETS: &[(&str, SetType, &str)] = &[
    (
        "KUBE-LOOP-BACK",
        SetType::HashIpPortIp,
        "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    ),
    (
        "KUBE-CLUSTER-IP",
        SetType::HashIpPort,
        "Kubernetes service cluster ip + port for masquerade purpose",
    ),
    (
        "KUBE-EXTERNAL-IP",
        SetType::HashIpPort,
        "Kubernetes service external ip + port for masquerade and filter purpose",
    ),
    (
        "KUBE-EXTERNAL-IP-LOCAL",
        SetType::HashIpPort,
        "Kubernetes service external ip + port with externalTrafficPolicy=local",
    ),
    (
        "KUBE-LOAD-BALANCER",
        SetType::HashIpPort,
        "Kubernetes service lb portal",
    ),
    (
        "KUBE-LOAD-BALANCER-FW",
        SetType::HashIpPort,
        "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    ),
    (
        "KUBE-LOAD-BALANCER-LOCAL",
        SetType::HashIpPort,
        "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    ),
    (
        "KUBE-LOAD-BALANCER-SOURCE-IP",
        SetType::HashIpPortIp,
        "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    ),
    (
        "KUBE-LOAD-BALANCER-SOURCE-CIDR",
        SetType::HashIpPortNet,
        "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    ),
    (
        "KUBE-NODE-PORT-TCP",
        SetType::BitmapPort,
        "Kubernetes nodeport TCP port for masquerade purpose",
    ),
    (
        "KUBE-NODE-PORT-LOCAL-TCP",
        SetType::BitmapPort,
        "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
    ),
    (
        "KUBE-NODE-PORT-UDP",
        SetType::BitmapPort,
        "Kubernetes nodeport UDP port for masquerade purpose",
    ),
    (
        "KUBE-NODE-PORT-LOCAL-UDP",
        SetType::BitmapPort,
        "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
    ),
    (
        "KUBE-NODE-PORT-SCTP-HASH",
        SetType::HashIpPort,
        "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    ),
    (
        "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
        SetType::HashIpPort,
        "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    ),
    (
        "KUBE-HEALTH-CHECK-NODE-PORT",
        SetType::BitmapPort,
        "Kubernetes health check node port",
    ),
    (
        "KUBE-IPVS-IPS",
        SetType::HashIp,
        "IPVS service addresses on kube-ipvs0",
    ),
];

/// Every ipset name we may own, both families (for cleanup).
pub fn all_set_names() -> Vec<String> {
    [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .flat_map(|f| SETS.iter().map(move |(n, _, _)| set_name(n, f)))
        .collect()
}

/// The longest ipset name the kernel takes.
const MAX_SET_NAME: usize = 31;

/// `KUBE-X` for IPv4, `KUBE-6-X` for IPv6, cut to 31 characters as kube-proxy
/// does (`KUBE-6-LOAD-BALANCER-SOURCE-CID`).
pub fn set_name(base: &str, family: IpFamily) -> String {
    let mut name = match family {
        IpFamily::V4 => base.to_string(),
        IpFamily::V6 => format!("KUBE-6-{}", base.trim_start_matches("KUBE-")),
    };
    name.truncate(MAX_SET_NAME);
    name
}

/// Sets of one family being filled.
struct Sets(BTreeMap<&'static str, BTreeSet<SetEntry>>);

impl Sets {
    fn add(&mut self, base: &'static str, e: SetEntry) {
        self.0.entry(base).or_default().insert(e);
    }
}

pub fn render(ruleset: &LinkedRuleset, settings: &Settings) -> IpvsPlan {
    let mut plan = IpvsPlan {
        timeouts: timeouts(settings),
        strict_arp: settings.ipvs.strict_arp,
        udp: UdpSnapshot::of(ruleset),
        ..IpvsPlan::default()
    };
    let mut sets: BTreeMap<IpFamily, Sets> = BTreeMap::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        sets.insert(family, Sets(BTreeMap::new()));
    }
    let node_ips = node_port_ips(ruleset, settings);
    for sp in &ruleset.services {
        render_service_port(sp, settings, &node_ips, &mut plan, &mut sets);
    }
    for ip in &plan.addresses {
        if let Some(s) = sets.get_mut(&IpFamily::of(ip)) {
            s.add("KUBE-IPVS-IPS", SetEntry::Ip(*ip));
        }
    }
    let families: BTreeSet<IpFamily> = std::iter::once(IpFamily::V4)
        .chain(plan.services.keys().map(|k| IpFamily::of(&k.addr)))
        .collect();
    for family in families {
        plan.rules.push(rules::family_rules(
            family,
            settings,
            &plan.lb_no_node_access,
        ));
        let filled = sets.remove(&family).map(|s| s.0).unwrap_or_default();
        for (base, kind, comment) in SETS {
            plan.ipsets.push(IpSet {
                name: set_name(base, family),
                kind: *kind,
                family: (*kind != SetType::BitmapPort).then_some(family),
                comment,
                entries: filled.get(base).cloned().unwrap_or_default(),
            });
        }
    }
    plan
}

fn timeouts(settings: &Settings) -> Timeouts {
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs() as u32).unwrap_or(0);
    Timeouts {
        tcp: secs(settings.ipvs.tcp_timeout),
        tcp_fin: secs(settings.ipvs.tcp_fin_timeout),
        udp: secs(settings.ipvs.udp_timeout),
    }
}

/// The addresses NodePorts are served on: the node's addresses, narrowed by
/// `nodePortAddresses` (IPVS binds a virtual server per address).
fn node_port_ips(ruleset: &LinkedRuleset, settings: &Settings) -> Vec<IpAddr> {
    let all = &ruleset.node.addresses;
    match &settings.node_port_addresses {
        NodePortAddresses::ModeDefault => all.clone(),
        NodePortAddresses::Primary => {
            let mut out = Vec::new();
            for family in [IpFamily::V4, IpFamily::V6] {
                out.extend(all.iter().find(|ip| IpFamily::of(ip) == family));
            }
            out
        }
        NodePortAddresses::Cidrs(cidrs) => all
            .iter()
            .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
            .copied()
            .collect(),
    }
}

fn virtual_server(key: ServiceKey, sp: &LinkedServicePort, settings: &Settings) -> VirtualServer {
    let scheduler = settings.ipvs.scheduler;
    let mut flags = 0;
    if matches!(scheduler, IpvsScheduler::Sh | IpvsScheduler::Mh) {
        for flag in &settings.ipvs.scheduler_flags {
            flags |= match flag {
                IpvsSchedulerFlag::Fallback => SVC_F_SCHED1,
                IpvsSchedulerFlag::Port => SVC_F_SCHED2,
            };
        }
    }
    // The persistence granularity: one client address. The kernel wants a
    // valid IPv6 prefix length even without persistence, as ipvsadm sends.
    let netmask = match key.addr {
        IpAddr::V4(_) => u32::MAX,
        IpAddr::V6(_) => 128,
    };
    let mut timeout = 0;
    if let Some(aff) = sp.rule.session_affinity {
        flags |= SVC_F_PERSISTENT;
        timeout = aff.timeout_seconds;
    }
    VirtualServer {
        key,
        scheduler: scheduler.name().to_string(),
        flags,
        timeout,
        netmask,
    }
}

fn real_servers<'a>(
    endpoints: impl Iterator<Item = &'a Endpoint>,
    family: IpFamily,
) -> BTreeSet<RealServer> {
    endpoints
        .filter(|b| IpFamily::of(&b.ip) == family)
        .map(|b| RealServer {
            addr: b.ip,
            port: b.port,
            weight: 1,
        })
        .collect()
}

/// One service port being rendered: what its frontends share.
struct Port<'a> {
    sp: &'a LinkedServicePort,
    settings: &'a Settings,
    name: String,
    /// External traffic policy Local (the port is reachable from outside).
    local: bool,
    /// A load-balancer source range holds a node address.
    allow_from_node: bool,
}

impl Port<'_> {
    /// A virtual server for `addr:port` with the internal (cluster IP) or
    /// external endpoints of the address's family.
    fn add_virtual_server(&self, plan: &mut IpvsPlan, addr: IpAddr, port: u16, internal: bool) {
        let family = IpFamily::of(&addr);
        let key = ServiceKey {
            protocol: self.sp.rule.protocol,
            addr,
            port,
        };
        let real = if internal {
            real_servers(self.sp.internal_endpoints(), family)
        } else {
            real_servers(self.sp.external_endpoints(), family)
        };
        plan.services.insert(
            key,
            PlannedService {
                server: virtual_server(key, self.sp, self.settings),
                real_servers: real,
                service_port: self.name.clone(),
            },
        );
    }

    /// `ip,proto:port` of this service port.
    fn member(&self, ip: IpAddr) -> SetEntry {
        SetEntry::IpPort(ip, self.sp.rule.protocol, self.sp.rule.port)
    }
}

fn render_service_port(
    sp: &LinkedServicePort,
    settings: &Settings,
    node_ips: &[IpAddr],
    plan: &mut IpvsPlan,
    sets: &mut BTreeMap<IpFamily, Sets>,
) {
    let port = Port {
        sp,
        settings,
        name: sp.rule.service_port_name(),
        local: sp.external_policy_local(),
        allow_from_node: sp
            .rule
            .load_balancer_source_ranges
            .iter()
            .any(|c| node_ips.iter().any(|n| c.contains(n))),
    };
    cluster_ips(&port, plan, sets);
    external_ips(&port, plan, sets);
    load_balancer_ips(&port, plan, sets);
    node_ports(&port, node_ips, plan, sets);
    if let Some(hc) = sp.rule.health_check_node_port {
        for family in [IpFamily::V4, IpFamily::V6] {
            if let Some(s) = sets.get_mut(&family) {
                s.add("KUBE-HEALTH-CHECK-NODE-PORT", SetEntry::Port(hc));
            }
        }
    }
    hairpin(&port, sets);
    if port.local {
        plan.limitations.push(Limitation {
            service_port: port.name.clone(),
            reason: "externalTrafficPolicy=Local: IPVS has one virtual server per address, so \
                     traffic from pods and the node to external addresses also uses only local \
                     endpoints (no short circuit to cluster endpoints as in iptables mode)",
        });
    }
}

/// Cluster IPs: internal endpoints, on `kube-ipvs0`, in `KUBE-CLUSTER-IP`.
fn cluster_ips(p: &Port<'_>, plan: &mut IpvsPlan, sets: &mut BTreeMap<IpFamily, Sets>) {
    for ip in &p.sp.rule.cluster_ips {
        p.add_virtual_server(plan, *ip, p.sp.rule.port, true);
        plan.addresses.insert(*ip);
        set(sets, ip).add("KUBE-CLUSTER-IP", p.member(*ip));
    }
}

/// External IPs: external endpoints, on `kube-ipvs0`, in `KUBE-EXTERNAL-IP(-LOCAL)`.
fn external_ips(p: &Port<'_>, plan: &mut IpvsPlan, sets: &mut BTreeMap<IpFamily, Sets>) {
    for ip in &p.sp.rule.external_ips {
        p.add_virtual_server(plan, *ip, p.sp.rule.port, false);
        plan.addresses.insert(*ip);
        let base = if p.local {
            "KUBE-EXTERNAL-IP-LOCAL"
        } else {
            "KUBE-EXTERNAL-IP"
        };
        set(sets, ip).add(base, p.member(*ip));
    }
}

/// Load-balancer IPs: external endpoints, on `kube-ipvs0`, in
/// `KUBE-LOAD-BALANCER(-LOCAL)`; with source ranges also in the firewall sets.
fn load_balancer_ips(p: &Port<'_>, plan: &mut IpvsPlan, sets: &mut BTreeMap<IpFamily, Sets>) {
    let rule = &p.sp.rule;
    for ip in &rule.load_balancer_ips {
        p.add_virtual_server(plan, *ip, rule.port, false);
        plan.addresses.insert(*ip);
        let s = set(sets, ip);
        s.add("KUBE-LOAD-BALANCER", p.member(*ip));
        if p.local {
            s.add("KUBE-LOAD-BALANCER-LOCAL", p.member(*ip));
        }
        if rule.load_balancer_source_ranges.is_empty() {
            continue;
        }
        s.add("KUBE-LOAD-BALANCER-FW", p.member(*ip));
        for cidr in &rule.load_balancer_source_ranges {
            if cidr.family() == IpFamily::of(ip) {
                s.add(
                    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
                    SetEntry::IpPortNet(*ip, rule.protocol, rule.port, *cidr),
                );
            }
        }
        // kube-proxy's allowFromNode: a range holding the node lets the
        // node's connections SNATed to the LB IP itself in; otherwise they
        // are dropped on the way out (KUBE-IPVS-OUT-FILTER).
        if p.allow_from_node {
            s.add(
                "KUBE-LOAD-BALANCER-SOURCE-IP",
                SetEntry::IpPortIp(*ip, rule.protocol, rule.port, *ip),
            );
        } else {
            plan.lb_no_node_access.insert(ServiceKey {
                protocol: rule.protocol,
                addr: *ip,
                port: rule.port,
            });
        }
    }
}

/// NodePorts: a virtual server per node address of the port's families, in
/// the node-port sets of its protocol.
fn node_ports(
    p: &Port<'_>,
    node_ips: &[IpAddr],
    plan: &mut IpvsPlan,
    sets: &mut BTreeMap<IpFamily, Sets>,
) {
    let rule = &p.sp.rule;
    let Some(node_port) = rule.node_port else {
        return;
    };
    let families: BTreeSet<IpFamily> = rule
        .cluster_ips
        .iter()
        .map(IpFamily::of)
        .chain(rule.endpoints.iter().map(|b| IpFamily::of(&b.ip)))
        .collect();
    for ip in node_ips
        .iter()
        .filter(|ip| families.contains(&IpFamily::of(ip)))
    {
        p.add_virtual_server(plan, *ip, node_port, false);
        let s = set(sets, ip);
        let (all, local, member) = match rule.protocol {
            Protocol::Tcp => (
                "KUBE-NODE-PORT-TCP",
                "KUBE-NODE-PORT-LOCAL-TCP",
                SetEntry::Port(node_port),
            ),
            Protocol::Udp => (
                "KUBE-NODE-PORT-UDP",
                "KUBE-NODE-PORT-LOCAL-UDP",
                SetEntry::Port(node_port),
            ),
            Protocol::Sctp => (
                "KUBE-NODE-PORT-SCTP-HASH",
                "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
                SetEntry::IpPort(*ip, Protocol::Sctp, node_port),
            ),
        };
        s.add(all, member.clone());
        if p.local {
            s.add(local, member);
        }
    }
}

/// Hairpin: an endpoint reaching itself through a service is masqueraded.
/// Every reachable endpoint is listed (kube-proxy lists only local ones),
/// so endpoints without a node name hairpin too; a member only matches
/// packets from an endpoint to itself.
fn hairpin(p: &Port<'_>, sets: &mut BTreeMap<IpFamily, Sets>) {
    for b in p.sp.all_reachable_endpoints() {
        set(sets, &b.ip).add(
            "KUBE-LOOP-BACK",
            SetEntry::IpPortIp(b.ip, p.sp.rule.protocol, b.port, b.ip),
        );
    }
}

fn set<'a>(sets: &'a mut BTreeMap<IpFamily, Sets>, ip: &IpAddr) -> &'a mut Sets {
    sets.entry(IpFamily::of(ip))
        .or_insert_with(|| Sets(BTreeMap::new()))
}
