//! Every scenario of `e2e/scenarios/` in eBPF mode on Debian's stock kernel
//! in qemu (`scenario --mode ebpf --vm`: the binary re-runs itself in the
//! VM). That kernel (6.1) has no TCX, so the tc programs attach with classic
//! tc — the fallback the nodes of Debian 12, Ubuntu 22.04 and RHEL 9 need.

mod common;

use std::time::Instant;

use switchyard_lab::ebpf::SKIP_REASONS;
use switchyard_lab::vm::IN_VM_ENV;

#[test]
fn every_scenario_passes_with_ebpf_on_the_stock_kernel_with_classic_tc() {
    if std::env::var_os(IN_VM_ENV).is_some() {
        return;
    }
    let started = Instant::now();
    let (stdout, passed) = common::every_scenario_passes_with("ebpf", &["--vm"]);
    eprintln!("eBPF scenarios in the VM took {:?}", started.elapsed());
    assert!(
        stdout.contains("eBPF tc programs attach with classic tc"),
        "the VM's kernel has no TCX: classic tc must have been used"
    );
    for skip in stdout.lines().filter(|l| l.starts_with("SKIP ")) {
        assert!(
            SKIP_REASONS.iter().any(|r| skip.ends_with(r)),
            "a skip must give one of the eBPF mode's stated reasons: {skip}"
        );
    }
    assert!(passed >= 140, "{passed} passed");
}
