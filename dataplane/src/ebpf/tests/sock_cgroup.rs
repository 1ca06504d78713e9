//! The socket programs for real: attached to a child cgroup this test creates,
//! a client process in that cgroup connects to a ClusterIP inside a network
//! namespace of the test and reaches the backend.

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output};

use switchyard_api::Mode;
use switchyard_api::ruleset::Protocol;

use super::fixtures::*;
use crate::Backend as _;
use crate::ebpf::EbpfBackend;
use crate::ebpf::kernel::{AyaKernel, KernelConfig};
use crate::ebpf::plan::render;
use crate::ebpf::probe::Capabilities;
use crate::settings::Settings;

/// Run socat in `ns`, inside `cgroup` when given.
fn socat(ns: &Netns, cgroup: Option<&ScratchCgroup>, stdin: &str, args: &[&str]) -> Output {
    let mut script = String::new();
    if let Some(cg) = cgroup {
        script.push_str(&format!(
            "echo $$ > {}/cgroup.procs && ",
            cg.dir().display()
        ));
    }
    script.push_str(&format!(
        "exec ip netns exec {} socat -T 5 {}",
        ns.name(),
        args.join(" ")
    ));
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn serve_tcp(listener: TcpListener, greeting: &'static str) {
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let _ = conn.write_all(format!("{greeting} {peer}\n").as_bytes());
        }
    });
}

fn serve_udp(socket: UdpSocket) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = b"pong ".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
}

#[test]
fn client_in_the_cgroup_reaches_cluster_ip_backends() {
    let bpffs = bpffs();
    let ns = named(&unique("-sk"));
    let cgroup = cgroup();
    ns.ip(&["addr", "add", "10.244.1.5/32", "dev", "lo"])
        .unwrap();
    let (tcp, udp) = ns.enter(|| {
        (
            TcpListener::bind("10.244.1.5:8080").unwrap(),
            UdpSocket::bind("10.244.1.5:5353").unwrap(),
        )
    });
    serve_tcp(tcp, "backend-a");
    serve_udp(udp);

    let mut web = service(
        1,
        "10.96.0.10",
        80,
        vec![endpoint(10, "10.244.1.5", 8080, "node-a")],
    );
    web.node_port = Some(30010);
    let mut dns = service(
        2,
        "10.96.0.11",
        53,
        vec![endpoint(20, "10.244.1.5", 5353, "node-a")],
    );
    dns.protocol = Protocol::Udp;
    let rs = linked(vec![web, dns, service(3, "10.96.0.12", 80, vec![])]);
    let plan = render(&rs, &Settings::defaults(Mode::Ebpf));
    let kernel = AyaKernel::new(KernelConfig {
        pin_root: bpffs.dir().join("switchyard"),
        cgroup: Some(cgroup.dir().to_path_buf()),
        ..KernelConfig::default()
    });
    let mut backend = EbpfBackend::new(kernel);
    ns.enter(|| backend.apply(&plan)).unwrap();

    let out = socat(
        &ns,
        Some(&cgroup),
        "",
        &["-u", "TCP:10.96.0.10:80", "STDOUT"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("backend-a 10.244.1.5:"),
        "stdout {text:?} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = socat(
        &ns,
        Some(&cgroup),
        "ping\n",
        &["-t", "2", "-", "UDP:10.96.0.11:53"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pong ping\n",
        "stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // localhostNodePorts: an unbound socket to 127.0.0.1:<nodePort> is translated.
    let out = socat(
        &ns,
        Some(&cgroup),
        "",
        &["-u", "TCP:127.0.0.1:30010", "STDOUT"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("backend-a "),
        "{text:?} {:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unconnected UDP (sendto: sendmsg4) sees the reply come from the VIP (recvmsg4).
    let out = socat(
        &ns,
        Some(&cgroup),
        "ping\n",
        &["-d", "-d", "-t", "2", "-", "UDP-SENDTO:10.96.0.11:53"],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pong ping\n", "{log}");
    assert!(
        log.contains("from AF=2 10.96.0.11:53"),
        "reply source: {log}"
    );

    let out = socat(
        &ns,
        Some(&cgroup),
        "",
        &["-u", "TCP:10.96.0.12:80", "STDOUT"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{out:?}"
    );

    // Outside the cgroup nothing rewrites the destination.
    let out = socat(&ns, None, "", &["-u", "TCP:10.96.0.10:80", "STDOUT"]);
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");

    // Pinned: a new agent finds the dataplane in place and removes it on cleanup.
    let mut restarted = EbpfBackend::new(AyaKernel::new(KernelConfig {
        pin_root: bpffs.dir().join("switchyard"),
        cgroup: Some(cgroup.dir().to_path_buf()),
        ..KernelConfig::default()
    }));
    assert!(restarted.present().unwrap());
    let stats = ns.enter(|| restarted.apply(&plan)).unwrap();
    assert_eq!(
        (stats.full, stats.written),
        (true, 0),
        "adopted without rewriting"
    );
    drop(backend);
    let out = socat(
        &ns,
        Some(&cgroup),
        "",
        &["-u", "TCP:10.96.0.10:80", "STDOUT"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("backend-a"),
        "still served after the first agent is gone"
    );
    restarted.cleanup().unwrap();
    assert!(!restarted.present().unwrap());
    let out = socat(
        &ns,
        Some(&cgroup),
        "",
        &["-u", "TCP:10.96.0.10:80", "STDOUT"],
    );
    assert!(!out.status.success(), "detached after cleanup: {out:?}");
}

/// Kernels before 5.18 have no bpf_set_retval: the sock object must still load
/// there (the verifier never visits the guarded call) and a refused or dropped
/// connect fails at once with the hook's own EPERM.
#[test]
fn without_bpf_set_retval_refused_and_dropped_connects_fail_with_eperm() {
    let bpffs = bpffs();
    let ns = named(&unique("-sk"));
    let cgroup = cgroup();
    let mut local_only = service(
        2,
        "10.96.0.21",
        80,
        vec![endpoint(20, "10.244.2.5", 8080, "node-b")],
    );
    local_only.internal_traffic_policy = switchyard_api::ruleset::TrafficPolicy::Local;
    let rs = linked(vec![service(1, "10.96.0.20", 80, vec![]), local_only]);
    let plan = render(&rs, &Settings::defaults(Mode::Ebpf));
    let caps = Capabilities {
        set_retval: false,
        ..Capabilities::probe()
    };
    let mut backend = EbpfBackend::new(AyaKernel::with_capabilities(
        KernelConfig {
            pin_root: bpffs.dir().join("switchyard"),
            cgroup: Some(cgroup.dir().to_path_buf()),
            ..KernelConfig::default()
        },
        caps,
    ));
    ns.enter(|| backend.apply(&plan)).unwrap();
    for vip in ["TCP:10.96.0.20:80", "TCP:10.96.0.21:80"] {
        let out = socat(&ns, Some(&cgroup), "", &["-u", vip, "STDOUT"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Operation not permitted"), "{vip}: {err}");
    }
    backend.cleanup().unwrap();
}
