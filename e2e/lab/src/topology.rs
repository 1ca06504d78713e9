//! The namespaces of one scenario and how they are wired:
//!
//! ```text
//!   h0 (one address: a pod, an endpoint, a client)  ──eth0 ═ h0──┐
//!   h1 …                                             ──eth0 ═ h1──┤ node   (node addresses and the
//!   …                                                             │         169.254.1.1 gateway on
//!   sink (catches traffic no rule translated)        ──eth0 ═ sink0┘         the uplink up0)
//! ```
//! Every address of the scenario lives in exactly one namespace: the node's
//! own addresses in the node, every other source or endpoint address in a
//! host namespace of its own (as a pod or a client machine would), and flow
//! destinations that are nobody's address on the sink's loopback, so a
//! connection no rule translated still finds a server that reports the
//! untouched destination. The node has a host route to each host; hosts route
//! everything to the node. The source of a node-originated flow that is not a
//! node address (`fromNode`) sits on the node's loopback. Nothing is
//! connected to the host namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::HarnessError;
use crate::netns::Netns;
use crate::scenario::{NodeAddress, Scenario};

/// Where an address lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    Node,
    /// Index into the host namespaces.
    Host(usize),
    Sink,
}

/// The namespaces of one scenario (removed on drop).
pub struct Topology {
    pub node: Netns,
    pub hosts: Vec<(Netns, IpAddr)>,
    pub sink: Netns,
    pub node_addresses: Vec<NodeAddress>,
    /// Sources of node-originated flows that are not node addresses, on the
    /// node's loopback (never node addresses for NodePorts).
    pub node_extra: BTreeSet<IpAddr>,
    places: BTreeMap<IpAddr, Place>,
}

const GATEWAY4: &str = "169.254.1.1";
const GATEWAY6: &str = "fe80::1";
const SINK4: &str = "169.254.1.2";
const SINK6: &str = "fe80::2";
/// The node's uplink: one end of a veth pair inside the node (this kernel has no dummy driver) holding the node's addresses.
pub const UPLINK: &str = "up0";
/// The node's link to the sink.
pub const SINK_LINK: &str = "sink0";

/// The node's link to host namespace `i`.
pub fn host_link(i: usize) -> String {
    format!("h{i}")
}

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

/// Every address the scenario needs in a namespace of its own, then the
/// destinations that belong to nobody.
fn scenario_addresses(scenario: &Scenario) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let mut hosts = Vec::new();
    for slice in scenario.all_slices() {
        for ep in &slice.endpoints {
            hosts.extend(ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
        }
    }
    hosts.extend(
        scenario
            .all_flows()
            .filter(|f| !f.from_node)
            .map(|f| f.source_ip),
    );
    let sink = scenario.all_flows().map(|f| f.dest_ip).collect();
    (hosts, sink)
}

impl Topology {
    pub fn build(prefix: &str, scenario: &Scenario) -> Result<Topology, HarnessError> {
        let node_addresses =
            scenario
                .node
                .parsed_addresses()
                .map_err(|message| HarnessError::Setup {
                    what: "node addresses".into(),
                    message,
                })?;
        let mut places = BTreeMap::new();
        let node_extra = scenario.node_extra_addresses();
        for ip in node_addresses.iter().map(|a| &a.ip).chain(&node_extra) {
            places.insert(*ip, Place::Node);
        }
        let node = Netns::create(&format!("{prefix}node"))?;
        let sink = Netns::create(&format!("{prefix}sink"))?;
        let (host_ips, sink_ips) = scenario_addresses(scenario);
        let mut hosts = Vec::new();
        for ip in host_ips {
            if ip.is_loopback() || places.contains_key(&ip) {
                continue;
            }
            places.insert(ip, Place::Host(hosts.len()));
            hosts.push((Netns::create(&format!("{prefix}h{}", hosts.len()))?, ip));
        }
        for ip in sink_ips {
            if !ip.is_loopback() {
                places.entry(ip).or_insert(Place::Sink);
            }
        }
        let topo = Topology {
            node,
            hosts,
            sink,
            node_addresses,
            node_extra,
            places,
        };
        topo.wire()?;
        Ok(topo)
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
            // REJECT answers with ICMP; the default rate limit would turn
            // later rejections into apparent drops.
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.ipv6.icmp.ratelimit", "0"),
        ]);
        self.node.sysctls(&node_sysctls)?;
        // The global ICMP budget, per namespace only since Linux 6.0.
        self.node
            .sysctls_where_present(&[("net.ipv4.icmp_msgs_per_sec", "100000")])?;

        let mut node_cmds = vec![
            format!("link add {UPLINK} type veth peer name {UPLINK}p"),
            format!("link set {UPLINK}p up"),
            format!("link set {UPLINK} up"),
        ];
        for a in &self.node_addresses {
            node_cmds.push(addr_cmd(&a.ip, &format!("{}/{}", a.ip, a.prefix), UPLINK));
        }
        node_cmds.push(format!("addr add {GATEWAY4}/32 dev {UPLINK}"));
        for ip in &self.node_extra {
            node_cmds.push(addr_cmd(ip, &host_prefix(ip), "lo"));
        }

        let peers = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, (ns, ip))| (ns, host_link(i), Some(*ip)))
            .chain([(&self.sink, SINK_LINK.to_string(), None)]);
        for (ns, dev, ip) in peers {
            ns.sysctls(&quiet)?;
            node_cmds.push(format!(
                "link add {dev} type veth peer name eth0 netns {}",
                ns.name()
            ));
            node_cmds.push(format!("link set {dev} up"));
            node_cmds.push(format!("addr add {GATEWAY6}/64 dev {dev} nodad"));
            let mut peer_cmds = vec!["link set eth0 up".to_string()];
            match ip {
                Some(ip) => {
                    peer_cmds.push(addr_cmd(&ip, &host_prefix(&ip), "eth0"));
                    node_cmds.push(format!("route add {} dev {dev}", host_prefix(&ip)));
                }
                None => {
                    peer_cmds.push(format!("addr add {SINK4}/32 dev eth0"));
                    peer_cmds.push(format!("addr add {SINK6}/64 dev eth0 nodad"));
                    for (ip, _) in self.places.iter().filter(|(_, p)| **p == Place::Sink) {
                        peer_cmds.push(addr_cmd(ip, &host_prefix(ip), "lo"));
                    }
                    node_cmds.push(format!("route add default via {SINK4} dev {dev} onlink"));
                    node_cmds.push(format!("route add default via {SINK6} dev {dev}"));
                }
            }
            peer_cmds.push(format!("route add default via {GATEWAY4} dev eth0 onlink"));
            peer_cmds.push(format!("route add default via {GATEWAY6} dev eth0"));
            self.node.batch(&std::mem::take(&mut node_cmds))?;
            ns.batch(&peer_cmds)?;
        }
        Ok(())
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
            Place::Host(i) => self.hosts.get(i).map_or(&self.sink, |(ns, _)| ns),
            Place::Sink => &self.sink,
        }
    }

    /// The node's network devices: the uplink, one link per host, the sink link.
    pub fn node_devices(&self) -> Vec<String> {
        let mut devices = vec![UPLINK.to_string()];
        devices.extend((0..self.hosts.len()).map(host_link));
        devices.push(SINK_LINK.to_string());
        devices
    }

    pub fn is_node_address(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.node_addresses.iter().any(|a| a.ip == *ip)
    }
}
