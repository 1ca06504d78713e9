//! Render: ruleset → map contents (pure).

use std::net::IpAddr;

use super::fixtures::*;
use crate::Backend as _;
use crate::ebpf::EbpfBackend;
use crate::ebpf::kernel::FakeKernel;
use crate::ebpf::layout::*;
use crate::ebpf::plan::render;
use crate::settings::Settings;
use switchyard_api::Mode;
use switchyard_api::ruleset::TrafficPolicy;

fn settings() -> Settings {
    Settings::defaults(Mode::Ebpf)
}

#[test]
fn cluster_ip_maps_to_internal_list_of_its_backends() {
    let rs = linked(vec![service(
        7,
        "10.96.0.10",
        80,
        vec![
            endpoint(70, "10.244.1.5", 8080, "node-a"),
            endpoint(71, "10.244.2.5", 8080, "node-b"),
        ],
    )]);
    let plan = render(&rs, &settings());
    let fe = plan.maps.frontends
        [&FrontendKey::new(ip("10.96.0.10"), 80, switchyard_api::ruleset::Protocol::Tcp)];
    assert_eq!((fe.svc_id, fe.kind), (7, KIND_CLUSTER_IP));
    assert_eq!(plan.maps.lists[&(7, LIST_INTERNAL)].backends, vec![70, 71]);
    assert!(!plan.maps.lists.contains_key(&(7, LIST_INTERNAL | LIST_V6)));
    assert_eq!(
        plan.maps.backends[&71],
        BackendEntry::new(ip("10.244.2.5"), 8080)
    );
    assert!(plan.problems.is_empty());
    let text = EbpfBackend::new(FakeKernel::default())
        .render(&rs, &settings())
        .to_string();
    assert!(text.contains("10.96.0.10:80/tcp"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["7", "internal/v4", "2", "-", "0", "70", "71"]),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.trim() == "71 10.244.2.5:8080"),
        "{text}"
    );
}

#[test]
fn node_port_with_local_external_policy_uses_local_endpoints_without_masquerade() {
    let mut svc = service(
        3,
        "10.96.0.3",
        80,
        vec![
            endpoint(30, "10.244.1.5", 8080, "node-a"),
            endpoint(31, "10.244.2.5", 8080, "node-b"),
        ],
    );
    svc.node_port = Some(30080);
    svc.external_traffic_policy = TrafficPolicy::Local;
    let plan = render(&linked(vec![svc.clone()]), &settings());
    let np = plan.maps.frontends[&FrontendKey::new(ip(NODE_IP), 30080, svc.protocol)];
    assert_eq!((np.svc_id, np.kind), (3, KIND_NODE_PORT));
    let external = &plan.maps.lists[&(3, LIST_EXTERNAL)];
    assert_eq!(external.backends, vec![30]);
    assert_eq!(external.flags & SVC_MASQUERADE, 0);
    assert_eq!(plan.maps.lists[&(3, LIST_CLUSTER)].backends, vec![30, 31]);

    svc.external_traffic_policy = TrafficPolicy::Cluster;
    let plan = render(&linked(vec![svc]), &settings());
    let external = &plan.maps.lists[&(3, LIST_EXTERNAL)];
    assert_eq!(external.backends, vec![30, 31]);
    assert_ne!(external.flags & SVC_MASQUERADE, 0);
}

#[test]
fn masquerade_all_does_not_masquerade_external_traffic_with_local_policy() {
    let mut svc = service(
        3,
        "10.96.0.3",
        80,
        vec![endpoint(30, "10.244.1.5", 8080, "node-a")],
    );
    svc.node_port = Some(30080);
    svc.external_traffic_policy = TrafficPolicy::Local;
    let mut masquerade_all = settings();
    masquerade_all.masquerade_all = true;
    let plan = render(&linked(vec![svc]), &masquerade_all);
    let external = &plan.maps.lists[&(3, LIST_EXTERNAL)];
    assert_eq!(
        external.flags & SVC_MASQUERADE,
        0,
        "eTP Local keeps the client"
    );
    let internal = &plan.maps.lists[&(3, LIST_INTERNAL)];
    assert_ne!(
        internal.flags & SVC_MASQUERADE,
        0,
        "cluster IP: masqueradeAll"
    );
}

#[test]
fn service_without_endpoints_rejects() {
    let plan = render(
        &linked(vec![service(4, "10.96.0.4", 53, vec![])]),
        &settings(),
    );
    let list = &plan.maps.lists[&(4, LIST_INTERNAL)];
    assert!(list.backends.is_empty());
    assert_ne!(list.flags & SVC_REJECT, 0);
}

/// A dual-stack service whose endpoints are all IPv4 once dropped its IPv6
/// traffic: kube-proxy's IPv6 proxier has no endpoint and rejects.
#[test]
fn a_family_without_endpoints_rejects_while_the_other_serves() {
    let mut svc = service(
        8,
        "10.96.0.8",
        80,
        vec![endpoint(80, "10.244.1.5", 8080, "node-a")],
    );
    svc.cluster_ips.push(ip("fd00:96::8"));
    let plan = render(&linked(vec![svc]), &settings());
    let v4 = &plan.maps.lists[&(8, LIST_INTERNAL)];
    let v6 = &plan.maps.lists[&(8, LIST_INTERNAL | LIST_V6)];
    assert_eq!((v4.flags & SVC_REJECT, v4.backends.len()), (0, 1));
    assert_ne!(v6.flags & SVC_REJECT, 0, "no IPv6 endpoint: reject");
    assert!(v6.backends.is_empty());
}

#[test]
fn load_balancer_source_ranges_apply_to_load_balancer_ips_only() {
    let mut svc = service(
        5,
        "10.96.0.5",
        443,
        vec![endpoint(50, "10.244.1.5", 8443, "node-a")],
    );
    svc.load_balancer_ips = vec![ip("203.0.113.5")];
    svc.external_ips = vec![ip("198.51.100.5")];
    svc.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    let plan = render(&linked(vec![svc]), &settings());
    let lb = plan.maps.frontends[&FrontendKey::new(
        ip("203.0.113.5"),
        443,
        switchyard_api::ruleset::Protocol::Tcp,
    )];
    let ext = plan.maps.frontends[&FrontendKey::new(
        ip("198.51.100.5"),
        443,
        switchyard_api::ruleset::Protocol::Tcp,
    )];
    assert_eq!(lb.flags, FE_SOURCE_RANGES);
    assert_eq!(ext.flags, 0);
    let (range, prefix) = plan.maps.source_ranges.iter().next().unwrap();
    assert_eq!(
        (range.svc_id, *prefix, range.addr),
        (5, 24, Addr::from_ip(ip("198.51.100.0")))
    );
}

#[test]
fn a_source_range_holding_the_node_lets_the_load_balancer_ips_in_as_sources() {
    let mut svc = service(
        5,
        "10.96.0.5",
        443,
        vec![endpoint(50, "10.244.1.5", 8443, "node-a")],
    );
    svc.load_balancer_ips = vec![ip("203.0.113.5")];
    svc.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    let ranges = |plan: &crate::ebpf::plan::EbpfPlan| -> Vec<(IpAddr, u8)> {
        plan.maps
            .source_ranges
            .iter()
            .map(|(r, p)| (r.addr.to_ip(r.family as u8), *p))
            .collect()
    };
    let plan = render(&linked(vec![svc.clone()]), &settings());
    assert_eq!(ranges(&plan), [(ip("198.51.100.0"), 24)], "node outside");

    svc.load_balancer_source_ranges
        .push(format!("{NODE_IP}/32").parse().unwrap());
    let plan = render(&linked(vec![svc]), &settings());
    let got = ranges(&plan);
    assert!(got.contains(&(ip("203.0.113.5"), 32)), "{got:?}");
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn colliding_frontend_is_skipped_and_reported() {
    let a = service(
        1,
        "10.96.0.1",
        80,
        vec![endpoint(10, "10.244.1.5", 80, "node-a")],
    );
    let b = service(
        2,
        "10.96.0.1",
        80,
        vec![endpoint(20, "10.244.1.6", 80, "node-a")],
    );
    let plan = render(&linked(vec![a, b]), &settings());
    assert_eq!(plan.maps.frontends.len(), 1);
    assert_eq!(plan.maps.frontends.values().next().unwrap().svc_id, 1);
    assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
    assert!(plan.problems[0].contains("10.96.0.1:80/tcp"));
}

#[test]
fn maglev_tables_cover_every_backend_and_move_few_entries_on_change() {
    let mut s = settings();
    s.ebpf.maglev_table_size = Some(251);
    let backends: Vec<_> = (0..5)
        .map(|i| endpoint(100 + i, &format!("10.244.1.{}", i + 1), 80, "node-a"))
        .collect();
    let mut svc = service(9, "10.96.0.9", 80, backends.clone());
    svc.node_port = Some(30009);
    let before = render(&linked(vec![svc.clone()]), &s).maps.maglev[&(9, LIST_EXTERNAL)].clone();
    assert_eq!(before.len(), 251);
    for b in &backends {
        let n = before.iter().filter(|id| **id == b.id).count();
        assert!((40..=60).contains(&n), "backend {} has {n} entries", b.id);
    }
    svc.endpoints.pop();
    let after = render(&linked(vec![svc]), &s).maps.maglev[&(9, LIST_EXTERNAL)].clone();
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && **a != 104)
        .count();
    assert!(
        moved < 251 / 5,
        "{moved} entries of surviving backends moved"
    );
}
