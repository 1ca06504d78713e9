//! The migration matrix (`migration-matrix`): an ordered pair of modes
//! switches a node under traffic and loses nothing — the host's modes here,
//! the pairs with IPVS in the stock-kernel VM (needs root, as CI runs).

mod common;

use common::matrix_passes;

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
