//! Every flow of every scenario in `e2e/scenarios/` is sent to a Switchyard
//! node and to a node run by the real kube-proxy of the pinned release, the
//! state written through a real API server; a flow passes only when both
//! meet the scenario, or the difference is on the one list of deliberate
//! differences (`switchyard_lab::reference::differences`); in iptables mode
//! the node's `iptables-save` and `ip6tables-save` must also be kube-proxy's
//! after every stage (`switchyard_lab::reference::rules`). Random states
//! (`switchyard_lab::reference::random`) are judged by kube-proxy alone: a
//! fixed seed and count here, any other by `SWITCHYARD_RANDOM_STATES=SEED:COUNT`.
//! Needs root and `target/k8s/bin` (`e2e/k8s/build.sh`).

mod common;

/// Two nodes, a control plane and kube-proxy share two cores with the build:
/// an ICMP reply can take longer than the runner's default 500 ms.
const TIMEOUT: &str = "--timeout-ms=1500";

#[test]
fn switchyard_and_kube_proxy_agree_on_every_scenario_and_rule_with_iptables() {
    common::every_scenario_passes_with(
        "iptables",
        &["--reference", "kube-proxy", "--compare-rules", TIMEOUT],
    );
}

#[test]
fn switchyard_and_kube_proxy_agree_on_every_scenario_with_nftables() {
    common::every_scenario_passes_with("nftables", &["--reference", "kube-proxy", TIMEOUT]);
}

/// The random states of the fixed run: the seed and a count that keeps a
/// mode under two minutes on a quiet machine.
const RANDOM_STATES: &str = "1:4";

fn random_states_agree_with(mode: &str) {
    let states = std::env::var("SWITCHYARD_RANDOM_STATES").unwrap_or(RANDOM_STATES.into());
    common::scenario_run_passes(
        mode,
        &["--reference", "kube-proxy", TIMEOUT, "--random", &states],
    );
}

#[test]
fn switchyard_does_what_kube_proxy_does_in_random_states_with_iptables() {
    random_states_agree_with("iptables");
}

#[test]
fn switchyard_does_what_kube_proxy_does_in_random_states_with_nftables() {
    random_states_agree_with("nftables");
}
