//! The lab cluster's network namespaces and links (all removed on drop):
//!
//! ```text
//!  <p>ext (192.168.77.2) ─┐
//!                          ├─ br0 in <p>lan ── no route out of the machine
//!  <p>n0 (192.168.77.10) ─┤   <p>n1 (.11) ...
//!     ├─ p0 ── <p>n0p0 web-0-0 10.244.0.10     (HTTP :8080, UDP echo :5353)
//!     ├─ p1 ── <p>n0p1 web-0-1 10.244.0.11
//!     └─ c0 ── <p>n0c  client pod 10.244.0.100  (sends to cluster IPs)
//! ```
//! Each node routes the other nodes' pod CIDRs via their LAN address and the
//! service CIDR onto the LAN (so locally originated traffic to a cluster IP has
//! a route for the nat hooks to act on). Nothing is connected to the host
//! namespace: the node's agent reaches the API server through a forwarder
//! ([`crate::controlplane::forward`]), not a link.

use super::layout::{Layout, PODS_PER_NODE, Pod};
use crate::HarnessError;
use crate::controlplane::SERVICE_CIDR;
use crate::netns::Netns;

/// One node's namespaces.
pub struct NodeNamespaces {
    pub index: u8,
    pub node: Netns,
    /// Server pods, by index.
    pub pods: Vec<Netns>,
    pub client: Netns,
}

/// Every namespace of the cluster. Field order is drop order: pods go before their nodes.
pub struct Topology {
    pub nodes: Vec<NodeNamespaces>,
    pub external: Netns,
    pub lan: Netns,
}

fn veth_to(dev: &str, peer: &Netns, ip: &str, gateway: &str) -> Vec<String> {
    vec![
        format!(
            "link add {dev} type veth peer name eth0 netns {}",
            peer.name()
        ),
        format!("addr add {gateway}/32 dev {dev}"),
        format!("link set {dev} up"),
        format!("route add {ip}/32 dev {dev}"),
    ]
}

fn pod_side(pod: &Netns, ip: &str, gateway: &str) -> Result<(), HarnessError> {
    Ok(pod.batch(&[
        format!("addr add {ip}/32 dev eth0"),
        "link set eth0 up".to_string(),
        format!("route add {gateway} dev eth0"),
        format!("route add default via {gateway} dev eth0"),
    ])?)
}

impl Topology {
    /// Create and wire every namespace, named `<prefix>lan`, `<prefix>n0`, ….
    pub fn build(prefix: &str, layout: &Layout) -> Result<Topology, HarnessError> {
        let lan = Netns::create(&format!("{prefix}lan"))?;
        lan.batch(&[
            "link add br0 type bridge".to_string(),
            "link set br0 up".to_string(),
        ])?;
        let external = Netns::create(&format!("{prefix}ext"))?;
        let mut topology = Topology {
            nodes: Vec::new(),
            external,
            lan,
        };
        topology.attach_to_lan(
            &topology.external,
            "ext",
            &format!("{}/24", Layout::external_client_ip()),
        )?;
        for i in 0..layout.nodes {
            let node = Netns::create(&format!("{prefix}n{i}"))?;
            let mut pods = Vec::new();
            for j in 0..PODS_PER_NODE {
                pods.push(Netns::create(&format!("{prefix}n{i}p{j}"))?);
            }
            let client = Netns::create(&format!("{prefix}n{i}c"))?;
            topology.nodes.push(NodeNamespaces {
                index: i,
                node,
                pods,
                client,
            });
        }
        for n in &topology.nodes {
            topology.wire_node(n, layout)?;
        }
        Ok(topology)
    }

    fn attach_to_lan(&self, ns: &Netns, port: &str, cidr: &str) -> Result<(), HarnessError> {
        self.lan.batch(&[
            format!(
                "link add {port} type veth peer name lan0 netns {}",
                ns.name()
            ),
            format!("link set {port} master br0"),
            format!("link set {port} up"),
        ])?;
        Ok(ns.batch(&[
            format!("addr add {cidr} dev lan0"),
            "link set lan0 up".to_string(),
        ])?)
    }

    fn wire_node(&self, n: &NodeNamespaces, layout: &Layout) -> Result<(), HarnessError> {
        let i = n.index;
        self.attach_to_lan(
            &n.node,
            &format!("n{i}"),
            &format!("{}/24", Layout::node_ip(i)),
        )?;
        let gateway = Layout::pod_gateway(i).to_string();
        let mut commands = Vec::new();
        for (j, pod) in n.pods.iter().enumerate() {
            let index = u8::try_from(j).unwrap_or(u8::MAX);
            let ip = Pod { node: i, index }.ip().to_string();
            commands.extend(veth_to(&format!("p{j}"), pod, &ip, &gateway));
        }
        let client_ip = Layout::client_pod_ip(i).to_string();
        commands.extend(veth_to("c0", &n.client, &client_ip, &gateway));
        for k in (0..layout.nodes).filter(|k| *k != i) {
            commands.push(format!(
                "route add {} via {}",
                Layout::pod_cidr(k),
                Layout::node_ip(k)
            ));
        }
        commands.push(format!("route add {SERVICE_CIDR} dev lan0"));
        n.node.batch(&commands)?;
        for (j, pod) in n.pods.iter().enumerate() {
            let index = u8::try_from(j).unwrap_or(u8::MAX);
            pod_side(pod, &Pod { node: i, index }.ip().to_string(), &gateway)?;
        }
        pod_side(&n.client, &client_ip, &gateway)?;
        Ok(n.node.sysctls(&[("net.ipv4.ip_forward", "1")])?)
    }
}
