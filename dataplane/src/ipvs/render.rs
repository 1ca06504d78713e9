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
use super::plan::{
    FamilyRules, IpSet, IpvsPlan, Limitation, PlannedService, SetEntry, SetType, Table,
};
use crate::conntrack::UdpSnapshot;
use crate::settings::{LocalDetector, NodePortAddresses, Settings};

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
        plan.rules.push(rules(family, settings));
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

fn render_service_port(
    sp: &LinkedServicePort,
    settings: &Settings,
    node_ips: &[IpAddr],
    plan: &mut IpvsPlan,
    sets: &mut BTreeMap<IpFamily, Sets>,
) {
    let rule = &sp.rule;
    let proto = rule.protocol;
    let name = rule.service_port_name();
    let add = |plan: &mut IpvsPlan, addr: IpAddr, port: u16, internal: bool| {
        let family = IpFamily::of(&addr);
        let key = ServiceKey {
            protocol: proto,
            addr,
            port,
        };
        let real = if internal {
            real_servers(sp.internal_endpoints(), family)
        } else {
            real_servers(sp.external_endpoints(), family)
        };
        plan.services.insert(
            key,
            PlannedService {
                server: virtual_server(key, sp, settings),
                real_servers: real,
                service_port: name.clone(),
            },
        );
    };
    let local = sp.external_policy_local();
    for ip in &rule.cluster_ips {
        add(plan, *ip, rule.port, true);
        plan.addresses.insert(*ip);
        set(sets, ip).add("KUBE-CLUSTER-IP", SetEntry::IpPort(*ip, proto, rule.port));
    }
    for ip in &rule.external_ips {
        add(plan, *ip, rule.port, false);
        plan.addresses.insert(*ip);
        let base = if local {
            "KUBE-EXTERNAL-IP-LOCAL"
        } else {
            "KUBE-EXTERNAL-IP"
        };
        set(sets, ip).add(base, SetEntry::IpPort(*ip, proto, rule.port));
    }
    for ip in &rule.load_balancer_ips {
        add(plan, *ip, rule.port, false);
        plan.addresses.insert(*ip);
        let s = set(sets, ip);
        s.add(
            "KUBE-LOAD-BALANCER",
            SetEntry::IpPort(*ip, proto, rule.port),
        );
        if local {
            s.add(
                "KUBE-LOAD-BALANCER-LOCAL",
                SetEntry::IpPort(*ip, proto, rule.port),
            );
        }
        if !rule.load_balancer_source_ranges.is_empty() {
            s.add(
                "KUBE-LOAD-BALANCER-FW",
                SetEntry::IpPort(*ip, proto, rule.port),
            );
            for cidr in &rule.load_balancer_source_ranges {
                if cidr.family() == IpFamily::of(ip) {
                    s.add(
                        "KUBE-LOAD-BALANCER-SOURCE-CIDR",
                        SetEntry::IpPortNet(*ip, proto, rule.port, *cidr),
                    );
                }
            }
            // kube-proxy's allowFromNode: a range holding the node lets the
            // node's connections SNATed to the LB IP itself in.
            let allow_from_node = rule
                .load_balancer_source_ranges
                .iter()
                .any(|c| node_ips.iter().any(|n| c.contains(n)));
            if allow_from_node {
                s.add(
                    "KUBE-LOAD-BALANCER-SOURCE-IP",
                    SetEntry::IpPortIp(*ip, proto, rule.port, *ip),
                );
            }
        }
    }
    if let Some(node_port) = rule.node_port {
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
            add(plan, *ip, node_port, false);
            let s = set(sets, ip);
            match proto {
                Protocol::Tcp | Protocol::Udp => {
                    let (all, loc) = if proto == Protocol::Tcp {
                        ("KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP")
                    } else {
                        ("KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP")
                    };
                    s.add(all, SetEntry::Port(node_port));
                    if local {
                        s.add(loc, SetEntry::Port(node_port));
                    }
                }
                Protocol::Sctp => {
                    let e = SetEntry::IpPort(*ip, proto, node_port);
                    s.add("KUBE-NODE-PORT-SCTP-HASH", e.clone());
                    if local {
                        s.add("KUBE-NODE-PORT-LOCAL-SCTP-HASH", e);
                    }
                }
            }
        }
    }
    if let Some(hc) = rule.health_check_node_port {
        for family in [IpFamily::V4, IpFamily::V6] {
            if let Some(s) = sets.get_mut(&family) {
                s.add("KUBE-HEALTH-CHECK-NODE-PORT", SetEntry::Port(hc));
            }
        }
    }
    // Hairpin: an endpoint reaching itself through a service is masqueraded.
    // Every reachable endpoint is listed (kube-proxy lists only local ones),
    // so endpoints without a node name hairpin too; a member only matches
    // packets from an endpoint to itself.
    for b in sp.all_reachable_endpoints() {
        set(sets, &b.ip).add(
            "KUBE-LOOP-BACK",
            SetEntry::IpPortIp(b.ip, proto, b.port, b.ip),
        );
    }
    if local && rule.has_external() {
        plan.limitations.push(Limitation {
            service_port: name.clone(),
            reason: "externalTrafficPolicy=Local: IPVS has one virtual server per address, so \
                     traffic from pods and the node to external addresses also uses only local \
                     endpoints (no short circuit to cluster endpoints as in iptables mode)",
        });
    }
}

fn set<'a>(sets: &'a mut BTreeMap<IpFamily, Sets>, ip: &IpAddr) -> &'a mut Sets {
    sets.entry(IpFamily::of(ip))
        .or_insert_with(|| Sets(BTreeMap::new()))
}

const NAT_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-POSTROUTING",
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-MARK-MASQ",
];
const FILTER_CHAINS: &[&str] = &[
    "KUBE-FORWARD",
    "KUBE-NODE-PORT",
    "KUBE-PROXY-FIREWALL",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
];

/// Our chains per table, for cleanup.
pub fn our_chains() -> [(&'static str, &'static [&'static str]); 2] {
    [("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)]
}

/// kube-proxy's IPVS-mode rules for one family.
fn rules(family: IpFamily, settings: &Settings) -> FamilyRules {
    let n = |base: &str| set_name(base, family);
    let mark = format!("{:#x}", settings.masquerade_mark());
    let mut nat = Table {
        chains: NAT_CHAINS.to_vec(),
        rules: Vec::new(),
    };
    let mut r = |chain: &'static str, spec: String| nat.rules.push((chain, spec));
    r(
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
    );
    r(
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
    );
    r(
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING".into(),
    );
    r(
        "KUBE-POSTROUTING",
        format!(
            "-m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set {} dst,dst,src -j MASQUERADE --random-fully",
            n("KUBE-LOOP-BACK")
        ),
    );
    r(
        "KUBE-POSTROUTING",
        format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
    );
    r("KUBE-POSTROUTING", format!("-j MARK --xor-mark {mark}"));
    r(
        "KUBE-POSTROUTING",
        "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
    );
    r("KUBE-MARK-MASQ", format!("-j MARK --or-mark {mark}"));
    let cluster = n("KUBE-CLUSTER-IP");
    if settings.masquerade_all {
        r(
            "KUBE-SERVICES",
            format!(
                "-m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set {cluster} dst,dst -j KUBE-MARK-MASQ"
            ),
        );
    } else if let LocalDetector::Cidrs(cidrs) = &settings.local_detector {
        // Traffic to a cluster IP from outside the pod network is masqueraded.
        for cidr in cidrs.iter().filter(|c| c.family() == family) {
            r(
                "KUBE-SERVICES",
                format!(
                    "! -s {cidr} -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set {cluster} dst,dst -j KUBE-MARK-MASQ"
                ),
            );
        }
    }
    r(
        "KUBE-SERVICES",
        format!(
            "-m comment --comment \"Kubernetes service external ip + port for masquerade and filter purpose\" -m set --match-set {} dst,dst -j KUBE-MARK-MASQ",
            n("KUBE-EXTERNAL-IP")
        ),
    );
    r(
        "KUBE-SERVICES",
        format!(
            "-m comment --comment \"Kubernetes service lb portal\" -m set --match-set {} dst,dst -j KUBE-LOAD-BALANCER",
            n("KUBE-LOAD-BALANCER")
        ),
    );
    r(
        "KUBE-LOAD-BALANCER",
        format!(
            "-m set --match-set {} dst,dst -j RETURN",
            n("KUBE-LOAD-BALANCER-LOCAL")
        ),
    );
    r("KUBE-LOAD-BALANCER", "-j KUBE-MARK-MASQ".into());
    r(
        "KUBE-SERVICES",
        format!("-m set --match-set {} dst,dst -j ACCEPT", cluster),
    );
    r(
        "KUBE-SERVICES",
        format!(
            "-m set --match-set {} dst,dst -j ACCEPT",
            n("KUBE-LOAD-BALANCER")
        ),
    );
    r(
        "KUBE-SERVICES",
        "-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT".into(),
    );
    for (set, local, proto) in [
        ("KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP", "tcp"),
        ("KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP", "udp"),
    ] {
        r(
            "KUBE-NODE-PORT",
            format!("-p {proto} -m set --match-set {} dst -j RETURN", n(local)),
        );
        r(
            "KUBE-NODE-PORT",
            format!(
                "-p {proto} -m set --match-set {} dst -j KUBE-MARK-MASQ",
                n(set)
            ),
        );
    }
    r(
        "KUBE-NODE-PORT",
        format!(
            "-p sctp -m set --match-set {} dst,dst -j RETURN",
            n("KUBE-NODE-PORT-LOCAL-SCTP-HASH")
        ),
    );
    r(
        "KUBE-NODE-PORT",
        format!(
            "-p sctp -m set --match-set {} dst,dst -j KUBE-MARK-MASQ",
            n("KUBE-NODE-PORT-SCTP-HASH")
        ),
    );

    let mut filter = Table {
        chains: FILTER_CHAINS.to_vec(),
        rules: Vec::new(),
    };
    let mut r = |chain: &'static str, spec: String| filter.rules.push((chain, spec));
    r(
        "INPUT",
        "-m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER".into(),
    );
    r(
        "INPUT",
        "-m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL".into(),
    );
    r(
        "INPUT",
        "-m comment --comment \"kubernetes health check rules\" -j KUBE-NODE-PORT".into(),
    );
    r(
        "FORWARD",
        "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD".into(),
    );
    r(
        "FORWARD",
        "-m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL".into(),
    );
    r(
        "KUBE-PROXY-FIREWALL",
        format!(
            "-m set --match-set {} dst,dst -j KUBE-SOURCE-RANGES-FIREWALL",
            n("KUBE-LOAD-BALANCER-FW")
        ),
    );
    r(
        "KUBE-SOURCE-RANGES-FIREWALL",
        format!(
            "-m set --match-set {} dst,dst,src -j RETURN",
            n("KUBE-LOAD-BALANCER-SOURCE-CIDR")
        ),
    );
    r(
        "KUBE-SOURCE-RANGES-FIREWALL",
        format!(
            "-m set --match-set {} dst,dst,src -j RETURN",
            n("KUBE-LOAD-BALANCER-SOURCE-IP")
        ),
    );
    r("KUBE-SOURCE-RANGES-FIREWALL", "-j DROP".into());
    r(
        "KUBE-FORWARD",
        "-m conntrack --ctstate INVALID -j DROP".into(),
    );
    r(
        "KUBE-FORWARD",
        format!("-m mark --mark {mark}/{mark} -j ACCEPT"),
    );
    r(
        "KUBE-FORWARD",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
    );
    r(
        "KUBE-NODE-PORT",
        format!(
            "-m set --match-set {} dst -j ACCEPT",
            n("KUBE-HEALTH-CHECK-NODE-PORT")
        ),
    );
    for base in [
        "KUBE-LOAD-BALANCER",
        "KUBE-CLUSTER-IP",
        "KUBE-EXTERNAL-IP",
        "KUBE-EXTERNAL-IP-LOCAL",
    ] {
        r(
            "KUBE-IPVS-FILTER",
            format!("-m set --match-set {} dst,dst -j RETURN", n(base)),
        );
    }
    r(
        "KUBE-IPVS-FILTER",
        format!(
            "-m set --match-set {} dst -j RETURN",
            n("KUBE-HEALTH-CHECK-NODE-PORT")
        ),
    );
    let reject = match family {
        IpFamily::V4 => "icmp-port-unreachable",
        IpFamily::V6 => "icmp6-port-unreachable",
    };
    r(
        "KUBE-IPVS-FILTER",
        format!(
            "-m conntrack --ctstate NEW -m set --match-set {} dst -j REJECT --reject-with {reject}",
            n("KUBE-IPVS-IPS")
        ),
    );
    FamilyRules {
        family,
        nat,
        filter,
    }
}
