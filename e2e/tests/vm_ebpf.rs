//! Every scenario of `e2e/scenarios/` in eBPF mode on Debian's stock kernel
//! in qemu (`scenario --mode ebpf --vm`: the binary re-runs itself in the
//! VM). That kernel (6.1) has no TCX, so the tc programs attach with classic
//! tc — the fallback the nodes of Debian 12, Ubuntu 22.04 and RHEL 9 need.

mod common;

use std::process::Command;
use std::time::Instant;

use switchyard_lab::ebpf::SKIP_REASONS;
use switchyard_lab::vm::IN_VM_ENV;

#[test]
fn every_scenario_passes_with_ebpf_on_the_stock_kernel_with_classic_tc() {
    if std::env::var_os(IN_VM_ENV).is_some() {
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let started = Instant::now();
    let out = Command::new(common::lab_bin("scenario"))
        .args(["--mode", "ebpf", "--vm", dir])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("eBPF scenarios in the VM took {:?}", started.elapsed());
    assert!(
        stdout.contains("eBPF tc programs attach with classic tc"),
        "the VM's kernel has no TCX: classic tc must have been used"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && summary.contains(" passed, 0 failed"),
        "{summary}"
    );
    for skip in stdout.lines().filter(|l| l.starts_with("SKIP ")) {
        assert!(
            SKIP_REASONS.iter().any(|r| skip.ends_with(r)),
            "a skip must give one of the eBPF mode's stated reasons: {skip}"
        );
    }
    let passed: u32 = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 140, "{summary}");
}
