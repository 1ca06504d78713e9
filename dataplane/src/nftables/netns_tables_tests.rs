//! Real-kernel tests of the service chains spread over several tables per
//! family (`switchyard`, `switchyard-1`, …), in namespaces the tests create
//! (`synft<pid>-…`): every table holds what the plan puts in it through
//! full and incremental syncs (netlink and `nft -f`), a VIP whose chain is in
//! a service table is reached, a key two service ports claim is only in the
//! winner's table, and tables a plan no longer uses are removed.

use std::sync::Arc;

use switchyard_api::ruleset::{IpFamily, Ruleset, ServicePortRule};

use super::NftablesBackend;
use super::table_count::TableCount;
use super::tests::{endpoint, linked, sample_ruleset, service, settings};
use crate::Backend;
use crate::exec::RealRunner;
use crate::testns::{self, Netns, TestNetns, node_and_pod, vip_reply};

fn backend(tables: u8, ns: &Netns) -> NftablesBackend {
    NftablesBackend::with_tables(ns.runner(), TableCount::Fixed(tables))
}

fn apply(backend: &mut NftablesBackend, rs: &Ruleset) -> crate::ApplyStats {
    let plan = backend.render(&linked(rs), &settings());
    backend.apply(&plan).unwrap()
}

/// The table a service port named `name` gets of `tables`.
fn table_of(name: &str, tables: u8) -> u8 {
    let rs = Ruleset {
        services: vec![service(
            1,
            name,
            "172.30.0.1",
            vec![endpoint(1, "10.0.1.1", "node-a")],
        )],
    };
    let plan = super::render::render_reusing(None, &linked(&rs), &settings(), tables);
    plan.services[&1].fragments[0].shard
}

/// A service name whose chains go to table `shard` of `tables`.
fn name_in(shard: u8, tables: u8) -> String {
    (0..)
        .map(|n| format!("svc{n}"))
        .find(|name| table_of(name, tables) == shard)
        .unwrap()
}

/// `nft list tables` of the namespace, sorted.
fn tables(ns: &Netns) -> Vec<String> {
    let mut t: Vec<String> = ns
        .sh("nft list tables")
        .lines()
        .map(str::to_string)
        .collect();
    t.sort();
    t
}

/// Chain, set and map names of one kernel table, sorted.
fn kernel_names(ns: &Netns, family: IpFamily, table: &str) -> Vec<String> {
    let word = super::text::family_word(family);
    super::netns_tests::listed_names(&ns.sh(&format!("nft list table {word} {table}")))
}

/// Every table of the plan holds exactly its planned chains and sets.
fn assert_planned(ns: &Netns, backend: &NftablesBackend, rs: &Ruleset, what: &str) {
    let plan = backend.render(&linked(rs), &settings());
    for family in [IpFamily::V4, IpFamily::V6] {
        for t in plan.tables(family) {
            let name = t.id().name();
            assert_eq!(
                kernel_names(ns, family, name),
                super::netns_tests::planned_names(backend, &t),
                "{what}: {name} ({family:?})"
            );
        }
    }
}

fn ruleset_over_tables(tables: u8) -> Ruleset {
    let mut rs = sample_ruleset();
    for shard in 0..tables {
        let id = 40 + u32::from(shard);
        let vip = format!("172.30.1.{shard}");
        let ep = format!("10.0.4.{shard}");
        rs.services.push(service(
            id,
            &name_in(shard, tables),
            &vip,
            vec![endpoint(id * 10, &ep, "node-a")],
        ));
    }
    rs
}

#[test]
fn every_table_holds_what_the_plan_puts_in_it_through_full_and_incremental_syncs() {
    let Some(ns) = testns::create("tables") else {
        return;
    };
    // Over netlink (the agent's path): the backend acts in the namespace.
    let mut backend =
        ns.enter(|| NftablesBackend::with_tables(Arc::new(RealRunner), TableCount::Fixed(3)));
    let rs = ruleset_over_tables(3);
    assert!(ns.enter(|| apply(&mut backend, &rs)).full);
    let names: Vec<String> = ["switchyard", "switchyard-1", "switchyard-2"]
        .iter()
        .flat_map(|t| [format!("table ip {t}"), format!("table ip6 {t}")])
        .collect();
    let mut want = names.clone();
    want.sort();
    assert_eq!(tables(&ns), want);
    assert_planned(&ns, &backend, &rs, "full");

    let mut steps = Vec::new();
    // An endpoint of the service in each table moves.
    let mut s = rs.clone();
    for svc in s.services.iter_mut().filter(|s| s.name.starts_with("svc")) {
        svc.endpoints[0] = endpoint(svc.endpoints[0].id + 1, "10.0.5.9", "node-a");
    }
    steps.push(s.clone());
    // A service of each table goes, and comes back with affinity.
    let gone: Vec<ServicePortRule> = s
        .services
        .drain(..)
        .filter(|s| s.name.starts_with("svc"))
        .collect();
    steps.push(s.clone());
    for mut svc in gone {
        svc.session_affinity = Some(switchyard_api::ruleset::SessionAffinity {
            timeout_seconds: 30,
        });
        s.services.push(svc);
    }
    steps.push(s);
    steps.push(rs.clone());
    for (i, step) in steps.iter().enumerate() {
        let stats = ns.enter(|| apply(&mut backend, step));
        assert!(!stats.full, "step {i}");
        // The next sync deletes the chains this one emptied.
        ns.enter(|| apply(&mut backend, step));
        assert_planned(&ns, &backend, step, &format!("step {i}"));
    }
    ns.enter(|| backend.cleanup()).unwrap();
    assert_eq!(ns.sh("nft list tables"), "");
}

/// A TCP connect to a ClusterIP whose chain is in a service table (the
/// main table's nat chains do not know it) reaches the endpoint.
#[test]
fn a_cluster_ip_in_a_service_table_reaches_its_endpoint() {
    let Some((node, pod)) = node_and_pod("tbl") else {
        return;
    };
    let mut backend = backend(4, &node);
    let mut web = service(
        1,
        &name_in(3, 4),
        "172.30.0.10",
        vec![endpoint(11, "10.0.1.5", "node-a")],
    );
    web.port_name = "http".into();
    apply(
        &mut backend,
        &Ruleset {
            services: vec![web],
        },
    );
    let main = node.sh("nft list table ip switchyard");
    assert!(!main.contains("10.0.1.5 . 8080"), "{main}");
    assert!(
        node.sh("nft list table ip switchyard-3")
            .contains(": 10.0.1.5 . 8080")
    );
    assert_eq!(vip_reply(&node, &pod), "pod-10.0.1.5");
}

/// Regression: two service ports claiming one `service-ips` key from
/// different tables must not both hold it, or the table whose nat chain
/// runs first DNATs, not the lower rule id the one-table layout picks.
/// Tried with the winner in either table (the hook order of equal
/// priorities is the kernel's); the loser's endpoint refuses connections.
#[test]
fn a_vip_two_service_ports_claim_is_dnatted_by_the_lower_id_in_whatever_table() {
    for (tag, winner_table, loser_table) in [("dup0", 0, 1), ("dup1", 1, 0)] {
        let Some((node, pod)) = node_and_pod(tag) else {
            return;
        };
        let mut backend = backend(2, &node);
        let winner = service(
            1,
            &name_in(winner_table, 2),
            "172.30.0.10",
            vec![endpoint(11, "10.0.1.5", "node-a")],
        );
        let mut dead = endpoint(21, "10.0.1.5", "node-a");
        dead.port = 9090;
        let loser = service(2, &name_in(loser_table, 2), "172.30.0.10", vec![dead]);
        let rs = Ruleset {
            services: vec![winner, loser],
        };
        apply(&mut backend, &rs);
        let map = |shard: u8| {
            let table = super::ir::TableId {
                family: IpFamily::V4,
                shard,
            };
            node.sh(&format!("nft list map ip {} service-ips", table.name()))
        };
        assert!(!map(loser_table).contains("172.30.0.10"), "{tag}");
        assert_eq!(vip_reply(&node, &pod), "pod-10.0.1.5", "{tag}");

        // The winner goes: the key moves to the loser's table, incrementally.
        let rest = Ruleset {
            services: rs.services[1..].to_vec(),
        };
        assert!(!apply(&mut backend, &rest).full);
        assert!(map(loser_table).contains("172.30.0.10"), "{tag}");
        assert!(!map(winner_table).contains("172.30.0.10"), "{tag}");
    }
}

/// Regression: a plan with fewer tables (a smaller cluster, or an agent
/// restarted with another count) must remove the service tables it no
/// longer uses; their stale maps would still DNAT.
#[test]
fn fewer_tables_remove_the_service_tables_no_longer_used() {
    let Some(ns) = testns::create("shrink") else {
        return;
    };
    let rs = ruleset_over_tables(4);
    apply(&mut backend(4, &ns), &rs);
    assert_eq!(tables(&ns).len(), 8);
    // A restarted agent that knows nothing of the earlier tables.
    let mut restarted = backend(2, &ns);
    assert!(apply(&mut restarted, &rs).full);
    let mut want: Vec<String> = ["switchyard", "switchyard-1"]
        .iter()
        .flat_map(|t| [format!("table ip {t}"), format!("table ip6 {t}")])
        .collect();
    want.sort();
    assert_eq!(tables(&ns), want);
    assert_planned(&ns, &restarted, &rs, "two tables");
    restarted.cleanup().unwrap();
    assert_eq!(ns.sh("nft list tables"), "");

    // One agent whose cluster shrinks: one table per two service ports,
    // then (fewer than half as many needed) one table.
    let mut shrinking = NftablesBackend::with_tables(ns.runner(), TableCount::PerServicePorts(2));
    let big = ruleset_over_tables(4);
    assert!(big.services.len() > 6);
    apply(&mut shrinking, &big);
    assert!(tables(&ns).len() > 2, "{:?}", tables(&ns));
    let small = Ruleset {
        services: big.services[..2].to_vec(),
    };
    assert!(apply(&mut shrinking, &small).full);
    assert_eq!(tables(&ns), ["table ip switchyard", "table ip6 switchyard"]);
    assert_planned(&ns, &shrinking, &small, "one table");
    shrinking.cleanup().unwrap();
}
