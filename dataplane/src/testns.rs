//! Network namespaces for the backends' real-kernel tests (nftables, eBPF),
//! removed on drop, also when a test panics. Nothing here touches the host
//! namespace beyond `ip netns add/del`; code that must run inside one (a
//! netlink socket, a bind) runs on a thread that entered it.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;

use super::nftables::netlink::NftNetlink;
use crate::exec::{ExecError, RealRunner, Runner};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs every tool inside one namespace.
pub struct NetnsRunner {
    ns: String,
}

impl Runner for NetnsRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ExecError> {
        let mut full = vec!["netns", "exec", self.ns.as_str(), program];
        full.extend_from_slice(args);
        RealRunner.run("ip", &full, stdin)
    }
}

/// A namespace removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `synft<pid>-<suffix>`; `None` (and a SKIP line) when not root.
    pub fn create(suffix: &str) -> Option<Netns> {
        if !is_root() {
            eprintln!("SKIP: real-kernel tests need root");
            return None;
        }
        Some(Netns::named(format!(
            "synft{}-{suffix}",
            std::process::id()
        )))
    }

    /// A namespace of exactly this name, with `lo` up.
    pub fn named(name: String) -> Netns {
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// A runner whose tools act inside the namespace.
    pub fn runner(&self) -> Arc<NetnsRunner> {
        Arc::new(NetnsRunner {
            ns: self.name.clone(),
        })
    }

    /// Run a shell command inside the namespace, returning stdout; panics on failure.
    pub fn sh(&self, cmd: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nft -f -` inside the namespace; panics on failure.
    pub fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -f: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ip` inside the namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) {
        self.sh(&format!("ip {}", args.join(" ")));
    }

    /// Run `f` on a thread that lives in this namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/run/netns/{}", self.name)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns with a valid netns fd changes only this thread's namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Run `f` with a netlink socket opened inside the namespace.
    pub fn netlink<R: Send>(&self, f: impl FnOnce(&mut NftNetlink) -> R + Send) -> R {
        self.enter(|| f(&mut NftNetlink::open().unwrap()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
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
    let node = Netns::create(&format!("{tag}-node"))?;
    let pod = Netns::create(&format!("{tag}-pod"))?;
    let veth = format!("sy{}{tag}", std::process::id());
    node.sh(&format!(
        "ip link add {veth}a type veth peer name {veth}b && ip link set {veth}b netns {} && \
         ip addr add 10.0.1.1/24 dev {veth}a && ip link set {veth}a up && \
         ip route add 172.30.0.0/16 dev {veth}a",
        pod.name
    ));
    pod.sh(&format!(
        "ip addr add 10.0.1.5/24 dev {veth}b && ip link set {veth}b up && ip route add default via 10.0.1.1"
    ));
    Some((node, pod))
}

/// What a TCP connect from `node` to `172.30.0.10:80` gets back from a
/// server in `pod` on port 8080 that answers `pod-10.0.1.5` (retried for 5 s).
pub fn vip_reply(node: &Netns, pod: &Netns) -> String {
    let _server = Child(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod.name,
                "socat",
                "TCP-LISTEN:8080,reuseaddr,fork",
                "SYSTEM:echo pod-10.0.1.5",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    node.sh(
        "for i in $(seq 1 50); do out=$(socat -T 1 - TCP:172.30.0.10:80,connect-timeout=1 </dev/null 2>/dev/null) && \
         [ -n \"$out\" ] && echo \"$out\" && exit 0; sleep 0.1; done; exit 1",
    )
    .trim()
    .to_string()
}
