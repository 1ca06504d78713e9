//! Every scenario in `e2e/scenarios/` passes with the nftables backend, with
//! real packets in network namespaces (needs root, as CI runs).

mod common;

#[test]
fn every_scenario_passes_with_nftables() {
    common::every_scenario_passes("nftables");
}
