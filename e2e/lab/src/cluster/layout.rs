//! The lab cluster on paper: addresses, pods, Services and the Kubernetes
//! objects describing them, as the cluster creates them through the API (and
//! as `switchyard demo --print-state` prints them for `plan`).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde_json::{Value, json};
use switchyard_api::Mode;

/// Server pods per node.
pub const PODS_PER_NODE: u8 = 2;
/// The TCP (the Services' `http`) and UDP echo ports every server pod listens on.
pub const HTTP_PORT: u16 = 8080;
pub const ECHO_PORT: u16 = 5353;
/// The service ports in front of them.
pub const SERVICE_HTTP_PORT: u16 = 80;
pub const SERVICE_ECHO_PORT: u16 = 53;
pub const NAMESPACE: &str = "demo";
pub const POOL: &str = "demo";
pub const POOL_LABEL: &str = "switchyard.dev/pool";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The zone every node is in.
pub const ZONE: &str = "zone-a";
/// The pool's ProxyConfig name.
pub const PROXY_CONFIG: &str = "demo";
/// Labels of the server pods: `app=web`, and `group=g<j>` for pod index `j`.
const APP: &str = "web";

/// Sizes of the demo cluster; every address is derived from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub nodes: u8,
    pub services: u8,
}

/// A server pod: `web-<node>-<index>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pod {
    pub node: u8,
    pub index: u8,
}

impl Pod {
    pub fn name(self) -> String {
        format!("web-{}-{}", self.node, self.index)
    }

    /// The `group` label Services select on.
    fn group(index: u8) -> String {
        format!("g{index}")
    }

    pub fn ip(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.node, 10 + self.index)
    }
}

/// What a client sends to and what may answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The service's endpoints: its pods' addresses and target port.
    pub endpoints: BTreeSet<SocketAddr>,
    /// `svc-1 via cluster IP 10.96.0.11:80`, for reports.
    pub label: String,
}

impl Layout {
    pub fn node_name(i: u8) -> String {
        format!("node-{i}")
    }

    /// The node's address on the shared LAN.
    pub fn node_ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 77, 10 + i)
    }

    /// The client outside the cluster, on the LAN.
    pub fn external_client_ip() -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 77, 2)
    }

    /// The client pod of node `i` (sends to cluster IPs).
    pub fn client_pod_ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, i, 100)
    }

    /// The node side of every pod link: the pods' gateway.
    pub fn pod_gateway(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, i, 1)
    }

    pub fn pod_cidr(i: u8) -> String {
        format!("10.244.{i}.0/24")
    }

    pub fn cluster_ip(k: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, 0, 10 + k)
    }

    pub fn service_name(k: u8) -> String {
        format!("svc-{k}")
    }

    /// Even services are NodePort, odd ones ClusterIP.
    pub fn is_node_port(k: u8) -> bool {
        k.is_multiple_of(2)
    }

    pub fn http_node_port(k: u8) -> u16 {
        30080 + u16::from(k)
    }

    pub fn echo_node_port(k: u8) -> u16 {
        31053 + u16::from(k)
    }

    pub fn pods(&self) -> impl Iterator<Item = Pod> + '_ {
        (0..self.nodes).flat_map(|node| (0..PODS_PER_NODE).map(move |index| Pod { node, index }))
    }

    /// The pod index whose pods serve service `k`.
    fn serving_index(k: u8) -> u8 {
        k % PODS_PER_NODE
    }

    /// Service `k`'s endpoints: one pod per node, alternating between services.
    pub fn endpoints(&self, k: u8) -> Vec<Pod> {
        self.pods()
            .filter(|p| p.index == Layout::serving_index(k))
            .collect()
    }

    /// Service `k` at `addr`, served on its pods' `port`.
    fn target(&self, k: u8, addr: SocketAddrV4, port: u16, via: &str) -> Target {
        Target {
            addr: SocketAddr::V4(addr),
            endpoints: self
                .endpoints(k)
                .iter()
                .map(|p| SocketAddr::from((p.ip(), port)))
                .collect(),
            label: format!("{} via {via} {addr}", Layout::service_name(k)),
        }
    }

    /// The server pod with address `ip`.
    pub fn pod_at(&self, ip: Ipv4Addr) -> Option<Pod> {
        self.pods().find(|p| p.ip() == ip)
    }

    /// HTTP and UDP targets of a pod client: every service's cluster IP.
    pub fn pod_targets(&self) -> (Vec<Target>, Vec<Target>) {
        let http = (0..self.services)
            .map(|k| {
                let addr = SocketAddrV4::new(Layout::cluster_ip(k), SERVICE_HTTP_PORT);
                self.target(k, addr, HTTP_PORT, "cluster IP")
            })
            .collect();
        let udp = (0..self.services)
            .map(|k| {
                let addr = SocketAddrV4::new(Layout::cluster_ip(k), SERVICE_ECHO_PORT);
                self.target(k, addr, ECHO_PORT, "cluster IP")
            })
            .collect();
        (http, udp)
    }

    /// HTTP and UDP targets of the external client: every node port on every node.
    pub fn external_targets(&self) -> (Vec<Target>, Vec<Target>) {
        let mut http = Vec::new();
        let mut udp = Vec::new();
        for k in (0..self.services).filter(|k| Layout::is_node_port(*k)) {
            for i in 0..self.nodes {
                let ip = Layout::node_ip(i);
                let via = format!("{} node port", Layout::node_name(i));
                let http_addr = SocketAddrV4::new(ip, Layout::http_node_port(k));
                http.push(self.target(k, http_addr, HTTP_PORT, &via));
                let echo_addr = SocketAddrV4::new(ip, Layout::echo_node_port(k));
                udp.push(self.target(k, echo_addr, ECHO_PORT, &via));
            }
        }
        (http, udp)
    }

    /// The cluster state as the endpointslice controller would see it made:
    /// Nodes, Services, their EndpointSlices and the pool's ProxyConfig (in
    /// `mode`, verifying through `svc-0`). What `plan -f` reads.
    pub fn objects(&self, mode: Mode, max_unavailable: u32) -> Vec<Value> {
        let mut out: Vec<Value> = (0..self.nodes).map(Layout::node).collect();
        for k in 0..self.services {
            out.push(self.service(k));
            out.push(self.endpoint_slice(k));
        }
        out.push(Layout::proxy_config(mode, max_unavailable));
        out
    }

    /// Node `i`: pool and zone labels, its pod CIDR, its LAN address.
    pub fn node(i: u8) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": Layout::node_name(i),
                "labels": {POOL_LABEL: POOL, "topology.kubernetes.io/zone": ZONE},
            },
            "spec": {"podCIDR": Layout::pod_cidr(i), "podCIDRs": [Layout::pod_cidr(i)]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": Layout::node_ip(i).to_string()},
                {"type": "Hostname", "address": Layout::node_name(i)},
            ]},
        })
    }

    /// The pool's ProxyConfig: every node, `mode`, batches of `max_unavailable`,
    /// verification through `svc-0`'s HTTP port.
    pub fn proxy_config(mode: Mode, max_unavailable: u32) -> Value {
        let service = format!("{NAMESPACE}/{}", Layout::service_name(0));
        pool_proxy_config(mode, max_unavailable, CLUSTER_CIDR, &service)
    }

    /// A server pod on its node, running and Ready (its `status` is what a
    /// kubelet would report; without one it is written through the API).
    pub fn pod(pod: Pod) -> Value {
        let ip = pod.ip().to_string();
        let condition = |type_: &str| json!({"type": type_, "status": "True"});
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name(),
                "namespace": NAMESPACE,
                "labels": {"app": APP, "group": Pod::group(pod.index)},
            },
            "spec": {
                "nodeName": Layout::node_name(pod.node),
                "containers": [{"name": "web", "image": "switchyard/lab-web"}],
            },
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [condition("Ready"), condition("ContainersReady")],
            },
        })
    }

    /// Service `k`: its fixed cluster IP (and node ports when even), selecting
    /// the pods of [`Layout::endpoints`].
    pub fn service(&self, k: u8) -> Value {
        let node_port = Layout::is_node_port(k);
        let port = |name: &str, protocol: &str, port: u16, target: u16, node: u16| {
            let mut p =
                json!({"name": name, "protocol": protocol, "port": port, "targetPort": target});
            if node_port {
                p["nodePort"] = json!(node);
            }
            p
        };
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": Layout::service_name(k), "namespace": NAMESPACE},
            "spec": {
                "type": if node_port { "NodePort" } else { "ClusterIP" },
                "selector": {"app": APP, "group": Pod::group(Layout::serving_index(k))},
                "clusterIP": Layout::cluster_ip(k).to_string(),
                "clusterIPs": [Layout::cluster_ip(k).to_string()],
                "ports": [
                    port("http", "TCP", SERVICE_HTTP_PORT, HTTP_PORT, Layout::http_node_port(k)),
                    port("echo", "UDP", SERVICE_ECHO_PORT, ECHO_PORT, Layout::echo_node_port(k)),
                ],
            },
        })
    }

    /// Service `k`'s EndpointSlice as the endpointslice controller makes it
    /// from the Service and its pods (only for `plan`: the cluster leaves it
    /// to the controller).
    fn endpoint_slice(&self, k: u8) -> Value {
        let endpoints: Vec<Value> = self
            .endpoints(k)
            .iter()
            .map(|p| {
                json!({
                    "addresses": [p.ip().to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": Layout::node_name(p.node),
                    "zone": ZONE,
                    "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": p.name()},
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-abc12", Layout::service_name(k)),
                "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": Layout::service_name(k)},
            },
            "addressType": "IPv4",
            "ports": [
                {"name": "http", "protocol": "TCP", "port": HTTP_PORT},
                {"name": "echo", "protocol": "UDP", "port": ECHO_PORT},
            ],
            "endpoints": endpoints,
        })
    }

    /// The objects as one multi-document YAML stream (what `plan -f` reads).
    pub fn state_yaml(&self, mode: Mode, max_unavailable: u32) -> String {
        self.objects(mode, max_unavailable)
            .iter()
            .map(|o| format!("---\n{}", serde_norway::to_string(o).unwrap_or_default()))
            .collect()
    }
}

/// The ProxyConfig of the pool (nodes labelled `POOL_LABEL=POOL`) in `mode`,
/// batches of `max_unavailable`, each switch verified on port
/// [`SERVICE_HTTP_PORT`] of `service` (`namespace/name`).
pub fn pool_proxy_config(
    mode: Mode,
    max_unavailable: u32,
    cluster_cidr: &str,
    service: &str,
) -> Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ProxyConfig",
        "metadata": {"name": PROXY_CONFIG},
        "spec": {
            "nodeSelector": {"matchLabels": {POOL_LABEL: POOL}},
            "mode": mode.as_str(),
            "clusterCIDRs": [cluster_cidr],
            "rollout": {
                "maxUnavailable": max_unavailable,
                "verification": {
                    "service": service,
                    "port": SERVICE_HTTP_PORT,
                    "timeout": "2s",
                },
            },
        },
    })
}
