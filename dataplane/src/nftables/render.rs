//! Pure: a linked ruleset and the settings → the typed plan (one table per
//! family). kube-proxy's nftables layout and semantics (pkg/proxy/nftables),
//! with two changes for control-plane speed, described in the README:
//! endpoint selection is a `numgen` cascade inside the policy chain (no
//! anonymous set per service, no chain per endpoint) and hairpin traffic is
//! found by one `@hairpin` set in postrouting.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use switchyard_api::policy::{LinkedRuleset, LinkedServicePort, NodeInfo};
use switchyard_api::ruleset::{Cidr, Endpoint, IpFamily};

use crate::conntrack::UdpPort;
use crate::settings::{LocalDetector, NodePortAddresses, Settings};

use super::ir::{
    BaseChain, Chain, ChainType, Dir, Fragment, Hook, Key, Match, Plan, Priority, RenderContext,
    Rule, ServicePlan, Set, SetKind, Stmt, Table, Verdict,
};
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

const BASE_CHAINS: [(&str, ChainType, Hook, Priority); 8] = [
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

fn goto(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain.to_string()))
}

fn rule(matches: Vec<Match>, stmts: Vec<Stmt>) -> Rule {
    Rule::new(matches, stmts)
}

/// kube-proxy's `hashAndTruncate`: a base32 SHA-256 prefix keeps names unique
/// and tells apart names that differ only at the end.
fn hashed(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
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
    out
}

/// The per-service-port chain names.
struct Names {
    cluster: String,
    local: String,
    external: String,
    firewall: String,
}

impl Names {
    fn of(svc: &LinkedServicePort) -> Names {
        let r = &svc.rule;
        let base = hashed(&format!(
            "{}/{}/{}/{}",
            r.namespace,
            r.name,
            r.protocol.as_lower(),
            r.port_name
        ));
        Names {
            cluster: format!("service-{base}"),
            local: format!("local-{base}"),
            external: format!("external-{base}"),
            firewall: format!("firewall-{base}"),
        }
    }
}

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

/// Render both tables from scratch.
pub fn render(ruleset: &LinkedRuleset, settings: &Settings) -> Plan {
    render_reusing(None, ruleset, settings)
}

/// Render, sharing with `previous` the setup and the fragments of every
/// service port whose linked form is unchanged (the same `Arc` from the
/// agent's [`switchyard_api::policy::ShardLinker`], or an equal value), so a
/// sync renders only what changed. `previous` rendered for other settings or
/// another node shares nothing.
pub fn render_reusing(
    previous: Option<&Plan>,
    ruleset: &LinkedRuleset,
    settings: &Settings,
) -> Plan {
    let context = RenderContext {
        settings: settings.clone(),
        node: ruleset.node.clone(),
    };
    let previous = previous.filter(|p| *p.context == context);
    let renderers =
        [IpFamily::V4, IpFamily::V6].map(|f| FamilyRenderer::new(f, &ruleset.node, settings));
    let (setup, context) = match previous {
        Some(p) => (p.setup.clone(), Arc::clone(&p.context)),
        None => (
            renderers.iter().map(|r| Arc::new(r.setup())).collect(),
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
}

impl<'a> FamilyRenderer<'a> {
    fn new(family: IpFamily, node: &NodeInfo, settings: &'a Settings) -> Self {
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

    /// The addresses NodePorts are served on (unless they match all local addresses).
    fn nodeport_ips(&self) -> Vec<IpAddr> {
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

    /// The fixed part of the table (kube-proxy's `setupNFTables`).
    fn setup(&self) -> Table {
        let mut t = Table::new(self.family);
        for (name, kind, hook, priority) in BASE_CHAINS {
            t.chains.insert(
                name.to_string(),
                Chain {
                    base: Some(BaseChain {
                        kind,
                        hook,
                        priority,
                    }),
                    rules: Vec::new(),
                },
            );
        }
        for (dst, src, new_only) in JUMP_CHAINS {
            t.chain(dst);
            let matches = if new_only {
                vec![Match::CtStateNew]
            } else {
                Vec::new()
            };
            t.push(src, rule(matches, vec![jump(dst)]));
        }

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
        t.push(MASQUERADING, rule(vec![], vec![Stmt::Masquerade]));
        // A pod reaching itself through a service must be masqueraded, or
        // the reply would bypass conntrack (kube-proxy's per-endpoint rule).
        t.set(
            HAIRPIN,
            SetKind::AddrPair,
            "endpoint . endpoint, for hairpin traffic",
        );
        t.chains.entry(NAT_POSTROUTING.to_string()).and_modify(|c| {
            c.rules.insert(
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

        if self.has_local_detector() {
            t.set(
                LOCAL_RANGES,
                SetKind::Prefix,
                "traffic from these ranges is local",
            );
            for c in self.local_ranges.clone() {
                t.element(LOCAL_RANGES, Key::Prefix(c), None);
            }
        }

        t.set(CLUSTER_IPS, SetKind::Addr, "Active ClusterIPs");
        t.push(
            CLUSTER_IPS_CHECK,
            rule(
                vec![Match::AddrInSet {
                    dir: Dir::Daddr,
                    set: CLUSTER_IPS.to_string(),
                    negate: false,
                }],
                vec![Stmt::Reject],
            )
            .with_comment("Reject traffic to invalid ports of ClusterIPs"),
        );
        let service_cidrs: Vec<Cidr> = self
            .settings
            .service_cidrs
            .iter()
            .filter(|c| c.family() == self.family)
            .copied()
            .collect();
        if !service_cidrs.is_empty() {
            t.set(SERVICE_CIDRS, SetKind::Prefix, "Service CIDRs");
            for c in service_cidrs {
                t.element(SERVICE_CIDRS, Key::Prefix(c), None);
            }
            t.push(
                CLUSTER_IPS_CHECK,
                rule(
                    vec![Match::AddrInSet {
                        dir: Dir::Daddr,
                        set: SERVICE_CIDRS.to_string(),
                        negate: false,
                    }],
                    vec![Stmt::Verdict(Verdict::Drop)],
                )
                .with_comment("Drop traffic to unallocated ClusterIPs"),
            );
        }

        if !self.nodeports_match_all {
            t.set(
                NODEPORT_IPS,
                SetKind::Addr,
                "IPs that accept NodePort traffic",
            );
            for ip in self.nodeport_ips() {
                t.element(NODEPORT_IPS, Key::Addr(ip), None);
            }
        }

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
        let nodeport_dest = if self.nodeports_match_all {
            Match::DaddrNotLoopback
        } else {
            Match::AddrInSet {
                dir: Dir::Daddr,
                set: NODEPORT_IPS.to_string(),
                negate: false,
            }
        };
        t.push(
            NODEPORT_ENDPOINTS_CHECK,
            rule(
                vec![nodeport_dest.clone()],
                vec![Stmt::VmapProtoPort(NO_ENDPOINT_NODEPORTS.to_string())],
            ),
        );

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
            vec![nodeport_dest]
        };
        t.push(
            SERVICES,
            rule(
                nodeport_matches,
                vec![Stmt::VmapProtoPort(SERVICE_NODEPORTS.to_string())],
            ),
        );
        t
    }

    /// One service port's elements and chains (kube-proxy's per-service loop).
    fn service_port(&self, svc: &LinkedServicePort, f: &mut Fragment) -> Result<(), String> {
        let r = &svc.rule;
        let cluster_ips = self.of_family(&r.cluster_ips);
        let external_ips = self.of_family(&r.external_ips);
        let lb_ips = self.of_family(&r.load_balancer_ips);
        let in_family = |b: &&Endpoint| IpFamily::of(&b.ip) == self.family;
        let cluster: Vec<&Endpoint> = svc.cluster_endpoints().filter(in_family).collect();
        let local: Vec<&Endpoint> = svc.local_endpoints().filter(in_family).collect();
        if cluster_ips.is_empty() && external_ips.is_empty() && lb_ips.is_empty() {
            // A service port of the other family only; NodePorts follow the
            // cluster IP's family as in kube-proxy's per-family proxiers.
            return Ok(());
        }
        if let Some(b) = svc.all_reachable_endpoints().find(|b| b.port == 0) {
            return Err(format!("endpoint {} has port 0", b.endpoint()));
        }

        let names = Names::of(svc);
        let proto = r.protocol;
        let port = r.port;
        let has_endpoints = svc.has_any_endpoints;
        let uses_cluster_chain = !cluster.is_empty();
        let uses_local_chain = !local.is_empty();

        let (internal_chain, internal_list) = if svc.internal_policy_local() {
            (&names.local, &local)
        } else {
            (&names.cluster, &cluster)
        };
        let has_internal = has_endpoints && !internal_list.is_empty();
        let (external_policy_chain, external_list) = if svc.external_policy_local() {
            (&names.local, &local)
        } else {
            (&names.cluster, &cluster)
        };
        let has_external = has_endpoints && !external_list.is_empty();
        let uses_external_chain = has_endpoints && r.has_external();

        let reject = Verdict::Goto(REJECT_CHAIN.to_string());
        let (internal_filter, external_filter) = if has_endpoints {
            (Verdict::Drop, Verdict::Drop)
        } else {
            (reject.clone(), reject)
        };

        for ip in &cluster_ips {
            f.element(CLUSTER_IPS, Key::Addr(*ip), None);
            let key = Key::AddrProtoPort(*ip, proto, port);
            if has_internal {
                f.element(
                    SERVICE_IPS,
                    key,
                    Some(Verdict::Goto(internal_chain.clone())),
                );
            } else {
                f.element(NO_ENDPOINT_SERVICES, key, Some(internal_filter.clone()));
            }
        }
        let external_dest = Verdict::Goto(names.external.clone());
        for ip in external_ips.iter().chain(&lb_ips) {
            let key = Key::AddrProtoPort(*ip, proto, port);
            if has_endpoints {
                f.element(SERVICE_IPS, key.clone(), Some(external_dest.clone()));
            }
            if !has_external {
                f.element(NO_ENDPOINT_SERVICES, key, Some(external_filter.clone()));
            }
        }

        let sources: Vec<Cidr> = r
            .load_balancer_source_ranges
            .iter()
            .filter(|c| c.family() == self.family)
            .copied()
            .collect();
        let uses_firewall = !lb_ips.is_empty() && !sources.is_empty();
        if uses_firewall {
            for ip in &lb_ips {
                f.element(
                    FIREWALL_IPS,
                    Key::AddrProtoPort(*ip, proto, port),
                    Some(Verdict::Goto(names.firewall.clone())),
                );
            }
            let mut allowed = sources.clone();
            // A node reaching a VIP-like load balancer loops back with the VIP
            // as source: allow it when the node itself is in the ranges.
            let node_allowed = self
                .node_ips
                .first()
                .is_some_and(|n| sources.iter().any(|c| c.contains(n)));
            if node_allowed {
                allowed.extend(lb_ips.iter().map(|ip| Cidr::host(*ip)));
            }
            // Reached by `goto` from firewall-check: `return` goes back to
            // the base chain, as falling off the end of firewall-check would.
            for c in allowed {
                f.push(
                    &names.firewall,
                    rule(
                        vec![Match::SaddrInPrefix(c)],
                        vec![Stmt::Verdict(Verdict::Return)],
                    ),
                );
            }
            f.push(
                &names.firewall,
                rule(vec![], vec![Stmt::Verdict(Verdict::Drop)]),
            );
        }

        if let Some(node_port) = r.node_port {
            let key = Key::ProtoPort(proto, node_port);
            if has_endpoints {
                f.element(SERVICE_NODEPORTS, key.clone(), Some(external_dest.clone()));
            }
            if !has_external {
                f.element(NO_ENDPOINT_NODEPORTS, key, Some(external_filter));
            }
        }

        if has_internal {
            let masq_all = self.settings.masquerade_all;
            let detector = self.has_local_detector();
            for ip in &cluster_ips {
                let mut matches = vec![Match::Addr(Dir::Daddr, *ip), Match::Dport(proto, port)];
                if masq_all {
                } else if detector {
                    matches.push(Match::AddrInSet {
                        dir: Dir::Saddr,
                        set: LOCAL_RANGES.to_string(),
                        negate: true,
                    });
                } else {
                    continue;
                }
                // Off-cluster traffic to a VIP may bounce off-node: masquerade it.
                f.push(internal_chain, rule(matches, vec![jump(MARK_MASQ)]));
            }
        }

        if uses_external_chain {
            f.chain(&names.external);
            if !svc.external_policy_local() {
                // Cluster endpoints may be on other nodes: masquerade.
                f.push(&names.external, rule(vec![], vec![jump(MARK_MASQ)]));
            } else {
                if self.has_local_detector() && uses_cluster_chain {
                    f.push(
                        &names.external,
                        rule(
                            vec![Match::AddrInSet {
                                dir: Dir::Saddr,
                                set: LOCAL_RANGES.to_string(),
                                negate: false,
                            }],
                            vec![goto(&names.cluster)],
                        )
                        .with_comment("short-circuit pod traffic"),
                    );
                }
                f.push(
                    &names.external,
                    rule(vec![Match::FibSaddrLocal], vec![jump(MARK_MASQ)])
                        .with_comment("masquerade local traffic"),
                );
                if uses_cluster_chain {
                    f.push(
                        &names.external,
                        rule(vec![Match::FibSaddrLocal], vec![goto(&names.cluster)])
                            .with_comment("short-circuit local traffic"),
                    );
                }
            }
            if has_external {
                f.push(
                    &names.external,
                    rule(vec![], vec![goto(external_policy_chain)]),
                );
            }
        }

        if uses_cluster_chain {
            self.endpoint_rules(f, svc, &names.cluster, &cluster);
        }
        if uses_local_chain {
            self.endpoint_rules(f, svc, &names.local, &local);
        }
        for ep in cluster.iter().chain(&local) {
            f.element(HAIRPIN, Key::AddrPair(ep.ip, ep.ip), None);
        }
        Ok(())
    }

    /// Session affinity, then a uniform choice: rule k is taken with
    /// probability 1/(n-k) when the earlier ones were not.
    fn endpoint_rules(
        &self,
        f: &mut Fragment,
        svc: &LinkedServicePort,
        chain: &str,
        endpoints: &[&Endpoint],
    ) {
        let proto = svc.rule.protocol;
        let affinity = svc.rule.session_affinity;
        let dnat = |f: &mut Fragment, ep: &Endpoint| -> Vec<Stmt> {
            let mut stmts = Vec::new();
            if let Some(a) = affinity {
                let set = affinity_set_name(svc, ep);
                let mut s = Set::new(SetKind::Addr, None);
                s.timeout_seconds = Some(a.timeout_seconds);
                f.sets.insert(set.clone(), s);
                stmts.push(Stmt::UpdateSaddr(set));
            }
            stmts.push(Stmt::Dnat(ep.ip, ep.port));
            stmts
        };
        if affinity.is_some() {
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
}
