//! Kernel fixtures owned by one test: a bpffs mount, a network namespace, a
//! child cgroup. Each is removed on drop, also when the test fails.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

pub use crate::ebpf::scratch::{ScratchBpffs, ScratchCgroup};
pub use crate::testns::{Netns, TestNetns, named};
use switchyard_api::policy::{LinkedRuleset, NodeInfo, link};
use switchyard_api::ruleset::{Endpoint, Protocol, Ruleset, ServicePortRule};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name `sye-<pid>-<n><tag>` (≤ 15 bytes for interface names).
pub fn unique(tag: &str) -> String {
    format!(
        "sye-{}-{}{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn bpffs() -> ScratchBpffs {
    ScratchBpffs::mount(&unique("-bpffs")).unwrap()
}

pub fn cgroup() -> ScratchCgroup {
    ScratchCgroup::create(&unique("-cg")).unwrap()
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

pub fn endpoint(id: u32, addr: &str, port: u16, node: &str) -> Endpoint {
    Endpoint {
        node_name: Some(node.to_string()),
        ..Endpoint::new(id, ip(addr), port)
    }
}

pub fn service(id: u32, cluster_ip: &str, port: u16, endpoints: Vec<Endpoint>) -> ServicePortRule {
    ServicePortRule {
        cluster_ips: vec![ip(cluster_ip)],
        endpoints,
        ..ServicePortRule::new(id, "default", &format!("svc{id}"), Protocol::Tcp, port)
    }
}

pub const NODE_IP: &str = "192.0.2.1";

pub fn linked(services: Vec<ServicePortRule>) -> LinkedRuleset {
    let node = NodeInfo {
        name: "node-a".to_string(),
        zone: None,
        addresses: vec![ip(NODE_IP)],
    };
    link(&Ruleset { services }, &node)
}
