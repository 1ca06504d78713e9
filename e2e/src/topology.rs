//! The namespaces of one scenario and how they are wired:
//!
//! ```text
//!   pods  (this node's pods: local endpoints, pod clients)   ──pod0─┐
//!   remote (endpoints on other nodes)                         ──rmt0─┤ node
//!   ext   (clients outside the cluster; the node's uplink)    ──up0──┤ (the node's addresses on up0)
//!   sink  (catches traffic no rule translated)                ──sink0┘ (the node's default route)
//! ```
//! Every address lives in exactly one namespace; the node has a host route to
//! each through the right link, the others route everything to the node
//! (169.254.1.1 / fe80::1). Nothing is connected to the host namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::HarnessError;
use crate::netns::Netns;
use crate::scenario::{NodeAddress, Scenario};

/// Where an address lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    Node,
    Pods,
    Remote,
    External,
    Sink,
}

/// The namespaces of one scenario (removed on drop).
pub struct Topology {
    pub node: Netns,
    pub pods: Netns,
    pub remote: Netns,
    pub ext: Netns,
    pub sink: Netns,
    pub node_addresses: Vec<NodeAddress>,
    places: BTreeMap<IpAddr, Place>,
}

const GATEWAY4: &str = "169.254.1.1";
const GATEWAY6: &str = "fe80::1";
const SINK4: &str = "169.254.1.2";
const SINK6: &str = "fe80::2";

fn host_prefix(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn addr_cmd(ip: &IpAddr, prefix: &str, dev: &str) -> String {
    let nodad = if ip.is_ipv6() { " nodad" } else { "" };
    format!("addr add {prefix} dev {dev}{nodad}")
}

/// Decide where every address of the scenario lives.
fn place_addresses(scenario: &Scenario, node_ips: &[IpAddr]) -> BTreeMap<IpAddr, Place> {
    let mut places = BTreeMap::new();
    for ip in node_ips {
        places.insert(*ip, Place::Node);
    }
    for slice in scenario.all_slices() {
        for ep in &slice.endpoints {
            let local = ep.node_name.as_deref() == Some(scenario.node.name.as_str());
            for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                places
                    .entry(ip)
                    .or_insert(if local { Place::Pods } else { Place::Remote });
            }
        }
    }
    for flow in scenario.all_flows() {
        let ip = flow.source_ip;
        if ip.is_loopback() {
            continue;
        }
        let in_cluster = scenario.node.cluster_cidrs.iter().any(|c| c.contains(&ip));
        places
            .entry(ip)
            .or_insert(if in_cluster { Place::Pods } else { Place::External });
    }
    for flow in scenario.all_flows() {
        if !flow.dest_ip.is_loopback() {
            places.entry(flow.dest_ip).or_insert(Place::Sink);
        }
    }
    places
}

impl Topology {
    pub fn build(prefix: &str, scenario: &Scenario) -> Result<Topology, HarnessError> {
        let node_addresses = scenario
            .node
            .parsed_addresses()
            .map_err(|message| HarnessError::Setup {
                what: "node addresses".into(),
                message,
            })?;
        let node_ips: Vec<IpAddr> = node_addresses.iter().map(|a| a.ip).collect();
        let places = place_addresses(scenario, &node_ips);
        let topo = Topology {
            node: Netns::create(&format!("{prefix}node"))?,
            pods: Netns::create(&format!("{prefix}pods"))?,
            remote: Netns::create(&format!("{prefix}remote"))?,
            ext: Netns::create(&format!("{prefix}ext"))?,
            sink: Netns::create(&format!("{prefix}sink"))?,
            node_addresses,
            places,
        };
        topo.wire()?;
        Ok(topo)
    }

    fn links(&self) -> [(&Netns, &'static str, Place); 4] {
        [
            (&self.pods, "pod0", Place::Pods),
            (&self.remote, "rmt0", Place::Remote),
            (&self.ext, "up0", Place::External),
            (&self.sink, "sink0", Place::Sink),
        ]
    }

    fn wire(&self) -> Result<(), HarnessError> {
        let quiet = [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ];
        let mut node_sysctls = quiet.to_vec();
        node_sysctls.extend([
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ]);
        self.node.sysctls(&node_sysctls)?;
        let mut node_cmds = Vec::new();
        for (peer, dev, _) in self.links() {
            peer.sysctls(&quiet)?;
            node_cmds.push(format!(
                "link add {dev} type veth peer name eth0 netns {}",
                peer.name()
            ));
        }
        self.node.batch(&node_cmds)?;

        let mut node_cmds = Vec::new();
        for (peer, dev, place) in self.links() {
            let (gw4, gw6) = if place == Place::Sink {
                (SINK4, SINK6)
            } else {
                (GATEWAY4, GATEWAY6)
            };
            node_cmds.push(format!("link set {dev} up"));
            node_cmds.push(format!("addr add {GATEWAY4}/32 dev {dev}"));
            node_cmds.push(format!("addr add {GATEWAY6}/64 dev {dev} nodad"));
            let mut peer_cmds = vec!["link set eth0 up".to_string()];
            if place == Place::Sink {
                peer_cmds.push(format!("addr add {SINK4}/32 dev eth0"));
                peer_cmds.push(format!("addr add {SINK6}/64 dev eth0 nodad"));
            }
            peer_cmds.push(format!("route add {GATEWAY4}/32 dev eth0"));
            peer_cmds.push(format!("route add default via {GATEWAY4} dev eth0"));
            peer_cmds.push(format!("-6 route add default via {GATEWAY6} dev eth0"));
            for (ip, _) in self.places.iter().filter(|(_, p)| **p == place) {
                let dev_in_peer = if place == Place::Sink { "lo" } else { "eth0" };
                peer_cmds.push(addr_cmd(ip, &host_prefix(ip), dev_in_peer));
                let family = if ip.is_ipv6() { "-6 " } else { "" };
                node_cmds.push(format!("{family}route add {} dev {dev}", host_prefix(ip)));
            }
            if place == Place::Sink {
                node_cmds.push(format!("route add {gw4}/32 dev {dev}"));
                node_cmds.push(format!("route add default via {gw4} dev {dev}"));
                node_cmds.push(format!("-6 route add default via {gw6} dev {dev}"));
            }
            if place == Place::External {
                for a in &self.node_addresses {
                    node_cmds.push(addr_cmd(&a.ip, &format!("{}/{}", a.ip, a.prefix), dev));
                }
            }
            peer.batch(&peer_cmds)?;
        }
        self.node.batch(&node_cmds)
    }

    /// Where `ip` lives (loopback and the node's addresses: the node).
    pub fn place_of(&self, ip: &IpAddr) -> Place {
        if ip.is_loopback() {
            return Place::Node;
        }
        self.places.get(ip).copied().unwrap_or(Place::Sink)
    }

    pub fn netns(&self, place: Place) -> &Netns {
        match place {
            Place::Node => &self.node,
            Place::Pods => &self.pods,
            Place::Remote => &self.remote,
            Place::External => &self.ext,
            Place::Sink => &self.sink,
        }
    }

    pub fn is_node_address(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.node_addresses.iter().any(|a| a.ip == *ip)
    }
}
