//! Classic tc (clsact + cls_bpf) on real interfaces takes away only what is
//! the agent's: a clsact qdisc that was there stays, with its filters; one the
//! agent added stays when another tool has put a filter on it since; one the
//! agent added that nothing else uses goes.

use switchyard_api::Mode;

use super::fixtures::*;
use crate::Backend as _;
use crate::ebpf::kernel::{AyaKernel, KernelConfig};
use crate::ebpf::masq_ports::MasqueradePorts;
use crate::ebpf::plan::render;
use crate::ebpf::probe::Capabilities;
use crate::ebpf::tc::TcAttachMode;
use crate::ebpf::tc::rtnl::{Hook, Rtnl, Slot};
use crate::ebpf::{EbpfBackend, objects};
use crate::settings::Settings;

/// A filter of another tool's: its own slot and name, one of our programs.
const FOREIGN: Slot = Slot {
    priority: 1,
    handle: 1,
};

fn add_foreign_filter(node: &Netns, bpffs: &ScratchBpffs, dev: &str, hook: Hook) {
    use std::os::fd::{AsFd, AsRawFd};
    let config = render(&linked(vec![]), &Settings::defaults(Mode::Ebpf)).config;
    let maps = bpffs.dir().join("foreign");
    std::fs::create_dir_all(&maps).unwrap();
    let mut obj = AyaKernel::load_object(
        &config,
        Capabilities::probe(),
        MasqueradePorts::outside(32768..=60999),
        &maps,
        objects::TC,
    )
    .unwrap();
    let prog: &mut aya::programs::SchedClassifier = obj
        .program_mut("sy_tc_ingress")
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    let fd = prog.fd().unwrap().as_fd().as_raw_fd() as u32;
    node.enter(|| {
        let ifindex = nix_ifindex(dev);
        Rtnl::open()
            .unwrap()
            .add_filter(ifindex, hook, FOREIGN, fd, "foreign")
            .unwrap();
    });
}

fn nix_ifindex(dev: &str) -> u32 {
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: a NUL-terminated name that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

#[test]
fn classic_tc_cleanup_removes_only_the_qdiscs_and_filters_the_agent_added() {
    let bpffs = bpffs();
    let node = named(&unique("-n"));
    let devices = ["own0", "pre0", "fil0", "late0"];
    for dev in devices {
        node.sh(&format!("ip link add {dev} type veth peer name {dev}p"));
    }
    // Another tool's qdiscs: pre0's empty, fil0's with a filter of its own.
    node.sh("tc qdisc add dev pre0 clsact && tc qdisc add dev fil0 clsact");
    add_foreign_filter(&node, &bpffs, "fil0", Hook::Ingress);

    let mut settings = Settings::defaults(Mode::Ebpf);
    settings.ebpf.host_devices = devices.iter().map(|d| d.to_string()).collect();
    let web = service(
        1,
        "10.96.0.1",
        80,
        vec![endpoint(10, "10.244.1.5", 80, "node-a")],
    );
    let plan = render(&linked(vec![web]), &settings);
    let mut backend = EbpfBackend::new(AyaKernel::new(KernelConfig {
        pin_root: bpffs.dir().join("switchyard"),
        cgroup: None,
        tc_attach: TcAttachMode::Classic,
    }));
    node.enter(|| backend.apply(&plan)).unwrap();
    for dev in devices {
        for (hook, prog) in [("ingress", "sy_tc_ingress"), ("egress", "sy_tc_egress")] {
            let shown = node.sh(&format!("tc filter show dev {dev} {hook}"));
            assert!(
                shown.contains(&format!(
                    "pref 21337 bpf chain 0 handle 0x5359 {prog} direct-action"
                )),
                "{dev} {hook}: {shown}"
            );
        }
    }
    // Another tool puts a filter on a qdisc the agent added.
    add_foreign_filter(&node, &bpffs, "late0", Hook::Egress);

    node.enter(|| backend.cleanup()).unwrap();
    let qdisc = |dev: &str| {
        node.sh(&format!("tc qdisc show dev {dev}"))
            .contains("clsact")
    };
    let filters = |dev: &str, hook: &str| node.sh(&format!("tc filter show dev {dev} {hook}"));
    assert!(!qdisc("own0"), "the agent's qdisc, unused: removed");
    for dev in ["pre0", "fil0", "late0"] {
        assert!(qdisc(dev), "{dev}: clsact kept");
        for hook in ["ingress", "egress"] {
            let shown = filters(dev, hook);
            assert!(
                !shown.contains("pref 21337"),
                "{dev} {hook}: ours removed: {shown}"
            );
        }
    }
    assert!(
        filters("fil0", "ingress").contains("foreign"),
        "their filter stays"
    );
    assert!(
        filters("late0", "egress").contains("foreign"),
        "their filter stays"
    );
    assert!(filters("pre0", "ingress").trim().is_empty());
    assert!(!backend.present().unwrap(), "no pinned object left");
}
