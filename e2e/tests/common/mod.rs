//! Shared by the end-to-end tests: the lab's binaries and Switchyard's own,
//! every scenario in `e2e/scenarios/` run with the scenario binary requiring
//! no failure, and the helpers of the tests on a lab cluster ([`cluster`]).
#![allow(dead_code)] // each test binary uses a different part
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure fails the calling test

pub mod cluster;

use std::path::PathBuf;
use std::process::Command;

/// Binary `name` of the package at `dir` (relative to the workspace), built
/// by cargo if it is not up to date: a binary of another package has no
/// `CARGO_BIN_EXE_*`.
///
/// The variables cargo set for this test are not passed on: build scripts
/// that read them (ring's reads `CARGO_MANIFEST_DIR` and `CARGO_PKG_*`) would
/// see them changed, and each of this build and the next `cargo test` would
/// rebuild ring, rustls, kube and everything above them for the other.
fn package_bin(dir: &str, name: &str) -> PathBuf {
    let manifest = format!("{}/../{dir}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    let set_by_cargo = std::env::vars_os().map(|(key, _)| key).filter(|key| {
        let key = key.to_string_lossy();
        ["CARGO_PKG_", "CARGO_BIN_EXE_"]
            .iter()
            .any(|p| key.starts_with(p))
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref())
    });
    set_by_cargo
        .fold(escargot::CargoBuild::new(), |build, key| {
            build.env_remove(key)
        })
        .manifest_path(manifest)
        .bin(name)
        .current_release()
        .run()
        .unwrap_or_else(|e| panic!("build {dir}'s {name}: {e}"))
        .path()
        .to_path_buf()
}

/// The lab's binary `name` (`scenario`, `dataplane-bench`).
pub fn lab_bin(name: &str) -> PathBuf {
    package_bin("e2e/lab", name)
}

/// The operator's and the node agent's own binaries, as they ship, and the
/// lab's `migration-matrix` for the traffic's roles.
pub fn switchyard_programs() -> switchyard_lab::cluster::processes::Programs {
    use switchyard_lab::cluster::processes::{Program, Programs};
    Programs {
        operator: Program::new(package_bin("operator", "switchyard-operator")),
        agent: Program::new(package_bin("node-agent", "node-agent")),
        traffic: Program::new(lab_bin("migration-matrix")),
    }
}

/// Runs `scenario --mode <mode> e2e/scenarios` and asserts `N passed, 0 failed` with N > 0.
pub fn every_scenario_passes(mode: &str) {
    every_scenario_passes_with(mode, &[]);
}

/// As [`every_scenario_passes`], with more arguments (`--reference kube-proxy`,
/// `--vm`); the binary's standard output and N.
pub fn every_scenario_passes_with(mode: &str, extra: &[&str]) -> (String, usize) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    scenario_run_passes(mode, &[extra, &[dir]].concat())
}

/// Runs `scenario --mode <mode> ARGS...` and asserts `N passed, 0 failed` with
/// N > 0; its standard output and N.
pub fn scenario_run_passes(mode: &str, args: &[&str]) -> (String, usize) {
    let out = Command::new(lab_bin("scenario"))
        .args(["--mode", mode])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run the scenario binary: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    // The failures again, last, where a truncated log still shows them.
    let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        out.status.success() && summary.contains(" passed, 0 failed"),
        "scenarios failed with {mode}: {summary}\n{}",
        failures.join("\n")
    );
    let passed: usize = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 0, "no flow ran: {summary}");
    (stdout.into_owned(), passed)
}

/// Runs `migration-matrix` with `args` and its `pairs` pairs; its standard
/// output. A pair that lost anything runs once more, alone (the binary
/// stays strict: one run, one verdict): on a loaded two-core machine one
/// new connection in a thousand can time out. The test fails when a pair
/// fails twice, and prints both runs.
pub fn matrix_passes(args: &[&str], pairs: usize) -> String {
    let (stdout, summary, ok) = run_matrix(args);
    if ok && summary == format!("{pairs} passed, 0 failed") {
        return stdout;
    }
    let failed = failed_pairs(&stdout);
    assert!(
        !failed.is_empty() && failed.len() < pairs,
        "migration matrix {args:?}: {summary}"
    );
    let mut again: Vec<&str> = Vec::new();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        if *a == "--pairs" || *a == "--modes" {
            rest.next();
        } else {
            again.push(a);
        }
    }
    let list = failed.join(",");
    println!("RETRY {list}: lost something in the first run");
    again.extend(["--pairs", &list]);
    let (second, summary, ok) = run_matrix(&again);
    assert!(
        ok && summary == format!("{} passed, 0 failed", failed.len()),
        "migration matrix {again:?}, second run of the pairs that failed: {summary}"
    );
    stdout + &second
}

/// One run of `migration-matrix`: its output, last line, and exit status.
fn run_matrix(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(lab_bin("migration-matrix"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run migration-matrix: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = stdout.lines().last().unwrap_or_default().to_string();
    (stdout, summary, out.status.success())
}

/// `FROM:TO` of every row whose verdict is FAIL (`FROM -> TO  …  FAIL`).
fn failed_pairs(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.contains(" FAIL"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let (from, arrow, to) = (words.next()?, words.next()?, words.next()?);
            (arrow == "->").then(|| format!("{from}:{to}"))
        })
        .collect()
}
