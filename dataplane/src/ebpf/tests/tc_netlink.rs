//! The classic tc messages byte for byte: requests against what iproute2's
//! `tc` (6.1) sends for the same command, answers as the kernel (6.18) sent
//! them, decoded and encoded again. Captured in a scratch namespace where
//! `v0` had ifindex 3; sequence numbers and port ids zeroed.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::TcMessage;

use crate::ebpf::tc::rtnl::{self, Filter, Hook, Slot};
use crate::netlink::{encode, parse_hex};

const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;
const DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;

const OURS: Slot = Slot {
    priority: 0x5359,
    handle: 0x5359,
};

/// `tc qdisc add dev v0 clsact`
const TC_QDISC_ADD_CLSACT: &str = "
30 00 00 00 24 00 05 06 00 00 00 00 00 00 00 00  # nlmsghdr len=48 RTM_NEWQDISC REQUEST|ACK|EXCL|CREATE
00 00 00 00 03 00 00 00                          # tcmsg family=0 ifindex=3
00 00 ff ff f1 ff ff ff 00 00 00 00              #   handle=ffff:0 parent=ffff:fff1 (clsact) info=0
0b 00 01 00 63 6c 73 61 63 74 00 00              # TCA_KIND \"clsact\"
";

/// `tc qdisc del dev v0 clsact`
const TC_QDISC_DEL_CLSACT: &str = "
30 00 00 00 25 00 05 00 00 00 00 00 00 00 00 00  # nlmsghdr len=48 RTM_DELQDISC REQUEST|ACK
00 00 00 00 03 00 00 00 00 00 ff ff f1 ff ff ff  # tcmsg ifindex=3 handle=ffff:0 parent=ffff:fff1
00 00 00 00 0b 00 01 00 63 6c 73 61 63 74 00 00  #   info=0; TCA_KIND \"clsact\"
";

/// `tc filter add dev v0 egress pref 21337 handle 0x5359 protocol all bpf
/// direct-action obj sycap.o sec classifier` (the program was fd 7)
const TC_FILTER_ADD: &str = "
5c 00 00 00 2c 00 05 06 00 00 00 00 00 00 00 00  # nlmsghdr len=92 RTM_NEWTFILTER REQUEST|ACK|EXCL|CREATE
00 00 00 00 03 00 00 00 59 53 00 00 f3 ff ff ff  # tcmsg ifindex=3 handle=0x5359 parent=ffff:fff3 (egress)
00 03 59 53                                      #   info: pref 0x5359, protocol ETH_P_ALL (network order)
08 00 01 00 62 70 66 00                          # TCA_KIND \"bpf\"
30 00 02 00                                      # TCA_OPTIONS
08 00 06 00 07 00 00 00                          #   TCA_BPF_FD 7
19 00 07 00 73 79 63 61 70 2e 6f 3a 5b 63 6c 61  #   TCA_BPF_NAME \"sycap.o:[classifier]\"
73 73 69 66 69 65 72 5d 00 00 00 00
08 00 08 00 01 00 00 00                          #   TCA_BPF_FLAGS direct-action
";

/// `tc filter del dev v0 egress pref 21337 handle 0x5359 protocol all bpf`
const TC_FILTER_DEL: &str = "
2c 00 00 00 2d 00 05 00 00 00 00 00 00 00 00 00  # nlmsghdr len=44 RTM_DELTFILTER REQUEST|ACK
00 00 00 00 03 00 00 00 59 53 00 00 f3 ff ff ff  # tcmsg ifindex=3 handle=0x5359 parent=ffff:fff3
00 03 59 53 08 00 01 00 62 70 66 00              #   info: pref 0x5359, ETH_P_ALL; TCA_KIND \"bpf\"
";

/// `tc filter show dev v0 egress`
const TC_FILTER_SHOW: &str = "
24 00 00 00 2e 00 01 03 00 00 00 00 00 00 00 00  # nlmsghdr len=36 RTM_GETTFILTER REQUEST|DUMP
00 00 00 00 03 00 00 00 00 00 00 00 f3 ff ff ff  # tcmsg ifindex=3 handle=0 parent=ffff:fff3
00 00 00 00                                      #   info=0
";

/// `tc qdisc show dev v0`
const TC_QDISC_SHOW: &str = "
24 00 00 00 26 00 01 03 00 00 00 00 00 00 00 00  # nlmsghdr len=36 RTM_GETQDISC REQUEST|DUMP
00 00 00 00 03 00 00 00 00 00 00 00 00 00 00 00  # tcmsg ifindex=3
00 00 00 00
";

fn bytes(request: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    encode(request, flags, 0)
}

#[test]
fn requests_are_what_iproute2_sends() {
    let cases = [
        (
            bytes(
                RouteNetlinkMessage::NewQueueDiscipline(rtnl::clsact(3)),
                CREATE,
            ),
            TC_QDISC_ADD_CLSACT,
        ),
        (
            bytes(
                RouteNetlinkMessage::DelQueueDiscipline(rtnl::clsact(3)),
                ACK,
            ),
            TC_QDISC_DEL_CLSACT,
        ),
        (
            bytes(
                RouteNetlinkMessage::NewTrafficFilter(rtnl::bpf_filter(
                    3,
                    Hook::Egress,
                    OURS,
                    7,
                    "sycap.o:[classifier]",
                )),
                CREATE,
            ),
            TC_FILTER_ADD,
        ),
        (
            bytes(
                RouteNetlinkMessage::DelTrafficFilter(rtnl::bpf_filter_delete(
                    3,
                    Hook::Egress,
                    OURS,
                )),
                ACK,
            ),
            TC_FILTER_DEL,
        ),
        (
            bytes(
                RouteNetlinkMessage::GetTrafficFilter(rtnl::filter_dump(3, Hook::Egress)),
                DUMP,
            ),
            TC_FILTER_SHOW,
        ),
        (
            bytes(
                RouteNetlinkMessage::GetQueueDiscipline(rtnl::qdisc_dump(3)),
                DUMP,
            ),
            TC_QDISC_SHOW,
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, parse_hex(want), "{want}");
    }
}

/// The kernel's answer to the egress filter dump of `v0`, which had one bpf
/// filter of another tool: the chain head of its priority, then the filter.
const FILTER_DUMP_ANSWER: [&str; 2] = [
    "
34 00 00 00 2c 00 02 00 00 00 00 00 00 00 00 00  # nlmsghdr len=52 RTM_NEWTFILTER MULTI
00 00 00 00 03 00 00 00 00 00 00 00 f3 ff ff ff  # tcmsg ifindex=3 handle=0 parent=ffff:fff3
00 03 01 00                                      #   info: pref 1, ETH_P_ALL
08 00 01 00 62 70 66 00                          # TCA_KIND \"bpf\"
08 00 0b 00 00 00 00 00                          # TCA_CHAIN 0
",
    "
68 00 00 00 2c 00 02 00 00 00 00 00 00 00 00 00  # nlmsghdr len=104 RTM_NEWTFILTER MULTI
00 00 00 00 03 00 00 00 01 00 00 00 f3 ff ff ff  # tcmsg ifindex=3 handle=1 parent=ffff:fff3
00 03 01 00                                      #   info: pref 1, ETH_P_ALL
08 00 01 00 62 70 66 00                          # TCA_KIND \"bpf\"
08 00 0b 00 00 00 00 00                          # TCA_CHAIN 0
34 00 02 00                                      # TCA_OPTIONS
0c 00 07 00 66 6f 72 65 69 67 6e 00              #   TCA_BPF_NAME \"foreign\"
08 00 0b 00 b9 06 00 00                          #   TCA_BPF_ID 1721
0c 00 0a 00 29 6b 50 47 8a 0e 0c 31              #   TCA_BPF_TAG
08 00 08 00 01 00 00 00                          #   TCA_BPF_FLAGS direct-action
08 00 09 00 08 00 00 00                          #   TCA_BPF_FLAGS_GEN not_in_hw
",
];

/// The qdisc dump's message for `v0`.
const CLSACT_DUMP_ANSWER: &str = "
98 00 00 00 24 00 02 00 00 00 00 00 00 00 00 00  # nlmsghdr len=152 RTM_NEWQDISC MULTI
00 00 00 00 03 00 00 00 00 00 ff ff f1 ff ff ff  # tcmsg ifindex=3 handle=ffff:0 parent=ffff:fff1
01 00 00 00                                      #   info (refcnt) 1
0b 00 01 00 63 6c 73 61 63 74 00 00              # TCA_KIND \"clsact\"
04 00 02 00                                      # TCA_OPTIONS (empty)
05 00 0c 00 00 00 00 00                          # TCA_HW_OFFLOAD 0
30 00 07 00                                      # TCA_STATS2
14 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00  #   TCA_STATS_BASIC
00 00 00 00
18 00 03 00 00 00 00 00 00 00 00 00 00 00 00 00  #   TCA_STATS_QUEUE
00 00 00 00 00 00 00 00
2c 00 03 00 00 00 00 00 00 00 00 00 00 00 00 00  # TCA_STATS
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
";

/// A captured answer's tc message; with `round_trip`, also encoded again and
/// compared (netlink-packet-route 0.34 cannot encode a qdisc's statistics
/// again, which we never send).
fn decode(text: &str, round_trip: bool) -> TcMessage {
    let raw = parse_hex(text);
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&raw).unwrap();
    if round_trip {
        let mut again = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut again);
        assert_eq!(again, raw, "decoded and encoded again: {msg:?}");
    }
    match msg.payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewTrafficFilter(m) | RouteNetlinkMessage::NewQueueDiscipline(m),
        ) => m,
        other => panic!("not a tc message: {other:?}"),
    }
}

#[test]
fn kernel_answers_decode_filters_byte_for_byte_and_the_clsact_qdisc() {
    let filters: Vec<Filter> = FILTER_DUMP_ANSWER
        .iter()
        .map(|text| rtnl::parse_filter(&decode(text, true)))
        .collect();
    let slot = |handle| Slot {
        priority: 1,
        handle,
    };
    assert_eq!(
        filters,
        [
            Filter {
                slot: slot(0),
                kind: "bpf".into(),
                name: None
            },
            Filter {
                slot: slot(1),
                kind: "bpf".into(),
                name: Some("foreign".into())
            },
        ]
    );
    let qdisc = decode(CLSACT_DUMP_ANSWER, false);
    assert!(rtnl::is_clsact(&qdisc, 3));
    assert!(!rtnl::is_clsact(&qdisc, 4), "another interface's");
}
