//! The agent's real-kernel tests' topology over the test kit's network
//! namespaces (`switchyard_testkit::netns`: deleted on drop, also when a
//! test panics): namespaces named `syagt<pid>-<name>`, a node and a pod
//! joined by a veth with an echo server in the pod, connections from inside
//! a namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub use switchyard_testkit::netns::Netns;
use switchyard_testkit::{echo, netns::veth};

/// The namespace `syagt<pid>-<suffix>`.
pub fn netns(suffix: &str) -> Netns {
    Netns::create(&format!("syagt{}-{suffix}", std::process::id())).unwrap()
}

/// Run `cmd` inside `ns`; it must succeed. Its standard output.
pub fn ok(ns: &Netns, cmd: &[&str]) -> String {
    ns.exec(cmd[0], &cmd[1..], None)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A node and a pod namespace joined by a veth: node 10.200.0.1, pod 10.200.0.2,
/// and an echo server listening on 10.200.0.2:8080 before this returns.
pub struct Topology {
    pub pod: Netns,
    pub node: Netns,
}

pub const POD_IP: &str = "10.200.0.2";

/// `tag` keeps the namespaces of tests running in parallel apart.
pub fn topology(tag: &str) -> Topology {
    let node = netns(&format!("{tag}-node"));
    let pod = netns(&format!("{tag}-pod"));
    veth(
        &node,
        "veth0",
        "10.200.0.1/24",
        &pod,
        "veth1",
        "10.200.0.2/24",
    )
    .unwrap();
    node.ip(&["route", "add", "default", "via", POD_IP])
        .unwrap();
    echo::serve(&pod, SocketAddr::from(([10, 200, 0, 2], 8080)), None).unwrap();
    Topology { pod, node }
}

/// Connect from inside `ns` (the socket stays in that namespace).
pub fn connect_from(ns: &Netns, addr: SocketAddr) -> std::io::Result<TcpStream> {
    ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .unwrap()
}

/// Send `msg` on `stream` and read it back.
pub fn echo_roundtrip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

/// A state directory for `node-agent apply`: the service web (10.96.0.10:80)
/// with the pod's echo server as its endpoint on another node.
pub fn write_web_state(dir: &std::path::Path) {
    let state = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: \"\", port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.200.0.2], nodeName: node-b, conditions: {ready: true}}]
";
    std::fs::write(dir.join("web.yaml"), state).unwrap();
}
