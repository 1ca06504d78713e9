//! The tc programs on real interfaces: a client namespace and a pod namespace
//! wired to a node namespace by veth pairs; NodePort traffic from the client
//! is DNATed and masqueraded to the pod, and rejected without endpoints —
//! attached with TCX and with classic tc (this kernel has both); a
//! masqueraded flow and the node's own sockets towards the pod stay apart.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use switchyard_api::Mode;
use switchyard_api::ruleset::ServicePortRule;

use switchyard_testkit::netns::veth;

use super::fixtures::*;
use crate::Backend;
use crate::ebpf::EbpfBackend;
use crate::ebpf::kernel::{AyaKernel, KernelConfig};
use crate::ebpf::masq_ports::{MasqueradePorts, ephemeral_ports};
use crate::ebpf::plan::render;
use crate::ebpf::tc::TcAttachMode;
use crate::nftables::NftablesBackend;
use crate::settings::Settings;
use crate::sysctl::ProcSysctl;

/// A node (`NODE_IP` on up0) forwarding between a client (192.0.2.7) and
/// a pod (10.244.1.5 on pod0).
struct Wired {
    node: Netns,
    client: Netns,
    pod: Netns,
}

fn wired() -> Wired {
    wired_via("169.254.1.1")
}

/// As [`wired`], the node's side of the pod's link addressed `gateway`.
fn wired_via(gateway: &str) -> Wired {
    let node = named(&unique("-n"));
    let client = named(&unique("-c"));
    let pod = named(&unique("-p"));
    wire(&node, &client, "up0", "192.0.2.1/24", "192.0.2.7/24");
    wire(
        &node,
        &pod,
        "pod0",
        &format!("{gateway}/32"),
        "10.244.1.5/32",
    );
    pod.ip(&["route", "add", gateway, "dev", "eth0"]).unwrap();
    pod.ip(&["route", "add", "default", "via", gateway, "dev", "eth0"])
        .unwrap();
    node.ip(&["route", "add", "10.244.1.5", "dev", "pod0"])
        .unwrap();
    node.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .unwrap();
    Wired { node, client, pod }
}

/// A veth pair from the node to `peer`, whose end is named eth0.
fn wire(node: &Netns, peer: &Netns, dev: &str, node_addr: &str, peer_addr: &str) {
    veth(node, dev, node_addr, peer, "eth0", peer_addr).unwrap();
}

fn ask(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"hi\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[test]
fn node_port_through_real_interfaces_is_dnated_masqueraded_and_rejected_with_tcx() {
    node_port_through_real_interfaces(TcAttachMode::Tcx, |_| {});
}

#[test]
fn node_port_through_real_interfaces_is_dnated_masqueraded_and_rejected_with_classic_tc() {
    node_port_through_real_interfaces(TcAttachMode::Classic, |node| {
        for dev in ["up0", "pod0"] {
            let qdiscs = node.sh(&format!("tc qdisc show dev {dev}"));
            assert!(
                !qdiscs.contains("clsact"),
                "the clsact qdisc the agent added is gone: {qdiscs}"
            );
        }
    });
}

/// The flows through a node whose tc programs attach with `api`;
/// `after_cleanup` checks the node namespace once the backend cleaned up.
fn node_port_through_real_interfaces(api: TcAttachMode, after_cleanup: impl FnOnce(&Netns)) {
    let bpffs = bpffs();
    let Wired { node, client, pod } = wired();

    let listener = pod.enter(|| TcpListener::bind("10.244.1.5:8080").unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            let _ = (&conn).write_all(format!("pod saw {peer}\n").as_bytes());
        }
    });

    let mut web = service(
        1,
        "10.96.0.1",
        80,
        vec![endpoint(10, "10.244.1.5", 8080, "node-a")],
    );
    web.node_port = Some(30080);
    let mut empty = service(2, "10.96.0.2", 80, vec![]);
    empty.node_port = Some(30081);
    let plan = render(&linked(vec![web, empty]), &Settings::defaults(Mode::Ebpf));
    let mut backend = EbpfBackend::new(AyaKernel::new(KernelConfig {
        pin_root: bpffs.dir().join("switchyard"),
        cgroup: None,
        tc_attach: api,
    }));
    node.enter(|| backend.apply(&plan)).unwrap();
    let filters = node.sh("tc filter show dev up0 ingress");
    assert_eq!(
        filters.contains("sy_tc_ingress"),
        api == TcAttachMode::Classic,
        "a cls_bpf filter only with classic tc: {filters}"
    );

    let answer = client.enter(|| ask("192.0.2.1:30080")).unwrap();
    assert_eq!(
        answer,
        format!("pod saw {NODE_IP}"),
        "DNAT to the pod, masqueraded to the node"
    );
    let refused = client.enter(|| ask("192.0.2.1:30081")).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    node.enter(|| backend.cleanup()).unwrap();
    let after = client.enter(|| ask("192.0.2.1:30080"));
    assert!(
        after.is_err(),
        "nothing translates after cleanup: {after:?}"
    );
    after_cleanup(&node);
}

/// A UDP server on the pod (10.244.1.5:5353) answering each datagram with
/// where it came from.
fn udp_echo(pod: &Netns) {
    let server = pod.enter(|| UdpSocket::bind("10.244.1.5:5353")).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        while let Ok((_, peer)) = server.recv_from(&mut buf) {
            let _ = server.send_to(format!("pod saw {peer}").as_bytes(), peer);
        }
    });
}

/// A UDP service on the pod's echo server, NodePort 30053.
fn udp_node_port() -> ServicePortRule {
    let mut dns = service(
        1,
        "10.96.0.10",
        53,
        vec![endpoint(10, "10.244.1.5", 5353, "node-a")],
    );
    dns.protocol = switchyard_api::ruleset::Protocol::Udp;
    dns.node_port = Some(30053);
    dns
}

/// What the pod's UDP server answers `socket`'s datagram with: the address
/// and port the datagram came from.
fn udp_ask(socket: &UdpSocket, to: &str) -> std::io::Result<String> {
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    socket.send_to(b"hi", to)?;
    let mut buf = [0u8; 128];
    let (n, _) = socket.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A masqueraded external flow kept its client's source port, and the
/// node's own sockets take theirs from the same ephemeral range: a node
/// socket and the flow shared the node's address and port towards one
/// backend, and the backend's answers went to the wrong one of the two.
#[test]
fn a_masqueraded_flow_never_takes_a_port_a_socket_of_the_node_uses() {
    let bpffs = bpffs();
    let Wired { node, client, pod } = wired();
    udp_echo(&pod);
    let plan = render(
        &linked(vec![udp_node_port()]),
        &Settings::defaults(Mode::Ebpf),
    );
    let mut backend = EbpfBackend::new(AyaKernel::new(KernelConfig {
        pin_root: bpffs.dir().join("switchyard"),
        ..KernelConfig::default()
    }));
    node.enter(|| backend.apply(&plan)).unwrap();

    // The node's own socket to the pod, on an ephemeral port.
    let ephemeral = node.enter(|| ephemeral_ports(&ProcSysctl)).unwrap();
    let own = node.enter(|| UdpSocket::bind((NODE_IP, 0))).unwrap();
    let port = own.local_addr().unwrap().port();
    assert!(ephemeral.contains(&port));
    let own_answer = format!("pod saw {NODE_IP}:{port}");
    assert_eq!(udp_ask(&own, "10.244.1.5:5353").unwrap(), own_answer);

    // An external client sending to the NodePort from that same port.
    let external = client
        .enter(|| UdpSocket::bind(("192.0.2.7", port)))
        .unwrap();
    let answer = udp_ask(&external, "192.0.2.1:30053")
        .unwrap_or_else(|e| panic!("the external client gets its answer: {e}"));
    let masq: u16 = answer
        .strip_prefix(&format!("pod saw {NODE_IP}:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("masqueraded to the node address: {answer}"));
    assert!(
        !ephemeral.contains(&masq),
        "masqueraded to port {masq}, inside ip_local_port_range {ephemeral:?}"
    );

    for _ in 0..3 {
        assert_eq!(
            udp_ask(&own, "10.244.1.5:5353").unwrap(),
            own_answer,
            "the node's socket gets its own answers"
        );
        assert_eq!(udp_ask(&external, "192.0.2.1:30053").unwrap(), answer);
    }
    node.enter(|| backend.cleanup()).unwrap();
}

/// eBPF masquerades to ports of its own range, and a retired eBPF mode keeps
/// its `sy_conntrack` entries while its TCP connections drain. The next
/// mode's fully-random masquerade picks from 1024-65535: a port an un-SNAT
/// entry of a finished eBPF flow held towards the same endpoint made the
/// draining tc program take the answer for that old flow, and send it to the
/// old client's port; the new flow's client waited in vain.
#[test]
fn the_next_modes_masqueraded_answers_are_not_taken_by_the_draining_ebpf_flows() {
    let bpffs = bpffs();
    // The pod's side has the node's address too, so both modes masquerade
    // to NODE_IP (as towards a pod on another node).
    let Wired { node, client, pod } = wired_via(NODE_IP);
    udp_echo(&pod);
    let listener = pod.enter(|| TcpListener::bind("10.244.1.5:8080").unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = std::io::copy(&mut &conn, &mut &conn);
        }
    });
    let mut web = service(
        2,
        "10.96.0.1",
        80,
        vec![endpoint(20, "10.244.1.5", 8080, "node-a")],
    );
    web.node_port = Some(30080);
    let ruleset = linked(vec![udp_node_port(), web]);
    let mut ebpf = EbpfBackend::new(AyaKernel::new(KernelConfig {
        pin_root: bpffs.dir().join("switchyard"),
        ..KernelConfig::default()
    }));
    node.enter(|| ebpf.apply(&render(&ruleset, &Settings::defaults(Mode::Ebpf))))
        .unwrap();
    // Open through eBPF, it keeps the retired mode draining.
    let held = client
        .enter(|| {
            TcpStream::connect_timeout(&"192.0.2.1:30080".parse().unwrap(), Duration::from_secs(3))
        })
        .unwrap();
    let node_port = "192.0.2.1:30053";
    let flows = |ports: std::ops::Range<u16>| {
        client.enter(|| {
            ports
                .filter(|&p| {
                    let s = UdpSocket::bind(("192.0.2.7", p)).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    udp_ask(&s, node_port).is_err()
                })
                .collect::<Vec<u16>>()
        })
    };
    // Finished flows through eBPF, holding a quarter of its masquerade ports.
    flows(1025..9025);

    // The switch, as the agent makes it: nftables masquerades beside eBPF.
    let mut settings = Settings::defaults(Mode::Nftables);
    settings.masquerade_ports = node
        .enter(|| ebpf.masquerade_ports())
        .and_then(MasqueradePorts::beside);
    assert_eq!(
        settings.masquerade_ports,
        Some(MasqueradePorts {
            min: 32768,
            max: 65535
        })
    );
    let mut nftables = NftablesBackend::new(node.runner());
    node.enter(|| nftables.sync(&ruleset, &settings)).unwrap();
    assert_eq!(
        node.enter(|| ebpf.retire(Mode::Nftables)).unwrap(),
        crate::Retirement::Draining
    );
    let lost = flows(40000..40200);
    assert_eq!(
        lost,
        Vec::<u16>::new(),
        "flows through nftables without an answer"
    );
    drop(held);
    node.enter(|| ebpf.cleanup()).unwrap();
    node.enter(|| nftables.cleanup()).unwrap();
}
