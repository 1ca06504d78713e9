//! Shared by the end-to-end tests: the lab's binaries, and every scenario in
//! `e2e/scenarios/` run with the scenario binary, requiring no failure.
#![allow(dead_code)] // each test binary uses a different part
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure fails the calling test

use std::path::PathBuf;
use std::process::Command;

/// The lab's binary `name` (`scenario`, `dataplane-bench`), built by cargo if
/// it is not up to date: a binary of another package has no `CARGO_BIN_EXE_*`.
pub fn lab_bin(name: &str) -> PathBuf {
    escargot::CargoBuild::new()
        .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/lab/Cargo.toml"))
        .bin(name)
        .current_release()
        .run()
        .unwrap_or_else(|e| panic!("build the lab's {name}: {e}"))
        .path()
        .to_path_buf()
}

/// Runs `scenario --mode <mode> e2e/scenarios` and asserts `N passed, 0 failed` with N > 0.
pub fn every_scenario_passes(mode: &str) {
    every_scenario_passes_with(mode, &[]);
}

/// As [`every_scenario_passes`], with more arguments (`--reference kube-proxy`).
pub fn every_scenario_passes_with(mode: &str, extra: &[&str]) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let out = Command::new(lab_bin("scenario"))
        .args(["--mode", mode])
        .args(extra)
        .arg(dir)
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
