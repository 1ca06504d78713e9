//! Every scenario in `e2e/scenarios/` passes with the iptables backend, with
//! real packets in network namespaces (needs root, as CI runs).

use std::process::Command;

#[test]
fn every_scenario_passes_with_iptables() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let out = Command::new(env!("CARGO_BIN_EXE_scenario"))
        .args(["--mode", "iptables", dir])
        .output()
        .unwrap_or_else(|e| panic!("run the scenario binary: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && summary.contains(" passed, 0 failed"),
        "scenarios failed: {summary}"
    );
    let passed: usize = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 0, "no flow ran: {summary}");
}
