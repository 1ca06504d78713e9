//! The benchmark's smoke run: both backends sync a small synthetic cluster
//! in its own namespaces and connect through a VIP (needs root, as CI runs).
//! Timings are printed, never asserted.

mod common;

use std::process::Command;

#[test]
fn quick_benchmark_runs_both_modes_and_prints_the_tables() {
    let out = Command::new(common::lab_bin("dataplane-bench"))
        .arg("--quick")
        .output()
        .unwrap_or_else(|e| panic!("run dataplane-bench: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    for row in [
        "| 300×5 | nftables |",
        "| 300×5 | iptables |",
        "| 100×50 | nftables |",
    ] {
        assert!(stdout.contains(row), "missing {row}");
    }
    let latency_rows = stdout
        .lines()
        .filter(|l| l.starts_with("| nftables |") || l.starts_with("| iptables |"))
        .count();
    assert_eq!(latency_rows, 2, "one latency row per mode");
}
