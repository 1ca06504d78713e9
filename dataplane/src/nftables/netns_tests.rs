//! Real-kernel tests: full and incremental syncs land in a network namespace
//! this test creates (`synft<pid>-…`), a broken apply keeps the previous
//! rules, and a real TCP connection to a service VIP reaches its endpoint.
//! Skipped, loudly, when not root.

use std::sync::Arc;

use switchyard_api::ruleset::Ruleset;

use super::NftablesBackend;
use super::tests::{NODE_IP, endpoint, ip, linked, sample_ruleset, service, settings};
use crate::Backend;
use crate::ebpf::masq_ports::MasqueradePorts;
use crate::exec::RealRunner;
use crate::testns::{self, TestNetns, node_and_pod, reply, vip_reply};

fn apply(backend: &mut NftablesBackend, rs: &Ruleset) -> crate::ApplyStats {
    let plan = backend.render(&linked(rs), &settings());
    backend.apply(&plan).unwrap()
}

/// Beside a draining eBPF the masquerade takes other ports, and after it the
/// kernel's again: each change rewrote the whole tables (a full sync for
/// a changed setting); only the masquerade chain is written again.
#[test]
fn a_masquerade_ports_change_rewrites_only_the_masquerade_chain() {
    let Some(ns) = testns::create("masq-ports") else {
        return;
    };
    let mut backend = NftablesBackend::new(ns.runner());
    let rs = sample_ruleset();
    assert!(apply(&mut backend, &rs).full);
    let mut beside = settings();
    beside.masquerade_ports = Some(MasqueradePorts {
        min: 32768,
        max: 65535,
    });
    for (s, ports) in [(beside, true), (settings(), false)] {
        let plan = backend.render(&linked(&rs), &s);
        let stats = backend.apply(&plan).unwrap();
        assert!(!stats.full, "{stats:?}");
        let chain = ns.sh("nft list chain ip switchyard masquerading");
        assert_eq!(
            chain.contains("meta l4proto udp masquerade to :32768-65535 fully-random"),
            ports,
            "{chain}"
        );
        assert!(chain.contains("\t\tmasquerade fully-random"), "{chain}");
    }
}

#[test]
fn full_and_incremental_syncs_land_in_the_kernel_and_a_broken_apply_keeps_them() {
    let Some(ns) = testns::create("apply") else {
        return;
    };
    let mut backend = NftablesBackend::new(ns.runner());
    assert!(!backend.present().unwrap());

    let rs = sample_ruleset();
    assert!(apply(&mut backend, &rs).full);
    assert!(backend.present().unwrap());
    let listed = ns.sh("nft list table ip switchyard");
    assert!(listed.contains(": 10.0.2.5 . 8080"), "{listed}");
    assert!(
        ns.sh("nft list table ip6 switchyard")
            .contains(": fd00:10::9 . 8080")
    );

    // Incremental: one endpoint replaced, one service removed.
    let mut changed = rs.clone();
    changed.services[0].endpoints[1] = endpoint(19, "10.0.9.5", "node-z");
    changed.services.retain(|s| s.name != "sticky");
    let stats = apply(&mut backend, &changed);
    assert!(!stats.full);
    let listed = ns.sh("nft list table ip switchyard");
    assert!(listed.contains(": 10.0.9.5 . 8080"), "{listed}");
    assert!(!listed.contains(": 10.0.2.5 . 8080"));
    assert!(
        !listed.contains("affinity-"),
        "removed service's sets are gone"
    );
    // Its emptied chain is deleted by the next sync.
    assert!(listed.contains("default/sticky"));
    apply(&mut backend, &changed);
    let listed = ns.sh("nft list table ip switchyard");
    assert!(!listed.contains("sticky"), "{listed}");
    // What the kernel holds equals a fresh full render of the same ruleset.
    let expected_chains = backend
        .render(&linked(&changed), &settings())
        .table(switchyard_api::ruleset::IpFamily::V4)
        .unwrap()
        .chains
        .len();
    let kernel_chains = listed.matches("\tchain ").count();
    assert_eq!(kernel_chains, expected_chains);

    // Broken apply: an element nft rejects (a new service's dispatch to
    // a chain that is not there); the previous rules stay.
    let mut broken = changed.clone();
    broken.services.push(service(
        99,
        "broken",
        "172.30.0.99",
        vec![endpoint(991, "10.0.1.99", "node-a")],
    ));
    let mut plan = backend.render(&linked(&broken), &settings());
    let service = Arc::make_mut(plan.services.get_mut(&99).unwrap());
    let dispatch = service.fragments[0]
        .elements
        .iter_mut()
        .find(|((set, _), _)| *set == super::ir::SetName::Named("service-ips"))
        .unwrap()
        .1;
    *dispatch = Some(super::ir::Verdict::Goto("no-such-chain".to_string()).into());
    assert!(backend.apply(&plan).is_err());
    let after = ns.sh("nft list table ip switchyard");
    assert_eq!(after, listed, "failed transaction changed nothing");
    // And the backend still syncs incrementally from what is really there.
    let stats = apply(&mut backend, &broken);
    assert!(!stats.full);
    assert!(
        ns.sh("nft list table ip switchyard")
            .contains(": 10.0.1.99 . 8080")
    );

    backend.cleanup().unwrap();
    assert!(!backend.present().unwrap());
    assert_eq!(ns.sh("nft list tables"), "");
}

/// The pick chains take their key from the map that matched, not from
/// the destination: NodePort traffic to the node's address by the
/// NodePort's key, traffic to an external IP that is the node's address
/// by the address's key. An endpoint count change moves the endpoints to
/// another pick map within an incremental sync, and traffic still reaches
/// them through every frontend.
#[test]
fn node_port_and_an_external_ip_on_the_node_address_reach_endpoints_across_an_endpoint_count_change()
 {
    let Some((node, pod)) = node_and_pod("np") else {
        return;
    };
    node.sh(&format!("ip addr add {NODE_IP}/32 dev lo"));
    // A second endpoint address on the pod, answering as the first.
    pod.sh("ip addr add 10.0.1.6/24 dev $(ip -o link show type veth | cut -d: -f2 | cut -d@ -f1)");
    let mut backend = NftablesBackend::new(node.runner());
    let mut web = service(
        1,
        "web",
        "172.30.0.10",
        vec![endpoint(11, "10.0.1.5", "node-a")],
    );
    web.node_port = Some(30080);
    web.external_ips = vec![ip(NODE_IP)];
    let frontends = [
        "172.30.0.10:80".to_string(),
        format!("{NODE_IP}:30080"),
        format!("{NODE_IP}:80"),
    ];
    let one = Ruleset {
        services: vec![web.clone()],
    };
    assert!(apply(&mut backend, &one).full);
    let listed = node.sh("nft list table ip switchyard");
    assert!(listed.contains("30080 . 0 : 10.0.1.5 . 8080"), "{listed}");
    assert!(listed.contains(&format!("{NODE_IP} . 80 . 0 : 10.0.1.5 . 8080")));
    for to in &frontends {
        assert_eq!(reply(&node, &pod, to), "pod-10.0.1.5", "{to}");
    }
    let mut two = one.clone();
    two.services[0]
        .endpoints
        .push(endpoint(12, "10.0.1.6", "node-a"));
    // 1 → 2 endpoints, then 2 → 1 (the other one): incremental each time.
    let mut other = one.clone();
    other.services[0].endpoints = vec![endpoint(12, "10.0.1.6", "node-a")];
    for (rs, n) in [(&two, 2), (&other, 1)] {
        assert!(!apply(&mut backend, rs).full);
        let listed = node.sh("nft list table ip switchyard");
        let map = format!("map endpoints-nodeport-cluster-tcp-{n} {{");
        let elements = listed.split(&map).nth(1).unwrap_or_default();
        assert!(
            elements.contains(&format!("30080 . {} :", n - 1)),
            "{listed}"
        );
        for to in &frontends {
            assert_eq!(
                reply(&node, &pod, to),
                "pod-10.0.1.5",
                "{n} endpoints: {to}"
            );
        }
    }
}

#[test]
fn tcp_connect_to_a_cluster_ip_reaches_the_endpoint() {
    let Some((node, pod)) = node_and_pod("vip") else {
        return;
    };
    let mut backend = NftablesBackend::new(node.runner());
    let rs = Ruleset {
        services: vec![service(
            1,
            "web",
            "172.30.0.10",
            vec![endpoint(11, "10.0.1.5", "node-a")],
        )],
    };
    apply(&mut backend, &rs);
    // The pod answers with its own name; the node connects to the VIP.
    assert_eq!(vip_reply(&node, &pod), "pod-10.0.1.5");
}

/// Chains and set names in `nft list table` output.
pub(super) fn listed_names(listing: &str) -> Vec<String> {
    let mut names: Vec<String> = listing
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            ["chain ", "set ", "map "]
                .iter()
                .find_map(|p| l.strip_prefix(p))
                .and_then(|rest| rest.strip_suffix(" {"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// The chains and sets the kernel holds in `table` once `backend` applied
/// its plan: the table's, and the pick chains and maps an incremental sync
/// made and emptied (kept until the next full sync or resync).
pub(super) fn planned_names(backend: &NftablesBackend, table: &super::ir::Table) -> Vec<String> {
    let mut names: Vec<String> = table
        .chains
        .keys()
        .chain(table.sets.keys())
        .cloned()
        .collect();
    let index = backend.applied.as_ref().and_then(|a| a.index(table.family));
    let picks = index.into_iter().flat_map(|i| i.picks());
    for (_, pick) in picks.filter(|(shard, _)| *shard == table.shard) {
        if !table.sets.contains_key(&pick.map()) {
            names.extend([pick.map(), pick.chain()]);
        }
    }
    names.sort();
    names
}

#[test]
fn every_incremental_transition_is_accepted_and_leaves_exactly_the_planned_objects() {
    let Some(ns) = testns::create("steps") else {
        return;
    };
    let mut backend = NftablesBackend::new(ns.runner());
    let base = sample_ruleset();
    let mut steps = vec![base.clone()];
    // All endpoints of a service go away (its chain goes, REJECT elements come).
    let mut s = base.clone();
    s.services[0].endpoints.clear();
    steps.push(s.clone());
    // They come back, and a new service appears.
    let mut s = base.clone();
    s.services.push(service(
        7,
        "new",
        "172.30.0.70",
        vec![endpoint(71, "10.0.1.70", "node-a")],
    ));
    steps.push(s.clone());
    // Session affinity on a service that had none (new affinity sets), then off.
    s.services[0].session_affinity = Some(switchyard_api::ruleset::SessionAffinity {
        timeout_seconds: 30,
    });
    steps.push(s.clone());
    steps.push(base.clone());
    // Everything removed.
    steps.push(Ruleset::default());
    steps.push(base);

    for (i, rs) in steps.iter().enumerate() {
        let plan = backend.render(&linked(rs), &settings());
        let stats = backend
            .apply(&plan)
            .unwrap_or_else(|e| panic!("step {i}: {e}"));
        assert_eq!(stats.full, i == 0, "step {i}");
        // The next sync deletes the chains this one emptied, and nothing else.
        let again = backend
            .apply(&plan)
            .unwrap_or_else(|e| panic!("step {i} again: {e}"));
        assert_eq!(again.written, 0, "step {i}");
        for family in [
            switchyard_api::ruleset::IpFamily::V4,
            switchyard_api::ruleset::IpFamily::V6,
        ] {
            let word = super::text::family_word(family);
            let listed = ns.sh(&format!("nft list table {word} switchyard"));
            assert_eq!(
                listed_names(&listed),
                planned_names(&backend, &plan.table(family).unwrap()),
                "step {i} ({word})"
            );
        }
    }
}

#[test]
fn periodic_resync_repairs_drift_and_keeps_session_affinity_entries() {
    let Some(ns) = testns::create("resync") else {
        return;
    };
    let mut backend = NftablesBackend::new(ns.runner());
    let rs = sample_ruleset();
    apply(&mut backend, &rs);
    let planned = ns.sh("nft list table ip switchyard");
    let plan = backend.render(&linked(&rs), &settings());
    let table = plan.table(switchyard_api::ruleset::IpFamily::V4).unwrap();
    let affinity = table
        .sets
        .keys()
        .find(|n| n.starts_with("affinity-"))
        .unwrap()
        .clone();
    let web = table
        .chains
        .keys()
        .find(|n| *n == "pick-vip-cluster-tcp-3")
        .unwrap()
        .clone();
    // A client's session, as `update @set` records it; then drift: the
    // rule of web's pick chain, its endpoint and a ClusterIP element
    // deleted behind our back.
    ns.sh(&format!(
        "nft add element ip switchyard {affinity} {{ 10.0.5.5 }}"
    ));
    ns.sh(&format!("nft flush chain ip switchyard {web}"));
    ns.sh("nft delete element ip switchyard cluster-ips { 172.30.0.10 }");
    ns.sh("nft delete element ip switchyard endpoints-vip-cluster-tcp-3 { 172.30.0.10 . 80 . 1 }");
    assert_ne!(ns.sh("nft list table ip switchyard"), planned);

    backend.invalidate();
    let stats = apply(&mut backend, &rs);
    assert!(stats.full);
    let session = ns.sh(&format!("nft list set ip switchyard {affinity}"));
    assert!(session.contains("10.0.5.5"), "session kept: {session}");
    // Everything else is as planned again.
    ns.sh(&format!(
        "nft delete element ip switchyard {affinity} {{ 10.0.5.5 }}"
    ));
    assert_eq!(ns.sh("nft list table ip switchyard"), planned);

    // A set whose definition changed (an affinity timeout) is made anew in
    // place, by the incremental sync and by the resync alike.
    let mut longer = rs.clone();
    let sticky = longer
        .services
        .iter_mut()
        .find(|s| s.name == "sticky")
        .unwrap();
    sticky.session_affinity = Some(switchyard_api::ruleset::SessionAffinity {
        timeout_seconds: 900,
    });
    assert!(!apply(&mut backend, &longer).full);
    assert!(
        ns.sh(&format!("nft list set ip switchyard {affinity}"))
            .contains("timeout 15m")
    );
    backend.invalidate();
    assert!(apply(&mut backend, &rs).full);
    // The set made anew is listed last (the kernel lists in creation order).
    let blocks = |listing: &str| {
        let body = listing.strip_prefix("table ip switchyard {\n").unwrap();
        let mut b: Vec<String> = body.split("\n\n").map(str::to_string).collect();
        b.sort();
        b
    };
    assert_eq!(
        blocks(&ns.sh("nft list table ip switchyard")),
        blocks(&planned)
    );
}

#[test]
fn netlink_transactions_reach_the_namespace_of_the_thread_that_applies() {
    let (Some(built_in), Some(applied_in)) = (testns::create("built"), testns::create("applied"))
    else {
        return;
    };
    // Built on a thread in one namespace, driven from a thread in another
    // (as the VM tests and the harness do): the rules land where apply runs.
    let mut backend = built_in.enter(|| NftablesBackend::new(Arc::new(RealRunner)));
    let rs = sample_ruleset();
    applied_in.enter(|| assert!(apply(&mut backend, &rs).full));
    let mut changed = rs.clone();
    changed.services[0].endpoints[1] = endpoint(19, "10.0.9.5", "node-z");
    applied_in.enter(|| assert!(!apply(&mut backend, &changed).full));
    let listed = applied_in.sh("nft list table ip switchyard");
    assert!(listed.contains(": 10.0.9.5 . 8080"), "{listed}");
    assert_eq!(built_in.sh("nft list tables"), "");
    applied_in.enter(|| backend.cleanup()).unwrap();
    assert_eq!(applied_in.sh("nft list tables"), "");
}
