//! The tc programs on real interfaces: a client namespace and a pod namespace
//! wired to a node namespace by veth pairs; NodePort traffic from the client
//! is DNATed and masqueraded to the pod, and rejected without endpoints —
//! attached with TCX and with classic tc (this kernel has both).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use switchyard_api::Mode;

use switchyard_testkit::netns::veth;

use super::fixtures::*;
use crate::Backend as _;
use crate::ebpf::EbpfBackend;
use crate::ebpf::kernel::{AyaKernel, KernelConfig};
use crate::ebpf::plan::render;
use crate::ebpf::tc::TcAttachMode;
use crate::settings::Settings;

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
    let node = named(&unique("-n"));
    let client = named(&unique("-c"));
    let pod = named(&unique("-p"));
    wire(&node, &client, "up0", "192.0.2.1/24", "192.0.2.7/24");
    wire(&node, &pod, "pod0", "169.254.1.1/32", "10.244.1.5/32");
    pod.ip(&["route", "add", "169.254.1.1", "dev", "eth0"])
        .unwrap();
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ])
    .unwrap();
    node.ip(&["route", "add", "10.244.1.5", "dev", "pod0"])
        .unwrap();
    node.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .unwrap();

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
