//! `node-agent cleanup` and `--cleanup-on-exit` with the real binary in
//! network namespaces this test creates (`syagt<pid>-clean-*`): after an
//! agent programmed the node in iptables, nftables or eBPF mode and was
//! SIGKILLed, the cleanup leaves nothing of any mode (no chain, table, pin,
//! link or program of ours) while a foreign nftables table, a foreign
//! iptables chain with its jump and a foreign tc filter stay; an agent told
//! to clean up on exit does so on SIGTERM. eBPF pins on a scratch bpffs and
//! attaches its socket programs to a scratch cgroup, never the node's. IPVS
//! is not in this kernel (its cleanup is proven in the VM, `vm_ipvs.rs`).
//! Needs root, iptables, nft, tc and bpftool; skipped (loudly) otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::TempDir;
use common::netns::{Netns, Topology, connect_from, echo_roundtrip, ok, topology, write_web_state};
use switchyard_agent::switch::{BackendFactory, DataplaneFactory};
use switchyard_api::Mode;
use switchyard_dataplane::BackendError;
use switchyard_dataplane::ebpf::kernel::KernelConfig;
use switchyard_dataplane::ebpf::scratch::{ScratchBpffs, ScratchCgroup};
use switchyard_dataplane::exec::RealRunner;
use switchyard_dataplane::iptables::names::is_ours;
use switchyard_testkit::cleanup::child_setup;
use switchyard_testkit::netns::{enter_on_exec, is_root};

const BIN: &str = env!("CARGO_BIN_EXE_node-agent");
const FOREIGN_CHAIN: &str = "FOREIGN-KEEP";

fn skip() -> bool {
    if !is_root() {
        eprintln!("SKIP: needs root for network namespaces");
        return true;
    }
    false
}

/// A node with the web service's state, a scratch bpffs and cgroup for eBPF.
struct Node {
    t: Topology,
    state: TempDir,
    bpffs: ScratchBpffs,
    cgroup: ScratchCgroup,
}

impl Node {
    fn new(tag: &str) -> Node {
        let t = topology(&format!("clean-{tag}"));
        let state = TempDir::new(&format!("clean-{tag}-state"));
        write_web_state(&state.0);
        let scratch = format!("syagt-{}-clean-{tag}", std::process::id());
        Node {
            t,
            state,
            bpffs: ScratchBpffs::mount(&format!("{scratch}-bpffs")).unwrap(),
            cgroup: ScratchCgroup::create(&format!("{scratch}-cg")).unwrap(),
        }
    }

    fn pin_root(&self) -> PathBuf {
        self.bpffs.dir().join("switchyard")
    }

    fn ebpf_args(&self) -> Vec<String> {
        vec![
            "--bpf-pin-root".into(),
            self.pin_root().display().to_string(),
            "--bpf-cgroup".into(),
            self.cgroup.dir().display().to_string(),
        ]
    }

    /// `node-agent ARGS` started inside the node namespace.
    fn spawn(&self, args: &[String]) -> Agent {
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        enter_on_exec(&mut cmd, self.t.node.open().unwrap());
        // SAFETY: prctl and pthread_sigmask only, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                child_setup();
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, applied) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                if line.contains(" applied ") {
                    let _ = tx.send(());
                }
            }
        });
        Agent { child, applied }
    }

    /// An agent applying the state directory with `mode`, re-applying on change.
    fn agent(&self, mode: Mode, extra: &[&str]) -> Agent {
        let mut args: Vec<String> = [
            "apply",
            "--mode",
            mode.as_str(),
            "--state",
            &self.state.0.display().to_string(),
            "--node-name",
            "node-a",
            "--node-ip",
            "10.200.0.1",
            "--watch-dir",
            "--poll-interval",
            "100ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(self.ebpf_args());
        self.spawn(&args)
    }

    /// Whether `mode`'s objects are in the node (the backend's own probe).
    fn present(&self, mode: Mode) -> Result<bool, BackendError> {
        let config = KernelConfig {
            pin_root: self.pin_root(),
            cgroup: Some(self.cgroup.dir().to_path_buf()),
            ..KernelConfig::default()
        };
        self.t
            .node
            .run(move || {
                BackendFactory::with_ebpf(Arc::new(RealRunner), config)
                    .build(mode)?
                    .present()
            })
            .unwrap()
    }

    /// A foreign nftables table, iptables chain (with a jump to it) and tc filter.
    fn add_foreign(&self) {
        let node = &self.t.node;
        ok(node, &["nft", "add", "table", "inet", "foreign"]);
        ok(node, &["nft", "add", "chain", "inet", "foreign", "keep"]);
        for table in ["nat", "filter"] {
            ok(node, &["iptables", "-w", "-t", table, "-N", FOREIGN_CHAIN]);
            ok(
                node,
                &[
                    "iptables",
                    "-w",
                    "-t",
                    table,
                    "-A",
                    "OUTPUT",
                    "-j",
                    FOREIGN_CHAIN,
                ],
            );
        }
        ok(node, &["tc", "qdisc", "add", "dev", "veth0", "clsact"]);
        ok(
            node,
            &[
                "tc", "filter", "add", "dev", "veth0", "ingress", "pref", "7", "protocol", "all",
                "u32", "match", "u32", "0", "0", "flowid", "1:1",
            ],
        );
    }

    fn cleanup(&self) -> String {
        let mut args = vec!["cleanup".to_string()];
        args.extend(self.ebpf_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.t
            .node
            .exec(BIN, &args, None)
            .unwrap_or_else(|e| panic!("node-agent cleanup: {e}"))
    }

    /// Nothing of any mode is left; every foreign object is.
    fn assert_clean_and_foreign_kept(&self) {
        let node = &self.t.node;
        for mode in [Mode::Iptables, Mode::Nftables, Mode::Ebpf] {
            assert!(!self.present(mode).unwrap(), "{mode} still present");
        }
        for save in ["iptables-save", "ip6tables-save"] {
            let rules = ok(node, &[save]);
            let ours: Vec<&str> = rules
                .lines()
                .filter(|l| {
                    l.strip_prefix(':')
                        .and_then(|c| c.split_whitespace().next())
                        .is_some_and(is_ours)
                        || l.contains("-j KUBE-")
                })
                .collect();
            assert!(ours.is_empty(), "{save} still has ours: {ours:?}\n{rules}");
        }
        let rules = ok(node, &["iptables-save"]);
        for table in ["nat", "filter"] {
            let section = rules
                .split("*")
                .find(|s| s.starts_with(table))
                .unwrap_or_default();
            assert!(
                section.contains(&format!(":{FOREIGN_CHAIN} "))
                    && section.contains(&format!("-A OUTPUT -j {FOREIGN_CHAIN}")),
                "foreign chain and jump kept in {table}:\n{rules}"
            );
        }
        let tables = ok(node, &["nft", "list", "tables"]);
        assert!(!tables.contains("switchyard"), "{tables}");
        assert!(tables.contains("table inet foreign"), "{tables}");
        let chain = ok(node, &["nft", "list", "chain", "inet", "foreign", "keep"]);
        assert!(chain.contains("chain keep"), "{chain}");
        let filters = ok(node, &["tc", "filter", "show", "dev", "veth0", "ingress"]);
        assert!(
            filters.contains("pref 7 u32"),
            "foreign tc filter kept: {filters}"
        );
        assert!(!filters.contains("sy_"), "{filters}");
        let net = ok(node, &["bpftool", "net", "show"]);
        assert!(!net.contains("sy_"), "no tc program of ours: {net}");
        let cgroup = self.cgroup.dir().display().to_string();
        // cgroups are not per network namespace (and `ip netns exec` hides /sys/fs/cgroup).
        let attached = Command::new("bpftool")
            .args(["cgroup", "show", &cgroup])
            .output()
            .unwrap();
        assert!(attached.status.success(), "{attached:?}");
        let attached = String::from_utf8_lossy(&attached.stdout);
        assert!(
            !attached.contains("sy_"),
            "no socket program of ours: {attached}"
        );
        assert!(!self.pin_root().exists(), "pins removed");
    }
}

/// An agent process, SIGKILLed on drop.
struct Agent {
    child: Child,
    /// A message per "applied" line the agent logs.
    applied: mpsc::Receiver<()>,
}

impl Agent {
    /// Wait until the agent has applied the state directory once.
    fn wait_applied(&self) {
        self.applied
            .recv_timeout(Duration::from_secs(30))
            .expect("the agent applied its rules within 30 s");
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child, which we have not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let mut status = None;
        wait_for("the agent to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `cond` until it holds; panic after 30 s (a deadlock guard).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vip() -> SocketAddr {
    SocketAddr::from(([10, 96, 0, 10], 80))
}

fn assert_served(node: &Netns, msg: &[u8]) {
    let mut c = connect_from(node, vip()).unwrap_or_else(|e| {
        let ruleset = ok(node, &["nft", "list", "ruleset"]);
        panic!("connect to the VIP: {e}\n{ruleset}")
    });
    assert_eq!(echo_roundtrip(&mut c, msg).unwrap(), msg);
}

/// The agent programs `mode`, is SIGKILLed, and `node-agent cleanup` removes
/// everything of ours and nothing foreign.
fn cleanup_after_killed_agent(mode: Mode) {
    let node = Node::new(mode.as_str());
    node.add_foreign();
    let mut agent = node.agent(mode, &[]);
    agent.wait_applied();
    assert!(node.present(mode).unwrap());
    if mode != Mode::Ebpf {
        // eBPF balances sockets of the scratch cgroup only, not the test's.
        assert_served(&node.t.node, mode.as_str().as_bytes());
    }
    agent.signal(libc::SIGKILL);
    agent.wait_exit();
    assert!(
        node.present(mode).unwrap(),
        "a killed agent leaves its rules"
    );

    let out = node.cleanup();
    assert!(out.is_empty(), "cleanup reports on stderr: {out}");
    node.assert_clean_and_foreign_kept();
    // Cleaning a clean node is a no-op that succeeds.
    node.cleanup();
    node.assert_clean_and_foreign_kept();
}

#[test]
fn cleanup_after_killed_iptables_agent_removes_ours_only() {
    if skip() {
        return;
    }
    cleanup_after_killed_agent(Mode::Iptables);
}

#[test]
fn cleanup_after_killed_nftables_agent_removes_ours_only() {
    if skip() {
        return;
    }
    cleanup_after_killed_agent(Mode::Nftables);
}

#[test]
fn cleanup_after_killed_ebpf_agent_removes_ours_only() {
    if skip() {
        return;
    }
    cleanup_after_killed_agent(Mode::Ebpf);
}

#[test]
fn cleanup_on_exit_cleans_the_node_on_sigterm() {
    if skip() {
        return;
    }
    let node = Node::new("exit");
    node.add_foreign();
    let mut agent = node.agent(Mode::Nftables, &["--cleanup-on-exit"]);
    agent.wait_applied();
    assert_served(&node.t.node, b"before exit");
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit();
    assert!(status.success(), "{status}");
    node.assert_clean_and_foreign_kept();
}

#[test]
fn sigterm_without_cleanup_on_exit_keeps_the_rules() {
    if skip() {
        return;
    }
    let node = Node::new("keep");
    let mut agent = node.agent(Mode::Nftables, &[]);
    agent.wait_applied();
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit().success());
    assert!(node.present(Mode::Nftables).unwrap());
    assert_served(&node.t.node, b"fail-static");
}

#[test]
fn cleanup_logs_one_line_per_mode_as_json_or_text_without_colour() {
    if skip() {
        return;
    }
    let node = Node::new("logs");
    let logs = |format: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--log-format", format, "cleanup"])
            .args(node.ebpf_args());
        enter_on_exec(&mut cmd, node.t.node.open().unwrap());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let json = logs("json");
    let modes: Vec<String> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            assert_eq!(v["level"], "INFO", "{v}");
            v["fields"]["mode"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(modes, ["iptables", "ipvs", "nftables", "ebpf"]);
    let text = logs("text");
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI codes off a terminal: {text:?}"
    );
    assert_eq!(
        text.lines().filter(|l| l.contains(" INFO ")).count(),
        4,
        "{text}"
    );
}
