//! What the backends' real-kernel tests (nftables, eBPF) add to the test
//! kit's network namespaces (`switchyard_testkit::netns`, removed on drop,
//! also when a test panics): names of this process, [`TestNetns`] (commands,
//! threads, an nf_tables netlink socket and a [`Runner`] inside a namespace,
//! each failing the test on error), and a node with a pod behind it
//! answering on a VIP.

use std::process::{Command, Stdio};
use std::sync::Arc;

pub use switchyard_testkit::netns::Netns;
use switchyard_testkit::netns::is_root;

use super::nftables::netlink::NftNetlink;
use crate::conntrack::ConntrackTable;
use crate::conntrack::netlink::NetlinkConntrack;
use crate::exec::{ExecError, RealRunner, Runner};

/// Runs every tool inside one namespace, whose conntrack table it has a
/// socket in.
pub struct NetnsRunner {
    ns: String,
    conntrack: Arc<NetlinkConntrack>,
}

impl Runner for NetnsRunner {
    fn conntrack(&self) -> Arc<dyn ConntrackTable> {
        self.conntrack.clone()
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ExecError> {
        let mut full = vec!["netns", "exec", self.ns.as_str(), program];
        full.extend_from_slice(args);
        RealRunner.run("ip", &full, stdin)
    }
}

/// `synft<pid>-<suffix>`; `None` (and a SKIP line) when not root.
pub fn create(suffix: &str) -> Option<Netns> {
    if !is_root() {
        eprintln!("SKIP: real-kernel tests need root");
        return None;
    }
    Some(named(&format!("synft{}-{suffix}", std::process::id())))
}

/// A namespace of exactly this name, with `lo` up.
pub fn named(name: &str) -> Netns {
    Netns::create(name).unwrap_or_else(|e| panic!("{e}"))
}

/// What the kernel tests do in a namespace, failing the test on any error.
pub trait TestNetns {
    /// A shell command inside the namespace; its output.
    fn sh(&self, cmd: &str) -> String;
    /// `nft -f -` inside the namespace.
    fn nft(&self, script: &str);
    /// Run `f` on a thread inside the namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T;
    /// Run `f` with an nf_tables netlink socket opened inside the namespace.
    fn netlink<R: Send>(&self, f: impl FnOnce(&mut NftNetlink) -> R + Send) -> R;
    /// A runner whose tools act inside the namespace.
    fn runner(&self) -> Arc<NetnsRunner>;
}

impl TestNetns for Netns {
    fn sh(&self, cmd: &str) -> String {
        self.exec("sh", &["-c", cmd], None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn nft(&self, script: &str) {
        if let Err(e) = self.exec("nft", &["-f", "-"], Some(script.as_bytes())) {
            panic!("nft -f: {e}\n{script}");
        }
    }

    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.run(f).unwrap_or_else(|e| panic!("{e}"))
    }

    fn netlink<R: Send>(&self, f: impl FnOnce(&mut NftNetlink) -> R + Send) -> R {
        self.enter(|| f(&mut NftNetlink::open().unwrap_or_else(|e| panic!("{e}"))))
    }

    fn runner(&self) -> Arc<NetnsRunner> {
        let conntrack =
            self.enter(|| NetlinkConntrack::bound_here().unwrap_or_else(|e| panic!("{e}")));
        Arc::new(NetnsRunner {
            ns: self.name().to_string(),
            conntrack: Arc::new(conntrack),
        })
    }
}

/// A child process killed on drop, also when the test panics.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node namespace and a pod namespace `10.0.1.5` behind it on a veth
/// (`tag`: at most 4 characters, unique per test), with `172.30.0.0/16`
/// routed towards the pod.
pub fn node_and_pod(tag: &str) -> Option<(Netns, Netns)> {
    let node = create(&format!("{tag}-node"))?;
    let pod = create(&format!("{tag}-pod"))?;
    let veth = format!("sy{}{tag}", std::process::id());
    node.sh(&format!(
        "ip link add {veth}a type veth peer name {veth}b && ip link set {veth}b netns {} && \
         ip addr add 10.0.1.1/24 dev {veth}a && ip link set {veth}a up && \
         ip route add 172.30.0.0/16 dev {veth}a",
        pod.name()
    ));
    pod.sh(&format!(
        "ip addr add 10.0.1.5/24 dev {veth}b && ip link set {veth}b up && ip route add default via 10.0.1.1"
    ));
    Some((node, pod))
}

/// What a TCP connect from `node` to `172.30.0.10:80` gets back from a
/// server in `pod` on port 8080 that answers `pod-10.0.1.5` (retried for 5 s).
pub fn vip_reply(node: &Netns, pod: &Netns) -> String {
    reply(node, pod, "172.30.0.10:80")
}

/// What a TCP connect from `node` to `to` (`addr:port`) gets back from a
/// server in `pod` on port 8080 that answers `pod-10.0.1.5` (retried for 5 s).
pub fn reply(node: &Netns, pod: &Netns, to: &str) -> String {
    let _server = Child(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                pod.name(),
                "socat",
                "TCP-LISTEN:8080,reuseaddr,fork",
                "SYSTEM:echo pod-10.0.1.5",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("socat: {e}")),
    );
    node.sh(&format!(
        "for i in $(seq 1 50); do out=$(socat -T 1 - TCP:{to},connect-timeout=1 </dev/null 2>/dev/null) && \
         [ -n \"$out\" ] && echo \"$out\" && exit 0; sleep 0.1; done; exit 1",
    ))
    .trim()
    .to_string()
}
