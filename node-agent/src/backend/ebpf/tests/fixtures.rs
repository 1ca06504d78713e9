//! Kernel fixtures owned by one test: a bpffs mount, a network namespace, a
//! child cgroup. Each is removed on drop, also when the test fails.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub use crate::backend::ebpf::scratch::{ScratchBpffs, ScratchCgroup};
use switchyard_api::policy::{LinkedRuleset, NodeInfo, link};
use switchyard_api::ruleset::{Backend, Protocol, Ruleset, ServicePortRule};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name `sye-<pid>-<n><tag>` (≤ 15 bytes for interface names).
pub fn unique(tag: &str) -> String {
    format!(
        "sye-{}-{}{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn bpffs() -> ScratchBpffs {
    ScratchBpffs::mount(&unique("-bpffs")).unwrap()
}

pub fn cgroup() -> ScratchCgroup {
    ScratchCgroup::create(&unique("-cg")).unwrap()
}

/// A network namespace of this test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name, "ip"];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// Run `f` on a thread that lives in this namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/var/run/netns").join(&self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap();
                // SAFETY: a valid namespace fd; only this thread switches.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

pub fn backend(id: u32, addr: &str, port: u16, node: &str) -> Backend {
    Backend {
        node_name: Some(node.to_string()),
        ..Backend::new(id, ip(addr), port)
    }
}

pub fn service(id: u32, cluster_ip: &str, port: u16, backends: Vec<Backend>) -> ServicePortRule {
    ServicePortRule {
        cluster_ips: vec![ip(cluster_ip)],
        backends,
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
