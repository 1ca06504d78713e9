//! The userdata nft 1.0.6 stores with rules, sets and elements (libnftnl's
//! `NFTNL_UDATA_*` type-length-value records): the kernel keeps it opaque,
//! and `nft list` reads it back to print comments, key byte order and
//! intervals, so objects we write list exactly as nft's own.

use switchyard_api::ruleset::{IpFamily, Protocol};

use super::attrs::Word;
use super::uapi::{
    BYTEORDER_BIG_ENDIAN, BYTEORDER_INVALID, DPORT, EXPR_CONCAT, EXPR_NUMGEN, EXPR_PAYLOAD,
    IP6HDR_DADDR, IPHDR_DADDR, NFTNL_SET_ELEM_F_INTERVAL_OPEN, NFTNL_UDATA_RULE_COMMENT,
    NFTNL_UDATA_SET_COMMENT, NFTNL_UDATA_SET_DATA_INTERVAL, NFTNL_UDATA_SET_DATA_TYPEOF,
    NFTNL_UDATA_SET_DATABYTEORDER, NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_UDATA_SET_KEY_TYPEOF,
    NFTNL_UDATA_SET_KEYBYTEORDER, NFTNL_UDATA_SET_TYPEOF_DATA, NFTNL_UDATA_SET_TYPEOF_EXPR,
    PROTO_DESC_IP, PROTO_DESC_IP6, PROTO_DESC_SCTP, PROTO_DESC_TCP, PROTO_DESC_UDP,
};
use crate::nftables::escape;
use crate::nftables::ir::{PickKey, SetKind};

/// Records of one type byte, one length byte and the value (host-endian
/// numbers, as libnftnl writes them).
#[derive(Default)]
struct Userdata(Vec<u8>);

impl Userdata {
    fn bytes(&mut self, kind: u8, value: &[u8]) {
        self.0.push(kind);
        // Values are at most 255 bytes: comments are cut to 128 (`escape`).
        self.0.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
        self.0.extend_from_slice(value);
    }

    fn u32(&mut self, kind: u8, value: u32) {
        self.bytes(kind, &value.to_ne_bytes());
    }

    /// A comment as nft stores it: what [`escape::comment`] keeps of it
    /// (as the text encoder writes it), NUL-terminated.
    fn comment(&mut self, kind: u8, comment: &str) {
        let mut v = escape::comment(comment).into_owned().into_bytes();
        v.push(0);
        self.bytes(kind, &v);
    }
}

/// A rule's: its comment.
pub fn rule(comment: &str) -> Vec<u8> {
    let mut u = Userdata::default();
    u.comment(NFTNL_UDATA_RULE_COMMENT, comment);
    u.0
}

/// A set's: key byte order (big-endian for an address, none for a
/// concatenation), for a map the data byte order, for a concatenation its
/// `typeof` concat (empty for a `type` set; a pick map's fields, and its
/// data's), for a map "data is no interval", and the comment.
pub fn set(kind: SetKind, family: IpFamily, comment: Option<&str>) -> Vec<u8> {
    let is_concat = !matches!(kind, SetKind::Addr | SetKind::Prefix);
    let byteorder = if is_concat {
        BYTEORDER_INVALID
    } else {
        BYTEORDER_BIG_ENDIAN
    };
    let mut u = Userdata::default();
    u.u32(NFTNL_UDATA_SET_KEYBYTEORDER, byteorder);
    if kind.is_map() {
        u.u32(NFTNL_UDATA_SET_DATABYTEORDER, BYTEORDER_INVALID);
    }
    let daddr = || match family {
        IpFamily::V4 => payload(PROTO_DESC_IP, IPHDR_DADDR),
        IpFamily::V6 => payload(PROTO_DESC_IP6, IP6HDR_DADDR),
    };
    if let SetKind::Pick(pick) = kind {
        let dport = || {
            let desc = match pick.protocol {
                Protocol::Tcp => PROTO_DESC_TCP,
                Protocol::Udp => PROTO_DESC_UDP,
                Protocol::Sctp => PROTO_DESC_SCTP,
            };
            payload(desc, DPORT)
        };
        let mut fields = match pick.key {
            PickKey::Vip => vec![daddr(), dport()],
            PickKey::NodePort => vec![dport()],
        };
        fields.push(numgen(pick.n));
        u.bytes(NFTNL_UDATA_SET_KEY_TYPEOF, &concat(&fields));
        let data = concat(&[daddr(), dport()]);
        u.bytes(NFTNL_UDATA_SET_DATA_TYPEOF, &data);
    } else if is_concat {
        u.bytes(NFTNL_UDATA_SET_KEY_TYPEOF, &concat(&[]));
    }
    if kind.is_map() {
        u.u32(NFTNL_UDATA_SET_DATA_INTERVAL, 0);
    }
    if let Some(c) = comment {
        u.comment(NFTNL_UDATA_SET_COMMENT, c);
    }
    u.0
}

/// A `typeof` expression: its type and its own records.
fn expr(kind: u32, data: &[u8]) -> Vec<u8> {
    let mut u = Userdata::default();
    u.u32(NFTNL_UDATA_SET_TYPEOF_EXPR, kind);
    u.bytes(NFTNL_UDATA_SET_TYPEOF_DATA, data);
    u.0
}

/// A concatenation of `typeof` expressions, each a record numbered from 0.
fn concat(fields: &[Vec<u8>]) -> Vec<u8> {
    let mut members = Userdata::default();
    for (i, f) in (0u8..).zip(fields) {
        members.bytes(i, f);
    }
    expr(EXPR_CONCAT, &members.0)
}

/// A payload field: its protocol description and field number.
fn payload(desc: u32, field: u32) -> Vec<u8> {
    let mut u = Userdata::default();
    u.u32(0, desc);
    u.u32(1, field);
    expr(EXPR_PAYLOAD, &u.0)
}

/// `numgen random mod <n>`: type random, the modulus, offset 0.
fn numgen(n: u32) -> Vec<u8> {
    let mut u = Userdata::default();
    u.u32(0, libc::NFT_NG_RANDOM.word());
    u.u32(1, n);
    u.u32(2, 0);
    expr(EXPR_NUMGEN, &u.0)
}

/// An interval start element's: the interval reaches the last address.
pub fn interval_open() -> Vec<u8> {
    let mut u = Userdata::default();
    u.u32(NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_SET_ELEM_F_INTERVAL_OPEN);
    u.0
}
