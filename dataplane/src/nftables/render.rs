//! Pure: a linked ruleset and the settings → the typed plan (one table per
//! family). kube-proxy's nftables layout and semantics (pkg/proxy/nftables),
//! with three changes for control-plane speed, described in the README:
//! an endpoint is picked by a lookup in a pick map shared by the table
//! (keyed by the frontend and `numgen random mod N`, one pick chain per
//! map; no anonymous set per service, no chain per endpoint, no rule per
//! endpoint), except with session affinity, where the policy chain keeps a
//! `numgen` cascade that updates the affinity sets; hairpin traffic is
//! found by one `@hairpin` set in postrouting, and off-cluster traffic to a
//! ClusterIP is marked by one rule in `services` against a set.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use switchyard_api::policy::{LinkedRuleset, LinkedServicePort, NodeInfo};
use switchyard_api::ruleset::{Cidr, Endpoint, IpFamily, SessionAffinity};

use crate::conntrack::UdpPort;
use crate::escape::NameError;
use crate::settings::{LocalDetector, MASQUERADED_PROTOCOLS, NodePortAddresses, Settings};

use super::escape;
use super::ir::{
    BaseChain, Chain, ChainType, Dir, Fragment, Hook, Key, Match, Pick, PickKey, Plan, Pool,
    Priority, RenderContext, Rule, ServicePlan, Set, SetKind, SetName, Stmt, Table, TableId, Value,
    Verdict,
};
use super::table_count::TableCount;
use super::text::family_word;

// Base chains.
pub const FILTER_PREROUTING: &str = "filter-prerouting";
pub const FILTER_INPUT: &str = "filter-input";
pub const FILTER_FORWARD: &str = "filter-forward";
pub const FILTER_OUTPUT: &str = "filter-output";
pub const FILTER_OUTPUT_POST_DNAT: &str = "filter-output-post-dnat";
pub const NAT_PREROUTING: &str = "nat-prerouting";
pub const NAT_OUTPUT: &str = "nat-output";
pub const NAT_POSTROUTING: &str = "nat-postrouting";

// Dispatch.
pub const SERVICES: &str = "services";
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const CLUSTER_IPS: &str = "cluster-ips";
pub const SERVICE_CIDRS: &str = "service-cidrs";
pub const LOCAL_RANGES: &str = "local-ranges";
pub const HAIRPIN: &str = "hairpin";
pub const MASQUERADE_CLUSTER_IPS: &str = "masquerade-cluster-ips";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const FIREWALL_CHECK: &str = "firewall-check";
pub const MARK_MASQ: &str = "mark-for-masquerade";
pub const MASQUERADING: &str = "masquerading";

const BASE_CHAINS: [BaseChainDef; 8] = [
    // Filter chains see pre-DNAT destinations, so they run before DNAT.
    (
        FILTER_PREROUTING,
        ChainType::Filter,
        Hook::Prerouting,
        Priority::Dstnat(-10),
    ),
    (
        FILTER_INPUT,
        ChainType::Filter,
        Hook::Input,
        Priority::Dstnat(-10),
    ),
    (
        FILTER_FORWARD,
        ChainType::Filter,
        Hook::Forward,
        Priority::Dstnat(-10),
    ),
    (
        FILTER_OUTPUT,
        ChainType::Filter,
        Hook::Output,
        Priority::Dstnat(-10),
    ),
    (
        FILTER_OUTPUT_POST_DNAT,
        ChainType::Filter,
        Hook::Output,
        Priority::Dstnat(10),
    ),
    (
        NAT_PREROUTING,
        ChainType::Nat,
        Hook::Prerouting,
        Priority::Dstnat(0),
    ),
    (
        NAT_OUTPUT,
        ChainType::Nat,
        Hook::Output,
        Priority::Dstnat(0),
    ),
    (
        NAT_POSTROUTING,
        ChainType::Nat,
        Hook::Postrouting,
        Priority::Srcnat(0),
    ),
];

/// (destination chain, source base chain, only for new connections).
const JUMP_CHAINS: [(&str, &str, bool); 11] = [
    // reject is only valid in input/forward/output hooks on older kernels.
    (NODEPORT_ENDPOINTS_CHECK, FILTER_INPUT, true),
    (SERVICE_ENDPOINTS_CHECK, FILTER_INPUT, true),
    (SERVICE_ENDPOINTS_CHECK, FILTER_FORWARD, true),
    // After DNAT on output, so the node's own short-circuited traffic to an
    // external-Local frontend without local endpoints is not dropped first.
    (SERVICE_ENDPOINTS_CHECK, FILTER_OUTPUT_POST_DNAT, true),
    (FIREWALL_CHECK, FILTER_PREROUTING, true),
    (FIREWALL_CHECK, FILTER_OUTPUT, true),
    (SERVICES, NAT_OUTPUT, false),
    (SERVICES, NAT_PREROUTING, false),
    (MASQUERADING, NAT_POSTROUTING, false),
    (CLUSTER_IPS_CHECK, FILTER_FORWARD, true),
    (CLUSTER_IPS_CHECK, FILTER_OUTPUT_POST_DNAT, true),
];

fn jump(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(chain.to_string()))
}

fn rule(matches: Vec<Match>, stmts: Vec<Stmt>) -> Rule {
    Rule::new(matches, stmts)
}

/// kube-proxy's `hashAndTruncate`: a base32 SHA-256 prefix keeps names unique
/// and tells apart names that differ only at the end.
fn hashed(name: &str) -> String {
    hashed_with_digest(name).1
}

/// [`hashed`], and the first 8 bytes of the digest (a stable hash of the name).
fn hashed_with_digest(name: &str) -> (u64, String) {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let encoded = data_encoding::BASE32.encode(&digest);
    let mut out = format!("{}-{name}", &encoded[..8]);
    // nft names are at most 256 bytes; kube-proxy keeps 16 for the prefix.
    const MAX: usize = 256 - 16;
    if out.len() > MAX {
        let mut cut = MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    (u64::from_be_bytes(first), out)
}

/// The per-service-port chain names.
struct Names {
    cluster: String,
    local: String,
    external: String,
    /// NodePort traffic's external chain (`external` is for external and
    /// load-balancer IPs: the two end in pick chains of different keys).
    nodeport: String,
    firewall: String,
    /// A stable hash of the service port's name: it picks the table.
    hash: u64,
}

impl Names {
    /// The names, or the first that nftables cannot carry (a service name
    /// that skipped validation): the service port is skipped then.
    fn of(svc: &LinkedServicePort) -> Result<Names, NameError> {
        let r = &svc.rule;
        let (hash, base) = hashed_with_digest(&format!(
            "{}/{}/{}/{}",
            r.namespace,
            r.name,
            r.protocol.as_lower(),
            r.port_name
        ));
        let chain = |prefix: &str| {
            let name = format!("{prefix}-{base}");
            escape::name("chain", &name)?;
            Ok(name)
        };
        Ok(Names {
            cluster: chain("service")?,
            local: chain("local")?,
            external: chain("external")?,
            nodeport: chain("nodeport")?,
            firewall: chain("firewall")?,
            hash,
        })
    }

    /// The table of the service port's chains, of `tables`.
    fn shard(&self, tables: u8) -> u8 {
        u8::try_from(self.hash % u64::from(tables.max(1))).unwrap_or(0)
    }
}

/// The affinity set of an endpoint: its name holds what the chain names hold
/// (checked by [`Names::of`]), the endpoint's address and port.
fn affinity_set_name(svc: &LinkedServicePort, ep: &Endpoint) -> String {
    let r = &svc.rule;
    let ip = ep.ip.to_string().replace(':', ".");
    format!(
        "affinity-{}",
        hashed(&format!(
            "{}/{}/{}/{}__{ip}/{}",
            r.namespace,
            r.name,
            r.protocol.as_lower(),
            r.port_name,
            ep.port
        ))
    )
}

/// Render both families' tables from scratch, as many as the default
/// [`TableCount`] asks for.
pub fn render(ruleset: &LinkedRuleset, settings: &Settings) -> Plan {
    render_counted(ruleset, settings, TableCount::default())
}

/// Render both families' tables from scratch, as many as `count` asks for.
pub fn render_counted(ruleset: &LinkedRuleset, settings: &Settings, count: TableCount) -> Plan {
    let tables = count.tables(ruleset.services.len(), None);
    render_reusing(None, ruleset, settings, tables)
}

/// Render, sharing with `previous` the setup and the fragments of every
/// service port whose linked form is unchanged (the same `Arc` from the
/// agent's [`switchyard_api::policy::ShardLinker`], or an equal value), so a
/// sync renders only what changed. `previous` rendered for other settings,
/// another node or another number of `tables` shares nothing.
pub fn render_reusing(
    previous: Option<&Plan>,
    ruleset: &LinkedRuleset,
    settings: &Settings,
    tables: u8,
) -> Plan {
    let context = RenderContext {
        settings: settings.clone(),
        node: ruleset.node.clone(),
        tables,
    };
    let previous = previous.filter(|p| *p.context == context);
    let renderers = [IpFamily::V4, IpFamily::V6]
        .map(|f| FamilyRenderer::new(f, &ruleset.node, settings, context.tables));
    let (setup, context) = match previous {
        Some(p) => (p.setup.clone(), Arc::clone(&p.context)),
        None => (
            renderers
                .iter()
                .flat_map(|r| (0..r.tables).map(|shard| Arc::new(r.setup(shard))))
                .collect(),
            Arc::new(context),
        ),
    };
    // Walk the service ports in id order beside the previous plan's (sorted) map.
    let mut order: Vec<&Arc<LinkedServicePort>> = ruleset.services.iter().collect();
    order.sort_by_key(|s| s.rule.id);
    let mut before = previous
        .map(|p| p.services.iter())
        .into_iter()
        .flatten()
        .peekable();
    let mut services = Vec::with_capacity(order.len());
    for svc in order {
        let id = svc.rule.id;
        while before.next_if(|(old, _)| **old < id).is_some() {}
        let plan = match before.next_if(|(old, _)| **old == id) {
            // The same service port: shared by the linker, or equal.
            Some((_, old)) if Arc::ptr_eq(&old.source, svc) || old.source == *svc => {
                Arc::clone(old)
            }
            _ => Arc::new(service_plan(&renderers, svc)),
        };
        services.push((id, plan));
    }
    // Sorted input: built in one pass (a repeated id keeps its last entry).
    let services: BTreeMap<u32, Arc<ServicePlan>> = services.into_iter().collect();
    Plan {
        setup,
        services,
        context,
    }
}

fn service_plan(renderers: &[FamilyRenderer<'_>], svc: &Arc<LinkedServicePort>) -> ServicePlan {
    let mut plan = ServicePlan {
        source: Arc::clone(svc),
        fragments: Vec::new(),
        skipped: Vec::new(),
        udp: UdpPort::of(svc),
    };
    for r in renderers {
        let mut fragment = Fragment::new(r.family);
        match r.service_port(svc, &mut fragment) {
            Ok(()) if fragment.is_empty() => {}
            Ok(()) => plan.fragments.push(fragment),
            Err(reason) => plan.skipped.push(format!(
                "{} ({}): {reason}",
                svc.rule.service_port_name(),
                family_word(r.family)
            )),
        }
    }
    plan
}

struct FamilyRenderer<'a> {
    family: IpFamily,
    settings: &'a Settings,
    /// Node addresses of this family, primary first.
    node_ips: Vec<IpAddr>,
    /// NodePorts answer on every local address (`fib daddr type local`).
    nodeports_match_all: bool,
    local_ranges: Vec<Cidr>,
    /// Tables the service chains are spread over.
    tables: u8,
}

impl<'a> FamilyRenderer<'a> {
    fn new(family: IpFamily, node: &NodeInfo, settings: &'a Settings, tables: u8) -> Self {
        let node_ips: Vec<IpAddr> = node
            .addresses
            .iter()
            .filter(|ip| IpFamily::of(ip) == family)
            .copied()
            .collect();
        let local_ranges = match &settings.local_detector {
            LocalDetector::None => Vec::new(),
            LocalDetector::Cidrs(c) => c.iter().filter(|c| c.family() == family).copied().collect(),
        };
        let nodeports_match_all = match &settings.node_port_addresses {
            NodePortAddresses::Cidrs(c) => {
                c.iter().any(|c| c.family() == family && c.prefix() == 0)
            }
            NodePortAddresses::ModeDefault | NodePortAddresses::Primary => false,
        };
        FamilyRenderer {
            family,
            settings,
            node_ips,
            nodeports_match_all,
            local_ranges,
            tables,
        }
    }

    fn of_family(&self, ips: &[IpAddr]) -> Vec<IpAddr> {
        ips.iter()
            .filter(|ip| IpFamily::of(ip) == self.family)
            .copied()
            .collect()
    }

    fn has_local_detector(&self) -> bool {
        !self.local_ranges.is_empty()
    }

    /// The `nodeport-ips` set, unless NodePorts match all local addresses.
    fn nodeport_ips(&self, t: &mut Table) {
        if self.nodeports_match_all {
            return;
        }
        t.set(
            NODEPORT_IPS,
            SetKind::Addr,
            "IPs that accept NodePort traffic",
        );
        for ip in self.nodeport_addresses() {
            t.element(NODEPORT_IPS, Key::Addr(ip), None);
        }
    }

    /// The addresses NodePorts are served on (unless they match all local addresses).
    fn nodeport_addresses(&self) -> Vec<IpAddr> {
        let ips: Vec<IpAddr> = match &self.settings.node_port_addresses {
            NodePortAddresses::ModeDefault | NodePortAddresses::Primary => {
                self.node_ips.iter().take(1).copied().collect()
            }
            NodePortAddresses::Cidrs(cidrs) => self
                .node_ips
                .iter()
                .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
                .copied()
                .collect(),
        };
        // localhost NodePorts are not supported in nftables mode.
        ips.into_iter().filter(|ip| !ip.is_loopback()).collect()
    }

    /// The fixed part of table `shard`: the main table's is kube-proxy's
    /// `setupNFTables`; a service table has what its service chains use.
    fn setup(&self, shard: u8) -> Table {
        if shard > 0 {
            return self.service_table_setup(shard);
        }
        let mut t = Table::new(self.family);
        base_chains(&mut t, &BASE_CHAINS, &JUMP_CHAINS);
        self.masquerading(&mut t);
        self.local_ranges(&mut t);
        self.cluster_ips_check(&mut t);
        self.no_endpoint_checks(&mut t);
        firewall_check(&mut t);
        self.dispatch(&mut t);
        t
    }

    /// A service table: the dispatch of its service ports (the `services`
    /// chain from the nat hooks, the firewall check from the filter hooks,
    /// at the main table's priorities) and what their chains use: the
    /// masquerade mark, the local ranges, the NodePort addresses. The rest
    /// (rejects, drops, masquerading, hairpin) stays in the main table.
    fn service_table_setup(&self, shard: u8) -> Table {
        let mut t = Table::empty(TableId {
            family: self.family,
            shard,
        });
        let base: Vec<_> = BASE_CHAINS
            .into_iter()
            .filter(|(name, ..)| SERVICE_TABLE_BASE_CHAINS.contains(name))
            .collect();
        let jumps: Vec<_> = JUMP_CHAINS
            .into_iter()
            .filter(|(_, src, _)| SERVICE_TABLE_BASE_CHAINS.contains(src))
            .collect();
        base_chains(&mut t, &base, &jumps);
        let mark = self.settings.masquerade_mark();
        t.push(MARK_MASQ, rule(vec![], vec![Stmt::MarkOr(mark)]));
        self.local_ranges(&mut t);
        self.nodeport_ips(&mut t);
        firewall_check(&mut t);
        self.dispatch(&mut t);
        t
    }

    /// Masquerading: the mark, the `masquerading` chain in postrouting, and
    /// the hairpin set.
    fn masquerading(&self, t: &mut Table) {
        let mark = self.settings.masquerade_mark();
        t.push(MARK_MASQ, rule(vec![], vec![Stmt::MarkOr(mark)]));
        t.push(
            MASQUERADING,
            rule(
                vec![Match::MarkClear(mark)],
                vec![Stmt::Verdict(Verdict::Return)],
            ),
        );
        t.push(MASQUERADING, rule(vec![], vec![Stmt::MarkXor(mark)]));
        if let Some(ports) = self.settings.masquerade_ports {
            for protocol in MASQUERADED_PROTOCOLS {
                t.push(
                    MASQUERADING,
                    rule(
                        vec![Match::L4Proto(protocol)],
                        vec![Stmt::Masquerade(Some(ports))],
                    ),
                );
            }
        }
        t.push(MASQUERADING, rule(vec![], vec![Stmt::Masquerade(None)]));
        // A pod reaching itself through a service must be masqueraded, or
        // the reply would bypass conntrack (kube-proxy's per-endpoint rule).
        t.set(
            HAIRPIN,
            SetKind::AddrPair,
            "endpoint . endpoint, for hairpin traffic",
        );
        t.chains.entry(NAT_POSTROUTING.to_string()).and_modify(|c| {
            Arc::make_mut(&mut c.rules).insert(
                0,
                rule(
                    vec![
                        Match::CtStatusDnat,
                        Match::AddrPairInSet(HAIRPIN.to_string()),
                    ],
                    vec![jump(MARK_MASQ)],
                ),
            )
        });
    }

    /// The local-traffic detector's ranges, if any.
    fn local_ranges(&self, t: &mut Table) {
        if !self.has_local_detector() {
            return;
        }
        t.set(
            LOCAL_RANGES,
            SetKind::Prefix,
            "traffic from these ranges is local",
        );
        for c in self.local_ranges.clone() {
            t.element(LOCAL_RANGES, Key::Prefix(c), None);
        }
    }

    /// REJECT ports a ClusterIP does not serve, DROP unallocated addresses
    /// of the service CIDRs.
    fn cluster_ips_check(&self, t: &mut Table) {
        t.set(CLUSTER_IPS, SetKind::Addr, "Active ClusterIPs");
        t.push(
            CLUSTER_IPS_CHECK,
            rule(vec![daddr_in(CLUSTER_IPS)], vec![Stmt::Reject])
                .with_comment("Reject traffic to invalid ports of ClusterIPs"),
        );
        let family: Vec<Cidr> = self
            .settings
            .service_cidrs
            .iter()
            .filter(|c| c.family() == self.family)
            .copied()
            .collect();
        // ServiceCIDRs may repeat or nest (one cluster's ranges overlap while
        // it migrates); an interval set refuses overlapping elements.
        let covered = |c: &Cidr| {
            family.iter().any(|o| {
                o.prefix() < c.prefix() && o.contains(&c.addr())
                    || o.prefix() == c.prefix() && o.addr() == c.addr() && o < c
            })
        };
        let mut service_cidrs: Vec<Cidr> = family.iter().filter(|c| !covered(c)).copied().collect();
        service_cidrs.dedup();
        if service_cidrs.is_empty() {
            return;
        }
        t.set(SERVICE_CIDRS, SetKind::Prefix, "Service CIDRs");
        for c in service_cidrs {
            t.element(SERVICE_CIDRS, Key::Prefix(c), None);
        }
        t.push(
            CLUSTER_IPS_CHECK,
            rule(
                vec![daddr_in(SERVICE_CIDRS)],
                vec![Stmt::Verdict(Verdict::Drop)],
            )
            .with_comment("Drop traffic to unallocated ClusterIPs"),
        );
    }

    /// The addresses NodePorts answer on, and the maps that drop or reject
    /// traffic to service ports without endpoints.
    fn no_endpoint_checks(&self, t: &mut Table) {
        self.nodeport_ips(t);
        t.set(
            NO_ENDPOINT_SERVICES,
            SetKind::AddrProtoPortVerdict,
            "vmap to drop or reject packets to services with no endpoints",
        );
        t.set(
            NO_ENDPOINT_NODEPORTS,
            SetKind::ProtoPortVerdict,
            "vmap to drop or reject packets to service nodeports with no endpoints",
        );
        t.push(REJECT_CHAIN, rule(vec![], vec![Stmt::Reject]));
        t.push(
            SERVICE_ENDPOINTS_CHECK,
            rule(
                vec![],
                vec![Stmt::VmapAddrProtoPort(
                    Dir::Daddr,
                    NO_ENDPOINT_SERVICES.to_string(),
                )],
            ),
        );
        t.push(
            NODEPORT_ENDPOINTS_CHECK,
            rule(
                vec![self.nodeport_dest()],
                vec![Stmt::VmapProtoPort(NO_ENDPOINT_NODEPORTS.to_string())],
            ),
        );
    }

    /// The `services` chain: O(1) dispatch through the `service-ips` and
    /// `service-nodeports` maps.
    fn dispatch(&self, t: &mut Table) {
        if let Some(mut matches) = self.off_cluster() {
            t.set(
                MASQUERADE_CLUSTER_IPS,
                SetKind::AddrProtoPort,
                "ClusterIP ports whose traffic from outside the cluster is masqueraded",
            );
            matches.push(Match::DaddrProtoPortInSet(
                MASQUERADE_CLUSTER_IPS.to_string(),
            ));
            t.push(SERVICES, rule(matches, vec![jump(MARK_MASQ)]));
        }
        t.set(
            SERVICE_IPS,
            SetKind::AddrProtoPortVerdict,
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        );
        t.set(
            SERVICE_NODEPORTS,
            SetKind::ProtoPortVerdict,
            "NodePort traffic",
        );
        t.push(
            SERVICES,
            rule(
                vec![],
                vec![Stmt::VmapAddrProtoPort(Dir::Daddr, SERVICE_IPS.to_string())],
            ),
        );
        let nodeport_matches = if self.nodeports_match_all {
            vec![Match::FibDaddrLocal, Match::DaddrNotLoopback]
        } else {
            vec![self.nodeport_dest()]
        };
        t.push(
            SERVICES,
            rule(
                nodeport_matches,
                vec![Stmt::VmapProtoPort(SERVICE_NODEPORTS.to_string())],
            ),
        );
    }

    /// The destinations NodePorts answer on.
    fn nodeport_dest(&self) -> Match {
        if self.nodeports_match_all {
            Match::DaddrNotLoopback
        } else {
            daddr_in(NODEPORT_IPS)
        }
    }

    /// One service port's elements and chains (kube-proxy's per-service loop).
    fn service_port(&self, svc: &LinkedServicePort, f: &mut Fragment) -> Result<(), String> {
        let Some(p) = self.port_in_family(svc)? else {
            return Ok(());
        };
        f.shard = p.names.shard(self.tables);
        self.cluster_ips(&p, f);
        external_and_load_balancer_ips(&p, f);
        self.source_ranges(&p, f);
        node_port(&p, f);
        self.masquerade_off_cluster(&p, f);
        self.external_chains(&p, f);
        self.endpoint_chains(&p, f);
        Ok(())
    }

    /// The service port's frontends and endpoints in this family; None when
    /// it has no frontend here (NodePorts follow the cluster IP's family, as
    /// in kube-proxy's per-family proxiers).
    fn port_in_family<'s>(
        &self,
        svc: &'s LinkedServicePort,
    ) -> Result<Option<PortInFamily<'s>>, String> {
        let r = &svc.rule;
        let cluster_ips = self.of_family(&r.cluster_ips);
        let external_ips = self.of_family(&r.external_ips);
        let lb_ips = self.of_family(&r.load_balancer_ips);
        if cluster_ips.is_empty() && external_ips.is_empty() && lb_ips.is_empty() {
            return Ok(None);
        }
        let endpoints = svc.family(self.family);
        let p = PortInFamily {
            svc,
            names: Names::of(svc).map_err(|e| e.to_string())?,
            cluster_ips,
            external_ips,
            lb_ips,
            cluster: endpoints.cluster,
            local: endpoints.local,
            has_endpoints: endpoints.has_any_endpoints,
        };
        if let Some(b) = svc.all_reachable_endpoints().find(|b| b.port == 0) {
            return Err(format!("endpoint {} has port 0", b.endpoint()));
        }
        Ok(Some(p))
    }

    /// ClusterIPs: dispatch to the internal policy chain, or the
    /// no-endpoint verdict.
    fn cluster_ips(&self, p: &PortInFamily<'_>, f: &mut Fragment) {
        let to = p
            .has_internal()
            .then(|| p.to_pool(f, p.internal(), Frontends::Vips(&p.cluster_ips)));
        for ip in &p.cluster_ips {
            f.element(CLUSTER_IPS, Key::Addr(*ip), None);
            match &to {
                Some(to) => f.element(SERVICE_IPS, p.key(*ip), Some(to.clone().into())),
                None => f.element(NO_ENDPOINT_SERVICES, p.key(*ip), Some(p.no_endpoint())),
            }
        }
    }

    /// `loadBalancerSourceRanges`: traffic to a load-balancer IP goes
    /// through the firewall chain, which lets the ranges through.
    fn source_ranges(&self, p: &PortInFamily<'_>, f: &mut Fragment) {
        let sources: Vec<Cidr> = p
            .svc
            .rule
            .load_balancer_source_ranges
            .iter()
            .filter(|c| c.family() == self.family)
            .copied()
            .collect();
        if p.lb_ips.is_empty() || sources.is_empty() {
            return;
        }
        let firewall = &p.names.firewall;
        for ip in &p.lb_ips {
            let to = Verdict::Goto(firewall.clone());
            f.element(FIREWALL_IPS, p.key(*ip), Some(to.into()));
        }
        let mut allowed = sources.clone();
        // A node reaching a VIP-like load balancer loops back with the VIP
        // as source: allow it when the node itself is in the ranges.
        let node_allowed = self
            .node_ips
            .first()
            .is_some_and(|n| sources.iter().any(|c| c.contains(n)));
        if node_allowed {
            allowed.extend(p.lb_ips.iter().map(|ip| Cidr::host(*ip)));
        }
        // Reached by `goto` from firewall-check: `return` goes back to
        // the base chain, as falling off the end of firewall-check would.
        for c in allowed {
            f.push(
                firewall,
                rule(
                    vec![Match::SaddrInPrefix(c)],
                    vec![Stmt::Verdict(Verdict::Return)],
                ),
            );
        }
        f.push(firewall, rule(vec![], vec![Stmt::Verdict(Verdict::Drop)]));
    }

    /// Traffic to a ClusterIP from outside the cluster may bounce off-node:
    /// it is masqueraded (all of it with `masqueradeAll`). kube-proxy has a
    /// rule for it in each internal chain; here one rule in `services`
    /// looks the ClusterIP port up in a set (see [`Self::off_cluster`]).
    fn masquerade_off_cluster(&self, p: &PortInFamily<'_>, f: &mut Fragment) {
        if !p.has_internal() || self.off_cluster().is_none() {
            return;
        }
        for ip in &p.cluster_ips {
            f.element(MASQUERADE_CLUSTER_IPS, p.key(*ip), None);
        }
    }

    /// The matches of traffic from outside the cluster (none with
    /// `masqueradeAll`: all traffic), or None without a local-traffic
    /// detector (nothing is masqueraded for a ClusterIP then).
    fn off_cluster(&self) -> Option<Vec<Match>> {
        if self.settings.masquerade_all {
            Some(Vec::new())
        } else if self.has_local_detector() {
            Some(vec![Match::AddrInSet {
                dir: Dir::Saddr,
                set: LOCAL_RANGES.to_string(),
                negate: true,
            }])
        } else {
            None
        }
    }

    /// The external chains: `external-…` for external and load-balancer
    /// IPs, `nodeport-…` for the NodePort (their pick chains differ in key).
    fn external_chains(&self, p: &PortInFamily<'_>, f: &mut Fragment) {
        if !p.has_endpoints() {
            return;
        }
        let vips = p.vips();
        if !vips.is_empty() {
            self.external_chain(p, f, &p.names.external, Frontends::Vips(&vips));
        }
        if let Some(port) = p.svc.rule.node_port {
            self.external_chain(p, f, &p.names.nodeport, Frontends::NodePort(port));
        }
    }

    /// An external chain: the external traffic policy. Cluster
    /// masquerades (endpoints may be on other nodes); Local keeps the
    /// client address, short-circuiting pod and node traffic to the
    /// cluster endpoints.
    fn external_chain(
        &self,
        p: &PortInFamily<'_>,
        f: &mut Fragment,
        chain: &str,
        frontends: Frontends<'_>,
    ) {
        f.chain(chain);
        if !p.svc.external_policy_local() {
            f.push(chain, rule(vec![], vec![jump(MARK_MASQ)]));
        } else {
            let to_cluster = (!p.cluster.is_empty())
                .then(|| Stmt::Verdict(p.to_pool(f, Pool::Cluster, frontends)));
            if let Some(to_cluster) = to_cluster.clone().filter(|_| self.has_local_detector()) {
                f.push(
                    chain,
                    rule(
                        vec![Match::AddrInSet {
                            dir: Dir::Saddr,
                            set: LOCAL_RANGES.to_string(),
                            negate: false,
                        }],
                        vec![to_cluster],
                    )
                    .with_comment("short-circuit pod traffic"),
                );
            }
            f.push(
                chain,
                rule(vec![Match::FibSaddrLocal], vec![jump(MARK_MASQ)])
                    .with_comment("masquerade local traffic"),
            );
            if let Some(to_cluster) = to_cluster {
                f.push(
                    chain,
                    rule(vec![Match::FibSaddrLocal], vec![to_cluster])
                        .with_comment("short-circuit local traffic"),
                );
            }
        }
        if p.has_external() {
            let to = p.to_pool(f, p.external(), frontends);
            f.push(chain, rule(vec![], vec![Stmt::Verdict(to)]));
        }
    }

    /// With session affinity, the cluster and local policy chains pick an
    /// endpoint (without, the pick chains do); every endpoint is in the
    /// hairpin set.
    fn endpoint_chains(&self, p: &PortInFamily<'_>, f: &mut Fragment) {
        if let Some(a) = p.svc.rule.session_affinity {
            for pool in [Pool::Cluster, Pool::Local] {
                if !p.endpoints(pool).is_empty() {
                    endpoint_rules(f, p.svc, a, p.policy_chain(pool), p.endpoints(pool));
                }
            }
        }
        for ep in p.cluster.iter().chain(&p.local) {
            f.element(HAIRPIN, Key::AddrPair(ep.ip, ep.ip), None);
        }
    }
}

/// Session affinity (kube-proxy's per-endpoint `update @affinity-…`), then
/// a uniform choice: rule k is taken with probability 1/(n-k) when the
/// earlier ones were not.
fn endpoint_rules(
    f: &mut Fragment,
    svc: &LinkedServicePort,
    affinity: SessionAffinity,
    chain: &str,
    endpoints: &[&Endpoint],
) {
    let proto = svc.rule.protocol;
    let dnat = |f: &mut Fragment, ep: &Endpoint| -> Vec<Stmt> {
        let set = affinity_set_name(svc, ep);
        let mut s = Set::new(SetKind::Addr, None);
        s.timeout_seconds = Some(affinity.timeout_seconds);
        f.sets.insert(set.clone(), s);
        vec![Stmt::UpdateSaddr(set), Stmt::Dnat(ep.ip, ep.port)]
    };
    for ep in endpoints {
        let set = affinity_set_name(svc, ep);
        let stmts = dnat(f, ep);
        f.push(
            chain,
            rule(
                vec![
                    Match::AddrInSet {
                        dir: Dir::Saddr,
                        set,
                        negate: false,
                    },
                    Match::L4Proto(proto),
                ],
                stmts,
            ),
        );
    }
    let n = endpoints.len();
    for (k, ep) in endpoints.iter().enumerate() {
        let mut matches = Vec::new();
        let remaining = n - k;
        if remaining > 1 {
            matches.push(Match::NumgenZero(
                u32::try_from(remaining).unwrap_or(u32::MAX),
            ));
        }
        matches.push(Match::L4Proto(proto));
        let stmts = dnat(f, ep);
        f.push(chain, rule(matches, stmts));
    }
}

/// The base chains of a service table (see [`FamilyRenderer::service_table_setup`]).
const SERVICE_TABLE_BASE_CHAINS: [&str; 4] =
    [FILTER_PREROUTING, FILTER_OUTPUT, NAT_PREROUTING, NAT_OUTPUT];

type BaseChainDef = (&'static str, ChainType, Hook, Priority);

/// The base chains, and their jumps to the dispatch chains.
fn base_chains(t: &mut Table, chains: &[BaseChainDef], jumps: &[(&str, &str, bool)]) {
    for &(name, kind, hook, priority) in chains {
        t.chains.insert(
            name.to_string(),
            Chain {
                base: Some(BaseChain {
                    kind,
                    hook,
                    priority,
                }),
                rules: Arc::default(),
            },
        );
    }
    for &(dst, src, new_only) in jumps {
        t.chain(dst);
        let matches = if new_only {
            vec![Match::CtStateNew]
        } else {
            Vec::new()
        };
        t.push(src, rule(matches, vec![jump(dst)]));
    }
}

/// `loadBalancerSourceRanges`: the `firewall-ips` map and its check.
fn firewall_check(t: &mut Table) {
    t.set(
        FIREWALL_IPS,
        SetKind::AddrProtoPortVerdict,
        "destinations that are subject to LoadBalancerSourceRanges",
    );
    t.push(
        FIREWALL_CHECK,
        rule(
            vec![],
            vec![Stmt::VmapAddrProtoPort(
                Dir::Daddr,
                FIREWALL_IPS.to_string(),
            )],
        ),
    );
}

/// `ip daddr @set`.
fn daddr_in(set: &str) -> Match {
    Match::AddrInSet {
        dir: Dir::Daddr,
        set: set.to_string(),
        negate: false,
    }
}

/// External IPs and load-balancer IPs: dispatch to the external chain, or
/// the no-endpoint verdict when the external policy has no endpoint.
fn external_and_load_balancer_ips(p: &PortInFamily<'_>, f: &mut Fragment) {
    for ip in p.vips() {
        if p.has_endpoints() {
            let to = Verdict::Goto(p.names.external.clone());
            f.element(SERVICE_IPS, p.key(ip), Some(to.into()));
        }
        if !p.has_external() {
            f.element(NO_ENDPOINT_SERVICES, p.key(ip), Some(p.no_endpoint()));
        }
    }
}

/// The NodePort: dispatch to the NodePort chain, or the no-endpoint verdict.
fn node_port(p: &PortInFamily<'_>, f: &mut Fragment) {
    let Some(node_port) = p.svc.rule.node_port else {
        return;
    };
    let key = Key::ProtoPort(p.svc.rule.protocol, node_port);
    if p.has_endpoints() {
        let to = Verdict::Goto(p.names.nodeport.clone());
        f.element(SERVICE_NODEPORTS, key.clone(), Some(to.into()));
    }
    if !p.has_external() {
        f.element(NO_ENDPOINT_NODEPORTS, key, Some(p.no_endpoint()));
    }
}

/// The frontends traffic reaches a pool through, which make the key of
/// the pool's pick map.
#[derive(Clone, Copy)]
enum Frontends<'a> {
    /// ClusterIPs, or external and load-balancer IPs.
    Vips(&'a [IpAddr]),
    NodePort(u16),
}

/// One service port in one family: its frontends, its endpoints, and what
/// the traffic policies make of them (kube-proxy's per-service-port locals).
struct PortInFamily<'a> {
    svc: &'a LinkedServicePort,
    names: Names,
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    /// This family's endpoints for Cluster and for Local policy.
    cluster: Vec<&'a Endpoint>,
    local: Vec<&'a Endpoint>,
    /// A usable endpoint of this family exists somewhere (kube-proxy's
    /// per-family `hasAnyEndpoints`: a dual-stack Service without IPv6
    /// endpoints rejects on IPv6 although it has IPv4 ones).
    has_endpoints: bool,
}

impl<'a> PortInFamily<'a> {
    /// `addr . proto . port` of a frontend address.
    fn key(&self, ip: IpAddr) -> Key {
        Key::AddrProtoPort(ip, self.svc.rule.protocol, self.svc.rule.port)
    }

    /// The external and load-balancer IPs.
    fn vips(&self) -> Vec<IpAddr> {
        self.external_ips
            .iter()
            .chain(&self.lb_ips)
            .copied()
            .collect()
    }

    fn has_endpoints(&self) -> bool {
        self.has_endpoints
    }

    fn endpoints(&self, pool: Pool) -> &[&'a Endpoint] {
        match pool {
            Pool::Cluster => &self.cluster,
            Pool::Local => &self.local,
        }
    }

    /// The policy chain of a pool (session affinity only).
    fn policy_chain(&self, pool: Pool) -> &str {
        match pool {
            Pool::Cluster => &self.names.cluster,
            Pool::Local => &self.names.local,
        }
    }

    /// The pool internal traffic goes to.
    fn internal(&self) -> Pool {
        if self.svc.internal_policy_local() {
            Pool::Local
        } else {
            Pool::Cluster
        }
    }

    /// The pool external traffic ends in.
    fn external(&self) -> Pool {
        if self.svc.external_policy_local() {
            Pool::Local
        } else {
            Pool::Cluster
        }
    }

    fn has_internal(&self) -> bool {
        self.has_endpoints() && !self.endpoints(self.internal()).is_empty()
    }

    fn has_external(&self) -> bool {
        self.has_endpoints() && !self.endpoints(self.external()).is_empty()
    }

    /// Where traffic of `frontends` for a (non-empty) pool goes: with
    /// session affinity the pool's policy chain; else the shared pick
    /// chain of the frontends' key, whose map gets endpoint k of the pool
    /// (kube-proxy's order) under each frontend and k.
    fn to_pool(&self, f: &mut Fragment, pool: Pool, frontends: Frontends<'_>) -> Verdict {
        if self.svc.rule.session_affinity.is_some() {
            return Verdict::Goto(self.policy_chain(pool).to_string());
        }
        let endpoints = self.endpoints(pool);
        let pick = Pick {
            key: match frontends {
                Frontends::Vips(_) => PickKey::Vip,
                Frontends::NodePort(_) => PickKey::NodePort,
            },
            pool,
            protocol: self.svc.rule.protocol,
            n: u32::try_from(endpoints.len()).unwrap_or(u32::MAX),
        };
        f.picks.insert(pick);
        for (k, ep) in (0u32..).zip(endpoints) {
            let to = Some(Value::Endpoint(ep.ip, ep.port));
            let port = self.svc.rule.port;
            match frontends {
                Frontends::Vips(ips) => {
                    for ip in ips {
                        let key = Key::AddrPortIndex(*ip, port, k);
                        f.element(SetName::Pick(pick), key, to.clone());
                    }
                }
                Frontends::NodePort(port) => {
                    f.element(SetName::Pick(pick), Key::PortIndex(port, k), to.clone());
                }
            }
        }
        Verdict::Goto(pick.chain())
    }

    /// Traffic without an applicable endpoint is dropped, or rejected when
    /// the port has no endpoint anywhere.
    fn no_endpoint(&self) -> Value {
        let v = if self.has_endpoints() {
            Verdict::Drop
        } else {
            Verdict::Goto(REJECT_CHAIN.to_string())
        };
        v.into()
    }
}
