//! Set elements as nft 1.0.6 sends them: key bytes (concatenation fields
//! padded to 4 bytes), prefixes as intervals, and the `NEWSETELEM` /
//! `DELSETELEM` messages that carry them.

use std::net::IpAddr;

use netlink_packet_core::NLM_F_CREATE;
use switchyard_api::ruleset::{IpFamily, Protocol};

use super::attrs::Attrs;
use super::batch::Batch;
use super::uapi::{
    NFTA_LIST_ELEM, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE,
    NFTA_SET_ELEM_USERDATA,
};
use super::{ip_bytes, userdata};
use crate::nftables::ir::{Key, TableId, Value};

/// Elements per `NEWSETELEM` message: at most ≈ 320 bytes each (a 256-byte
/// chain name), so the element list stays under the 64 KiB attribute limit.
const ELEMENTS_PER_MESSAGE: usize = 128;

/// One set element as sent.
pub struct Element<'a> {
    key: Vec<u8>,
    /// `NFT_SET_ELEM_INTERVAL_END`: the interval before ends here.
    end: bool,
    /// The interval reaches the last address (no end element follows).
    open: bool,
    value: Option<&'a Value>,
}

impl Element<'_> {
    /// The end of an interval (or, at the zero address, the start of the gap before the first).
    fn end(key: Vec<u8>) -> Element<'static> {
        Element {
            key,
            end: true,
            open: false,
            value: None,
        }
    }
}

/// The elements nft 1.0.6 sends for these keys. A prefix is an interval:
/// its start, and an end element at the address after it (none for a
/// prefix reaching the last address: its start says so in its userdata).
/// Adds are sorted, and unless one starts at the zero address they begin
/// with an end element there (nft sends it to a set that does not hold it
/// yet; the kernel takes the same element again as a no-op).
pub fn set_elements<'a>(
    family: IpFamily,
    keys: impl Iterator<Item = (&'a Key, Option<&'a Value>)>,
    add: bool,
) -> Vec<Element<'a>> {
    let bits: u32 = match family {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    };
    let addr = |n: u128| match family {
        IpFamily::V4 => (n as u32).to_be_bytes().to_vec(),
        IpFamily::V6 => n.to_be_bytes().to_vec(),
    };
    let mut plain = Vec::new();
    let mut intervals = Vec::new();
    for (key, value) in keys {
        match key {
            Key::Prefix(c) => {
                let start = match c.addr() {
                    IpAddr::V4(a) => u128::from(u32::from(a)),
                    IpAddr::V6(a) => u128::from(a),
                };
                let end = 1u128
                    .checked_shl(bits - u32::from(c.prefix()))
                    .and_then(|size| start.checked_add(size))
                    .filter(|e| bits == 128 || *e < 1 << 32);
                intervals.push((start, end));
            }
            _ => plain.push(Element {
                key: key_bytes(key),
                end: false,
                open: false,
                value,
            }),
        }
    }
    if add {
        intervals.sort_unstable();
        if intervals.first().is_some_and(|(start, _)| *start != 0) {
            plain.push(Element::end(addr(0)));
        }
    }
    for (start, end) in intervals {
        plain.push(Element {
            key: addr(start),
            end: false,
            open: end.is_none(),
            value: None,
        });
        if let Some(end) = end {
            plain.push(Element::end(addr(end)));
        }
    }
    plain
}

/// `addr . port`: a pick map key's first fields, and its data.
fn addr_port(addr: &IpAddr, port: u16) -> Vec<u8> {
    [ip_bytes(addr), padded(&port.to_be_bytes()).to_vec()].concat()
}

/// A concatenation field padded to 4 bytes.
fn padded(field: &[u8]) -> [u8; 4] {
    let mut out = [0; 4];
    out[..field.len()].copy_from_slice(field);
    out
}

fn key_bytes(key: &Key) -> Vec<u8> {
    let proto_port =
        |p: &Protocol, port: &u16| [padded(&[p.number()]), padded(&port.to_be_bytes())].concat();
    match key {
        Key::Addr(a) => ip_bytes(a),
        Key::AddrPair(a, b) => [ip_bytes(a), ip_bytes(b)].concat(),
        Key::AddrProtoPort(a, p, port) => [ip_bytes(a), proto_port(p, port)].concat(),
        Key::ProtoPort(p, port) => proto_port(p, port),
        // The index as `numgen` writes its register: host-endian.
        Key::AddrPortIndex(a, port, k) => [addr_port(a, *port), k.to_ne_bytes().to_vec()].concat(),
        Key::PortIndex(port, k) => [padded(&port.to_be_bytes()), k.to_ne_bytes()].concat(),
        // Intervals: see `set_elements`.
        Key::Prefix(c) => ip_bytes(&c.addr()),
    }
}

/// `NEWSETELEM` (`msg`) or `DELSETELEM` messages of command `i` for the
/// elements of `set`; nft numbers the elements of a message 1, 2, ….
pub fn element_messages(
    b: &mut Batch,
    i: usize,
    msg: libc::c_int,
    table: TableId,
    set: &str,
    elements: &[Element],
) {
    let flags = if msg == libc::NFT_MSG_NEWSETELEM {
        NLM_F_CREATE
    } else {
        0
    };
    for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
        b.command(i, msg, flags, table.family, |a| {
            a.str(NFTA_SET_ELEM_LIST_TABLE, table.name());
            a.str(NFTA_SET_ELEM_LIST_SET, set);
            a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                for (n, e) in chunk.iter().enumerate() {
                    let n = u16::try_from(n + 1).unwrap_or(NFTA_LIST_ELEM);
                    l.nest(n, |x| element(x, e));
                }
            });
        });
    }
}

fn element(x: &mut Attrs, e: &Element) {
    if e.end {
        x.u32(NFTA_SET_ELEM_FLAGS, libc::NFT_SET_ELEM_INTERVAL_END);
    }
    x.value(NFTA_SET_ELEM_KEY, &e.key);
    match e.value {
        Some(Value::Verdict(v)) => x.verdict(NFTA_SET_ELEM_DATA, v),
        Some(Value::Endpoint(a, port)) => {
            x.value(NFTA_SET_ELEM_DATA, &addr_port(a, *port));
        }
        None => {}
    }
    if e.open {
        x.bytes(NFTA_SET_ELEM_USERDATA, &userdata::interval_open());
    }
}
