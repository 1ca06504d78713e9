//! Random cluster states judged by kube-proxy: from a seed, a scenario of
//! `count` states (the initial state and `count - 1` steps, each a whole
//! state) with Services of every type (ExternalName too: kube-proxy ignores
//! it, so must Switchyard), both traffic policies, ClientIP affinity,
//! load-balancer source ranges, IPv4, IPv6 and dual-stack, endpoints local
//! and remote, ready, serving-terminating, terminating and not ready, zone
//! hints; and flows from a pod, the node itself, an outside client inside
//! and outside the source ranges and another node, to every cluster IP,
//! node port, load-balancer IP and external IP, and to addresses and ports
//! no Service has. Every flow's output is `reference`: it passes when
//! Switchyard does what kube-proxy does. The same seed gives the same file.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use switchyard_api::ruleset::Protocol;

use crate::scenario::{Flow, NodeSpec, Scenario, ScenarioError, Step};

/// `SEED[:COUNT]`: which random states, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomStates {
    pub seed: u64,
    pub count: usize,
}

/// States when `--random` names a seed only.
const DEFAULT_COUNT: usize = 4;
/// Flows per state at most: a sample of the Services' flows, then the
/// flows to what no Service has.
const FLOWS_PER_STATE: usize = 24;
const NODE_NAME: &str = "test-node";
const NAMESPACE: &str = "random";

impl FromStr for RandomStates {
    type Err = String;

    fn from_str(text: &str) -> Result<RandomStates, String> {
        let (seed, count) = match text.split_once(':') {
            Some((s, c)) => (s, Some(c)),
            None => (text, None),
        };
        let seed = seed
            .parse()
            .map_err(|_| format!("seed {seed:?} is not a number"))?;
        let count = match count {
            None => DEFAULT_COUNT,
            Some(c) => c
                .parse()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| format!("count {c:?} is not a positive number"))?,
        };
        Ok(RandomStates { seed, count })
    }
}

impl fmt::Display for RandomStates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seed, self.count)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// The kinds of addresses a state hands out, numbered within each.
#[derive(Clone, Copy, Debug)]
enum Group {
    ClusterIp,
    LoadBalancer,
    External,
    LocalPod,
    RemotePod,
    Nobody,
}

/// Where a flow comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Pod,
    Node,
    RemoteNode,
    /// An outside client inside the load-balancer source ranges.
    Allowed,
    /// An outside client outside them.
    Denied,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// Address `n` of `group`.
    fn ip(self, group: Group, n: u8) -> IpAddr {
        let text = match (self, group) {
            (Family::V4, Group::ClusterIp) => format!("172.30.0.{n}"),
            (Family::V6, Group::ClusterIp) => format!("fd00:30::{n:x}"),
            (Family::V4, Group::LoadBalancer) => format!("5.6.7.{n}"),
            (Family::V6, Group::LoadBalancer) => format!("2001:db8:5::{n:x}"),
            (Family::V4, Group::External) => format!("192.168.99.{n}"),
            (Family::V6, Group::External) => format!("2001:db8:99::{n:x}"),
            (Family::V4, Group::LocalPod) => format!("10.180.0.{n}"),
            (Family::V6, Group::LocalPod) => format!("fd00:10::180:{n:x}"),
            (Family::V4, Group::RemotePod) => format!("10.181.0.{n}"),
            (Family::V6, Group::RemotePod) => format!("fd00:10::181:{n:x}"),
            (Family::V4, Group::Nobody) => format!("198.18.0.{n}"),
            (Family::V6, Group::Nobody) => format!("2001:db8:18::{n:x}"),
        };
        parse_ip(&text)
    }

    fn source(self, source: Source) -> IpAddr {
        parse_ip(match (self, source) {
            (Family::V4, Source::Pod) => "10.0.0.2",
            (Family::V6, Source::Pod) => "fd00:10::2",
            (Family::V4, Source::Node) => "192.168.0.2",
            (Family::V6, Source::Node) => "2001:db8:1::2",
            (Family::V4, Source::RemoteNode) => "192.168.0.3",
            (Family::V6, Source::RemoteNode) => "2001:db8:1::3",
            (Family::V4, Source::Allowed) => "203.0.113.5",
            (Family::V6, Source::Allowed) => "2001:db8:203::5",
            (Family::V4, Source::Denied) => "198.51.100.5",
            (Family::V6, Source::Denied) => "2001:db8:198::5",
        })
    }

    /// The load-balancer source range that admits `Source::Allowed` only.
    fn source_range(self) -> &'static str {
        match self {
            Family::V4 => "203.0.113.0/25",
            Family::V6 => "2001:db8:203::/64",
        }
    }
}

/// Every address above is well-formed by construction.
fn parse_ip(text: &str) -> IpAddr {
    text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// The node of every random state: dual-stack, in zone-a.
fn node() -> NodeSpec {
    let cidrs = |list: &[&str]| list.iter().filter_map(|c| c.parse().ok()).collect();
    NodeSpec {
        name: NODE_NAME.into(),
        addresses: vec!["192.168.0.2/24".into(), "2001:db8:1::2/64".into()],
        zone: Some("zone-a".into()),
        cluster_cidrs: cidrs(&["10.0.0.0/8", "fd00:10::/64"]),
        service_cidrs: Vec::new(),
        node_port_addresses: None,
        localhost_node_ports: None,
        masquerade_all: false,
    }
}

/// The scenario of `states`.
pub fn generate(states: RandomStates) -> Scenario {
    let mut rng = fastrand::Rng::with_seed(states.seed);
    let mut all: Vec<Step> = (0..states.count).map(|_| state(&mut rng)).collect();
    let initial = all.remove(0);
    Scenario {
        node: node(),
        initial,
        steps: all,
    }
}

/// Generate `states` into a file in `dir` and return its path.
pub fn write(states: RandomStates, dir: &Path) -> Result<PathBuf, ScenarioError> {
    let path = dir.join(format!("random-{}-{}.yaml", states.seed, states.count));
    let header = format!(
        "Random states {states} (scenario --random {states}): every flow is judged by kube-proxy."
    );
    generate(states).save(&path, &header)?;
    Ok(path)
}

/// One whole state: 2 to 5 Services, their slices, a sample of flows.
fn state(rng: &mut fastrand::Rng) -> Step {
    let mut step = Step::default();
    let mut flows = Vec::new();
    for i in 0..rng.u8(2..=5) {
        let (service, slices) = service(rng, i);
        flows.extend(service_flows(&service));
        step.services.push(service);
        step.endpoint_slices.extend(slices);
    }
    rng.shuffle(&mut flows);
    let nobody = nobody_flows(rng);
    flows.truncate(FLOWS_PER_STATE - nobody.len());
    flows.extend(nobody);
    for (n, mut flow) in flows.into_iter().enumerate() {
        flow.name = format!("#{n} {}", flow.name);
        step.flows.push(flow);
    }
    step
}

/// The families of a Service, the primary one first.
fn families(rng: &mut fastrand::Rng) -> Vec<Family> {
    match rng.u8(0..5) {
        0 => vec![Family::V6],
        1 => vec![Family::V4, Family::V6],
        2 => vec![Family::V6, Family::V4],
        _ => vec![Family::V4],
    }
}

const KINDS: [&str; 5] = [
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "LoadBalancer",
    "ExternalName",
];

/// Service `i` of a state and its EndpointSlices.
fn service(rng: &mut fastrand::Rng, i: u8) -> (Service, Vec<EndpointSlice>) {
    let name = format!("s{i}");
    let kind = KINDS[rng.usize(0..KINDS.len())];
    if kind == "ExternalName" {
        let spec = json!({"type": kind, "externalName": "db.example.com"});
        return (object(&name, spec, None), Vec::new());
    }
    let families = families(rng);
    let ips = |group: Group| -> Vec<String> {
        families
            .iter()
            .map(|f| f.ip(group, 10 + i).to_string())
            .collect()
    };
    let cluster_ips = ips(Group::ClusterIp);
    let mut spec = json!({
        "type": kind,
        "clusterIP": cluster_ips[0],
        "clusterIPs": cluster_ips,
        "ipFamilies": families.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "ipFamilyPolicy": if families.len() == 2 { "RequireDualStack" } else { "SingleStack" },
        "ports": ports(rng, i, kind != "ClusterIP"),
    });
    if kind != "ClusterIP" {
        spec["externalTrafficPolicy"] = json!(if rng.bool() { "Local" } else { "Cluster" });
    }
    if rng.u8(0..4) == 0 {
        spec["internalTrafficPolicy"] = json!("Local");
    }
    if rng.u8(0..4) == 0 {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
    }
    if rng.u8(0..3) == 0 {
        spec["externalIPs"] = json!(ips(Group::External));
    }
    let hinted = rng.u8(0..3) == 0;
    if hinted {
        spec["trafficDistribution"] = json!("PreferClose");
    }
    let mut status = None;
    if kind == "LoadBalancer" {
        if rng.bool() {
            let ranges: Vec<&str> = families.iter().map(|f| f.source_range()).collect();
            spec["loadBalancerSourceRanges"] = json!(ranges);
        }
        let ingress: Vec<Value> = ips(Group::LoadBalancer)
            .iter()
            .map(|ip| json!({"ip": ip}))
            .collect();
        status = Some(json!({"loadBalancer": {"ingress": ingress}}));
    }
    let slices = families
        .iter()
        .map(|f| slice(rng, &name, *f, &spec["ports"], hinted))
        .collect();
    (object(&name, spec, status), slices)
}

/// A Service of this module's namespace.
fn object(name: &str, spec: Value, status: Option<Value>) -> Service {
    let mut value = json!({"metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec});
    if let Some(status) = status {
        value["status"] = status;
    }
    serde_json::from_value(value).unwrap_or_default()
}

/// TCP 80, and at times TCP 8080 or UDP 53; node ports when the Service
/// has them (unique in the state).
fn ports(rng: &mut fastrand::Rng, i: u8, node_ports: bool) -> Vec<Value> {
    let mut ports = vec![("p80", 80, "TCP")];
    match rng.u8(0..3) {
        0 => ports.push(("p8080", 8080, "TCP")),
        1 => ports.push(("dns", 53, "UDP")),
        _ => {}
    }
    ports
        .iter()
        .zip(0u16..)
        .map(|((name, port, protocol), j)| {
            let mut p = json!({"name": name, "port": port, "protocol": protocol});
            if node_ports {
                p["nodePort"] = json!(30000 + u16::from(i) * 4 + j);
            }
            p
        })
        .collect()
}

/// The EndpointSlice of one family: 0 to 3 endpoints, local (1..=3) or
/// remote (4..=6), in every condition, hinted when the Service asks.
fn slice(
    rng: &mut fastrand::Rng,
    service: &str,
    family: Family,
    ports: &Value,
    hinted: bool,
) -> EndpointSlice {
    let mut picked: Vec<u8> = (1..=6).collect();
    rng.shuffle(&mut picked);
    picked.truncate(rng.usize(0..=3));
    let endpoints: Vec<Value> = picked
        .iter()
        .map(|n| endpoint(rng, family, *n, hinted))
        .collect();
    let slice_ports: Vec<Value> = ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| json!({"name": p["name"], "port": p["port"], "protocol": p["protocol"]}))
        .collect();
    let value = json!({
        "metadata": {
            "name": format!("{service}-{}", family.name().to_lowercase()),
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": family.name(),
        "endpoints": endpoints,
        "ports": slice_ports,
    });
    serde_json::from_value(value).unwrap_or_default()
}

fn endpoint(rng: &mut fastrand::Rng, family: Family, n: u8, hinted: bool) -> Value {
    let local = n <= 3;
    let ip = if local {
        family.ip(Group::LocalPod, n)
    } else {
        family.ip(Group::RemotePod, n)
    };
    let (ready, serving, terminating) = match rng.u8(0..10) {
        0 | 1 => (false, true, true),
        2 => (false, false, true),
        3 => (false, false, false),
        _ => (true, true, false),
    };
    let zone = if local || rng.bool() {
        "zone-a"
    } else {
        "zone-b"
    };
    let mut ep = json!({
        "addresses": [ip.to_string()],
        "nodeName": if local { NODE_NAME } else { "host2" },
        "zone": zone,
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
    });
    if hinted && rng.u8(0..5) > 0 {
        ep["hints"] = json!({"forZones": [{"name": zone}]});
    }
    ep
}

fn flow(source: Source, what: &str, dest_ip: IpAddr, dest_port: u16, protocol: Protocol) -> Flow {
    Flow {
        name: format!("{source:?} to {what} {dest_ip} port {dest_port}/{protocol}"),
        source_ip: Family::of(dest_ip).source(source),
        dest_ip,
        dest_port,
        protocol,
        output: "reference".into(),
        masq: None,
        source_port: None,
        from_node: source == Source::Node,
        by_mode: Default::default(),
    }
}

/// The addresses of a list of IP texts.
fn ips<'a>(list: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    list.into_iter().filter_map(|ip| ip.parse().ok()).collect()
}

/// Every flow to the Service: its cluster IPs from a pod, the node and an
/// outside client; its node ports from outside, another node and the node
/// itself; its load-balancer IPs from inside and outside the source ranges
/// and from a pod; its external IPs from outside and from a pod.
fn service_flows(service: &Service) -> Vec<Flow> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let lb: Vec<String> = service
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.clone())
        .collect();
    let cluster_ips = ips(spec.cluster_ips.iter().flatten());
    let targets = [
        (
            "cluster IP",
            cluster_ips.clone(),
            &[Source::Pod, Source::Node, Source::Allowed][..],
        ),
        (
            "load-balancer IP",
            ips(&lb),
            &[Source::Allowed, Source::Denied, Source::Pod][..],
        ),
        (
            "external IP",
            ips(spec.external_ips.iter().flatten()),
            &[Source::Allowed, Source::Pod][..],
        ),
    ];
    let mut flows = Vec::new();
    for port in spec.ports.iter().flatten() {
        let protocol = match port.protocol.as_deref() {
            Some("UDP") => Protocol::Udp,
            _ => Protocol::Tcp,
        };
        let number = u16::try_from(port.port).unwrap_or(80);
        for (what, addresses, sources) in &targets {
            for ip in addresses {
                for source in *sources {
                    flows.push(flow(*source, what, *ip, number, protocol));
                }
            }
        }
        let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for family in cluster_ips.iter().map(|ip| Family::of(*ip)) {
            let node_ip = family.source(Source::Node);
            for source in [Source::Allowed, Source::RemoteNode, Source::Node] {
                flows.push(flow(source, "node port", node_ip, node_port, protocol));
            }
        }
    }
    flows
}

/// Flows to what no Service has: an unused cluster IP, a node port no
/// Service has, an address of nobody.
fn nobody_flows(rng: &mut fastrand::Rng) -> Vec<Flow> {
    let family = if rng.bool() { Family::V4 } else { Family::V6 };
    let tcp = Protocol::Tcp;
    vec![
        flow(
            Source::Pod,
            "unused cluster IP",
            family.ip(Group::ClusterIp, 250),
            80,
            tcp,
        ),
        flow(
            Source::Allowed,
            "unused node port",
            family.source(Source::Node),
            31999,
            tcp,
        ),
        flow(
            Source::Pod,
            "nobody's address",
            family.ip(Group::Nobody, 1),
            80,
            tcp,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_states_and_they_parse_back() {
        let states = RandomStates { seed: 7, count: 3 };
        let text = serde_norway::to_string(&generate(states)).unwrap();
        assert_eq!(text, serde_norway::to_string(&generate(states)).unwrap());
        let parsed = Scenario::parse("random", &text).unwrap();
        assert_eq!(parsed.steps.len(), 2);
        assert!(parsed.all_flows().all(|f| f.output == "reference"));
        assert!(parsed.all_flows().count() > 3 * 3);
        let services: Vec<&Service> = std::iter::once(&parsed.initial)
            .chain(&parsed.steps)
            .flat_map(|s| &s.services)
            .collect();
        assert!(services.iter().all(|s| s.spec.is_some()));
    }

    #[test]
    fn seed_and_count_parse() {
        assert_eq!("5:9".parse(), Ok(RandomStates { seed: 5, count: 9 }));
        assert_eq!(
            "5".parse(),
            Ok(RandomStates {
                seed: 5,
                count: DEFAULT_COUNT
            })
        );
        assert!("5:0".parse::<RandomStates>().is_err());
        assert!("x".parse::<RandomStates>().is_err());
    }
}
