//! Pure tests of the IPVS backend: the codec against the kernel's captured
//! answers, render tables, and apply/cleanup against the in-memory IPVS table.

use std::net::IpAddr;
use std::sync::Arc;

use netlink_packet_core::{Emitable, NetlinkMessage, NetlinkPayload, ParseableParametrized};
use netlink_packet_generic::{GenlHeader, GenlMessage};
use switchyard_api::Mode;
use switchyard_api::policy::{NodeInfo, link};
use switchyard_api::proxyconfig::{IpvsScheduler, IpvsSchedulerFlag};
use switchyard_api::ruleset::{
    Endpoint, IpFamily, Protocol, Ruleset, ServicePortRule, SessionAffinity, TrafficPolicy,
};

use super::capture::parse_hex;
use super::fake::{FakeDummy, FakeIpvs, IpsetRunner};
use super::genl::{DestAttr, IpvsAttr, IpvsCmd, IpvsMessage, ServiceAttr, StatsAttr};
use super::kernel::{Ipvs, IpvsKernel};
use super::objects::{DestState, RealServer, ServiceKey, Timeouts, VirtualServer};
use super::plan::SetEntry;
use super::*;
use crate::Backend;
use crate::exec::FakeRunner;
use crate::iptables::trace::{Origin, Packet, Verdict, trace_with_sets};
use crate::settings::{LocalDetector, Settings};
use crate::sysctl::FakeSysctl;

fn decode(fixture: &str) -> (Vec<u8>, NetlinkMessage<GenlMessage<IpvsMessage>>) {
    let bytes = parse_hex(fixture);
    let msg = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&bytes).unwrap();
    (bytes, msg)
}

fn payload(msg: &NetlinkMessage<GenlMessage<IpvsMessage>>) -> &IpvsMessage {
    match &msg.payload {
        NetlinkPayload::InnerMessage(m) => &m.payload,
        other => panic!("not an IPVS message: {other:?}"),
    }
}

/// Re-encode the decoded message and compare with the kernel's bytes.
fn assert_round_trip(bytes: &[u8], msg: &NetlinkMessage<GenlMessage<IpvsMessage>>) {
    let mut out = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out);
    assert_eq!(out, bytes, "re-encoded message differs from the capture");
}

#[test]
fn kernel_service_dump_decodes_to_our_virtual_server_and_re_encodes_byte_exact() {
    let (bytes, msg) = decode(include_str!("fixtures/get_service_reply.hex"));
    let m = payload(&msg);
    assert_eq!(m.cmd, IpvsCmd::NewService);
    let vs = VirtualServer::from_message(&m.attrs).unwrap();
    assert_eq!(
        vs,
        VirtualServer {
            key: ServiceKey {
                protocol: Protocol::Tcp,
                addr: "10.96.0.10".parse().unwrap(),
                port: 80,
            },
            scheduler: "rr".into(),
            flags: 0x1,
            timeout: 600,
            netmask: u32::MAX,
        }
    );
    // The kernel adds statistics, both widths.
    let IpvsAttr::Service(attrs) = &m.attrs[0] else {
        panic!("first attribute is not the service: {:?}", m.attrs)
    };
    assert!(attrs.iter().any(|a| matches!(a, ServiceAttr::Stats(s) if s.iter().all(|c| matches!(c, StatsAttr::Counter { .. })))));
    assert!(attrs.iter().any(|a| matches!(a, ServiceAttr::Stats64(_))));
    assert_round_trip(&bytes, &msg);
}

#[test]
fn kernel_dest_dump_decodes_weight_and_connection_counts_and_re_encodes_byte_exact() {
    let (bytes, msg) = decode(include_str!("fixtures/get_dest_reply.hex"));
    let m = payload(&msg);
    assert_eq!(m.cmd, IpvsCmd::NewDest);
    let d = DestState::from_message(&m.attrs, super::genl::AF_INET).unwrap();
    assert_eq!(d.server.endpoint(), "10.1.1.2:8080");
    assert_eq!((d.server.weight, d.active, d.inactive), (1, 0, 0));
    let IpvsAttr::Dest(attrs) = &m.attrs[0] else {
        panic!("not a dest: {:?}", m.attrs)
    };
    assert!(attrs.contains(&DestAttr::FwdMethod(super::genl::FWD_MASQ)));
    assert_round_trip(&bytes, &msg);
}

#[test]
fn kernel_config_reply_decodes_the_timeouts_and_re_encodes_byte_exact() {
    let (bytes, msg) = decode(include_str!("fixtures/get_config_reply.hex"));
    let m = payload(&msg);
    assert_eq!(m.cmd, IpvsCmd::SetConfig);
    assert_eq!(
        Timeouts::from_attrs(&m.attrs),
        Timeouts {
            tcp: 900,
            tcp_fin: 30,
            udp: 60
        }
    );
    assert_round_trip(&bytes, &msg);
}

#[test]
fn kernel_info_reply_uses_info_attribute_numbers_and_re_encodes_byte_exact() {
    let (bytes, msg) = decode(include_str!("fixtures/get_info_reply.hex"));
    let m = payload(&msg);
    assert_eq!(m.cmd, IpvsCmd::SetInfo);
    assert!(
        m.attrs
            .iter()
            .any(|a| matches!(a, IpvsAttr::InfoVersion(v) if *v >= 0x010200))
    );
    assert!(
        m.attrs
            .iter()
            .any(|a| matches!(a, IpvsAttr::InfoConnTabSize(_)))
    );
    assert_round_trip(&bytes, &msg);
}

#[test]
fn new_service_request_is_encoded_as_ipvsadm_does() {
    let vs = VirtualServer {
        key: ServiceKey {
            protocol: Protocol::Udp,
            addr: "10.0.0.1".parse().unwrap(),
            port: 53,
        },
        scheduler: "sh".into(),
        flags: 0x8,
        timeout: 0,
        netmask: 0,
    };
    let msg = IpvsMessage {
        cmd: IpvsCmd::NewService,
        attrs: vec![IpvsAttr::Service(vs.attrs())],
    };
    let mut out = vec![0u8; msg.buffer_len()];
    msg.emit(&mut out);
    let want = parse_hex(
        "54 00 01 00                                       # IPVS_CMD_ATTR_SERVICE (84 bytes), nested, no NLA_F_NESTED (as the kernel)
         06 00 01 00 02 00 00 00                           # IPVS_SVC_ATTR_AF AF_INET
         06 00 02 00 11 00 00 00                           # IPVS_SVC_ATTR_PROTOCOL 17 (udp)
         14 00 03 00 0a 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00  # IPVS_SVC_ATTR_ADDR 10.0.0.1 in a 16-byte union
         06 00 04 00 00 35 00 00                           # IPVS_SVC_ATTR_PORT 53, network order
         07 00 06 00 73 68 00 00                           # IPVS_SVC_ATTR_SCHED_NAME \"sh\\0\" + pad
         0c 00 07 00 08 00 00 00 ff ff ff ff               # IPVS_SVC_ATTR_FLAGS flags=SCHED1 (sh-fallback) mask=all
         08 00 08 00 00 00 00 00                           # IPVS_SVC_ATTR_TIMEOUT 0
         08 00 09 00 00 00 00 00                           # IPVS_SVC_ATTR_NETMASK 0",
    );
    assert_eq!(out, want);
}

#[test]
fn unknown_attributes_round_trip_untouched() {
    let bytes = parse_hex(
        "14 00 01 00          # IPVS_CMD_ATTR_SERVICE (20 bytes)
         06 00 01 00 02 00 00 00   # AF_INET
         08 00 63 00 de ad be ef   # attribute 99, unknown to us",
    );
    let msg = IpvsMessage::parse_with_param(&bytes, GenlHeader { cmd: 1, version: 1 }).unwrap();
    assert!(matches!(&msg.attrs[0], IpvsAttr::Service(a) if matches!(a[1], ServiceAttr::Other(_))));
    let mut out = vec![0u8; msg.buffer_len()];
    msg.emit(&mut out);
    assert_eq!(out, bytes);
}

// ---- render ----

fn endpoint(id: u32, ip: &str, node: &str) -> Endpoint {
    Endpoint {
        node_name: Some(node.into()),
        ..Endpoint::new(id, ip.parse().unwrap(), 8080)
    }
}

fn rule() -> ServicePortRule {
    ServicePortRule {
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        node_port: Some(30080),
        endpoints: vec![
            endpoint(1, "10.1.1.2", "node-a"),
            endpoint(2, "10.1.2.2", "node-b"),
        ],
        ..ServicePortRule::new(1, "default", "web", Protocol::Tcp, 80)
    }
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "node-a".into(),
        zone: None,
        addresses: vec!["192.168.0.1".parse().unwrap()],
    }
}

fn plan_for(rules: Vec<ServicePortRule>, settings: &Settings) -> IpvsPlan {
    render::render(&link(&Ruleset { services: rules }, &node()), settings)
}

fn key(addr: &str, port: u16) -> ServiceKey {
    ServiceKey {
        protocol: Protocol::Tcp,
        addr: addr.parse().unwrap(),
        port,
    }
}

fn set(plan: &IpvsPlan, name: &str) -> Vec<String> {
    plan.ipsets
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no set {name}"))
        .entries
        .iter()
        .map(SetEntry::to_string)
        .collect()
}

#[test]
fn cluster_ip_and_node_port_become_virtual_servers_addresses_and_set_members() {
    let plan = plan_for(vec![rule()], &Settings::defaults(Mode::Ipvs));
    let keys: Vec<ServiceKey> = plan.services.keys().copied().collect();
    assert_eq!(keys, [key("10.96.0.10", 80), key("192.168.0.1", 30080)]);
    for s in plan.services.values() {
        let rs: Vec<String> = s.real_servers.iter().map(|r| r.endpoint()).collect();
        assert_eq!(rs, ["10.1.1.2:8080", "10.1.2.2:8080"]);
        assert!(s.real_servers.iter().all(|r| r.weight == 1));
        assert_eq!(s.server.scheduler, "rr");
    }
    let addrs: Vec<IpAddr> = plan.addresses.iter().copied().collect();
    assert_eq!(addrs, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(set(&plan, "KUBE-CLUSTER-IP"), ["10.96.0.10,tcp:80"]);
    assert_eq!(set(&plan, "KUBE-NODE-PORT-TCP"), ["30080"]);
    assert!(set(&plan, "KUBE-NODE-PORT-LOCAL-TCP").is_empty());
    assert_eq!(
        set(&plan, "KUBE-LOOP-BACK"),
        ["10.1.1.2,tcp:8080,10.1.1.2", "10.1.2.2,tcp:8080,10.1.2.2"]
    );
    assert_eq!(set(&plan, "KUBE-IPVS-IPS"), ["10.96.0.10"]);
    let text = plan.to_string();
    assert!(
        text.contains("TCP 10.96.0.10:80 rr  # default/web"),
        "{text}"
    );
    assert!(
        text.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"),
        "{text}"
    );
}

#[test]
fn client_ip_affinity_is_ipvs_persistence_with_its_timeout() {
    let mut r = rule();
    r.session_affinity = Some(SessionAffinity {
        timeout_seconds: 10800,
    });
    let plan = plan_for(vec![r], &Settings::defaults(Mode::Ipvs));
    let vs = &plan.services[&key("10.96.0.10", 80)].server;
    assert_eq!(
        (vs.flags, vs.timeout, vs.netmask),
        (super::genl::SVC_F_PERSISTENT, 10800, u32::MAX)
    );
}

#[test]
fn scheduler_flags_apply_to_hashing_schedulers_only() {
    let mut s = Settings::defaults(Mode::Ipvs);
    s.ipvs.scheduler = IpvsScheduler::Mh;
    s.ipvs.scheduler_flags = vec![IpvsSchedulerFlag::Fallback, IpvsSchedulerFlag::Port];
    let plan = plan_for(vec![rule()], &s);
    assert_eq!(plan.services[&key("10.96.0.10", 80)].server.flags, 0x18);
    s.ipvs.scheduler = IpvsScheduler::Wlc;
    let plan = plan_for(vec![rule()], &s);
    assert_eq!(plan.services[&key("10.96.0.10", 80)].server.flags, 0);
    assert_eq!(
        plan.services[&key("10.96.0.10", 80)].server.scheduler,
        "wlc"
    );
}

#[test]
fn external_traffic_local_uses_local_endpoints_local_sets_and_reports_the_limit() {
    let mut r = rule();
    r.external_traffic_policy = TrafficPolicy::Local;
    r.load_balancer_ips = vec!["203.0.113.7".parse().unwrap()];
    r.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    let plan = plan_for(vec![r], &Settings::defaults(Mode::Ipvs));
    for k in [key("192.168.0.1", 30080), key("203.0.113.7", 80)] {
        let rs: Vec<String> = plan.services[&k]
            .real_servers
            .iter()
            .map(|r| r.endpoint())
            .collect();
        assert_eq!(rs, ["10.1.1.2:8080"], "{k}");
    }
    // The cluster IP keeps every endpoint.
    assert_eq!(plan.services[&key("10.96.0.10", 80)].real_servers.len(), 2);
    assert_eq!(set(&plan, "KUBE-NODE-PORT-LOCAL-TCP"), ["30080"]);
    assert_eq!(
        set(&plan, "KUBE-LOAD-BALANCER-LOCAL"),
        ["203.0.113.7,tcp:80"]
    );
    assert_eq!(set(&plan, "KUBE-LOAD-BALANCER-FW"), ["203.0.113.7,tcp:80"]);
    assert_eq!(
        set(&plan, "KUBE-LOAD-BALANCER-SOURCE-CIDR"),
        ["203.0.113.7,tcp:80,198.51.100.0/24"]
    );
    assert_eq!(plan.limitations.len(), 1);
    assert!(
        set(&plan, "KUBE-LOAD-BALANCER-SOURCE-IP").is_empty(),
        "the node is in no range"
    );
}

#[test]
fn a_source_range_holding_the_node_lets_the_load_balancer_ip_in_as_source() {
    let mut r = rule();
    r.load_balancer_ips = vec!["203.0.113.7".parse().unwrap()];
    r.load_balancer_source_ranges = vec!["192.168.0.0/24".parse().unwrap()];
    let plan = plan_for(vec![r], &Settings::defaults(Mode::Ipvs));
    assert_eq!(
        set(&plan, "KUBE-LOAD-BALANCER-SOURCE-IP"),
        ["203.0.113.7,tcp:80,203.0.113.7"]
    );
}

#[test]
fn ipv6_services_get_kube_6_sets_and_ip6tables_rules() {
    let mut r = rule();
    r.cluster_ips = vec!["fd00::10".parse().unwrap()];
    r.node_port = None;
    r.endpoints = vec![endpoint(1, "fd01::2", "node-a")];
    let plan = plan_for(vec![r], &Settings::defaults(Mode::Ipvs));
    assert_eq!(set(&plan, "KUBE-6-CLUSTER-IP"), ["fd00::10,tcp:80"]);
    // Names are cut to the kernel's 31 characters, as kube-proxy cuts them.
    assert!(
        plan.ipsets
            .iter()
            .any(|s| s.name == "KUBE-6-LOAD-BALANCER-SOURCE-CID")
    );
    assert!(plan.ipsets.iter().all(|s| s.name.len() <= 31));
    assert!(
        plan.rules
            .iter()
            .any(|r| r.family == switchyard_api::ruleset::IpFamily::V6)
    );
    let vs = &plan.services[&ServiceKey {
        protocol: Protocol::Tcp,
        addr: "fd00::10".parse().unwrap(),
        port: 80,
    }];
    assert_eq!(vs.real_servers.len(), 1);
}

// ---- the iptables part, traced with the iptables mode's tracer ----

#[test]
fn traced_ipvs_rules_reject_unknown_ports_enforce_source_ranges_and_masquerade_as_kube_proxy() {
    let shop = ServicePortRule {
        cluster_ips: vec!["10.96.0.20".parse().unwrap()],
        load_balancer_ips: vec!["203.0.113.7".parse().unwrap()],
        load_balancer_source_ranges: vec!["198.51.100.0/24".parse().unwrap()],
        node_port: Some(30443),
        external_traffic_policy: TrafficPolicy::Local,
        endpoints: vec![endpoint(3, "10.1.1.3", "node-a")],
        ..ServicePortRule::new(2, "default", "shop", Protocol::Tcp, 443)
    };
    let mut settings = Settings::defaults(Mode::Ipvs);
    settings.local_detector = LocalDetector::Cidrs(vec!["10.1.0.0/16".parse().unwrap()]);
    let plan = plan_for(vec![rule(), shop], &settings);
    let rules = plan
        .rules
        .iter()
        .find(|r| r.family == IpFamily::V4)
        .unwrap();
    // Service addresses are the node's own, on kube-ipvs0.
    let local: Vec<IpAddr> = node()
        .addresses
        .into_iter()
        .chain(plan.addresses.iter().copied())
        .collect();
    let traced_from = |origin, source: &str, destination: &str, port: u16| {
        let packet = Packet {
            origin,
            protocol: Protocol::Tcp,
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
            port,
        };
        trace_with_sets(rules, &local, &plan, &packet)
            .into_iter()
            .map(|o| (o.verdict, o.masquerade))
            .collect::<Vec<(Verdict, bool)>>()
    };
    let traced = |source: &str, destination: &str, port: u16| {
        traced_from(Origin::Remote, source, destination, port)
    };
    let (pod, outside, allowed) = ("10.1.2.2", "172.16.0.9", "198.51.100.5");
    let to_ipvs = |masquerade| vec![(Verdict::Untranslated, masquerade)];
    // Cluster IP: IPVS serves it; off-cluster sources are masqueraded.
    assert_eq!(traced(pod, "10.96.0.10", 80), to_ipvs(false));
    assert_eq!(traced(outside, "10.96.0.10", 80), to_ipvs(true));
    // Another port of a service address is the node's own: rejected.
    assert_eq!(traced(pod, "10.96.0.10", 81), [(Verdict::Reject, false)]);
    // Another port of the node's address is no business of ours.
    assert_eq!(traced(outside, "192.168.0.1", 22), to_ipvs(false));
    // NodePorts: masqueraded unless eTP Local keeps the client address.
    assert_eq!(traced(outside, "192.168.0.1", 30080), to_ipvs(true));
    assert_eq!(traced(outside, "192.168.0.1", 30443), to_ipvs(false));
    // Load balancer with source ranges (eTP Local: not masqueraded).
    assert_eq!(traced(allowed, "203.0.113.7", 443), to_ipvs(false));
    assert_eq!(
        traced(outside, "203.0.113.7", 443),
        [(Verdict::Drop, false)]
    );
    // The node's own connection SNATed to the LB IP: no range holds the node,
    // so KUBE-IPVS-OUT-FILTER drops it.
    assert_eq!(
        traced_from(Origin::Node, "203.0.113.7", "203.0.113.7", 443),
        [(Verdict::Drop, false)]
    );
    // Hairpin: a pod's connection IPVS sent back to that pod leaves masqueraded.
    assert_eq!(traced("10.1.1.2", "10.1.1.2", 8080), to_ipvs(true));
}

// ---- apply / cleanup against the fake kernel ----

fn backend(fake: &FakeIpvs) -> (IpvsBackend, Arc<FakeRunner>, FakeDummy) {
    let runner = Arc::new(FakeRunner::default());
    let dummy = FakeDummy::default();
    (
        IpvsBackend::new(
            Box::new(fake.clone()),
            Box::new(dummy.clone()),
            runner.clone(),
            Box::new(FakeSysctl::default()),
        ),
        runner,
        dummy,
    )
}

fn kernel_dests(fake: &FakeIpvs, k: &ServiceKey) -> Vec<DestState> {
    Ipvs(&mut fake.clone()).dests(k).unwrap()
}

#[test]
fn removed_endpoint_with_open_connections_is_quiesced_then_deleted_when_drained() {
    let f = FakeIpvs::default();
    let (mut b, _, _) = backend(&f);
    let s = Settings::defaults(Mode::Ipvs);
    let plan = plan_for(vec![rule()], &s);
    b.apply(&plan).unwrap();
    let vip = key("10.96.0.10", 80);
    let pod1 = ("10.1.1.2".parse().unwrap(), 8080);
    f.table().set_active(&vip, pod1, 3);

    let mut r = rule();
    r.endpoints.remove(0);
    let plan = plan_for(vec![r], &s);
    b.apply(&plan).unwrap();
    let d = kernel_dests(&f, &vip);
    assert_eq!(d.len(), 2);
    assert_eq!(
        d.iter()
            .find(|d| d.server.port == 8080 && d.server.addr == pod1.0)
            .unwrap()
            .server
            .weight,
        0
    );
    assert!(b.draining().contains(&vip));

    f.table().set_active(&vip, pod1, 0);
    b.apply(&plan).unwrap();
    let left: Vec<String> = kernel_dests(&f, &vip)
        .iter()
        .map(|d| d.server.endpoint())
        .collect();
    assert_eq!(left, ["10.1.2.2:8080"]);
    assert!(b.draining().is_empty());
}

#[test]
fn cleanup_deletes_only_our_virtual_servers() {
    let mut f = FakeIpvs::default();
    let foreign = VirtualServer {
        key: key("192.168.0.1", 9999),
        scheduler: "wlc".into(),
        flags: 0,
        timeout: 0,
        netmask: u32::MAX,
    };
    f.request(
        IpvsMessage {
            cmd: IpvsCmd::NewService,
            attrs: vec![IpvsAttr::Service(foreign.attrs())],
        },
        false,
    )
    .unwrap();
    let (mut b, runner, dummy) = backend(&f);
    let plan = plan_for(vec![rule()], &Settings::defaults(Mode::Ipvs));
    b.apply(&plan).unwrap();
    assert_eq!(f.table().services.len(), 3);
    assert_eq!(dummy.state(), Some(plan.addresses.clone()));
    b.cleanup().unwrap();
    assert_eq!(dummy.state(), None, "kube-ipvs0 is deleted");
    let left: Vec<ServiceKey> = f.table().services.keys().copied().collect();
    assert_eq!(left, [foreign.key]);
    // Our sets are destroyed by name, never with a bare `ipset destroy`/`flush`.
    for call in runner.calls() {
        assert!(
            !(call.program == "ipset" && call.args == ["destroy"]),
            "{call:?}"
        );
        assert!(
            !(call.program == "ipset" && call.args == ["flush"]),
            "{call:?}"
        );
    }
}

#[test]
fn apply_programs_sets_before_the_rules_that_use_them() {
    let (mut b, runner, _) = backend(&FakeIpvs::default());
    b.apply(&plan_for(vec![rule()], &Settings::defaults(Mode::Ipvs)))
        .unwrap();
    let calls = runner.calls();
    let pos = |program: &str| calls.iter().position(|c| c.program == program).unwrap();
    assert!(pos("ipset") < pos("iptables-restore"));
    let restore = calls
        .iter()
        .find(|c| c.program == "ipset" && c.args == ["restore"])
        .unwrap();
    let text = restore.stdin.as_deref().unwrap();
    assert!(
        text.contains(
            "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 -exist"
        ),
        "{text}"
    );
    assert!(
        text.contains("add KUBE-CLUSTER-IP 10.96.0.10,tcp:80"),
        "{text}"
    );
    let rules = calls
        .iter()
        .find(|c| c.program == "iptables-restore")
        .unwrap();
    assert_eq!(rules.args, ["-w", "--noflush"]);
    let text = rules.stdin.as_deref().unwrap();
    assert!(
        text.contains("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"),
        "{text}"
    );
    // The jumps from the built-in chains are written with the chains.
    assert!(
        text.contains(
            "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ),
        "{text}"
    );
}

/// IPVS -> eBPF cut the node's connections to a cluster IP and masqueraded
/// NodePort ones: the rules went at once, and with them the NAT hooks their
/// conntrack entries need. Retired for eBPF, rules and sets drain with the
/// virtual servers.
#[test]
fn retired_for_ebpf_keeps_rules_and_sets_until_its_connections_end() {
    let f = FakeIpvs::default();
    let (mut b, runner, _) = backend(&f);
    b.apply(&plan_for(vec![rule()], &Settings::defaults(Mode::Ipvs)))
        .unwrap();
    let vip = key("10.96.0.10", 80);
    f.table()
        .set_active(&vip, ("10.1.1.2".parse().unwrap(), 8080), 1);
    let applied = runner.calls().len();
    let removals = |from: usize| {
        runner.calls()[from..]
            .iter()
            .filter(|c| {
                // Listing our rules to remove them, removing them, destroying sets.
                c.program.contains("tables-") || (c.program == "ipset" && c.args == ["restore"])
            })
            .count()
    };

    assert_eq!(b.retire(Mode::Ebpf).unwrap(), Retirement::Draining);
    assert_eq!(b.settle().unwrap(), Retirement::Draining);
    assert_eq!(removals(applied), 0, "{:?}", &runner.calls()[applied..]);
    assert!(f.table().services.contains_key(&vip));

    f.table()
        .set_active(&vip, ("10.1.1.2".parse().unwrap(), 8080), 0);
    assert_eq!(b.settle().unwrap(), Retirement::Done);
    assert!(removals(applied) > 0, "rules removed at the end");
    assert!(f.table().services.is_empty());
}

/// kube-proxy's ipvs layout as a fresh agent finds it when it adopts the
/// node: a NodePort virtual server on the node's address (not on
/// `kube-ipvs0`), with one established connection, named ours only by the
/// node-port ipset; the backend that sees it, over that ipset.
fn kube_proxy_node_port(f: &FakeIpvs) -> (IpvsBackend, Arc<IpsetRunner>, ServiceKey) {
    let runner = Arc::new(IpsetRunner::default());
    runner
        .run(
            "ipset",
            &["restore"],
            Some(b"create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\nadd KUBE-NODE-PORT-TCP 30080\n"),
        )
        .unwrap();
    let node_port = key("192.168.0.2", 30080);
    let pod = RealServer {
        addr: "10.1.1.2".parse().unwrap(),
        port: 8080,
        weight: 1,
    };
    let server = VirtualServer {
        key: node_port,
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
        netmask: u32::MAX,
    };
    let dest = DestState {
        server: pod,
        active: 1,
        inactive: 0,
    };
    let dests = [((pod.addr, pod.port), dest)].into_iter().collect();
    f.table().services.insert(node_port, (server, dests));
    let backend = IpvsBackend::new(
        Box::new(f.clone()),
        Box::new(FakeDummy::default()),
        runner.clone(),
        Box::new(FakeSysctl::default()),
    );
    (backend, runner, node_port)
}

/// An adoption from kube-proxy's ipvs mode left its NodePort virtual
/// servers behind for good: retiring destroyed the node-port ipsets at once,
/// and with them what named those servers ours, so they were neither
/// drained nor removed.
#[test]
fn kube_proxys_node_port_servers_drain_then_go_with_the_ipsets_that_name_them() {
    let f = FakeIpvs::default();
    let (mut b, runner, node_port) = kube_proxy_node_port(&f);

    assert_eq!(b.retire(Mode::Nftables).unwrap(), Retirement::Draining);
    assert!(f.table().services.contains_key(&node_port));
    assert_eq!(runner.set_names(), ["KUBE-NODE-PORT-TCP"]);

    f.table()
        .set_active(&node_port, ("10.1.1.2".parse().unwrap(), 8080), 0);
    assert_eq!(b.settle().unwrap(), Retirement::Done);
    assert!(f.table().services.is_empty());
    assert!(runner.set_names().is_empty());
}

/// `cleanup` of a fresh backend (`node-agent cleanup` on a node kube-proxy
/// ran in ipvs mode) destroyed the node-port ipsets before it looked for
/// the NodePort servers they name, and left those servers.
#[test]
fn cleanup_removes_node_port_servers_before_the_ipsets_that_name_them() {
    let f = FakeIpvs::default();
    let (mut b, runner, _) = kube_proxy_node_port(&f);

    b.cleanup().unwrap();
    assert!(f.table().services.is_empty());
    assert!(runner.set_names().is_empty());
}
