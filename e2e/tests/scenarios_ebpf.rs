//! Every scenario in `e2e/scenarios/` passes with the eBPF backend (socket
//! programs on a client cgroup of the runner's, tc programs on the node
//! namespace's interfaces), flows eBPF cannot carry by design reported SKIP
//! (needs root, as CI runs).

mod common;

#[test]
fn every_scenario_passes_with_ebpf() {
    common::every_scenario_passes("ebpf");
}
