//! Real-kernel test of the cleanup: UDP flows DNATed by an nftables rule in
//! a namespace this test creates (`synft<pid>-ct`) become real conntrack
//! entries; the cleanup deletes exactly the stale ones. Every socket is
//! opened inside that namespace, never the host's table. Skipped, loudly,
//! when not root.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::conntrack::Protocol;
use netlink_sys::protocols::NETLINK_NETFILTER;
use switchyard_api::ruleset::IpFamily;

use super::netlink::{NetlinkConntrack, dump_request, parse_flow};
use super::{ConntrackTable, UdpPort, UdpSnapshot, delete_stale, stale_entries};
use crate::netlink::Connection;
use crate::testns::{self, TestNetns};

/// Service `dns` (two endpoints per family, one leaves) and `new` (gains
/// its first endpoint), with the node port of `dns`.
fn snapshot(dns: &[&str], new: &[&str]) -> UdpSnapshot {
    let set =
        |ips: &[&str]| -> BTreeSet<IpAddr> { ips.iter().map(|i| i.parse().unwrap()).collect() };
    let dns = UdpPort {
        vips: set(&["172.30.0.10", "fd00:30::10"]),
        port: 53,
        node_port: Some(30053),
        endpoints: set(dns),
    };
    let new = UdpPort {
        vips: set(&["172.30.0.20"]),
        port: 53,
        node_port: None,
        endpoints: set(new),
    };
    UdpSnapshot {
        ports: [("ns/dns:dns".into(), dns), ("ns/new:dns".into(), new)].into(),
    }
}

/// (original source, original destination, reply source) of every UDP flow.
type Seen = BTreeSet<(String, String, String)>;

fn seen(table: &dyn ConntrackTable) -> Seen {
    [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .flat_map(|f| table.udp_flows(f).unwrap())
        .map(|f| {
            (
                f.orig_src.to_string(),
                f.orig_dst.to_string(),
                f.reply_src.to_string(),
            )
        })
        .collect()
}

fn flows(list: &[(&str, &str, &str)]) -> Seen {
    list.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[test]
fn stale_udp_flows_are_deleted_and_live_ones_stay() {
    let Some(ns) = testns::create("ct") else {
        return;
    };
    ns.sh(
        "ip link add ct0 type veth peer name ct1 && ip link set ct1 up && ip link set ct0 up && \
         ip addr add 10.0.1.1/24 dev ct0 && ip addr add fd00:1::1/64 dev ct0 nodad && \
         ip route add 172.30.0.0/16 dev ct0 && ip route add fd00:30::/64 dev ct0",
    );
    ns.nft(concat!(
        "table ip t {\n chain out {\n type nat hook output priority -100;\n",
        " ip daddr 172.30.0.10 udp sport 40001 dnat to 10.0.1.5:5353\n",
        " ip daddr 172.30.0.10 udp sport 40002 dnat to 10.0.1.6:5353\n",
        " ip daddr 10.0.1.1 udp dport 30053 dnat to 10.0.1.5:5353\n }\n}\n",
        "table ip6 t {\n chain out {\n type nat hook output priority -100;\n",
        " ip6 daddr fd00:30::10 udp sport 40001 dnat to [fd00:1::5]:5353\n",
        " ip6 daddr fd00:30::10 udp sport 40002 dnat to [fd00:1::6]:5353\n }\n}\n",
    ));
    let sent = [
        ("10.0.1.1:40001", "172.30.0.10:53"),
        ("10.0.1.1:40002", "172.30.0.10:53"),
        ("10.0.1.1:40003", "172.30.0.20:53"),
        ("10.0.1.1:40004", "172.30.0.20:54"),
        ("10.0.1.1:40005", "10.0.1.1:30053"),
        ("[fd00:1::1]:40001", "[fd00:30::10]:53"),
        ("[fd00:1::1]:40002", "[fd00:30::10]:53"),
    ];
    let (before, after, raw) = ns.enter(|| {
        for (src, dst) in sent {
            let socket = UdpSocket::bind(src.parse::<SocketAddr>().unwrap()).unwrap();
            socket.send_to(b"q", dst).unwrap();
        }
        // A flow of another protocol, which the kernel's filter leaves out.
        let tcp = std::net::TcpStream::connect_timeout(
            &"172.30.0.30:80".parse().unwrap(),
            std::time::Duration::from_millis(10),
        );
        assert!(tcp.is_err());
        let mut conn = Connection::open(NETLINK_NETFILTER).unwrap();
        let raw = conn
            .request(
                dump_request(IpFamily::V4, Protocol::Udp),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .unwrap();
        let table = NetlinkConntrack::calling_thread();
        let before = seen(&table);
        let stale = stale_entries(
            &snapshot(&["10.0.1.5", "10.0.1.6", "fd00:1::5", "fd00:1::6"], &[]),
            &snapshot(&["10.0.1.6", "fd00:1::6"], &["10.0.1.7"]),
        );
        assert_eq!(delete_stale(&table, &stale).unwrap(), 4);
        (before, seen(&table), raw)
    });
    assert!(
        raw.iter().all(|m| parse_flow(m).is_some()) && raw.len() == 5,
        "the dump holds the UDP flows only: {raw:?}"
    );
    let live = [
        ("10.0.1.1:40002", "172.30.0.10:53", "10.0.1.6:5353"),
        ("10.0.1.1:40004", "172.30.0.20:54", "172.30.0.20:54"),
        ("[fd00:1::1]:40002", "[fd00:30::10]:53", "[fd00:1::6]:5353"),
    ];
    let stale = [
        ("10.0.1.1:40001", "172.30.0.10:53", "10.0.1.5:5353"),
        ("10.0.1.1:40003", "172.30.0.20:53", "172.30.0.20:53"),
        ("10.0.1.1:40005", "10.0.1.1:30053", "10.0.1.5:5353"),
        ("[fd00:1::1]:40001", "[fd00:30::10]:53", "[fd00:1::5]:5353"),
    ];
    let all: Seen = flows(&live).union(&flows(&stale)).cloned().collect();
    assert_eq!(before, all);
    assert_eq!(after, flows(&live));
}

#[test]
fn established_tcp_connections_with_a_translated_destination_are_counted() {
    let Some(ns) = testns::create("cttcp") else {
        return;
    };
    ns.sh(
        "ip link set lo up && ip addr add 10.0.2.1/32 dev lo && ip route add 172.30.0.0/16 dev lo",
    );
    ns.nft(concat!(
        "table ip t {\n chain out {\n type nat hook output priority -100;\n",
        " ip daddr 172.30.0.40 tcp dport 80 dnat to 10.0.2.1:8080\n }\n}\n",
    ));
    let (v4, v6) = ns.enter(|| {
        let listener = std::net::TcpListener::bind("10.0.2.1:8080").unwrap();
        // One connection through the DNAT, one straight to the endpoint.
        let _translated = std::net::TcpStream::connect("172.30.0.40:80").unwrap();
        let _direct = std::net::TcpStream::connect("10.0.2.1:8080").unwrap();
        let _accepted = (listener.accept().unwrap(), listener.accept().unwrap());
        let table = NetlinkConntrack::calling_thread();
        (
            table.translated_tcp_open(IpFamily::V4).unwrap(),
            table.translated_tcp_open(IpFamily::V6).unwrap(),
        )
    });
    assert_eq!((v4, v6), (1, 0));
}
