//! The userdata nft 1.0.6 stores with rules, sets and elements (libnftnl's
//! `NFTNL_UDATA_*` type-length-value records): the kernel keeps it opaque,
//! and `nft list` reads it back to print comments, key byte order and
//! intervals, so objects we write list exactly as nft's own.

use super::uapi::{
    BYTEORDER_BIG_ENDIAN, BYTEORDER_INVALID, EXPR_CONCAT, NFTNL_SET_ELEM_F_INTERVAL_OPEN,
    NFTNL_UDATA_RULE_COMMENT, NFTNL_UDATA_SET_COMMENT, NFTNL_UDATA_SET_DATA_INTERVAL,
    NFTNL_UDATA_SET_DATABYTEORDER, NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_UDATA_SET_KEY_TYPEOF,
    NFTNL_UDATA_SET_KEYBYTEORDER, NFTNL_UDATA_SET_TYPEOF_DATA, NFTNL_UDATA_SET_TYPEOF_EXPR,
};
use crate::nftables::escape;
use crate::nftables::ir::SetKind;

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
/// concatenation), for a map the data byte order, for a concatenation an
/// empty `typeof` concat, for a map "data is no interval", and the comment.
pub fn set(kind: SetKind, comment: Option<&str>) -> Vec<u8> {
    let concat = !matches!(kind, SetKind::Addr | SetKind::Prefix);
    let byteorder = if concat {
        BYTEORDER_INVALID
    } else {
        BYTEORDER_BIG_ENDIAN
    };
    let mut u = Userdata::default();
    u.u32(NFTNL_UDATA_SET_KEYBYTEORDER, byteorder);
    if kind.is_map() {
        u.u32(NFTNL_UDATA_SET_DATABYTEORDER, BYTEORDER_INVALID);
    }
    if concat {
        let mut typeof_concat = Userdata::default();
        typeof_concat.u32(NFTNL_UDATA_SET_TYPEOF_EXPR, EXPR_CONCAT);
        typeof_concat.bytes(NFTNL_UDATA_SET_TYPEOF_DATA, &[]);
        u.bytes(NFTNL_UDATA_SET_KEY_TYPEOF, &typeof_concat.0);
    }
    if kind.is_map() {
        u.u32(NFTNL_UDATA_SET_DATA_INTERVAL, 0);
    }
    if let Some(c) = comment {
        u.comment(NFTNL_UDATA_SET_COMMENT, c);
    }
    u.0
}

/// An interval start element's: the interval reaches the last address.
pub fn interval_open() -> Vec<u8> {
    let mut u = Userdata::default();
    u.u32(NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_SET_ELEM_F_INTERVAL_OPEN);
    u.0
}
