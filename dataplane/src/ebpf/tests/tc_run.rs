//! The tc programs in the kernel (BPF_PROG_TEST_RUN through aya's `test_run`):
//! crafted frames in, rewritten frames out, checksums verified.

use std::net::IpAddr;
use std::path::Path;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use switchyard_api::Mode;
use switchyard_api::ruleset::TrafficPolicy;

use super::fixtures::*;
use crate::ebpf::EbpfBackend;
use crate::ebpf::kernel::{AyaKernel, KernelConfig};
use crate::ebpf::layout::Tuple;
use crate::ebpf::masq_ports::MasqueradePorts;
use crate::ebpf::objects;
use crate::ebpf::plan::{EbpfPlan, LoadConfig, render};
use crate::ebpf::probe::Capabilities;
use crate::settings::{LocalDetector, Settings};
use crate::sysctl::ProcSysctl;
use crate::{Backend as _, Retirement};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An Ethernet/IP frame with a TCP SYN (proto 6) or a UDP datagram (17), checksums set.
fn frame(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    tcp_flags_frame(proto, TCP_SYN, src, sport, dst, dport)
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// As [`frame`], a TCP segment with `flags` (ignored for UDP).
fn tcp_flags_frame(proto: u8, flags: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let payload = b"hello";
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let csum_at = if proto == 6 { 16 } else { 6 };
    let csum = l4_checksum(proto, src, dst, &l4);
    l4[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());

    let (ethertype, ip) = match (src, dst) {
        (IpAddr::V4(s4), IpAddr::V4(d4)) => {
            let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
            ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&s4.octets());
            ip.extend_from_slice(&d4.octets());
            let c = fold(sum16(&ip, 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            ([0x08, 0x00], ip)
        }
        (IpAddr::V6(s6), IpAddr::V6(d6)) => {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            ip.extend_from_slice(&[proto, 64]);
            ip.extend_from_slice(&s6.octets());
            ip.extend_from_slice(&d6.octets());
            ([0x86, 0xdd], ip)
        }
        _ => panic!("mixed families"),
    };
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype);
    f.extend(ip);
    f.extend(l4);
    f
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn l4_checksum(proto: u8, src: IpAddr, dst: IpAddr, l4_zeroed: &[u8]) -> u16 {
    let mut pseudo = octets(src);
    pseudo.extend(octets(dst));
    if src.is_ipv4() {
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4_zeroed.len() as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&(l4_zeroed.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    }
    fold(sum16(l4_zeroed, sum16(&pseudo, 0)))
}

/// (src, sport, dst, dport) of a frame, after checking its checksums.
fn parse_checked(f: &[u8]) -> (String, u16, String, u16) {
    let (src, dst, proto, l4) = if f[12..14] == [0x08, 0x00] {
        let ip = &f[14..34];
        assert_eq!(fold(sum16(ip, 0)), 0, "IPv4 header checksum");
        let src = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
        let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
        (src, dst, ip[9], &f[34..])
    } else {
        let ip = &f[14..54];
        let src = IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        let dst = IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        (src, dst, ip[6], &f[54..])
    };
    let csum_at = if proto == 6 { 16 } else { 6 };
    let mut zeroed = l4.to_vec();
    let got = u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]);
    zeroed[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    assert_eq!(got, l4_checksum(proto, src, dst, &zeroed), "L4 checksum");
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    (src.to_string(), port(0), dst.to_string(), port(2))
}

/// Run program `name` of `programs` on a frame, in the calling thread's
/// network namespace: the verdict and the frame after it.
fn run_program(programs: &mut aya::Ebpf, name: &str, input: &[u8]) -> (u32, Vec<u8>) {
    let prog: &mut SchedClassifier = programs.program_mut(name).unwrap().try_into().unwrap();
    let mut out = vec![0u8; input.len() + 64];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .unwrap();
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// The loaded tc programs over maps pinned in a bpffs of the test.
struct Harness {
    _bpffs: ScratchBpffs,
    programs: aya::Ebpf,
    /// The backend that wrote the maps, in the namespace it ran in.
    backend: EbpfBackend<AyaKernel>,
    pin_root: std::path::PathBuf,
    ns: Netns,
    /// The masquerade ports the programs pick from.
    ports: MasqueradePorts,
}

const PROGRAMS: [&str; 2] = ["sy_tc_ingress", "sy_tc_egress"];

/// `sy_tuple.pad` of conntrack values (`ct.h`): flags, then a stamp in seconds.
const CT_FLAGS: u16 = 3;
const CT_STAMP_SHIFT: u16 = 2;
const CT_STAMP_MASK: u16 = 0x3fff;

/// The tc programs of `config` over the maps pinned under `pin_root`, loaded
/// (not attached).
fn load_tc(config: &LoadConfig, ports: MasqueradePorts, pin_root: &Path) -> aya::Ebpf {
    let mut programs = AyaKernel::load_object(
        config,
        Capabilities::probe(),
        ports,
        &pin_root.join("maps"),
        objects::TC,
    )
    .unwrap();
    for name in PROGRAMS {
        let prog: &mut SchedClassifier = programs.program_mut(name).unwrap().try_into().unwrap();
        prog.load().unwrap();
    }
    programs
}

impl Harness {
    /// The programs with the masquerade ports the agent would choose in the
    /// test's namespace.
    fn new(plan: &EbpfPlan) -> Harness {
        Harness::with_ports(plan, None)
    }

    /// The programs picking masquerade ports from `ports` (None: the agent's choice).
    fn with_ports(plan: &EbpfPlan, ports: Option<MasqueradePorts>) -> Harness {
        let bpffs = bpffs();
        let pin_root = bpffs.dir().join("switchyard");
        let mut config = plan.config.clone();
        config.devices = Vec::new();
        // Load the programs (no interfaces: nothing is attached) and write the maps.
        let ns = named(&unique("-tc"));
        let kernel = AyaKernel::new(KernelConfig {
            pin_root: pin_root.clone(),
            ..KernelConfig::default()
        });
        let mut backend = EbpfBackend::new(kernel);
        let mut attached = plan.clone();
        attached.config = config.clone();
        ns.enter(|| backend.apply(&attached).unwrap());
        let ports =
            ports.unwrap_or_else(|| ns.enter(|| MasqueradePorts::read(&ProcSysctl)).unwrap());
        let programs = load_tc(&config, ports, &pin_root);
        Harness {
            _bpffs: bpffs,
            programs,
            backend,
            pin_root,
            ns,
            ports,
        }
    }

    /// The programs loaded again over the same maps, picking from `ports`
    /// (the agent restarted under another `ip_local_port_range`).
    fn reload(&mut self, plan: &EbpfPlan, ports: MasqueradePorts) {
        self.programs = load_tc(&plan.config, ports, &self.pin_root);
        self.ports = ports;
    }

    /// Age every `sy_conntrack` entry by `seconds` (its last use moves back).
    fn age_conntrack(&mut self, seconds: u16) {
        let map = self.programs.map_mut("sy_conntrack").unwrap();
        let mut ct: aya::maps::HashMap<_, Tuple, Tuple> =
            aya::maps::HashMap::try_from(map).unwrap();
        let entries: Vec<(Tuple, Tuple)> = ct.iter().map(Result::unwrap).collect();
        for (key, mut value) in entries {
            let stamp = (value.pad >> CT_STAMP_SHIFT).wrapping_sub(seconds) & CT_STAMP_MASK;
            value.pad = (value.pad & CT_FLAGS) | (stamp << CT_STAMP_SHIFT);
            ct.insert(key, value, 0).unwrap();
        }
    }

    /// The agent restarted: a new backend over the same pins, which has
    /// applied nothing itself.
    fn restart(&mut self) {
        self.backend = EbpfBackend::new(AyaKernel::new(KernelConfig {
            pin_root: self.pin_root.clone(),
            ..KernelConfig::default()
        }));
    }

    fn retire(&mut self) -> Retirement {
        let backend = &mut self.backend;
        self.ns.enter(|| backend.retire(Mode::Iptables).unwrap())
    }

    fn settle(&mut self) -> Retirement {
        let backend = &mut self.backend;
        self.ns.enter(|| backend.settle().unwrap())
    }

    /// Entries left in `sy_conntrack` (through the programs' own descriptor:
    /// the pin may be gone).
    fn conntrack_entries(&self) -> usize {
        let map = self.programs.map("sy_conntrack").unwrap();
        let ct: aya::maps::HashMap<_, Tuple, Tuple> = aya::maps::HashMap::try_from(map).unwrap();
        ct.keys().count()
    }

    /// Run one program on a frame: the verdict and the frame after it.
    fn run_one(&mut self, name: &str, input: &[u8]) -> (u32, Vec<u8>) {
        run_program(&mut self.programs, name, input)
    }

    /// A frame forwarded through the node: ingress on one interface, then
    /// (unless dropped) egress on another. The verdict and the frame as it leaves.
    fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let (verdict, after_ingress) = self.run_one(PROGRAMS[0], input);
        if verdict != TC_ACT_OK {
            return (verdict, after_ingress);
        }
        self.run_one(PROGRAMS[1], &after_ingress)
    }
}

fn external_service(policy: TrafficPolicy) -> EbpfPlan {
    let mut settings = Settings::defaults(Mode::Ebpf);
    settings.local_detector = LocalDetector::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]);
    let mut svc = service(
        7,
        "10.96.0.7",
        80,
        vec![
            endpoint(70, "10.244.1.5", 8080, "node-a"),
            endpoint(71, "10.244.2.5", 8080, "node-b"),
        ],
    );
    svc.external_ips = vec![ip("203.0.113.10")];
    svc.load_balancer_ips = vec![ip("203.0.113.20")];
    svc.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    svc.node_port = Some(30080);
    svc.external_traffic_policy = policy;
    svc.external_ips.push(ip("2001:db8:1::10"));
    svc.endpoints
        .push(endpoint(72, "fd00:10::5", 8080, "node-a"));
    let mut udp = service(
        8,
        "10.96.0.8",
        53,
        vec![endpoint(80, "10.244.1.8", 5353, "node-a")],
    );
    udp.protocol = switchyard_api::ruleset::Protocol::Udp;
    udp.node_port = Some(30053);
    render(&linked(vec![svc, udp]), &settings)
}

#[test]
fn node_port_flow_is_dnated_and_masqueraded_and_replies_are_reversed() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Cluster));
    let (verdict, out) = h.run(&frame(6, "198.51.100.7", 40000, NODE_IP, 30080));
    assert_eq!(verdict, TC_ACT_OK);
    let (src, sport, dst, dport) = parse_checked(&out);
    assert_eq!(src, NODE_IP, "masqueraded to the node address");
    assert!(
        h.ports.contains(sport),
        "from a masquerade port, got {sport}"
    );
    assert!(
        ["10.244.1.5", "10.244.2.5"].contains(&dst.as_str()),
        "DNAT to a backend, got {dst}"
    );
    assert_eq!(dport, 8080);

    // Ingress alone only DNATs; the source is rewritten where the flow leaves.
    let (_, dnat_only) = h.run_one(
        PROGRAMS[0],
        &frame(6, "198.51.100.7", 40000, NODE_IP, 30080),
    );
    assert_eq!(
        parse_checked(&dnat_only),
        ("198.51.100.7".to_string(), 40000, dst.clone(), 8080)
    );
    // The same flow again keeps its backend (conntrack).
    for _ in 0..8 {
        let (_, again) = h.run(&frame(6, "198.51.100.7", 40000, NODE_IP, 30080));
        assert_eq!(
            parse_checked(&again),
            (src.clone(), sport, dst.clone(), 8080)
        );
    }
    // The backend's reply goes back as the NodePort.
    let (verdict, reply) = h.run(&frame(6, &dst, 8080, NODE_IP, sport));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        parse_checked(&reply),
        (
            NODE_IP.to_string(),
            30080,
            "198.51.100.7".to_string(),
            40000
        )
    );
}

/// A connection another mode translated goes on through the kernel's
/// conntrack after eBPF attached: rebalancing its next segment would send
/// it to a backend that resets it.
#[test]
fn mid_stream_segment_of_a_connection_ebpf_did_not_balance_is_not_reset() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Cluster));
    let ack = tcp_flags_frame(6, TCP_ACK, "198.51.100.7", 40001, NODE_IP, 30080);
    assert_eq!(h.run(&ack), (TC_ACT_OK, ack.clone()), "passes untouched");
    // A new connection (SYN) from that client is balanced, and from then
    // on its segments follow its entry.
    let (_, syn) = h.run(&frame(6, "198.51.100.7", 40001, NODE_IP, 30080));
    let (src, sport, backend, dport) = parse_checked(&syn);
    assert_eq!((src.as_str(), dport), (NODE_IP, 8080));
    assert!(h.ports.contains(sport), "masqueraded: {sport}");
    let (_, next) = h.run(&ack);
    assert_eq!(parse_checked(&next), (src, sport, backend, dport));
}

/// Detaching eBPF at the switch cut the NodePort connections it balanced
/// (their translation lived only in `sy_conntrack`): retired, it balances
/// no new flow, goes on translating its own until a FIN passed, then
/// empties its conntrack and goes.
#[test]
fn retired_ebpf_keeps_its_connections_until_they_close_and_balances_no_new_one() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Cluster));
    let (_, syn) = h.run(&frame(6, "198.51.100.7", 40002, NODE_IP, 30080));
    let (_, _, backend, _) = parse_checked(&syn);
    assert_eq!(h.retire(), Retirement::Draining);

    let other = frame(6, "198.51.100.7", 40003, NODE_IP, 30080);
    assert_eq!(
        h.run(&other),
        (TC_ACT_OK, other.clone()),
        "a new connection is left to the successor"
    );
    let ack = tcp_flags_frame(6, TCP_ACK, "198.51.100.7", 40002, NODE_IP, 30080);
    let (_, next) = h.run(&ack);
    assert_eq!(
        parse_checked(&next).2,
        backend,
        "the open one keeps its backend"
    );
    assert_eq!(h.settle(), Retirement::Draining);

    let fin = tcp_flags_frame(6, TCP_FIN | TCP_ACK, "198.51.100.7", 40002, NODE_IP, 30080);
    let (_, fin_out) = h.run(&fin);
    assert_eq!(
        parse_checked(&fin_out).2,
        backend,
        "the FIN is translated too"
    );
    assert_eq!(h.settle(), Retirement::Done);
    assert_eq!(h.conntrack_entries(), 0);
    assert!(!h.ns.enter(|| h.backend.present().unwrap()), "removed");
}

/// An agent restarted after a switch away from eBPF found the retired
/// mode's pins and removed them as a leftover, cutting what it balanced:
/// a backend that applied nothing itself retires it from its pins and
/// drains it the same way.
#[test]
fn a_restarted_agent_retires_the_pinned_ebpf_mode_and_drains_its_connections() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Cluster));
    let (_, syn) = h.run(&frame(6, "198.51.100.7", 40007, NODE_IP, 30080));
    let (_, _, backend, _) = parse_checked(&syn);
    h.restart();
    assert_eq!(h.retire(), Retirement::Draining);
    let other = frame(6, "198.51.100.7", 40008, NODE_IP, 30080);
    assert_eq!(
        h.run(&other),
        (TC_ACT_OK, other.clone()),
        "no new flow balanced"
    );
    let ack = tcp_flags_frame(6, TCP_ACK, "198.51.100.7", 40007, NODE_IP, 30080);
    assert_eq!(
        parse_checked(&h.run(&ack).1).2,
        backend,
        "the open one kept"
    );
    let fin = tcp_flags_frame(6, TCP_FIN | TCP_ACK, "198.51.100.7", 40007, NODE_IP, 30080);
    h.run(&fin);
    assert_eq!(h.settle(), Retirement::Done);
    assert_eq!(h.conntrack_entries(), 0);
    assert!(!h.ns.enter(|| h.backend.present().unwrap()), "removed");
}

/// Either side's FIN ends the connection for the drain: the backend's,
/// seen on its way out, marks the client's inbound entry too.
#[test]
fn a_fin_from_the_backend_ends_the_drain_of_its_connection() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Local));
    let (_, syn) = h.run(&frame(6, "198.51.100.7", 40004, "203.0.113.10", 80));
    let (_, _, backend, _) = parse_checked(&syn);
    assert_eq!(h.retire(), Retirement::Draining);
    let fin = tcp_flags_frame(6, TCP_FIN | TCP_ACK, &backend, 8080, "198.51.100.7", 40004);
    let (_, out) = h.run(&fin);
    assert_eq!(
        parse_checked(&out),
        (
            "203.0.113.10".to_string(),
            80,
            "198.51.100.7".to_string(),
            40004
        )
    );
    assert_eq!(h.settle(), Retirement::Done);
}

/// A client that opened a new connection from the port of one it had
/// closed met the old masquerade port at the backend, which may still hold
/// the old connection in TIME_WAIT: the handshake is a new flow, balanced
/// afresh onto another port.
#[test]
fn a_new_handshake_on_a_closed_connections_tuple_gets_another_masquerade_port() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Cluster));
    let syn = frame(6, "198.51.100.7", 40005, NODE_IP, 30080);
    let (_, first, backend, _) = parse_checked(&h.run(&syn).1);
    let fin = tcp_flags_frame(6, TCP_FIN | TCP_ACK, "198.51.100.7", 40005, NODE_IP, 30080);
    h.run(&fin);
    let (verdict, again) = h.run(&syn);
    assert_eq!(verdict, TC_ACT_OK);
    let (_, second, to, _) = parse_checked(&again);
    assert_eq!(to, backend, "the flow hash picks the same backend");
    assert_ne!(second, first, "not the closed connection's port");
    assert!(h.ports.contains(second));
    let (_, answer) = h.run(&frame(6, &backend, 8080, NODE_IP, second));
    assert_eq!(parse_checked(&answer).3, 40005, "answered to the client");
}

/// A node's UDP socket lost its answers to an un-SNAT entry that kept an
/// external client's port (programs before the masquerade picked its own
/// ports, or another `ip_local_port_range`): such an entry yields to the
/// socket. An entry on a port of the range does not: it is a live flow's.
#[test]
fn a_udp_answer_a_node_socket_owns_is_not_un_snated_by_an_entry_that_kept_a_clients_port() {
    let plan = external_service(TrafficPolicy::Cluster);
    let old_port = MasqueradePorts {
        min: 40006,
        max: 40006,
    };
    let mut h = Harness::with_ports(&plan, Some(old_port));
    let (_, request) = h.run(&frame(17, "198.51.100.7", 40006, NODE_IP, 30053));
    let (src, sport, backend, _) = parse_checked(&request);
    assert_eq!((src.as_str(), sport), (NODE_IP, 40006));
    let ports = h.ns.enter(|| MasqueradePorts::read(&ProcSysctl)).unwrap();
    assert!(!ports.contains(40006));
    h.reload(&plan, ports);
    let (_, request) = h.run(&frame(17, "198.51.100.8", 40006, NODE_IP, 30053));
    let new_port = parse_checked(&request).1;
    assert!(ports.contains(new_port));

    h.ns.sh(&format!(
        "ip link set lo up && ip addr add {NODE_IP}/32 dev lo"
    ));
    let Harness { ns, programs, .. } = &mut h;
    let (to_node, to_client) = ns.enter(|| {
        let _old = std::net::UdpSocket::bind((NODE_IP, 40006)).unwrap();
        let _new = std::net::UdpSocket::bind((NODE_IP, new_port)).unwrap();
        let old = run_program(
            programs,
            PROGRAMS[0],
            &frame(17, &backend, 5353, NODE_IP, 40006),
        );
        let new = run_program(
            programs,
            PROGRAMS[0],
            &frame(17, &backend, 5353, NODE_IP, new_port),
        );
        (old, new)
    });
    assert_eq!(
        to_node,
        (TC_ACT_OK, frame(17, &backend, 5353, NODE_IP, 40006)),
        "left to the node's socket"
    );
    assert_eq!(
        parse_checked(&to_client.1).2,
        "198.51.100.8",
        "the live flow's answer goes to its client"
    );
}

/// With the client's port kept, two clients that used one source port
/// towards one backend through a node got one masqueraded tuple: the second
/// took the first one's answers.
#[test]
fn two_clients_with_one_source_port_get_their_own_masquerade_ports_and_answers() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Cluster));
    let mut seen = Vec::new();
    for client in ["198.51.100.7", "198.51.100.8"] {
        let (_, out) = h.run(&frame(17, client, 5300, NODE_IP, 30053));
        seen.push(parse_checked(&out).1);
    }
    assert_ne!(seen[0], seen[1]);
    for (client, port) in ["198.51.100.7", "198.51.100.8"].into_iter().zip(seen) {
        let (_, answer) = h.run(&frame(17, "10.244.1.8", 5353, NODE_IP, port));
        assert_eq!(
            parse_checked(&answer),
            (NODE_IP.to_string(), 30053, client.to_string(), 5300)
        );
    }
}

/// Masquerade ports are probed, never shared: with every port in use a new
/// flow is dropped (and leaves no entry); a port goes to a new flow once
/// its flow is over (UDP, or TCP after a FIN, idle for 120 s both ways),
/// and that flow's client then starts afresh instead of sending from it.
#[test]
fn a_masquerade_port_in_use_is_never_taken_and_an_idle_flows_port_is_reused() {
    let one = MasqueradePorts {
        min: 61000,
        max: 61000,
    };
    let mut h = Harness::with_ports(&external_service(TrafficPolicy::Cluster), Some(one));
    let a = frame(17, "198.51.100.7", 5000, NODE_IP, 30053);
    let b = frame(17, "198.51.100.8", 5000, NODE_IP, 30053);
    assert_eq!(parse_checked(&h.run(&a).1).1, 61000);
    let entries = h.conntrack_entries();
    assert_eq!(h.run(&b).0, TC_ACT_SHOT, "no port free");
    assert_eq!(h.conntrack_entries(), entries, "nothing recorded");
    h.age_conntrack(100);
    assert_eq!(h.run(&b).0, TC_ACT_SHOT, "idle for less than 120 s");

    h.age_conntrack(30);
    let (verdict, out) = h.run(&b);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_checked(&out).1, 61000, "the idle flow's port");
    let (_, answer) = h.run(&frame(17, "10.244.1.8", 5353, NODE_IP, 61000));
    assert_eq!(parse_checked(&answer).2, "198.51.100.8");
    assert_eq!(h.run(&a).0, TC_ACT_SHOT, "the old client is a new flow");

    let mut h = Harness::with_ports(&balanced(false, None, 1), Some(one));
    let a = frame(6, "198.51.100.7", 5001, NODE_IP, 30090);
    let b = frame(6, "198.51.100.8", 5001, NODE_IP, 30090);
    assert_eq!(parse_checked(&h.run(&a).1).1, 61000);
    h.age_conntrack(1000);
    assert_eq!(
        h.run(&b).0,
        TC_ACT_SHOT,
        "an open connection keeps its port however idle"
    );
    h.run(&tcp_flags_frame(
        6,
        TCP_FIN | TCP_ACK,
        "10.244.9.1",
        8080,
        NODE_IP,
        61000,
    ));
    h.age_conntrack(130);
    assert_eq!(
        parse_checked(&h.run(&b).1).1,
        61000,
        "a closed one's port is reused"
    );
}

#[test]
fn local_external_policy_keeps_the_client_address_and_uses_local_endpoints() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Local));
    for sport in 41000..41010 {
        let (verdict, out) = h.run(&frame(6, "198.51.100.7", sport, "203.0.113.10", 80));
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            parse_checked(&out),
            (
                "198.51.100.7".to_string(),
                sport,
                "10.244.1.5".to_string(),
                8080
            )
        );
    }
}

#[test]
fn load_balancer_source_ranges_drop_other_clients() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Cluster));
    let (allowed, _) = h.run(&frame(6, "198.51.100.7", 42000, "203.0.113.20", 80));
    assert_eq!(allowed, TC_ACT_OK);
    let (denied, _) = h.run(&frame(6, "192.0.2.99", 42000, "203.0.113.20", 80));
    assert_eq!(denied, TC_ACT_SHOT);
    // The external IP of the same service has no source ranges.
    let (ext, _) = h.run(&frame(6, "192.0.2.99", 42001, "203.0.113.10", 80));
    assert_eq!(ext, TC_ACT_OK);
}

#[test]
fn udp_node_port_is_rewritten_with_a_valid_checksum_and_other_traffic_passes_untouched() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Cluster));
    let (verdict, out) = h.run(&frame(17, "198.51.100.9", 5000, NODE_IP, 30053));
    assert_eq!(verdict, TC_ACT_OK);
    let (src, sport, dst, dport) = parse_checked(&out);
    assert_eq!(
        (src.as_str(), dst.as_str(), dport),
        (NODE_IP, "10.244.1.8", 5353)
    );
    assert!(h.ports.contains(sport), "{sport}");

    let other = frame(6, "198.51.100.9", 5000, NODE_IP, 22);
    let (verdict, out) = h.run(&other);
    assert_eq!(
        (verdict, out),
        (TC_ACT_OK, other),
        "not a frontend: untouched"
    );
}

#[test]
fn ipv6_external_ip_is_dnated_to_an_ipv6_backend_and_masqueraded() {
    let mut plan = external_service(TrafficPolicy::Cluster);
    plan.config.node_ip6 = Some("2001:db8::1".parse().unwrap());
    let mut h = Harness::new(&plan);
    let (verdict, out) = h.run(&frame(6, "2001:db8:9::7", 43000, "2001:db8:1::10", 80));
    assert_eq!(verdict, TC_ACT_OK);
    let (src, sport, dst, dport) = parse_checked(&out);
    assert_eq!(
        (src.as_str(), dst.as_str(), dport),
        ("2001:db8::1", "fd00:10::5", 8080)
    );
    assert!(h.ports.contains(sport), "{sport}");
    let (_, reply) = h.run(&frame(6, "fd00:10::5", 8080, "2001:db8::1", sport));
    assert_eq!(
        parse_checked(&reply),
        (
            "2001:db8:1::10".to_string(),
            80,
            "2001:db8:9::7".to_string(),
            43000
        )
    );
}

/// Check an ICMP port unreachable answering `orig`: addresses swapped, checksums
/// valid, the original header quoted.
fn assert_port_unreachable(reply: &[u8], orig: &[u8]) {
    assert_eq!(reply[0..6], orig[6..12], "back to the sender's MAC");
    let ip = &reply[14..34];
    assert_eq!(fold(sum16(ip, 0)), 0, "IPv4 header checksum");
    assert_eq!(
        (ip[9], &ip[12..16], &ip[16..20]),
        (1, &orig[30..34], &orig[26..30])
    );
    let icmp = &reply[34..];
    // the IPv4 header and the L4 header up to its checksum
    let quoted = if orig[23] == 6 { 40 } else { 28 };
    assert_eq!(icmp.len(), 8 + quoted);
    assert_eq!((icmp[0], icmp[1]), (3, 3), "destination unreachable, port");
    assert_eq!(fold(sum16(icmp, 0)), 0, "ICMP checksum");
    assert_eq!(
        icmp[8..],
        orig[14..14 + quoted],
        "quotes the original headers"
    );
}

#[test]
fn service_without_endpoints_is_rejected_with_port_unreachable() {
    let mut svc = service(6, "10.96.0.6", 80, vec![]);
    svc.node_port = Some(30006);
    svc.external_ips = vec![ip("203.0.113.6")];
    let mut udp = service(7, "10.96.0.7", 53, vec![]);
    udp.protocol = switchyard_api::ruleset::Protocol::Udp;
    udp.node_port = Some(30007);
    let plan = render(&linked(vec![svc, udp]), &Settings::defaults(Mode::Ebpf));
    let mut h = Harness::new(&plan);
    for (proto, dst, port) in [
        (6, NODE_IP, 30006),
        (17, NODE_IP, 30007),
        (6, "203.0.113.6", 80),
    ] {
        let orig = frame(proto, "198.51.100.7", 44000, dst, port);
        let (verdict, reply) = h.run_one(PROGRAMS[0], &orig);
        assert_eq!(verdict, TC_ACT_REDIRECT, "sent back out of the interface");
        assert_port_unreachable(&reply, &orig);
    }
}

#[test]
fn cluster_ip_through_the_node_is_masqueraded_unless_from_the_cluster() {
    let mut h = Harness::new(&external_service(TrafficPolicy::Local));
    let (verdict, out) = h.run(&frame(6, "198.51.100.9", 5001, "10.96.0.7", 80));
    assert_eq!(verdict, TC_ACT_OK);
    let (src, _, dst, dport) = parse_checked(&out);
    assert_eq!(src, NODE_IP, "off-cluster source masqueraded");
    assert!(
        ["10.244.1.5", "10.244.2.5"].contains(&dst.as_str()) && dport == 8080,
        "{dst}"
    );
    let (_, out) = h.run(&frame(6, "10.1.2.3", 5002, "10.96.0.7", 80));
    assert_eq!(parse_checked(&out).0, "10.1.2.3", "pod source kept");
}

fn balanced(affinity: bool, maglev: Option<u32>, backends: u32) -> EbpfPlan {
    let mut svc = service(
        9,
        "10.96.0.9",
        80,
        (0..backends)
            .map(|i| endpoint(90 + i, &format!("10.244.9.{}", i + 1), 8080, "node-a"))
            .collect(),
    );
    svc.node_port = Some(30090);
    if affinity {
        svc.session_affinity = Some(switchyard_api::ruleset::SessionAffinity {
            timeout_seconds: 10800,
        });
    }
    let mut settings = Settings::defaults(Mode::Ebpf);
    settings.ebpf.maglev_table_size = maglev;
    render(&linked(vec![svc]), &settings)
}

/// The backend each of `flows` client ports lands on.
fn landing(h: &mut Harness, flows: std::ops::Range<u16>) -> Vec<String> {
    flows
        .map(|sport| parse_checked(&h.run(&frame(6, "198.51.100.7", sport, NODE_IP, 30090)).1).2)
        .collect()
}

#[test]
fn client_ip_affinity_sends_every_flow_of_a_client_to_one_backend() {
    let mut h = Harness::new(&balanced(true, None, 4));
    let seen: std::collections::BTreeSet<String> =
        landing(&mut h, 45000..45020).into_iter().collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let mut h = Harness::new(&balanced(false, None, 4));
    let seen: std::collections::BTreeSet<String> =
        landing(&mut h, 45000..45020).into_iter().collect();
    assert!(seen.len() > 1, "without affinity flows spread: {seen:?}");
}

#[test]
fn maglev_picks_the_same_backend_on_every_node_and_moves_few_flows_on_change() {
    let flows = 46000..46100;
    let a = landing(
        &mut Harness::new(&balanced(false, Some(251), 5)),
        flows.clone(),
    );
    let b = landing(
        &mut Harness::new(&balanced(false, Some(251), 5)),
        flows.clone(),
    );
    assert_eq!(a, b, "two nodes agree");
    assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() == 5);
    let fewer = landing(&mut Harness::new(&balanced(false, Some(251), 4)), flows);
    let removed = "10.244.9.5";
    let moved = a
        .iter()
        .zip(&fewer)
        .filter(|(before, after)| before.as_str() != removed && before != after)
        .count();
    assert!(
        moved <= 10,
        "{moved} of 100 flows on surviving backends moved"
    );
}

#[test]
fn ipv6_service_without_endpoints_is_rejected_with_icmpv6_port_unreachable() {
    let mut svc = service(11, "fd00:96::11", 80, vec![]);
    svc.external_ips = vec![ip("2001:db8:1::11")];
    let mut h = Harness::new(&render(&linked(vec![svc]), &Settings::defaults(Mode::Ebpf)));
    let orig = frame(6, "2001:db8:9::7", 47000, "2001:db8:1::11", 80);
    let (verdict, reply) = h.run_one(PROGRAMS[0], &orig);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(reply[0..6], orig[6..12], "back to the sender's MAC");
    assert_eq!(reply[12..14], [0x86, 0xdd]);
    let ip6 = &reply[14..54];
    assert_eq!(ip6[6], 58, "ICMPv6");
    assert_eq!((&ip6[8..24], &ip6[24..40]), (&orig[38..54], &orig[22..38]));
    let icmp = &reply[54..];
    assert_eq!(icmp.len(), 8 + 60);
    assert_eq!((icmp[0], icmp[1]), (1, 4), "destination unreachable, port");
    let mut pseudo = ip6[8..40].to_vec();
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    assert_eq!(fold(sum16(icmp, sum16(&pseudo, 0))), 0, "ICMPv6 checksum");
    assert_eq!(icmp[8..], orig[14..74], "quotes the original headers");
}
