//! Render: a linked ruleset → the map contents the eBPF programs read (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use switchyard_api::policy::{LinkedRuleset, LinkedServicePort};
use switchyard_api::ruleset::{Cidr, Endpoint, IpFamily, Protocol, ServicePortRule};

use super::layout::*;
use super::maglev;
use crate::escape;
use crate::settings::{LocalDetector, NodePortAddresses, Settings};

/// One endpoint list of a service port (slot 0 plus slots 1..n).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceList {
    pub flags: u8,
    pub affinity_timeout: u32,
    pub backends: Vec<u32>,
}

/// What the maps hold, revisions aside: the desired state, or a dump of the kernel's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// Keyed by (service port id, list).
    pub lists: BTreeMap<(u32, u8), ServiceList>,
    pub backends: BTreeMap<u32, BackendEntry>,
    /// (range, prefix length of the CIDR).
    pub source_ranges: BTreeSet<(SourceRange, u8)>,
    /// (service port id, list) → Maglev table (backend ids).
    pub maglev: BTreeMap<(u32, u8), Vec<u32>>,
}

/// Why SCTP service ports are not load-balanced in this mode.
pub const SCTP_UNSUPPORTED: &str = "SCTP is not load-balanced by the eBPF mode: the kernel runs \
     no cgroup connect/sendmsg hook for SCTP sockets (seen on 6.1), and the tc programs carry \
     TCP and UDP only";

/// The load-time settings of the programs (the `volatile const` globals) and
/// where they are attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadConfig {
    pub socket_lb: bool,
    pub maglev_table_size: u32,
    pub node_ip4: Option<Ipv4Addr>,
    pub node_ip6: Option<Ipv6Addr>,
    /// The local-traffic detector's ranges are in `sy_source_ranges`.
    pub local_detector: bool,
    /// Interfaces for the tc programs; empty: every interface but loopback.
    pub devices: Vec<String>,
}

/// The rendered plan: map contents plus load settings, and what was skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EbpfPlan {
    pub config: LoadConfig,
    /// Shared with the backend's record of what it applied (no copy per apply).
    pub maps: Arc<MapState>,
    /// Input that cannot be expressed, with the reason (skipped, never fatal).
    pub problems: Vec<String>,
}

/// The plan's maps while rendering (the only owner then: no copy).
fn maps_mut(plan: &mut EbpfPlan) -> &mut MapState {
    Arc::make_mut(&mut plan.maps)
}

/// Render a linked ruleset for the eBPF dataplane.
pub fn render(ruleset: &LinkedRuleset, settings: &Settings) -> EbpfPlan {
    let node_ip4 = ruleset.node.addresses.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let node_ip6 = ruleset.node.addresses.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    let mut plan = EbpfPlan {
        config: LoadConfig {
            socket_lb: settings.ebpf.socket_lb,
            maglev_table_size: settings.ebpf.maglev_table_size.unwrap_or(0),
            node_ip4,
            node_ip6,
            local_detector: false,
            devices: settings.ebpf.host_devices.clone(),
        },
        ..EbpfPlan::default()
    };
    if let LocalDetector::Cidrs(cidrs) = &settings.local_detector {
        plan.config.local_detector = !cidrs.is_empty();
        for cidr in cidrs {
            maps_mut(&mut plan)
                .source_ranges
                .insert((source_range(LOCAL_DETECTOR_ID, cidr), cidr.prefix()));
        }
    }
    let node_port_ips = node_port_addresses(ruleset, settings);
    for sp in &ruleset.services {
        // A NodePort answers on the node addresses of the service's families.
        let families: Vec<IpFamily> = sp.rule.cluster_ips.iter().map(IpFamily::of).collect();
        let ips: Vec<IpAddr> = node_port_ips
            .iter()
            .filter(|ip| families.is_empty() || families.contains(&IpFamily::of(ip)))
            .copied()
            .collect();
        render_service_port(&mut plan, sp, settings, &ips);
        source_ranges(&mut plan, &sp.rule, &ruleset.node.addresses);
    }
    plan
}

/// loadBalancerSourceRanges of a service port, and its LB IPs as sources when
/// a range holds a node address: something on the node (a VIP routed back
/// locally) may SNAT the node's own connections to the LB IP, and kube-proxy
/// lets those in.
fn source_ranges(plan: &mut EbpfPlan, rule: &ServicePortRule, node_ips: &[IpAddr]) {
    let ranges = &rule.load_balancer_source_ranges;
    if ranges.is_empty() {
        return;
    }
    let allow_from_node = ranges
        .iter()
        .any(|r| node_ips.iter().any(|ip| r.contains(ip)));
    let lb_ips = rule
        .load_balancer_ips
        .iter()
        .filter(|_| allow_from_node)
        .map(|ip| Cidr::host(*ip));
    let maps = maps_mut(plan);
    for cidr in ranges.iter().copied().chain(lb_ips) {
        maps.source_ranges
            .insert((source_range(rule.id, &cidr), cidr.prefix()));
    }
}

/// The node addresses NodePorts answer on (ebpf's default: the primary IP of
/// each family), plus 127.0.0.1 with localhostNodePorts: the socket programs
/// translate it at connect time, so no route_localnet is needed.
fn node_port_addresses(ruleset: &LinkedRuleset, settings: &Settings) -> Vec<IpAddr> {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut ips = node_addresses_for_node_ports(ruleset, settings);
    let localhost_allowed = match &settings.node_port_addresses {
        NodePortAddresses::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains(&localhost)),
        NodePortAddresses::ModeDefault | NodePortAddresses::Primary => true,
    };
    if settings.localhost_node_ports && localhost_allowed && !ips.contains(&localhost) {
        ips.push(localhost);
    }
    ips
}

fn node_addresses_for_node_ports(ruleset: &LinkedRuleset, settings: &Settings) -> Vec<IpAddr> {
    let addrs = &ruleset.node.addresses;
    match &settings.node_port_addresses {
        NodePortAddresses::ModeDefault | NodePortAddresses::Primary => {
            let v4 = addrs.iter().find(|ip| ip.is_ipv4());
            let v6 = addrs.iter().find(|ip| ip.is_ipv6());
            v4.into_iter().chain(v6).copied().collect()
        }
        NodePortAddresses::Cidrs(cidrs) => addrs
            .iter()
            .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
            .copied()
            .collect(),
    }
}

fn list_id(base: u8, family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => base,
        IpFamily::V6 => base | LIST_V6,
    }
}

/// The flags of a service port's endpoint lists.
struct ListFlags {
    internal: u8,
    cluster: u8,
    external: u8,
    affinity_timeout: u32,
    /// Maglev table size for the external list.
    maglev: Option<u32>,
}

impl ListFlags {
    /// The flags of `family`'s lists: a family without a usable endpoint
    /// rejects, as kube-proxy's proxier for that family does.
    fn of(sp: &LinkedServicePort, settings: &Settings, family: IpFamily) -> ListFlags {
        let affinity = sp.rule.session_affinity.map(|a| a.timeout_seconds);
        let mut base = if sp.family(family).has_any_endpoints {
            0
        } else {
            SVC_REJECT
        };
        if affinity.is_some() {
            base |= SVC_AFFINITY;
        }
        // Through tc, a cluster IP is masqueraded for sources outside the cluster
        // (the local detector, in the program) or always with masqueradeAll.
        let internal = if settings.masquerade_all {
            base | SVC_MASQUERADE
        } else {
            base
        };
        // External frontends: masqueraded unless externalTrafficPolicy is Local,
        // whatever masqueradeAll says (kube-proxy's masqueradeAll rule matches
        // cluster-IP destinations only, so eTP Local keeps the client's address).
        let mut external = base;
        if !sp.external_policy_local() {
            external |= SVC_MASQUERADE;
        }
        let maglev = settings.ebpf.maglev_table_size.filter(|m| *m > 1);
        if maglev.is_some() {
            external |= SVC_MAGLEV;
        }
        ListFlags {
            internal,
            cluster: base,
            external,
            affinity_timeout: affinity.unwrap_or(0),
            maglev,
        }
    }
}

fn render_service_port(
    plan: &mut EbpfPlan,
    sp: &LinkedServicePort,
    settings: &Settings,
    node_port_ips: &[IpAddr],
) {
    let rule = &sp.rule;
    if rule.protocol == Protocol::Sctp {
        plan.problems
            .push(format!("{}: {SCTP_UNSUPPORTED}", rule.service_port_name()));
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        let flags = ListFlags::of(sp, settings, family);
        let has_frontend = rule
            .cluster_ips
            .iter()
            .chain(&rule.external_ips)
            .chain(&rule.load_balancer_ips)
            .chain(node_port_ips.iter().filter(|_| rule.node_port.is_some()))
            .any(|ip| IpFamily::of(ip) == family);
        if !has_frontend {
            continue;
        }
        let in_family = |b: &&Endpoint| IpFamily::of(&b.ip) == family;
        put_list(
            plan,
            sp,
            (LIST_INTERNAL, family),
            flags.internal,
            &flags,
            sp.internal_endpoints().filter(in_family).collect(),
        );
        if rule.has_external() {
            let cluster = sp.cluster_endpoints().filter(in_family).collect();
            put_list(
                plan,
                sp,
                (LIST_CLUSTER, family),
                flags.cluster,
                &flags,
                cluster,
            );
            let external = sp.external_endpoints().filter(in_family).collect();
            put_list(
                plan,
                sp,
                (LIST_EXTERNAL, family),
                flags.external,
                &flags,
                external,
            );
        }
    }
    render_frontends(plan, rule, node_port_ips);
}

/// One endpoint list (slot 0 flags, backend ids, Maglev table) of a service port.
fn put_list(
    plan: &mut EbpfPlan,
    sp: &LinkedServicePort,
    (base, family): (u8, IpFamily),
    list_flags: u8,
    flags: &ListFlags,
    backends: Vec<&Endpoint>,
) {
    let name = sp.rule.service_port_name();
    let id = sp.rule.id;
    let mut chosen: Vec<(u32, BackendEntry)> = backends
        .into_iter()
        .filter_map(|b| add_backend(plan, &name, b).map(|e| (b.id, e)))
        .collect();
    if chosen.len() > usize::from(u16::MAX) {
        plan.problems.push(format!(
            "{name}: {} endpoints, only the first 65535 are used",
            chosen.len()
        ));
        chosen.truncate(usize::from(u16::MAX));
    }
    if base == LIST_EXTERNAL
        && let Some(m) = flags.maglev
        && !chosen.is_empty()
    {
        maps_mut(plan)
            .maglev
            .insert((id, list_id(base, family)), maglev::table(&chosen, m));
    }
    let ids = chosen.into_iter().map(|(id, _)| id).collect();
    maps_mut(plan).lists.insert(
        (id, list_id(base, family)),
        ServiceList {
            flags: list_flags,
            affinity_timeout: flags.affinity_timeout,
            backends: ids,
        },
    );
}

/// Every address and port of a service port in `sy_frontends`.
fn render_frontends(plan: &mut EbpfPlan, rule: &ServicePortRule, node_port_ips: &[IpAddr]) {
    let range_flag = if rule.load_balancer_source_ranges.is_empty() {
        0
    } else {
        FE_SOURCE_RANGES
    };
    let mut frontends: Vec<(IpAddr, u16, u8, u8)> = Vec::new();
    frontends.extend(
        rule.cluster_ips
            .iter()
            .map(|ip| (*ip, rule.port, KIND_CLUSTER_IP, 0)),
    );
    frontends.extend(
        rule.external_ips
            .iter()
            .map(|ip| (*ip, rule.port, KIND_EXTERNAL, 0)),
    );
    frontends.extend(
        rule.load_balancer_ips
            .iter()
            .map(|ip| (*ip, rule.port, KIND_EXTERNAL, range_flag)),
    );
    if let Some(np) = rule.node_port {
        frontends.extend(node_port_ips.iter().map(|ip| (*ip, np, KIND_NODE_PORT, 0)));
    }
    for (ip, port, kind, flags) in frontends {
        let key = FrontendKey::new(ip, port, rule.protocol);
        let value = Frontend {
            svc_id: rule.id,
            kind,
            flags,
            pad: 0,
        };
        match plan.maps.frontends.get(&key) {
            Some(existing) if existing.svc_id != rule.id => plan.problems.push(format!(
                "{}: frontend {key} is already used by service port id {}; skipped",
                rule.service_port_name(),
                existing.svc_id
            )),
            _ => {
                maps_mut(plan).frontends.insert(key, value);
            }
        }
    }
}

fn source_range(svc_id: u32, cidr: &Cidr) -> SourceRange {
    SourceRange {
        svc_id,
        family: u32::from(family_of(&cidr.addr())),
        addr: Addr::from_ip(cidr.addr()),
    }
}

/// Add a backend entry; None (and a problem) when its id is taken by another address.
fn add_backend(plan: &mut EbpfPlan, name: &str, b: &Endpoint) -> Option<BackendEntry> {
    let entry = BackendEntry::new(b.ip, b.port);
    match plan.maps.backends.get(&b.id) {
        Some(existing) if *existing != entry => {
            plan.problems.push(format!(
                "{name}: backend id {} is {} here but {existing} elsewhere; skipped",
                b.id,
                b.endpoint()
            ));
            None
        }
        _ => {
            maps_mut(plan).backends.insert(b.id, entry);
            Some(entry)
        }
    }
}

fn list_name(list: u8) -> String {
    let base = match list & !LIST_V6 {
        LIST_INTERNAL => "internal",
        LIST_CLUSTER => "cluster",
        LIST_EXTERNAL => "external",
        _ => "?",
    };
    let family = if list & LIST_V6 != 0 { "v6" } else { "v4" };
    format!("{base}/{family}")
}

fn flag_names(flags: u8) -> String {
    let names: Vec<&str> = [
        (SVC_REJECT, "reject"),
        (SVC_MASQUERADE, "masquerade"),
        (SVC_AFFINITY, "affinity"),
        (SVC_MAGLEV, "maglev"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

impl fmt::Display for EbpfPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "# load: socket_lb={} maglev_table_size={} node_ip4={} node_ip6={} devices={}",
            c.socket_lb,
            c.maglev_table_size,
            c.node_ip4.map_or("-".to_string(), |ip| ip.to_string()),
            c.node_ip6.map_or("-".to_string(), |ip| ip.to_string()),
            if c.devices.is_empty() {
                "all".to_string()
            } else {
                escape::printable(&c.devices.join(",")).into_owned()
            }
        )?;
        writeln!(f, "map sy_frontends")?;
        writeln!(f, "  {:<44} {:>8} {:<10} FLAGS", "FRONTEND", "SVC", "KIND")?;
        for (k, v) in &self.maps.frontends {
            let kind = match v.kind {
                KIND_CLUSTER_IP => "clusterIP",
                KIND_EXTERNAL => "external",
                KIND_NODE_PORT => "nodePort",
                _ => "?",
            };
            let flags = if v.flags & FE_SOURCE_RANGES != 0 {
                "source-ranges"
            } else {
                "-"
            };
            writeln!(
                f,
                "  {:<44} {:>8} {:<10} {}",
                k.to_string(),
                v.svc_id,
                kind,
                flags
            )?;
        }
        writeln!(f, "map sy_services")?;
        writeln!(
            f,
            "  {:>8} {:<12} {:>5} {:<24} {:>8} SLOTS 1..n",
            "SVC", "LIST", "COUNT", "FLAGS", "AFFINITY"
        )?;
        for ((svc, list), l) in &self.maps.lists {
            let slots: Vec<String> = l.backends.iter().map(u32::to_string).collect();
            writeln!(
                f,
                "  {:>8} {:<12} {:>5} {:<24} {:>8} {}",
                svc,
                list_name(*list),
                l.backends.len(),
                flag_names(l.flags),
                l.affinity_timeout,
                slots.join(" ")
            )?;
        }
        writeln!(f, "map sy_backends")?;
        writeln!(f, "  {:>8} BACKEND", "ID")?;
        for (id, b) in &self.maps.backends {
            writeln!(f, "  {:>8} {}", id, b)?;
        }
        if !self.maps.source_ranges.is_empty() {
            writeln!(f, "map sy_source_ranges")?;
            writeln!(f, "  {:>8} RANGE", "SVC")?;
            for (r, prefix) in &self.maps.source_ranges {
                let owner = if r.svc_id == LOCAL_DETECTOR_ID {
                    "local".to_string()
                } else {
                    r.svc_id.to_string()
                };
                writeln!(
                    f,
                    "  {:>8} {}/{}",
                    owner,
                    r.addr.to_ip(r.family as u8),
                    prefix
                )?;
            }
        }
        if !self.maps.maglev.is_empty() {
            writeln!(f, "map sy_maglev")?;
            writeln!(
                f,
                "  {:>8} {:<12} {:>6} FIRST ENTRIES",
                "SVC", "LIST", "SIZE"
            )?;
            for ((svc, list), table) in &self.maps.maglev {
                let head: Vec<String> = table.iter().take(16).map(u32::to_string).collect();
                writeln!(
                    f,
                    "  {:>8} {:<12} {:>6} {}",
                    svc,
                    list_name(*list),
                    table.len(),
                    head.join(" ")
                )?;
            }
        }
        for p in &self.problems {
            writeln!(f, "# skipped: {}", escape::printable(p))?;
        }
        Ok(())
    }
}
