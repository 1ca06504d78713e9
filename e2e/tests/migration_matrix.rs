//! The migration matrix (`migration-matrix`): an ordered pair of modes
//! switches a node under traffic and loses nothing — the host's modes here,
//! the pairs with IPVS in the stock-kernel VM (needs root, as CI runs).

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

/// Every pair of the host's modes: eBPF to iptables or nftables once cut the
/// NodePort connections it balanced (detached at once) and a new connection
/// per stream; iptables and nftables to eBPF cut the connections they
/// translated.
#[test]
fn every_host_mode_pair_switches_under_traffic_without_loss() {
    matrix_passes(&["--modes", "iptables,nftables,ebpf"], 6);
}

/// One VM boot for every pair with IPVS: iptables <-> ipvs once failed
/// removing a chain the other mode referenced, leaving IPVS cut its
/// established connections, and IPVS <-> eBPF dropped the node's and
/// masqueraded connections both ways.
#[test]
fn every_ipvs_pair_switches_under_traffic_in_the_vm_without_loss() {
    matrix_passes(
        &[
            "--pairs",
            "ipvs:iptables,iptables:ipvs,ipvs:nftables,nftables:ipvs,ipvs:ebpf,ebpf:ipvs",
        ],
        6,
    );
}
