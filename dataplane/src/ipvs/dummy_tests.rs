//! Real-kernel test of [`RtnlDummy`] in a namespace this test creates
//! (`synft<pid>-dummy`): `kube-ipvs0` made, its IPv4 and IPv6 addresses
//! added, listed and removed, then deleted, read back with `ip` too.
//! Skipped, loudly, when not root; a kernel without the dummy driver (this
//! machine's) gets `kube-ipvs0` as a veth for the address part, and the
//! qemu VM test (`e2e/tests/vm_ipvs.rs`) creates the real dummy.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::dummy::{DummyInterface, RtnlDummy};
use crate::testns::{self, TestNetns};

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn open() -> RtnlDummy {
    RtnlDummy::open().unwrap()
}

#[test]
fn kube_ipvs0_and_its_addresses_are_made_listed_and_removed_over_rtnetlink() {
    let Some(ns) = testns::create("dummy") else {
        return;
    };
    let created = ns.enter(|| {
        let dummy = open();
        assert!(!dummy.exists().unwrap());
        assert!(dummy.addresses().unwrap().is_empty());
        dummy.ensure()
    });
    match created {
        Ok(()) => {
            let link = ns.sh("ip -d -o link show kube-ipvs0");
            assert!(link.contains("dummy"), "{link}");
        }
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("SKIP: creating a dummy interface: this kernel has no dummy driver ({e})");
            ns.sh("ip link add kube-ipvs0 type veth peer name ipvs0peer");
        }
        Err(e) => panic!("create kube-ipvs0: {e}"),
    }
    let all = ips(&["10.96.0.1", "10.96.0.2", "fd00::1", "fd00::2"]);
    let kept = ips(&["10.96.0.1", "fd00::1"]);
    ns.enter(|| {
        let dummy = open();
        dummy.ensure().unwrap();
        dummy.change_addresses(&all, &BTreeSet::new()).unwrap();
        assert_eq!(dummy.addresses().unwrap(), all);
        let gone = ips(&["10.96.0.2", "fd00::2"]);
        dummy.change_addresses(&kept, &gone).unwrap();
        assert_eq!(dummy.addresses().unwrap(), kept);
    });
    let listed = ns.sh("ip -o addr show dev kube-ipvs0");
    assert!(listed.contains("inet 10.96.0.1/32"), "{listed}");
    assert!(listed.contains("inet6 fd00::1/128"), "{listed}");
    assert!(
        !listed.contains("10.96.0.2") && !listed.contains("fd00::2"),
        "{listed}"
    );
    ns.enter(|| {
        let dummy = open();
        dummy.delete().unwrap();
        assert!(!dummy.exists().unwrap());
        dummy.delete().unwrap();
        assert!(dummy.addresses().unwrap().is_empty());
    });
    assert!(!ns.sh("ip -o link").contains("kube-ipvs0"));
}
