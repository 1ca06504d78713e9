//! The migration matrix (`migration-matrix`): an ordered pair of modes
//! switches a node under traffic and loses nothing — the host's modes here,
//! the pairs with IPVS in the stock-kernel VM (needs root, as CI runs). The
//! pairs at zero today run in CI; the whole matrix is the goal (ignored until
//! every pair is at zero, `--ignored` runs it).

mod common;

use std::process::Command;

/// Runs `migration-matrix` with `args`; asserts `N passed, 0 failed` with `pairs` pairs.
fn matrix_passes(args: &[&str], pairs: usize) {
    let out = Command::new(common::lab_bin("migration-matrix"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run migration-matrix: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && summary == format!("{pairs} passed, 0 failed"),
        "migration matrix {args:?}: {summary}"
    );
}

/// The pairs that lose nothing today stay at zero.
#[test]
fn iptables_and_nftables_switch_both_ways_under_traffic_without_loss() {
    matrix_passes(&["--pairs", "iptables:nftables,nftables:iptables"], 2);
}

/// One VM boot for the four: iptables <-> ipvs once failed removing a chain
/// the other mode referenced, and leaving IPVS cut its established connections.
#[test]
fn iptables_and_nftables_switch_to_and_from_ipvs_under_traffic_in_the_vm_without_loss() {
    matrix_passes(
        &[
            "--pairs",
            "iptables:ipvs,ipvs:iptables,nftables:ipvs,ipvs:nftables",
        ],
        4,
    );
}

/// The goal: every pair of the host's modes at zero.
#[test]
#[ignore = "eBPF pairs still lose connections: README.md, \"Mode migration under traffic\""]
fn every_host_mode_pair_switches_under_traffic_without_loss() {
    matrix_passes(&["--modes", "iptables,nftables,ebpf"], 6);
}

/// The goal: every pair with IPVS at zero, in the VM.
#[test]
#[ignore = "IPVS <-> eBPF pairs still lose connections: README.md, \"Mode migration under traffic\""]
fn every_ipvs_pair_switches_under_traffic_in_the_vm_without_loss() {
    matrix_passes(
        &[
            "--pairs",
            "ipvs:iptables,iptables:ipvs,ipvs:nftables,nftables:ipvs,ipvs:ebpf,ebpf:ipvs",
        ],
        6,
    );
}
