//! `kube-ipvs0` over rtnetlink. The requests byte for byte against what
//! iproute2's `ip` (6.1) sends for the same command, captured in a scratch
//! namespace where `kube-ipvs0` had ifindex 3 (sequence numbers zeroed).
//! Then the real kernel, in a namespace this test creates
//! (`synft<pid>-dummy`): `kube-ipvs0` made, its IPv4 and IPv6 addresses
//! added, listed and removed, then deleted, read back with `ip` too.
//! Skipped, loudly, when not root; a kernel without the dummy driver (this
//! machine's) gets `kube-ipvs0` as a veth for the address part, and the
//! qemu VM test (`e2e/tests/vm_ipvs.rs`) creates the real dummy.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkMessage;

use super::dummy::{DummyInterface, RtnlDummy, host_address, new_dummy};
use crate::netlink::{encode, parse_hex};
use crate::testns::{self, TestNetns};

const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// `ip link add kube-ipvs0 type dummy`, but for one byte: netlink-packet-route
/// sends the kind with its NUL (length 0a; iproute2: 09, the padding byte
/// after it is zero either way), which the kernel's `nla_strcmp` accepts.
const IP_LINK_ADD: &str = "
40 00 00 00 10 00 05 06 00 00 00 00 00 00 00 00  # nlmsghdr len=64 RTM_NEWLINK REQUEST|ACK|EXCL|CREATE
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  # ifinfomsg (all zero)
0f 00 03 00 6b 75 62 65 2d 69 70 76 73 30 00 00  # IFLA_IFNAME \"kube-ipvs0\"
10 00 12 00 0a 00 01 00 64 75 6d 6d 79 00 00 00  # IFLA_LINKINFO { IFLA_INFO_KIND \"dummy\" }
";

/// `ip addr add 10.96.0.1/32 dev kube-ipvs0`
const IP_ADDR_ADD_V4: &str = "
28 00 00 00 14 00 05 06 00 00 00 00 00 00 00 00  # nlmsghdr len=40 RTM_NEWADDR REQUEST|ACK|EXCL|CREATE
02 20 00 00 03 00 00 00                          # ifaddrmsg AF_INET /32 flags=0 scope=0 ifindex=3
08 00 02 00 0a 60 00 01                          # IFA_LOCAL 10.96.0.1
08 00 01 00 0a 60 00 01                          # IFA_ADDRESS 10.96.0.1
";

/// `ip addr add fd00::1/128 dev kube-ipvs0`
const IP_ADDR_ADD_V6: &str = "
40 00 00 00 14 00 05 06 00 00 00 00 00 00 00 00  # nlmsghdr len=64 RTM_NEWADDR REQUEST|ACK|EXCL|CREATE
0a 80 00 00 03 00 00 00                          # ifaddrmsg AF_INET6 /128 flags=0 scope=0 ifindex=3
14 00 02 00 fd 00 00 00 00 00 00 00 00 00 00 00  # IFA_LOCAL fd00::1
00 00 00 01
14 00 01 00 fd 00 00 00 00 00 00 00 00 00 00 00  # IFA_ADDRESS fd00::1
00 00 00 01
";

/// `ip addr del 10.96.0.1/32 dev kube-ipvs0`
const IP_ADDR_DEL_V4: &str = "
28 00 00 00 15 00 05 00 00 00 00 00 00 00 00 00  # nlmsghdr len=40 RTM_DELADDR REQUEST|ACK
02 20 00 00 03 00 00 00                          # ifaddrmsg AF_INET /32 ifindex=3
08 00 02 00 0a 60 00 01 08 00 01 00 0a 60 00 01  # IFA_LOCAL, IFA_ADDRESS 10.96.0.1
";

/// `ip link del kube-ipvs0`
const IP_LINK_DEL: &str = "
20 00 00 00 11 00 05 00 00 00 00 00 00 00 00 00  # nlmsghdr len=32 RTM_DELLINK REQUEST|ACK
00 00 00 00 03 00 00 00 00 00 00 00 00 00 00 00  # ifinfomsg ifindex=3
";

#[test]
fn requests_are_what_iproute2_sends() {
    let mut del_link = LinkMessage::default();
    del_link.header.index = 3;
    let cases = [
        (
            RouteNetlinkMessage::NewLink(new_dummy()),
            CREATE,
            IP_LINK_ADD,
        ),
        (
            RouteNetlinkMessage::NewAddress(host_address(3, "10.96.0.1".parse().unwrap())),
            CREATE,
            IP_ADDR_ADD_V4,
        ),
        (
            RouteNetlinkMessage::NewAddress(host_address(3, "fd00::1".parse().unwrap())),
            CREATE,
            IP_ADDR_ADD_V6,
        ),
        (
            RouteNetlinkMessage::DelAddress(host_address(3, "10.96.0.1".parse().unwrap())),
            ACK,
            IP_ADDR_DEL_V4,
        ),
        (RouteNetlinkMessage::DelLink(del_link), ACK, IP_LINK_DEL),
    ];
    for (request, flags, captured) in cases {
        assert_eq!(encode(request, flags, 0), parse_hex(captured), "{captured}");
    }
}

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
