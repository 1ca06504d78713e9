//! Shared by the per-mode scenario tests: run every scenario in
//! `e2e/scenarios/` with the scenario binary and require no failure.

use std::process::Command;

/// Runs `scenario --mode <mode> e2e/scenarios` and asserts `N passed, 0 failed` with N > 0.
pub fn every_scenario_passes(mode: &str) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let out = Command::new(env!("CARGO_BIN_EXE_scenario"))
        .args(["--mode", mode, dir])
        .output()
        .unwrap_or_else(|e| panic!("run the scenario binary: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && summary.contains(" passed, 0 failed"),
        "scenarios failed with {mode}: {summary}"
    );
    let passed: usize = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 0, "no flow ran: {summary}");
}
