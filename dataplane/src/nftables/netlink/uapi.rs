//! The numbers the encoder writes that neither `libc` nor
//! `netlink-packet-core` defines, under their C names: attribute types of
//! `linux/netfilter/nf_tables.h` (libc has its enum values, not its
//! `NFTA_*` attributes), a few kernel bits from other headers, and what
//! libnftnl and nft 1.0.6 store in userdata. Everything else comes from
//! `libc` (`NFT_MSG_*`, `NFT_REG_*`, `NFT_SET_*`, `NFT_META_*`, …) and
//! `netlink_packet_core` (`NLM_F_*`, `NLA_F_NESTED`) where it is used.

/// `NFTA_TABLE_*`.
pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_TABLE_FLAGS: u16 = 2;

/// `NFTA_CHAIN_*` and the nested `NFTA_HOOK_*`.
pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_POLICY: u16 = 5;
pub const NFTA_CHAIN_TYPE: u16 = 7;
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
pub const NFTA_HOOK_PRIORITY: u16 = 2;

/// `NFTA_RULE_*`.
pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_RULE_USERDATA: u16 = 7;

/// `NFTA_SET_*`.
pub const NFTA_SET_TABLE: u16 = 1;
pub const NFTA_SET_NAME: u16 = 2;
pub const NFTA_SET_FLAGS: u16 = 3;
pub const NFTA_SET_KEY_TYPE: u16 = 4;
pub const NFTA_SET_KEY_LEN: u16 = 5;
pub const NFTA_SET_DATA_TYPE: u16 = 6;
pub const NFTA_SET_DATA_LEN: u16 = 7;
pub const NFTA_SET_ID: u16 = 10;
pub const NFTA_SET_TIMEOUT: u16 = 11;
pub const NFTA_SET_USERDATA: u16 = 13;

/// `NFTA_SET_ELEM_LIST_*` and the `NFTA_SET_ELEM_*` of each element.
pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
/// nft sends it, we do not (see `bytes_tests`).
#[cfg(test)]
pub const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub const NFTA_SET_ELEM_KEY: u16 = 1;
pub const NFTA_SET_ELEM_DATA: u16 = 2;
pub const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub const NFTA_SET_ELEM_USERDATA: u16 = 6;

/// An element of a nested list (`NFTA_LIST_ELEM`), an expression in it
/// (`NFTA_EXPR_*`), and data (`NFTA_DATA_*`, `NFTA_VERDICT_*`).
pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;
pub const NFTA_VERDICT_CHAIN: u16 = 2;

/// The attributes of each expression kind the plan uses.
pub const NFTA_PAYLOAD_DREG: u16 = 1;
pub const NFTA_PAYLOAD_BASE: u16 = 2;
pub const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub const NFTA_PAYLOAD_LEN: u16 = 4;
pub const NFTA_META_DREG: u16 = 1;
pub const NFTA_META_KEY: u16 = 2;
pub const NFTA_META_SREG: u16 = 3;
pub const NFTA_CMP_SREG: u16 = 1;
pub const NFTA_CMP_OP: u16 = 2;
pub const NFTA_CMP_DATA: u16 = 3;
pub const NFTA_BITWISE_SREG: u16 = 1;
pub const NFTA_BITWISE_DREG: u16 = 2;
pub const NFTA_BITWISE_LEN: u16 = 3;
pub const NFTA_BITWISE_MASK: u16 = 4;
pub const NFTA_BITWISE_XOR: u16 = 5;
pub const NFTA_BITWISE_OP: u16 = 6;
pub const NFTA_LOOKUP_SET: u16 = 1;
pub const NFTA_LOOKUP_SREG: u16 = 2;
pub const NFTA_LOOKUP_DREG: u16 = 3;
/// nft sends it, we do not (see `bytes_tests`).
#[cfg(test)]
pub const NFTA_LOOKUP_SET_ID: u16 = 4;
pub const NFTA_LOOKUP_FLAGS: u16 = 5;
pub const NFTA_IMMEDIATE_DREG: u16 = 1;
pub const NFTA_IMMEDIATE_DATA: u16 = 2;
pub const NFTA_CT_DREG: u16 = 1;
pub const NFTA_CT_KEY: u16 = 2;
pub const NFTA_FIB_DREG: u16 = 1;
pub const NFTA_FIB_RESULT: u16 = 2;
pub const NFTA_FIB_FLAGS: u16 = 3;
pub const NFTA_NG_DREG: u16 = 1;
pub const NFTA_NG_MODULUS: u16 = 2;
pub const NFTA_NG_TYPE: u16 = 3;
pub const NFTA_NG_OFFSET: u16 = 4;
pub const NFTA_DYNSET_SET_NAME: u16 = 1;
/// nft sends it, we do not (see `bytes_tests`).
#[cfg(test)]
pub const NFTA_DYNSET_SET_ID: u16 = 2;
pub const NFTA_DYNSET_OP: u16 = 3;
pub const NFTA_DYNSET_SREG_KEY: u16 = 4;
pub const NFTA_MASQ_FLAGS: u16 = 1;
pub const NFTA_MASQ_REG_PROTO_MIN: u16 = 2;
pub const NFTA_MASQ_REG_PROTO_MAX: u16 = 3;
pub const NFTA_NAT_TYPE: u16 = 1;
pub const NFTA_NAT_FAMILY: u16 = 2;
pub const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
pub const NFTA_NAT_FLAGS: u16 = 7;
pub const NFTA_REJECT_TYPE: u16 = 1;
pub const NFTA_REJECT_ICMP_CODE: u16 = 2;

/// `enum nft_bitwise_ops`: mask and xor.
pub const NFT_BITWISE_BOOL: u32 = 0;

/// `enum nft_fib_result` and `enum nft_fib_flags`.
pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub const NFTA_FIB_F_SADDR: u32 = 1 << 0;
pub const NFTA_FIB_F_DADDR: u32 = 1 << 1;

/// `linux/netfilter/nf_nat.h`.
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;
pub const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 1 << 4;

/// `ct state new`: `NF_CT_STATE_BIT(IP_CT_NEW)` (`IP_CT_NEW` is 2).
pub const NF_CT_STATE_BIT_NEW: u32 = 1 << (2 + 1);
/// `ct status dnat`: `IPS_DST_NAT` (`1 << IPS_DST_NAT_BIT`).
pub const IPS_DST_NAT: u32 = 1 << 5;

/// `linux/icmp.h` and `linux/icmpv6.h`: the code `reject` sends.
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMPV6_PORT_UNREACH: u8 = 4;

/// libnftnl's `NFTNL_UDATA_*` types and flag: the userdata nft stores with a
/// rule (its comment), a set, and an element.
pub const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
pub const NFTNL_UDATA_SET_KEYBYTEORDER: u8 = 0;
pub const NFTNL_UDATA_SET_DATABYTEORDER: u8 = 1;
pub const NFTNL_UDATA_SET_KEY_TYPEOF: u8 = 3;
pub const NFTNL_UDATA_SET_DATA_TYPEOF: u8 = 4;
pub const NFTNL_UDATA_SET_DATA_INTERVAL: u8 = 6;
pub const NFTNL_UDATA_SET_COMMENT: u8 = 7;
pub const NFTNL_UDATA_SET_TYPEOF_EXPR: u8 = 0;
pub const NFTNL_UDATA_SET_TYPEOF_DATA: u8 = 1;
pub const NFTNL_UDATA_SET_ELEM_FLAGS: u8 = 1;
pub const NFTNL_SET_ELEM_F_INTERVAL_OPEN: u32 = 1;

/// nft's own numbers in that userdata and in `NFTA_SET_KEY_TYPE`: its
/// datatypes (a concatenation's type is its fields' types, `TYPE_BITS`
/// each), byte orders and the concatenation expression type.
pub const TYPE_IPADDR: u32 = 7;
pub const TYPE_IP6ADDR: u32 = 8;
pub const TYPE_INET_PROTOCOL: u32 = 12;
pub const TYPE_INET_SERVICE: u32 = 13;
pub const TYPE_BITS: u32 = 6;
pub const BYTEORDER_INVALID: u32 = 0;
pub const BYTEORDER_BIG_ENDIAN: u32 = 2;
pub const EXPR_CONCAT: u32 = 13;
pub const TYPE_INTEGER: u32 = 4;

/// nft's numbers in a `typeof` key's userdata: expression types, and the
/// records of a payload (protocol description, field) and of a `numgen`
/// (type, modulus, offset), as `payload_expr_build_udata` and
/// `numgen_expr_build_udata` write them.
pub const EXPR_PAYLOAD: u32 = 7;
pub const EXPR_NUMGEN: u32 = 23;
pub const PROTO_DESC_UDP: u32 = 6;
pub const PROTO_DESC_TCP: u32 = 8;
pub const PROTO_DESC_SCTP: u32 = 10;
pub const PROTO_DESC_IP: u32 = 12;
pub const PROTO_DESC_IP6: u32 = 13;
pub const IPHDR_DADDR: u32 = 12;
pub const IP6HDR_DADDR: u32 = 9;
/// `dport` of TCP, UDP and SCTP alike.
pub const DPORT: u32 = 2;
