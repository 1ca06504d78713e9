//! The migration matrix (`migration-matrix`): an ordered pair of modes
//! switches a node under traffic and loses nothing — the host's modes here,
//! the pairs with IPVS in the stock-kernel VM (needs root, as CI runs). The
//! pairs at zero today run in CI; the whole matrix is the goal (ignored until
//! every pair is at zero, `--ignored` runs it).

mod common;

use common::matrix_passes;

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
