//! The few iptables rules kube-proxy's IPVS mode writes around its virtual
//! servers, as the iptables mode's typed rules ([`crate::iptables::rule`]):
//! masquerade marks for off-cluster sources, external IPs, load balancers
//! and NodePorts (except eTP Local), hairpin, load-balancer source ranges,
//! and rejecting other ports of service addresses. Every match on service
//! frontends is an ipset match ([`render::set_name`]).

use std::collections::BTreeSet;

use switchyard_api::ruleset::{Cidr, IpFamily, Protocol};

use super::objects::ServiceKey;
use super::render::set_name;
use crate::iptables::names::{
    KUBE_FORWARD, KUBE_IPVS_FILTER, KUBE_IPVS_OUT_FILTER, KUBE_LOAD_BALANCER, KUBE_MARK_MASQ,
    KUBE_NODE_PORT, KUBE_POSTROUTING, KUBE_PROXY_FIREWALL, KUBE_SERVICES,
    KUBE_SOURCE_RANGES_FIREWALL,
};
use crate::iptables::plan::{ChainList, FamilyPlan, JumpRule};
use crate::iptables::render::masquerade_marked;
use crate::iptables::rule::{Match, Rule, Side, Table, Target};
use crate::settings::{LocalDetector, Settings};

const NAT_CHAINS: &[&str] = &[
    KUBE_SERVICES,
    KUBE_POSTROUTING,
    KUBE_NODE_PORT,
    KUBE_LOAD_BALANCER,
    KUBE_MARK_MASQ,
];
const FILTER_CHAINS: &[&str] = &[
    KUBE_FORWARD,
    KUBE_NODE_PORT,
    KUBE_PROXY_FIREWALL,
    KUBE_SOURCE_RANGES_FIREWALL,
    KUBE_IPVS_FILTER,
    KUBE_IPVS_OUT_FILTER,
];

/// Our chains per table, for cleanup.
pub fn our_chains() -> [(Table, &'static [&'static str]); 2] {
    [(Table::Nat, NAT_CHAINS), (Table::Filter, FILTER_CHAINS)]
}

const DST: &[Side] = &[Side::Destination];
const DST_DST: &[Side] = &[Side::Destination, Side::Destination];
const DST_DST_SRC: &[Side] = &[Side::Destination, Side::Destination, Side::Source];

/// The rules of one family.
struct Builder {
    family: IpFamily,
    nat: ChainList,
    filter: ChainList,
}

impl Builder {
    /// `-m set --match-set <base's set in this family> <dimensions>`.
    fn set(&self, base: &str, dimensions: &'static [Side]) -> Match {
        Match::Set {
            name: set_name(base, self.family),
            dimensions,
        }
    }
}

/// kube-proxy's IPVS-mode rules for one family; `no_node_access`: the
/// load-balancer virtual servers whose source ranges leave the node out.
pub fn family_rules(
    family: IpFamily,
    settings: &Settings,
    no_node_access: &BTreeSet<ServiceKey>,
) -> FamilyPlan {
    let mut b = Builder {
        family,
        nat: ChainList::of(NAT_CHAINS),
        filter: ChainList::of(FILTER_CHAINS),
    };
    let mark = settings.masquerade_mark();
    masquerade_rules(&mut b, settings);
    service_rules(&mut b, settings);
    node_port_rules(&mut b);
    firewall_rules(&mut b);
    forward_rules(&mut b, mark);
    ipvs_filter_rules(&mut b);
    out_filter_rules(&mut b, no_node_access);
    FamilyPlan {
        family,
        route_localnet: false,
        filter: b.filter.chains,
        nat: b.nat.chains,
        jumps: jump_rules(),
    }
}

/// The jumps from the built-in chains, in evaluation order per chain.
fn jump_rules() -> Vec<JumpRule> {
    let jump = |table, builtin, chain: &str, comment: &str| JumpRule {
        table,
        builtin,
        rule: Rule::new(Target::Jump(chain.into())).comment(comment),
    };
    let portals = "kubernetes service portals";
    let firewall = "kube-proxy firewall rules";
    vec![
        jump(Table::Nat, "PREROUTING", KUBE_SERVICES, portals),
        jump(Table::Nat, "OUTPUT", KUBE_SERVICES, portals),
        jump(
            Table::Nat,
            "POSTROUTING",
            KUBE_POSTROUTING,
            "kubernetes postrouting rules",
        ),
        jump(
            Table::Filter,
            "INPUT",
            KUBE_IPVS_FILTER,
            "kubernetes ipvs access filter",
        ),
        jump(
            Table::Filter,
            "OUTPUT",
            KUBE_IPVS_OUT_FILTER,
            "kubernetes ipvs access filter",
        ),
        jump(Table::Filter, "INPUT", KUBE_PROXY_FIREWALL, firewall),
        jump(
            Table::Filter,
            "INPUT",
            KUBE_NODE_PORT,
            "kubernetes health check rules",
        ),
        jump(
            Table::Filter,
            "FORWARD",
            KUBE_FORWARD,
            "kubernetes forwarding rules",
        ),
        jump(Table::Filter, "FORWARD", KUBE_PROXY_FIREWALL, firewall),
    ]
}

/// Hairpin and marked traffic is masqueraded on the way out.
fn masquerade_rules(b: &mut Builder, settings: &Settings) {
    let hairpin = b.set("KUBE-LOOP-BACK", DST_DST_SRC);
    b.nat.push(
        KUBE_POSTROUTING,
        Rule::new(Target::Masquerade {
            random_fully: true,
            ports: None,
        })
        .comment("Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose")
        .with(hairpin),
    );
    for rule in masquerade_marked(settings) {
        b.nat.push(KUBE_POSTROUTING, rule);
    }
    b.nat.push(
        KUBE_MARK_MASQ,
        Rule::new(Target::OrMark(settings.masquerade_mark())),
    );
}

/// Service frontends: mark what needs masquerading, accept what IPVS serves.
fn service_rules(b: &mut Builder, settings: &Settings) {
    let mark_masq = || Rule::new(Target::Jump(KUBE_MARK_MASQ.into()));
    let cluster = "Kubernetes service cluster ip + port for masquerade purpose";
    if settings.masquerade_all {
        let rule = mark_masq()
            .comment(cluster)
            .with(b.set("KUBE-CLUSTER-IP", DST_DST));
        b.nat.push(KUBE_SERVICES, rule);
    } else if let LocalDetector::Cidrs(cidrs) = &settings.local_detector {
        // Traffic to a cluster IP from outside the pod network is masqueraded.
        for cidr in cidrs.iter().filter(|c| c.family() == b.family) {
            let rule = mark_masq()
                .comment(cluster)
                .with(b.set("KUBE-CLUSTER-IP", DST_DST))
                .with(Match::Source {
                    cidr: *cidr,
                    negate: true,
                });
            b.nat.push(KUBE_SERVICES, rule);
        }
    }
    let external = mark_masq()
        .comment("Kubernetes service external ip + port for masquerade and filter purpose")
        .with(b.set("KUBE-EXTERNAL-IP", DST_DST));
    b.nat.push(KUBE_SERVICES, external);
    let lb = Rule::new(Target::Jump(KUBE_LOAD_BALANCER.into()))
        .comment("Kubernetes service lb portal")
        .with(b.set("KUBE-LOAD-BALANCER", DST_DST));
    b.nat.push(KUBE_SERVICES, lb);
    let lb_local = Rule::new(Target::Return).with(b.set("KUBE-LOAD-BALANCER-LOCAL", DST_DST));
    b.nat.push(KUBE_LOAD_BALANCER, lb_local);
    b.nat.push(KUBE_LOAD_BALANCER, mark_masq());
    for base in ["KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"] {
        let accept = Rule::new(Target::Accept).with(b.set(base, DST_DST));
        b.nat.push(KUBE_SERVICES, accept);
    }
    b.nat.push(
        KUBE_SERVICES,
        Rule::new(Target::Jump(KUBE_NODE_PORT.into())).with(Match::LocalAddress(Side::Destination)),
    );
}

/// NodePorts are masqueraded unless their external traffic policy is Local.
fn node_port_rules(b: &mut Builder) {
    let sets = [
        (
            Protocol::Tcp,
            "KUBE-NODE-PORT-LOCAL-TCP",
            "KUBE-NODE-PORT-TCP",
            DST,
        ),
        (
            Protocol::Udp,
            "KUBE-NODE-PORT-LOCAL-UDP",
            "KUBE-NODE-PORT-UDP",
            DST,
        ),
        (
            Protocol::Sctp,
            "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            "KUBE-NODE-PORT-SCTP-HASH",
            DST_DST,
        ),
    ];
    for (protocol, local, all, dimensions) in sets {
        let rule = |target, base| {
            Rule::new(target)
                .with(Match::ProtocolOnly(protocol))
                .with(b.set(base, dimensions))
        };
        let keep = rule(Target::Return, local);
        let masquerade = rule(Target::Jump(KUBE_MARK_MASQ.into()), all);
        b.nat.push(KUBE_NODE_PORT, keep);
        b.nat.push(KUBE_NODE_PORT, masquerade);
    }
}

/// Load-balancer source ranges and health check node ports (filter).
fn firewall_rules(b: &mut Builder) {
    let fw = Rule::new(Target::Jump(KUBE_SOURCE_RANGES_FIREWALL.into()))
        .with(b.set("KUBE-LOAD-BALANCER-FW", DST_DST));
    b.filter.push(KUBE_PROXY_FIREWALL, fw);
    for base in [
        "KUBE-LOAD-BALANCER-SOURCE-CIDR",
        "KUBE-LOAD-BALANCER-SOURCE-IP",
    ] {
        let allow = Rule::new(Target::Return).with(b.set(base, DST_DST_SRC));
        b.filter.push(KUBE_SOURCE_RANGES_FIREWALL, allow);
    }
    b.filter
        .push(KUBE_SOURCE_RANGES_FIREWALL, Rule::new(Target::Drop));
    let health_check = Rule::new(Target::Accept).with(b.set("KUBE-HEALTH-CHECK-NODE-PORT", DST));
    b.filter.push(KUBE_NODE_PORT, health_check);
}

/// Forwarding of marked and established traffic (filter).
fn forward_rules(b: &mut Builder, mark: u32) {
    let ctstate = |states| Match::CtState {
        states,
        negate: false,
    };
    b.filter.push(
        KUBE_FORWARD,
        Rule::new(Target::Drop).with(ctstate("INVALID")),
    );
    b.filter.push(
        KUBE_FORWARD,
        Rule::new(Target::Accept).with(Match::Mark {
            mark,
            negate: false,
        }),
    );
    b.filter.push(
        KUBE_FORWARD,
        Rule::new(Target::Accept).with(ctstate("RELATED,ESTABLISHED")),
    );
}

/// New connections to a service address on a port no service uses are
/// rejected: the address is the node's own on `kube-ipvs0`.
fn ipvs_filter_rules(b: &mut Builder) {
    for base in [
        "KUBE-LOAD-BALANCER",
        "KUBE-CLUSTER-IP",
        "KUBE-EXTERNAL-IP",
        "KUBE-EXTERNAL-IP-LOCAL",
    ] {
        let known = Rule::new(Target::Return).with(b.set(base, DST_DST));
        b.filter.push(KUBE_IPVS_FILTER, known);
    }
    let health_check = Rule::new(Target::Return).with(b.set("KUBE-HEALTH-CHECK-NODE-PORT", DST));
    b.filter.push(KUBE_IPVS_FILTER, health_check);
    let reject = Rule::new(Target::Reject)
        .with(Match::CtState {
            states: "NEW",
            negate: false,
        })
        .with(b.set("KUBE-IPVS-IPS", DST));
    b.filter.push(KUBE_IPVS_FILTER, reject);
}

/// The node's own connections to a load-balancer IP whose source ranges leave
/// the node out are dropped after IPVS picked them up (something on the node
/// SNATing them to the LB IP would otherwise let them through).
fn out_filter_rules(b: &mut Builder, no_node_access: &BTreeSet<ServiceKey>) {
    for k in no_node_access
        .iter()
        .filter(|k| IpFamily::of(&k.addr) == b.family)
    {
        let drop = Rule::new(Target::Drop)
            .with(Match::Source {
                cidr: Cidr::host(k.addr),
                negate: false,
            })
            .with(Match::IpvsVirtual {
                addr: k.addr,
                protocol: k.protocol,
                port: k.port,
            });
        b.filter.push(KUBE_IPVS_OUT_FILTER, drop);
    }
}
