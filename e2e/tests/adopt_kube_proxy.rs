//! A node is taken over from a running kube-proxy (the real binary of the
//! pinned release, in iptables, nftables and ipvs mode) into our modes
//! while traffic runs, by exactly the README's runbook "Moving a pool off
//! kube-proxy, and back" (`migration-matrix`'s `kube-proxy-MODE:TO` pairs,
//! `switchyard_lab::migration::adoption`): no
//! established connection dropped, no new connection failed, no UDP answer
//! lost; kube-proxy's objects gone only after our switch verified (into
//! eBPF: once the connections they translated closed); a foreign iptables
//! chain and nftables table untouched; the agent serving `/healthz` on
//! kube-proxy's port 10256 once kube-proxy is gone.
//!
//! Into eBPF the agent pins in a scratch bpffs and attaches its socket
//! programs to a scratch cgroup (`--bpf-pin-root`, `--bpf-cgroup`), never
//! the host's root cgroup; the agent and the node's own clients run in it.
//!
//! kube-proxy's ipvs mode runs in the stock-kernel VM (this kernel has no
//! IPVS): the control plane stays on this host, kube-proxy, the operator,
//! the agent and the traffic run in the guest, by the same steps.
//! Needs root and `target/k8s/bin` (`e2e/k8s/build.sh`).

mod common;

use std::sync::{Mutex, PoisonError};

/// The two tests take turns: the VM's emulated CPUs would take the host
/// pairs' two cores, on which a new connection has 1 s to be answered.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Every pair in one run of the binary: one control plane start per pair,
/// 25 to 35 s each on a loaded 2-core machine.
#[test]
fn a_node_is_taken_over_from_a_running_kube_proxy_without_loss() {
    adoptions_pass(
        "kube-proxy-iptables:iptables,kube-proxy-iptables:nftables,\
         kube-proxy-iptables:ebpf,kube-proxy-nftables:nftables,\
         kube-proxy-nftables:iptables,kube-proxy-nftables:ebpf",
        6,
    );
}

/// kube-proxy's ipvs mode into nftables and eBPF, each pair in a VM boot of
/// its own with a control plane of its own (about 2 min 30 s a pair under
/// emulation on a loaded 2-core machine; `migration-matrix` runs all four
/// targets). Its NodePort virtual servers were once left for good: the
/// retired IPVS destroyed the ipsets that named them ours.
#[test]
fn a_node_is_taken_over_from_kube_proxys_ipvs_mode_in_the_vm_without_loss() {
    adoptions_pass("kube-proxy-ipvs:nftables,kube-proxy-ipvs:ebpf", 2);
}

/// `migration-matrix --pairs PAIRS` with Switchyard's own binaries.
fn adoptions_pass(pairs: &str, count: usize) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let programs = common::switchyard_programs();
    let agent = programs.agent.path.display().to_string();
    let operator = programs.operator.path.display().to_string();
    common::matrix_passes(
        &["--pairs", pairs, "--agent", &agent, "--operator", &operator],
        count,
    );
}
