//! A node is taken over from a running kube-proxy (the real binary of the
//! pinned release, in iptables and in nftables mode) into our iptables and
//! nftables modes while traffic runs, by exactly the README's runbook
//! "Moving a pool off kube-proxy, and back" (`migration-matrix`'s
//! `kube-proxy-MODE:TO` pairs, `switchyard_lab::migration::adoption`): no
//! established connection dropped, no new connection failed, no UDP answer
//! lost; kube-proxy's objects gone only after our switch verified; a
//! foreign iptables chain and nftables table untouched; the agent serving
//! `/healthz` on kube-proxy's port 10256 once kube-proxy is gone.
//!
//! Not here: kube-proxy's ipvs mode (this kernel has no IPVS, and the VM that
//! has it does not run the control plane kube-proxy needs), and our eBPF
//! mode (the agent's `run` cannot be pointed at a scratch cgroup: its socket
//! programs would attach to the host's root cgroup).
//! Needs root and `target/k8s/bin` (`e2e/k8s/build.sh`).

mod common;

#[test]
fn a_node_is_taken_over_from_a_running_kube_proxy_without_loss() {
    let programs = common::switchyard_programs();
    let agent = programs.agent.path.display().to_string();
    let operator = programs.operator.path.display().to_string();
    common::matrix_passes(
        &[
            "--pairs",
            "kube-proxy-iptables:iptables,kube-proxy-iptables:nftables,\
             kube-proxy-nftables:nftables,kube-proxy-nftables:iptables",
            "--agent",
            &agent,
            "--operator",
            &operator,
        ],
        4,
    );
}
