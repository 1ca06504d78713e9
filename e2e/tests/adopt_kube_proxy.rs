//! A node is taken over from a running kube-proxy (the real binary of the
//! pinned release, in iptables and in nftables mode) into our iptables,
//! nftables and eBPF modes while traffic runs, by exactly the README's
//! runbook "Moving a pool off kube-proxy, and back" (`migration-matrix`'s
//! `kube-proxy-MODE:TO` pairs, `switchyard_lab::migration::adoption`): no
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
//! Not here: kube-proxy's ipvs mode (this kernel has no IPVS, and the VM that
//! has it does not run the control plane kube-proxy needs).
//! Needs root and `target/k8s/bin` (`e2e/k8s/build.sh`).

mod common;

/// Every pair in one run of the binary: one control plane start per pair,
/// 25 to 35 s each on a loaded 2-core machine.
#[test]
fn a_node_is_taken_over_from_a_running_kube_proxy_without_loss() {
    let programs = common::switchyard_programs();
    let agent = programs.agent.path.display().to_string();
    let operator = programs.operator.path.display().to_string();
    common::matrix_passes(
        &[
            "--pairs",
            "kube-proxy-iptables:iptables,kube-proxy-iptables:nftables,\
             kube-proxy-iptables:ebpf,kube-proxy-nftables:nftables,\
             kube-proxy-nftables:iptables,kube-proxy-nftables:ebpf",
            "--agent",
            &agent,
            "--operator",
            &operator,
        ],
        6,
    );
}
