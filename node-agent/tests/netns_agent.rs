//! The agent with real backends in network namespaces this test creates
//! (`syagt<pid>-<test>-node`, `-pod`): a restart converges on the kernel's
//! rules instead of flushing them; a switch from iptables to nftables killed
//! at each recorded step converges after a restart, with an established
//! connection surviving throughout; a failed verification rolls back;
//! kube-proxy's nftables tables are removed and nobody else's. Needs root,
//! iptables and nft; skipped (loudly) otherwise.
//!
//! The kill: the agent's sync future is dropped while it waits on a status
//! write, which is what SIGKILL does to the process at that point — the
//! kernel keeps what was programmed, the API keeps what was recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use common::netns::{
    Netns, POD_IP, Topology, connect_from, echo_roundtrip, netns, ok, topology, write_web_state,
};
use common::*;
use switchyard_agent::agent::SyncOutcome;
use switchyard_agent::inputs::Inputs;
use switchyard_agent::switch::{BackendFactory, TcpProbe};
use switchyard_api::{Mode, ProxyNodeStatus};
use switchyard_dataplane::exec::RealRunner;
use switchyard_dataplane::kubeproxy::{
    KUBE_PROXY_CANARY, KubeProxyCanaries, KubeProxyNftables, Leftovers,
};
use switchyard_testkit::netns::is_root;

fn skip() -> bool {
    if !is_root() {
        eprintln!("SKIP: needs root for network namespaces");
        return true;
    }
    false
}

fn vip() -> SocketAddr {
    format!("{WEB_VIP}:80").parse().unwrap()
}

fn pod_inputs(target: Mode, status: Option<ProxyNodeStatus>) -> Inputs {
    let mut i = inputs(Some(target), status);
    i.shards = vec![shard(
        1,
        0,
        1,
        1,
        vec![rule(1, "web", WEB_VIP, vec![endpoint(1, POD_IP, "node-b")])],
    )];
    i
}

/// A real agent (real backends, real probe) inside `node`. Runs `syncs` in
/// order; stops early when a status write hangs (the kill). Returns the
/// outcomes and the agent's last status.
fn run_agent(
    node: &Netns,
    writer: &RecordingWriter,
    syncs: Vec<Inputs>,
    leftovers: Vec<Box<dyn Leftovers>>,
) -> (Vec<SyncOutcome>, ProxyNodeStatus) {
    let writer = writer.clone();
    node.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut agent = agent_with(
                Arc::new(BackendFactory::new(Arc::new(RealRunner))),
                Arc::new(TcpProbe),
                Box::new(writer.clone()),
                leftovers,
            );
            let mut outcomes = Vec::new();
            for inputs in syncs {
                tokio::select! {
                    out = agent.sync(&inputs, None) => outcomes.push(out),
                    () = writer.hung.notified() => break,
                }
            }
            (outcomes, agent.status().clone())
        })
    })
    .unwrap()
}

fn nat_rules(node: &Netns) -> String {
    ok(node, &["iptables-save", "-t", "nat"])
}

/// Sync iptables in a fresh agent and open a connection through the VIP.
fn start_with_iptables(t: &Topology, writer: &RecordingWriter) -> (ProxyNodeStatus, TcpStream) {
    let (out, status) = run_agent(
        &t.node,
        writer,
        vec![pod_inputs(Mode::Iptables, None)],
        vec![],
    );
    assert!(matches!(out.as_slice(), [SyncOutcome::Synced]), "{out:?}");
    assert!(nat_rules(&t.node).contains("KUBE-SERVICES"));
    let mut established =
        connect_from(&t.node, vip()).unwrap_or_else(|e| panic!("connect through the VIP: {e}"));
    assert_eq!(
        echo_roundtrip(&mut established, b"start").unwrap(),
        b"start"
    );
    (status, established)
}

#[test]
fn restart_converges_on_real_iptables_rules_and_keeps_connections() {
    if skip() {
        return;
    }
    let t = topology("restart");
    let (status, mut established) = start_with_iptables(&t, &RecordingWriter::default());

    // Restart: the new agent finds the rules and converges on them.
    let recorded = Some(status);
    let rules_before = nat_rules(&t.node);
    let restarted = RecordingWriter::default();
    let (out, status) = run_agent(
        &t.node,
        &restarted,
        vec![pod_inputs(Mode::Iptables, recorded)],
        vec![],
    );
    assert!(matches!(out.as_slice(), [SyncOutcome::Synced]), "{out:?}");
    assert_eq!(status.applied_mode, Some(Mode::Iptables));
    assert!(
        restarted
            .writes
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.switch.is_none()),
        "no switch: the present mode was recovered"
    );
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&nat_rules(&t.node)),
        strip(&rules_before),
        "same rules"
    );
    assert_eq!(
        echo_roundtrip(&mut established, b"after").unwrap(),
        b"after"
    );
    let mut fresh = connect_from(&t.node, vip())
        .unwrap_or_else(|e| panic!("new connection after restart: {e}"));
    assert_eq!(echo_roundtrip(&mut fresh, b"new").unwrap(), b"new");
}

#[test]
fn kube_proxy_nftables_tables_are_removed_and_no_other_table() {
    if skip() {
        return;
    }
    let ns = netns("kpnft");
    for (family, name) in [
        ("ip", "kube-proxy"),
        ("ip6", "kube-proxy"),
        ("ip", "keep-me"),
        ("inet", "kube-proxy"),
    ] {
        ok(&ns, &["nft", "add", "table", family, name]);
    }
    let remove = || {
        ns.run(|| {
            KubeProxyNftables::new(Arc::new(RealRunner))
                .remove()
                .unwrap()
        })
        .unwrap()
    };
    assert!(remove());
    let tables = ok(&ns, &["nft", "list", "tables"]);
    let mut tables: Vec<&str> = tables.lines().collect();
    tables.sort();
    assert_eq!(tables, vec!["table inet kube-proxy", "table ip keep-me"]);
    assert!(!remove(), "nothing left to remove");
}

#[test]
fn kube_proxy_canary_chains_are_removed_and_no_other_chain() {
    if skip() {
        return;
    }
    let ns = netns("kpcan");
    for iptables in ["iptables", "ip6tables"] {
        for table in ["mangle", "nat", "filter"] {
            ok(&ns, &[iptables, "-t", table, "-N", KUBE_PROXY_CANARY]);
        }
        ok(&ns, &[iptables, "-t", "filter", "-N", "KEEP-ME"]);
    }
    let remove = || {
        ns.run(|| {
            KubeProxyCanaries::new(Arc::new(RealRunner))
                .remove()
                .unwrap()
        })
        .unwrap()
    };
    assert!(remove());
    for save in ["iptables-save", "ip6tables-save"] {
        let chains = ok(&ns, &[save]);
        assert!(!chains.contains(KUBE_PROXY_CANARY), "{save}: {chains}");
        assert!(chains.contains(":KEEP-ME "), "{save}: {chains}");
    }
    assert!(!remove(), "nothing left to remove");
}

fn has_nft_table(node: &Netns) -> bool {
    ok(node, &["nft", "list", "tables"])
        .lines()
        .any(|l| l.trim() == "table ip switchyard")
}

/// Kill during checkpoint write `kill_at` of an iptables → nftables switch
/// (0 Building, 1 Verifying, 2 RemovingOld, 3 Done), then restart.
fn kill_switch_and_restart(tag: &str, kill_at: usize) {
    if skip() {
        return;
    }
    let t = topology(tag);
    let (status, mut established) = start_with_iptables(&t, &RecordingWriter::default());

    let killed = RecordingWriter::default();
    *killed.hang_at.lock().unwrap() = Some(kill_at);
    let (out, _) = run_agent(
        &t.node,
        &killed,
        vec![pod_inputs(Mode::Nftables, Some(status))],
        vec![],
    );
    assert!(
        out.is_empty(),
        "kill at {kill_at}: the switch was interrupted"
    );
    assert_eq!(
        echo_roundtrip(&mut established, b"killed").unwrap(),
        b"killed",
        "kill at {kill_at}"
    );
    let mut during = connect_from(&t.node, vip())
        .unwrap_or_else(|e| panic!("kill at {kill_at}: no service routing: {e}"));
    assert_eq!(echo_roundtrip(&mut during, b"during").unwrap(), b"during");

    let restarted = RecordingWriter::default();
    let (out, status) = run_agent(
        &t.node,
        &restarted,
        vec![pod_inputs(Mode::Nftables, killed.last())],
        vec![],
    );
    assert!(
        matches!(out.as_slice(), [SyncOutcome::Synced]),
        "kill at {kill_at}: {out:?}"
    );
    assert_eq!(
        (status.applied_mode, status.switch, status.failed_mode),
        (Some(Mode::Nftables), None, None)
    );
    assert!(
        has_nft_table(&t.node),
        "kill at {kill_at}: nftables in place"
    );
    assert!(
        !nat_rules(&t.node).contains("KUBE-SERVICES"),
        "kill at {kill_at}: iptables removed:\n{}",
        nat_rules(&t.node)
    );
    assert_eq!(
        echo_roundtrip(&mut established, b"end").unwrap(),
        b"end",
        "kill at {kill_at}"
    );
    let mut fresh = connect_from(&t.node, vip())
        .unwrap_or_else(|e| panic!("kill at {kill_at}: connect through nftables: {e}"));
    assert_eq!(echo_roundtrip(&mut fresh, b"fresh").unwrap(), b"fresh");
}

#[test]
fn switch_killed_before_building_converges() {
    kill_switch_and_restart("k0", 0);
}

#[test]
fn switch_killed_before_verifying_converges() {
    kill_switch_and_restart("k1", 1);
}

#[test]
fn switch_killed_before_removing_old_converges() {
    kill_switch_and_restart("k2", 2);
}

#[test]
fn switch_killed_before_recording_done_converges() {
    kill_switch_and_restart("k3", 3);
}

#[test]
fn failed_verification_on_real_kernel_keeps_iptables() {
    if skip() {
        return;
    }
    let t = topology("rollback");
    let (status, mut established) = start_with_iptables(&t, &RecordingWriter::default());
    // Verify through a service without endpoints: rejected, so the probe fails.
    let mut inputs = pod_inputs(Mode::Nftables, Some(status));
    inputs.shards = vec![shard(
        1,
        0,
        1,
        1,
        vec![
            rule(1, "web", WEB_VIP, vec![endpoint(1, POD_IP, "node-b")]),
            rule(2, "empty", "10.96.0.99", vec![]),
        ],
    )];
    let mut config = (*config(Mode::Nftables)).clone();
    if let Some(v) = config.spec.rollout.verification.as_mut() {
        v.service = "default/empty".into();
    }
    inputs.config = Some(Arc::new(config));
    let (out, status) = run_agent(&t.node, &RecordingWriter::default(), vec![inputs], vec![]);
    assert!(
        matches!(out.as_slice(), [SyncOutcome::Synced]),
        "the kept mode synced: {out:?}"
    );
    assert_eq!(
        (status.applied_mode, status.failed_mode),
        (Some(Mode::Iptables), Some(Mode::Nftables))
    );
    assert!(status.last_error.unwrap().contains("10.96.0.99:80"));
    assert!(!has_nft_table(&t.node), "the new mode was removed");
    assert!(nat_rules(&t.node).contains("KUBE-SERVICES"));
    assert_eq!(echo_roundtrip(&mut established, b"kept").unwrap(), b"kept");
}

/// kube-proxy's iptables layout as `iptables-save` prints it on a real node
/// (hashed chain names), plus a foreign chain that must survive.
const KUBE_PROXY_NAT: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
:KUBE-SEP-IT2ZTR26TO4XFPTO - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:FOREIGN-KEEP - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web cluster IP\" -m tcp --dport 80 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment \"default/web -> 10.200.0.2:8080\" -j KUBE-SEP-IT2ZTR26TO4XFPTO
-A KUBE-SEP-IT2ZTR26TO4XFPTO -p tcp -m comment --comment \"default/web\" -m tcp -j DNAT --to-destination 10.200.0.2:8080
-A FOREIGN-KEEP -j RETURN
COMMIT
";

#[test]
fn adopting_a_node_from_kube_proxy_removes_its_rules_once_ours_are_verified() {
    if skip() {
        return;
    }
    let t = topology("adopt");
    let restore = t.node.exec(
        "iptables-restore",
        &["--noflush"],
        Some(KUBE_PROXY_NAT.as_bytes()),
    );
    assert!(restore.is_ok(), "{restore:?}");
    ok(&t.node, &["nft", "add", "table", "ip", "kube-proxy"]);
    ok(&t.node, &["nft", "add", "table", "ip", "foreign"]);
    let mut established = connect_from(&t.node, vip())
        .unwrap_or_else(|e| panic!("connect through kube-proxy's rules: {e}"));
    assert_eq!(
        echo_roundtrip(&mut established, b"kube-proxy").unwrap(),
        b"kube-proxy"
    );

    let leftovers: Vec<Box<dyn Leftovers>> =
        vec![Box::new(KubeProxyNftables::new(Arc::new(RealRunner)))];
    let (out, status) = run_agent(
        &t.node,
        &RecordingWriter::default(),
        vec![pod_inputs(Mode::Nftables, None)],
        leftovers,
    );
    assert!(matches!(out.as_slice(), [SyncOutcome::Synced]), "{out:?}");
    assert_eq!(
        (status.applied_mode, status.failed_mode),
        (Some(Mode::Nftables), None)
    );
    let nat = nat_rules(&t.node);
    assert!(
        !nat.contains("KUBE-"),
        "kube-proxy's chains removed:\n{nat}"
    );
    assert!(nat.contains(":FOREIGN-KEEP"), "foreign chain kept:\n{nat}");
    let tables = ok(&t.node, &["nft", "list", "tables"]);
    assert!(!tables.contains("table ip kube-proxy"), "{tables}");
    assert!(
        tables.contains("table ip foreign") && tables.contains("table ip switchyard"),
        "{tables}"
    );
    assert_eq!(
        echo_roundtrip(&mut established, b"adopted").unwrap(),
        b"adopted"
    );
    let mut fresh =
        connect_from(&t.node, vip()).unwrap_or_else(|e| panic!("connect through nftables: {e}"));
    assert_eq!(echo_roundtrip(&mut fresh, b"ours").unwrap(), b"ours");
}

#[test]
fn standalone_apply_command_programs_the_node() {
    if skip() {
        return;
    }
    let t = topology("cli");
    let tmp = TempDir::new("cli-state");
    let dir = &tmp.0;
    write_web_state(dir);
    let bin = env!("CARGO_BIN_EXE_node-agent");
    let dir_arg = dir.to_string_lossy().into_owned();
    let args = [
        "apply",
        "--mode",
        "nftables",
        "--state",
        &dir_arg,
        "--node-name",
        NODE,
        "--node-ip",
        "10.200.0.1",
    ];
    let dry = t
        .node
        .exec(bin, &[&args[..], &["--dry-run"][..]].concat(), None);
    assert!(dry.is_ok(), "{dry:?}");
    assert!(dry.unwrap_or_default().contains("10.96.0.10"));
    assert!(!has_nft_table(&t.node), "--dry-run applies nothing");

    let out = ok(&t.node, &[&[bin][..], &args[..]].concat());
    assert!(out.starts_with("applied nftables:"), "{out}");
    assert!(has_nft_table(&t.node));
    let mut c = connect_from(&t.node, vip()).unwrap_or_else(|e| panic!("connect after apply: {e}"));
    assert_eq!(echo_roundtrip(&mut c, b"cli").unwrap(), b"cli");
}
