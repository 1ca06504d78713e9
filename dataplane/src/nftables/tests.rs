//! Golden render tests, tracer tests over the typed plan, and incremental
//! transaction tests against the fake runner. The real-kernel tests are in
//! `netns_tests.rs`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use switchyard_api::Mode;
use switchyard_api::policy::{LinkedRuleset, NodeInfo, link};
use switchyard_api::ruleset::{
    Cidr, Endpoint, Protocol, Ruleset, ServicePortRule, SessionAffinity, TrafficPolicy,
};
use switchyard_testkit::golden::assert_golden;

use super::diff::Applied;
use super::trace::{Outcome, Packet, Trace, trace};
use super::{NftablesBackend, Plan, transaction};
use crate::Backend;
use crate::conntrack::UdpFlow;
use crate::conntrack::fake::FakeConntrack;
use crate::exec::FakeRunner;
use crate::settings::{LocalDetector, Settings};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

pub fn endpoint(id: u32, addr: &str, node: &str) -> Endpoint {
    Endpoint {
        node_name: Some(node.to_string()),
        ..Endpoint::new(id, ip(addr), 8080)
    }
}

pub fn service(id: u32, name: &str, vip: &str, endpoints: Vec<Endpoint>) -> ServicePortRule {
    ServicePortRule {
        port_name: "http".to_string(),
        cluster_ips: vec![ip(vip)],
        endpoints,
        ..ServicePortRule::new(id, "default", name, Protocol::Tcp, 80)
    }
}

pub const NODE_IP: &str = "192.168.0.10";

pub fn node() -> NodeInfo {
    NodeInfo {
        name: "node-a".to_string(),
        zone: None,
        addresses: vec![ip(NODE_IP), ip("fd00:1::10")],
    }
}

pub fn settings() -> Settings {
    let mut s = Settings::defaults(Mode::Nftables);
    s.local_detector = LocalDetector::Cidrs(vec![cidr("10.0.0.0/16"), cidr("fd00:10::/64")]);
    s.service_cidrs = vec![cidr("172.30.0.0/16")];
    s
}

/// The scenario the golden files show: every kind of frontend and policy.
pub fn sample_ruleset() -> Ruleset {
    let web = service(
        1,
        "web",
        "172.30.0.10",
        vec![
            endpoint(11, "10.0.1.5", "node-a"),
            endpoint(12, "10.0.2.5", "node-b"),
            endpoint(13, "10.0.3.5", "node-c"),
        ],
    );
    let mut lb = service(
        2,
        "lb",
        "172.30.0.20",
        vec![
            endpoint(21, "10.0.1.6", "node-a"),
            endpoint(22, "10.0.2.6", "node-b"),
        ],
    );
    lb.node_port = Some(30080);
    lb.external_ips = vec![ip("203.0.113.7")];
    lb.load_balancer_ips = vec![ip("198.51.100.1")];
    lb.load_balancer_source_ranges = vec![cidr("198.51.100.0/24"), cidr("192.168.0.0/24")];
    lb.external_traffic_policy = TrafficPolicy::Local;
    let mut sticky = service(
        3,
        "sticky",
        "172.30.0.30",
        vec![endpoint(31, "10.0.1.7", "node-b")],
    );
    sticky.session_affinity = Some(SessionAffinity {
        timeout_seconds: 600,
    });
    let mut empty = service(4, "empty", "172.30.0.40", Vec::new());
    empty.node_port = Some(30040);
    let mut local_only = service(
        5,
        "local-only",
        "172.30.0.50",
        vec![endpoint(51, "10.0.2.8", "node-b")],
    );
    local_only.internal_traffic_policy = TrafficPolicy::Local;
    let mut dual = service(
        6,
        "dual",
        "fd00:30::60",
        vec![endpoint(61, "fd00:10::9", "node-b")],
    );
    dual.cluster_ips.insert(0, ip("172.30.0.60"));
    dual.endpoints.push(endpoint(62, "10.0.2.9", "node-b"));
    dual.protocol = Protocol::Udp;
    dual.port = 53;
    Ruleset {
        services: vec![web, lb, sticky, empty, local_only, dual],
    }
}

pub fn linked(rs: &Ruleset) -> LinkedRuleset {
    link(rs, &node())
}

fn plan_of(rs: &Ruleset) -> Plan {
    super::render::render(&linked(rs), &settings())
}

/// The plan with its service chains spread over `tables` tables per family.
fn plan_in_tables(rs: &Ruleset, tables: u8) -> Plan {
    super::render::render_reusing(None, &linked(rs), &settings(), tables)
}

pub(super) fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/nftables/testdata")
        .join(name)
}

/// Compare with a golden file; `UPDATE_GOLDEN=1` rewrites it.
pub(super) fn golden(name: &str, actual: &str) {
    assert_golden(&testdata(name), actual);
}

#[test]
fn full_plan_matches_golden_file() {
    golden("full.nft", &plan_of(&sample_ruleset()).to_string());
}

#[test]
fn endpoint_change_transaction_matches_golden_file() {
    let before = sample_ruleset();
    let mut after = before.clone();
    after.services[0].endpoints.remove(1);
    after.services[0]
        .endpoints
        .push(endpoint(14, "10.0.4.5", "node-d"));
    // Removing a service deletes its elements before its chains.
    after.services.retain(|s| s.name != "sticky");
    let step = transaction(Some(&Applied::of(plan_of(&before))), &plan_of(&after));
    assert!(!step.full);
    assert_eq!(
        step.flushed.len(),
        1,
        "the removed service's chain, deleted later"
    );
    golden("endpoint-change.nft", &step.tx.text().unwrap());
}

fn tcp(dst: &str, port: u16) -> Packet {
    Packet {
        src: ip("10.0.1.99"),
        dst: ip(dst),
        proto: Protocol::Tcp,
        dport: port,
        from_host: false,
        src_local: false,
        dst_local: false,
    }
}

fn run(plan: &Plan, pkt: &Packet, choice: usize) -> Trace {
    trace(plan, pkt, choice)
}

/// Every DNAT target a packet can reach (each numgen choice).
fn targets(plan: &Plan, pkt: &Packet) -> Vec<(IpAddr, u16)> {
    let mut out: Vec<(IpAddr, u16)> = (0..16).filter_map(|c| run(plan, pkt, c).dnat).collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn cluster_ip_spreads_over_all_endpoints_without_masquerade_from_pods() {
    let plan = plan_of(&sample_ruleset());
    let pkt = tcp("172.30.0.10", 80);
    assert_eq!(
        targets(&plan, &pkt),
        vec![
            (ip("10.0.1.5"), 8080),
            (ip("10.0.2.5"), 8080),
            (ip("10.0.3.5"), 8080)
        ]
    );
    let t = run(&plan, &pkt, 0);
    assert_eq!(t.outcome, Outcome::Accept);
    assert!(!t.masquerade, "pod traffic keeps its source");
}

/// The kernel's cost of a full sync is per rule expression: endpoints
/// of service ports without session affinity are elements of a pick map,
/// not rules. 1000 ClusterIP services of 5 endpoints add one pick chain
/// of one rule to the table, and each endpoint is reached (in kube-proxy's
/// order: endpoint k under index k).
#[test]
fn endpoints_without_session_affinity_cost_map_elements_not_rules() {
    let services: Vec<ServicePortRule> = (0..1000u32)
        .map(|i| {
            let vip = format!("172.30.{}.{}", i / 200, i % 200 + 1);
            let endpoints = (0..5u32)
                .map(|k| {
                    let n = i * 5 + k;
                    endpoint(
                        n + 1,
                        &format!("10.1.{}.{}", n / 250, n % 250 + 1),
                        "node-b",
                    )
                })
                .collect();
            service(i + 1, &format!("svc{i}"), &vip, endpoints)
        })
        .collect();
    let rs = Ruleset { services };
    let plan = plan_of(&rs);
    assert_eq!(plan.service_rule_count(), 0, "no rule of a service port");
    let v4 = switchyard_api::ruleset::IpFamily::V4;
    let table = plan.table(v4).unwrap();
    let setup = plan.setup(super::ir::TableId::main(v4)).unwrap();
    let rules = |t: &super::ir::Table| -> usize { t.chains.values().map(|c| c.rules.len()).sum() };
    assert_eq!(rules(&table), rules(setup) + 1, "one pick rule");
    let map = &table.sets["endpoints-vip-cluster-tcp-5"];
    assert_eq!(map.elements.len(), 5000);
    let svc = &rs.services[999];
    let pkt = tcp(&svc.cluster_ips[0].to_string(), 80);
    for (k, ep) in svc.endpoints.iter().enumerate() {
        assert_eq!(
            run(&plan, &pkt, k).dnat,
            Some((ep.ip, ep.port)),
            "index {k}"
        );
    }
}

#[test]
fn cluster_ip_from_outside_the_cluster_is_masqueraded() {
    let plan = plan_of(&sample_ruleset());
    let mut pkt = tcp("172.30.0.10", 80);
    pkt.src = ip("192.168.7.7");
    assert!(run(&plan, &pkt, 1).masquerade);
}

#[test]
fn hairpin_to_own_endpoint_is_masqueraded() {
    let plan = plan_of(&sample_ruleset());
    let mut pkt = tcp("172.30.0.10", 80);
    pkt.src = ip("10.0.1.5");
    let t = run(&plan, &pkt, 0);
    assert_eq!(t.dnat, Some((ip("10.0.1.5"), 8080)));
    assert!(t.masquerade);
    let other = run(&plan, &pkt, 1);
    assert_eq!(other.dnat, Some((ip("10.0.2.5"), 8080)));
    assert!(!other.masquerade);
}

#[test]
fn overlapping_service_cidrs_render_one_element_each_and_still_drop() {
    let mut s = settings();
    s.service_cidrs = vec![
        cidr("172.30.0.0/16"),
        cidr("172.30.0.40/30"),
        cidr("172.30.0.0/16"),
        cidr("172.31.0.40/30"),
        cidr("172.31.0.40/29"),
    ];
    let plan = super::render::render(&linked(&sample_ruleset()), &s);
    let text = plan.to_string();
    let elements = |c: &str| text.matches(c).count();
    assert_eq!(
        (
            elements("172.30.0.0/16"),
            elements("172.30.0.40/30"),
            elements("172.31.0.40/29"),
            elements("172.31.0.40/30")
        ),
        (1, 0, 1, 0),
        "{text}"
    );
    assert_eq!(
        run(&plan, &tcp("172.31.0.45", 80), 0).outcome,
        Outcome::Drop
    );
}

#[test]
fn unserved_port_of_a_cluster_ip_is_rejected_and_unallocated_address_dropped() {
    let plan = plan_of(&sample_ruleset());
    assert_eq!(
        run(&plan, &tcp("172.30.0.10", 81), 0).outcome,
        Outcome::Reject
    );
    assert_eq!(run(&plan, &tcp("172.30.9.9", 80), 0).outcome, Outcome::Drop);
    // Outside the service CIDR nothing happens.
    let t = run(&plan, &tcp("10.9.9.9", 80), 0);
    assert_eq!((t.outcome, t.dnat), (Outcome::Accept, None));
}

#[test]
fn service_without_endpoints_rejects_cluster_ip_and_node_port() {
    let plan = plan_of(&sample_ruleset());
    assert_eq!(
        run(&plan, &tcp("172.30.0.40", 80), 0).outcome,
        Outcome::Reject
    );
    let mut np = tcp(NODE_IP, 30040);
    np.dst_local = true;
    assert_eq!(run(&plan, &np, 0).outcome, Outcome::Reject);
}

#[test]
fn internal_local_without_local_endpoints_drops() {
    let plan = plan_of(&sample_ruleset());
    assert_eq!(
        run(&plan, &tcp("172.30.0.50", 80), 0).outcome,
        Outcome::Drop
    );
}

#[test]
fn node_port_with_external_local_uses_local_endpoints_and_keeps_source() {
    let plan = plan_of(&sample_ruleset());
    let mut np = tcp(NODE_IP, 30080);
    np.src = ip("198.51.100.77");
    np.dst_local = true;
    assert_eq!(targets(&plan, &np), vec![(ip("10.0.1.6"), 8080)]);
    assert!(!run(&plan, &np, 0).masquerade);
    // Only the primary node IP serves NodePorts.
    let mut other = np.clone();
    other.dst = ip("192.168.0.11");
    assert_eq!(run(&plan, &other, 0).dnat, None);
}

#[test]
fn external_local_short_circuits_pod_and_host_traffic_to_all_endpoints() {
    let plan = plan_of(&sample_ruleset());
    let pod = tcp("203.0.113.7", 80);
    assert_eq!(targets(&plan, &pod).len(), 2, "pods use cluster endpoints");
    let mut host = tcp("203.0.113.7", 80);
    host.src = ip(NODE_IP);
    host.from_host = true;
    host.src_local = true;
    assert_eq!(targets(&plan, &host).len(), 2);
    assert!(
        run(&plan, &host, 1).masquerade,
        "host traffic is masqueraded"
    );
}

#[test]
fn load_balancer_source_ranges_drop_other_sources() {
    let plan = plan_of(&sample_ruleset());
    let mut allowed = tcp("198.51.100.1", 80);
    allowed.src = ip("198.51.100.99");
    assert_eq!(run(&plan, &allowed, 0).dnat, Some((ip("10.0.1.6"), 8080)));
    let mut denied = allowed.clone();
    denied.src = ip("203.0.113.99");
    assert_eq!(run(&plan, &denied, 0).outcome, Outcome::Drop);
    // The node is inside the ranges, so the VIP itself as source is allowed.
    let mut vip_src = allowed.clone();
    vip_src.src = ip("198.51.100.1");
    assert_eq!(run(&plan, &vip_src, 0).outcome, Outcome::Accept);
}

#[test]
fn dual_stack_service_renders_each_family_in_its_table() {
    let plan = plan_of(&sample_ruleset());
    let mut v6 = tcp("fd00:30::60", 53);
    v6.proto = Protocol::Udp;
    v6.src = ip("fd00:10::77");
    assert_eq!(targets(&plan, &v6), vec![(ip("fd00:10::9"), 8080)]);
    let mut v4 = tcp("172.30.0.60", 53);
    v4.proto = Protocol::Udp;
    assert_eq!(targets(&plan, &v4), vec![(ip("10.0.2.9"), 8080)]);
}

#[test]
fn dual_stack_service_without_ipv6_endpoints_rejects_on_ipv6_not_drops() {
    // Found by the random states judged by kube-proxy: its IPv6 proxier
    // sees no endpoint at all, so the port is rejected there.
    let mut svc = service(
        7,
        "v4-only-endpoints",
        "172.30.0.70",
        vec![endpoint(71, "10.0.3.1", "node-b")],
    );
    svc.cluster_ips.push(ip("fd00:30::70"));
    let plan = plan_of(&Ruleset {
        services: vec![svc],
    });
    let mut v6 = tcp("fd00:30::70", 80);
    v6.src = ip("fd00:10::77");
    assert_eq!(run(&plan, &v6, 0).outcome, Outcome::Reject);
    assert_eq!(
        targets(&plan, &tcp("172.30.0.70", 80)),
        vec![(ip("10.0.3.1"), 8080)]
    );
}

#[test]
fn session_affinity_checks_sets_before_choosing() {
    let plan = plan_of(&sample_ruleset());
    let table = plan.table(switchyard_api::ruleset::IpFamily::V4).unwrap();
    let sets: Vec<_> = table
        .sets
        .iter()
        .filter(|(n, _)| n.starts_with("affinity-"))
        .collect();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].1.timeout_seconds, Some(600));
    assert_eq!(
        run(&plan, &tcp("172.30.0.30", 80), 0).dnat,
        Some((ip("10.0.1.7"), 8080))
    );
}

#[test]
fn bad_endpoint_is_skipped_and_reported() {
    let mut rs = sample_ruleset();
    rs.services[0].endpoints[0].port = 0;
    let plan = plan_of(&rs);
    let skipped: Vec<&String> = plan.skipped().collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("default/web:http"));
    assert_eq!(
        run(&plan, &tcp("172.30.0.40", 80), 0).outcome,
        Outcome::Reject
    );
}

#[test]
fn first_apply_replaces_tables_then_syncs_only_changes() {
    let runner = Arc::new(FakeRunner::default());
    let mut backend = NftablesBackend::new(runner.clone());
    let rs = sample_ruleset();
    let stats = backend.apply(&plan_of(&rs)).unwrap();
    assert!(stats.full);
    let nft_calls = || -> Vec<_> {
        runner
            .calls()
            .into_iter()
            .filter(|c| c.program == "nft")
            .collect()
    };
    let calls = nft_calls();
    assert_eq!(calls.len(), 1, "one transaction for both tables");
    let text = calls[0].stdin.as_deref().unwrap();
    assert!(text.starts_with("add table ip switchyard\ndelete table ip switchyard\n"));
    assert!(text.contains("table ip6 switchyard {"));

    let again = backend.apply(&plan_of(&rs)).unwrap();
    assert!(!again.full);
    assert_eq!(again.written, 0);
    assert_eq!(nft_calls().len(), 1, "nothing to do: no nft run at all");

    let mut changed = rs.clone();
    changed.services[0].endpoints.pop();
    let inc = backend.apply(&plan_of(&changed)).unwrap();
    assert!(!inc.full);
    let calls = nft_calls();
    let text = calls[1].stdin.as_deref().unwrap();
    assert!(!text.contains("list"), "never lists the kernel table");
    // 3 endpoints → 2: its elements move to the pick map of 2, and its
    // ClusterIP goes to that map's pick chain; no rule is written.
    assert!(text.contains("delete element ip switchyard endpoints-vip-cluster-tcp-3 "));
    assert!(text.contains("add element ip switchyard endpoints-vip-cluster-tcp-2 "));
    assert!(text.contains(": goto pick-vip-cluster-tcp-2"), "{text}");
    assert!(!text.contains("rule"), "{text}");
    assert!(inc.written < 10, "{text}");
}

#[test]
fn failed_apply_keeps_the_record_of_what_is_applied() {
    let runner = Arc::new(FakeRunner::default());
    let mut backend = NftablesBackend::new(runner.clone());
    let rs = sample_ruleset();
    backend.apply(&plan_of(&rs)).unwrap();
    let failing = Arc::new(FakeRunner::default());
    failing.fail("nft", "Error: Could not process rule");
    backend.runner = failing;
    let mut changed = rs.clone();
    changed.services.remove(0);
    assert!(backend.apply(&plan_of(&changed)).is_err());
    // The diff is still taken against the rules the kernel kept.
    let step = transaction(backend.applied.as_ref(), &plan_of(&changed));
    assert!(
        step.tx
            .text()
            .unwrap()
            .contains("delete element ip switchyard endpoints-vip-cluster-tcp-3 ")
    );
}

#[test]
fn udp_endpoint_removal_clears_its_conntrack_entries() {
    let runner = Arc::new(FakeRunner::default());
    let mut backend = NftablesBackend::new(runner.clone());
    let flow = |reply: &str| UdpFlow {
        orig_src: "10.9.0.1:4000".parse().unwrap(),
        orig_dst: "172.30.0.60:53".parse().unwrap(),
        reply_src: reply.parse().unwrap(),
        zone: None,
    };
    let (gone, other) = (flow("10.0.2.9:53"), flow("10.0.2.10:53"));
    let table = Arc::new(FakeConntrack::with(vec![gone, other]));
    backend.conntrack = table.clone();
    let rs = sample_ruleset();
    backend.apply(&plan_of(&rs)).unwrap();
    let mut changed = rs.clone();
    let dual = changed
        .services
        .iter_mut()
        .find(|s| s.name == "dual")
        .unwrap();
    dual.endpoints.retain(|b| b.ip != ip("10.0.2.9"));
    backend.apply(&plan_of(&changed)).unwrap();
    assert_eq!(table.flows(), [other]);
}

/// Our tables, whatever number of service tables a previous run used, and
/// nothing else.
#[test]
fn cleanup_deletes_only_our_tables() {
    let runner = Arc::new(FakeRunner::default());
    let mut backend = NftablesBackend::new(runner.clone());
    backend.cleanup().unwrap();
    let calls = runner.calls();
    assert_eq!(calls.len(), 1);
    let mut want = String::new();
    for family in ["ip", "ip6"] {
        for name in std::iter::once("switchyard".to_string())
            .chain((1..16).map(|n| format!("switchyard-{n}")))
        {
            want += &format!("add table {family} {name}\ndelete table {family} {name}\n");
        }
    }
    assert_eq!(calls[0].stdin.as_deref().unwrap(), want);
}

#[test]
fn host_traffic_to_external_local_without_local_endpoints_is_short_circuited_not_dropped() {
    let mut rs = sample_ruleset();
    let lb = rs.services.iter_mut().find(|s| s.name == "lb").unwrap();
    lb.endpoints
        .retain(|b| b.node_name.as_deref() != Some("node-a"));
    let plan = plan_of(&rs);
    let mut host = tcp("203.0.113.7", 80);
    host.src = ip(NODE_IP);
    host.from_host = true;
    host.src_local = true;
    let t = run(&plan, &host, 0);
    assert_eq!(t.dnat, Some((ip("10.0.2.6"), 8080)));
    assert!(t.masquerade);
    // Traffic from outside has no local endpoint to go to.
    let mut outside = tcp("203.0.113.7", 80);
    outside.src = ip("198.51.100.50");
    assert_eq!(run(&plan, &outside, 0).outcome, Outcome::Drop);
}

#[test]
fn chains_of_removed_services_are_deleted_by_the_next_sync_and_made_anew_when_reused() {
    let runner = Arc::new(FakeRunner::default());
    let mut backend = NftablesBackend::new(runner.clone());
    let rs = sample_ruleset();
    backend.apply(&plan_of(&rs)).unwrap();
    let mut without = rs.clone();
    without.services.retain(|s| s.name != "sticky");
    backend.apply(&plan_of(&without)).unwrap();
    let nft = |runner: &FakeRunner| -> Vec<String> {
        runner
            .calls()
            .into_iter()
            .filter(|c| c.program == "nft")
            .map(|c| c.stdin.unwrap_or_default())
            .collect()
    };
    let removal = nft(&runner).pop().unwrap();
    assert!(removal.contains("flush chain ip switchyard service-H6U4RGLG-default/sticky/tcp/http"));
    assert!(!removal.contains("delete chain"), "{removal}");

    backend.apply(&plan_of(&without)).unwrap();
    let calls = nft(&runner);
    assert_eq!(
        calls.last().unwrap(),
        "delete chain ip switchyard service-H6U4RGLG-default/sticky/tcp/http\n",
        "a transaction of its own, before the (empty) sync"
    );

    // Removed and back before the next sync: deleted first, then made anew
    // by the sync's own transaction.
    backend.apply(&plan_of(&rs)).unwrap();
    backend.apply(&plan_of(&without)).unwrap();
    backend.apply(&plan_of(&rs)).unwrap();
    let calls = nft(&runner);
    let [.., delete, add] = calls.as_slice() else {
        panic!("{calls:?}")
    };
    assert_eq!(
        delete,
        "delete chain ip switchyard service-H6U4RGLG-default/sticky/tcp/http\n"
    );
    assert!(add.contains("add chain ip switchyard service-H6U4RGLG-default/sticky/tcp/http\n"));
    assert!(add.contains("add rule ip switchyard service-H6U4RGLG-default/sticky/tcp/http "));
}

/// A model of the kernel table that applies transactions strictly: deleting
/// what is not there, referencing what does not exist or deleting what is
/// still referenced fails the test.
mod model {
    use std::collections::BTreeMap;

    use super::super::ir::{Chain, Match, Pick, SetKind, Stmt, Table, TableId, Value, Verdict};
    use super::super::transaction::{Command, Transaction};

    fn references_chain(table: &Table, name: &str) -> bool {
        let is = |v: &Verdict| matches!(v, Verdict::Jump(c) | Verdict::Goto(c) if c == name);
        let value_is = |v: &Value| matches!(v, Value::Verdict(v) if is(v));
        table
            .sets
            .values()
            .any(|s| s.elements.values().flatten().any(value_is))
            || table.chains.values().flat_map(|c| c.rules.iter()).any(|r| {
                r.stmts
                    .iter()
                    .any(|s| matches!(s, Stmt::Verdict(v) if is(v)))
            })
    }

    fn references_set(table: &Table, name: &str) -> bool {
        table.chains.values().flat_map(|c| c.rules.iter()).any(|r| {
            r.matches
                .iter()
                .any(|m| matches!(m, Match::AddrInSet { set, .. } if set == name))
                || r.stmts.iter().any(|s| match s {
                    Stmt::UpdateSaddr(set) => set == name,
                    Stmt::DnatPick(pick) => pick.map() == name,
                    _ => false,
                })
        })
    }

    /// The tables without the pick maps (and their chains) an incremental
    /// sync made and emptied and `planned` lacks: they stay until the next
    /// full sync or resync.
    pub fn without_stale_picks(held: &Table, planned: &Table) -> Table {
        let mut t = held.clone();
        let stale: Vec<Pick> = t
            .sets
            .iter()
            .filter(|(name, s)| s.elements.is_empty() && !planned.sets.contains_key(*name))
            .filter_map(|(_, s)| match s.kind {
                SetKind::Pick(p) => Some(p),
                _ => None,
            })
            .collect();
        for p in stale {
            t.sets.remove(&p.map());
            t.chains.remove(&p.chain());
        }
        t
    }

    pub fn apply(tables: &mut BTreeMap<TableId, Table>, tx: &Transaction) {
        for c in &tx.commands {
            let text = c.to_string();
            match c {
                Command::ReplaceTable(t) => {
                    tables.insert(t.id(), Table::clone(t));
                }
                Command::DropTable(f) => {
                    tables.remove(f);
                }
                Command::AddSet { table, name, set } => {
                    let t = tables.get_mut(table).expect(&text);
                    let s = t.sets.entry(name.clone()).or_insert_with(|| set.clone());
                    assert!(s.same_definition(set), "redefined: {text}");
                }
                Command::FlushSet { table, name, .. } => {
                    let t = tables.get_mut(table).expect(&text);
                    t.sets.get_mut(name).expect(&text).elements.clear();
                }
                Command::DeleteSet { table, name, .. } => {
                    let t = tables.get_mut(table).expect(&text);
                    assert!(!references_set(t, name), "still referenced: {text}");
                    assert!(t.sets.remove(name).is_some(), "{text}");
                }
                Command::AddElements {
                    table,
                    set,
                    elements,
                } => {
                    let s = tables
                        .get_mut(table)
                        .and_then(|t| t.sets.get_mut(set))
                        .expect(&text);
                    for (k, v) in elements {
                        assert!(s.elements.insert(k.clone(), v.clone()).is_none(), "{text}");
                    }
                }
                Command::DeleteElements { table, set, keys } => {
                    let s = tables
                        .get_mut(table)
                        .and_then(|t| t.sets.get_mut(set))
                        .expect(&text);
                    for k in keys {
                        assert!(s.elements.remove(k).is_some(), "{text}");
                    }
                }
                Command::AddChain { table, name, base } => {
                    let t = tables.get_mut(table).expect(&text);
                    let c = t.chains.entry(name.clone()).or_insert(Chain {
                        base: *base,
                        rules: Default::default(),
                    });
                    assert_eq!(c.base, *base, "redefined: {text}");
                }
                Command::FlushChain { table, name } => {
                    let t = tables.get_mut(table).expect(&text);
                    t.chains.get_mut(name).expect(&text).rules = Default::default();
                }
                Command::DeleteChain { table, name } => {
                    let t = tables.get_mut(table).expect(&text);
                    assert!(!references_chain(t, name), "still referenced: {text}");
                    let chain = t.chains.remove(name).expect(&text);
                    assert!(chain.rules.is_empty(), "{text}");
                }
                Command::AddRule { table, chain, rule } => {
                    let t = tables.get_mut(table).expect(&text);
                    for m in &rule.matches {
                        if let Match::AddrInSet { set, .. } = m {
                            assert!(t.sets.contains_key(set), "{text}");
                        }
                    }
                    for s in &rule.stmts {
                        match s {
                            Stmt::UpdateSaddr(set) => assert!(t.sets.contains_key(set), "{text}"),
                            Stmt::DnatPick(p) => assert!(t.sets.contains_key(&p.map()), "{text}"),
                            Stmt::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => {
                                assert!(t.chains.contains_key(c), "{text}")
                            }
                            _ => {}
                        }
                    }
                    t.chains.get_mut(chain).expect(&text).push(rule.clone());
                }
            }
        }
    }
}

/// One random edit of a ruleset (`op`, `arg` from proptest).
fn mutate(rs: &mut Ruleset, next_id: &mut u32, op: u8, arg: u8) {
    let n = rs.services.len();
    let pick = |_: &Ruleset| -> Option<usize> { (n > 0).then(|| usize::from(arg) % n) };
    let a = u32::from(arg);
    match op % 12 {
        0 => {
            if let Some(i) = pick(rs) {
                let b = &mut rs.services[i].endpoints;
                if !b.is_empty() {
                    b.remove(usize::from(arg) % b.len());
                }
            }
        }
        1 => {
            if let Some(i) = pick(rs) {
                *next_id += 1;
                let node = ["node-a", "node-b"][usize::from(arg) % 2];
                let addr = format!("10.0.{}.{}", arg % 4, 100 + arg % 50);
                rs.services[i]
                    .endpoints
                    .push(endpoint(*next_id, &addr, node));
            }
        }
        2 => {
            if let Some(i) = pick(rs)
                && let Some(b) = rs.services[i].endpoints.first_mut()
            {
                b.ready = !b.ready;
            }
        }
        3 => {
            if let Some(i) = pick(rs) {
                let s = &mut rs.services[i];
                s.session_affinity = match s.session_affinity {
                    Some(_) => None,
                    None => Some(SessionAffinity {
                        timeout_seconds: 30,
                    }),
                };
            }
        }
        4 => {
            *next_id += 1;
            // Another port of an existing service shares its cluster IP and endpoints.
            let mut s = match pick(rs) {
                Some(i) if arg.is_multiple_of(2) => {
                    let mut s = rs.services[i].clone();
                    s.port_name = format!("p{}", *next_id);
                    s.port = 1000 + u16::from(arg);
                    s
                }
                _ => service(
                    *next_id,
                    &format!("svc{}", *next_id),
                    &format!("172.30.1.{arg}"),
                    vec![endpoint(
                        *next_id * 10,
                        &format!("10.0.1.{}", arg % 8),
                        "node-a",
                    )],
                ),
            };
            s.id = *next_id;
            rs.services.push(s);
        }
        5 => {
            if let Some(i) = pick(rs) {
                rs.services.remove(i);
            }
        }
        6 => {
            // External IPs may collide across services: the lower id wins.
            if let Some(i) = pick(rs) {
                rs.services[i].external_ips = vec![ip(&format!("203.0.113.{}", a % 3))];
            }
        }
        7 => {
            if let Some(i) = pick(rs) {
                let s = &mut rs.services[i];
                s.external_traffic_policy = match s.external_traffic_policy {
                    TrafficPolicy::Cluster => TrafficPolicy::Local,
                    TrafficPolicy::Local => TrafficPolicy::Cluster,
                };
            }
        }
        8 => {
            if let Some(i) = pick(rs) {
                let s = &mut rs.services[i];
                s.node_port = match s.node_port {
                    Some(_) => None,
                    None => Some(30000 + u16::from(arg % 5)),
                };
            }
        }
        9 => {
            if let Some(i) = pick(rs)
                && let Some(a) = rs.services[i].session_affinity.as_mut()
            {
                a.timeout_seconds += 1;
            }
        }
        10 => {
            if let Some(i) = pick(rs) {
                let s = &mut rs.services[i];
                s.internal_traffic_policy = match s.internal_traffic_policy {
                    TrafficPolicy::Cluster => TrafficPolicy::Local,
                    TrafficPolicy::Local => TrafficPolicy::Cluster,
                };
            }
        }
        _ => {
            if let Some(i) = pick(rs) {
                let s = &mut rs.services[i];
                if s.load_balancer_ips.is_empty() {
                    s.load_balancer_ips = vec![ip(&format!("198.51.100.{}", 10 + a % 4))];
                    s.load_balancer_source_ranges = vec![cidr("192.168.0.0/24")];
                } else {
                    s.load_balancer_ips.clear();
                }
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any sequence of edits, synced incrementally (and every fifth sync
    /// as the periodic in-place resync), with the service chains in one
    /// table per family or spread over several: the reusing render equals
    /// a fresh one, every transaction applies strictly to the model of what
    /// the kernel holds (a rule or element refers only to its own table's
    /// chains and sets), the result is the planned tables, and the element
    /// index equals one built from scratch.
    #[test]
    fn incremental_syncs_equal_full_renders(
        edits in proptest::collection::vec((0u8..12, proptest::prelude::any::<u8>()), 1..30),
        table_count in 1u8..4,
    ) {
        use std::collections::BTreeMap;
        use switchyard_api::ruleset::IpFamily;

        let mut rs = sample_ruleset();
        let mut next_id = 100;
        let mut plan = plan_in_tables(&rs, table_count);
        let first = transaction(None, &plan);
        let mut tables = BTreeMap::new();
        model::apply(&mut tables, &first.tx);
        let mut applied = Applied::commit(None, plan.clone(), first.index, first.service_rules);
        for (i, (op, arg)) in edits.into_iter().enumerate() {
            mutate(&mut rs, &mut next_id, op, arg);
            let fresh = plan_in_tables(&rs, table_count);
            plan = super::render::render_reusing(Some(&plan), &linked(&rs), &settings(), table_count);
            proptest::prop_assert_eq!(&plan, &fresh);
            let step = if i % 5 == 4 {
                super::resync(&applied, &plan)
            } else {
                transaction(Some(&applied), &plan)
            };
            model::apply(&mut tables, &step.tx);
            let mut cleanup = super::transaction::Transaction::default();
            for (family, chain) in &step.flushed {
                cleanup.delete_chain(*family, chain);
            }
            model::apply(&mut tables, &cleanup);
            applied = Applied::commit(Some(applied), plan.clone(), step.index, step.service_rules);
            proptest::prop_assert_eq!(applied.object_count(), Applied::of(plan.clone()).object_count());
            for family in [IpFamily::V4, IpFamily::V6] {
                let planned = plan.tables(family);
                let held: Vec<&super::ir::Table> =
                    tables.values().filter(|t| t.family == family).collect();
                let index = applied.index(family).unwrap();
                // The pick maps the kernel holds are the ones the index records.
                let held_picks: std::collections::BTreeSet<(u8, super::ir::Pick)> = held
                    .iter()
                    .flat_map(|t| t.sets.values().filter_map(move |s| match s.kind {
                        super::ir::SetKind::Pick(p) => Some((t.shard, p)),
                        _ => None,
                    }))
                    .collect();
                proptest::prop_assert_eq!(held_picks, index.picks().clone());
                let held: Vec<super::ir::Table> = held
                    .iter()
                    .zip(&planned)
                    .map(|(h, p)| model::without_stale_picks(h, p))
                    .collect();
                proptest::prop_assert_eq!(&held, &planned);
                let fresh = super::diff::ElementIndex::of(&plan, family);
                proptest::prop_assert_eq!(index.without_picks_beyond(&fresh), fresh);
            }
        }
    }
}

/// A service port whose names nftables cannot carry (a ruleset nothing
/// validated) is skipped, named in the listing's one `# skipped:` line per
/// family, and the other service ports are rendered.
#[test]
fn service_port_with_a_name_nftables_cannot_carry_is_skipped_and_reported() {
    let mut rs = sample_ruleset();
    rs.services[0].name = "web\"\n-A INPUT -j ACCEPT\n#".into();
    let plan = plan_of(&rs);
    let skipped: Vec<&String> = plan.skipped().collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].contains("refused: character not allowed"),
        "{}",
        skipped[0]
    );
    assert!(!plan.services[&1].fragments.iter().any(|f| !f.is_empty()));
    assert_eq!(
        plan.services
            .values()
            .filter(|s| !s.fragments.is_empty())
            .count(),
        5
    );
    let listing = plan.to_string();
    let line = listing
        .lines()
        .find(|l| l.starts_with("# skipped: default/web"))
        .unwrap();
    assert!(line.ends_with("refused: character not allowed"), "{line}");
    assert!(!listing.contains("\n-A INPUT"));
}

/// A plan with such a name (built by hand: the render never makes one)
/// is refused before `nft` runs.
#[test]
fn apply_refuses_a_plan_with_a_name_nftables_cannot_carry() {
    let runner = Arc::new(FakeRunner::default());
    let mut backend = NftablesBackend::new(runner.clone());
    let mut plan = plan_of(&sample_ruleset());
    let setup = Arc::make_mut(&mut plan.setup[0]);
    let chain = setup.chains.remove("services").unwrap();
    setup
        .chains
        .insert("services\"; flush ruleset".into(), chain);
    let err = backend.apply(&plan).unwrap_err();
    assert!(matches!(err, crate::BackendError::Name { .. }), "{err}");
    assert!(runner.calls().iter().all(|c| c.program != "nft"));
}

/// Regression: a cluster whose service port count hovers around a
/// threshold must not rewrite every table on each sync; a count in use is
/// kept until it is more than twice what the service ports need, and grows
/// as soon as they need more. Below one table's worth there is one table.
#[test]
fn a_cluster_near_a_table_threshold_does_not_rewrite_its_tables_back_and_forth() {
    use super::table_count::TableCount;
    let per = TableCount::PerServicePorts(5000);
    assert_eq!(per.tables(0, None), 1);
    assert_eq!(per.tables(5000, None), 1);
    assert_eq!(per.tables(5001, None), 2);
    assert_eq!(per.tables(44000, None), 9);
    assert_eq!(per.tables(10_000_000, None), super::ir::MAX_TABLES);
    // Hovering around 5000 with two tables in use: kept.
    assert_eq!(per.tables(4999, Some(2)), 2);
    assert_eq!(per.tables(1, Some(2)), 2);
    // 44k shrinking: 9 kept down to 20k+ (5 needed), then fewer.
    assert_eq!(per.tables(40000, Some(9)), 9);
    assert_eq!(per.tables(25000, Some(9)), 9);
    assert_eq!(per.tables(20000, Some(9)), 4);
    // Growing past the count in use: more at once.
    assert_eq!(per.tables(46000, Some(9)), 10);
    assert_eq!(
        TableCount::Fixed(40).tables(1, Some(3)),
        super::ir::MAX_TABLES
    );
    assert_eq!(TableCount::Fixed(0).tables(1, None), 1);
}
