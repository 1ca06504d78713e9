//! Netlink attributes appended to a message under construction: the
//! type-length-value layout, nesting, and the two `nf_tables` data forms
//! (a value, a verdict). Multi-byte numbers are big-endian, as `nf_tables`
//! reads its attributes.

use netlink_packet_core::NLA_F_NESTED;

use super::uapi::{NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE};
use crate::nftables::ir::Verdict;

/// A 32-bit attribute value: `libc`'s `c_int` constants (two's complement,
/// as the kernel reads `NFT_JUMP`) and plain numbers alike.
pub trait Word {
    fn word(self) -> u32;
}

impl Word for u32 {
    fn word(self) -> u32 {
        self
    }
}

impl Word for libc::c_int {
    fn word(self) -> u32 {
        self as u32
    }
}

/// The attributes of one message, written at the end of its buffer.
pub struct Attrs<'a>(pub &'a mut Vec<u8>);

impl Attrs<'_> {
    pub fn bytes(&mut self, kind: u16, value: &[u8]) {
        self.header(4 + value.len(), kind);
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    pub fn u32(&mut self, kind: u16, value: impl Word) {
        self.bytes(kind, &value.word().to_be_bytes());
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, kind: u16, value: &str) {
        self.header(5 + value.len(), kind);
        self.0.extend_from_slice(value.as_bytes());
        self.0.push(0);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    pub fn nest(&mut self, kind: u16, body: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.header(0, kind | NLA_F_NESTED);
        body(&mut Attrs(self.0));
        // Oversized nests are left to the kernel to refuse.
        let len = u16::try_from(self.0.len() - start).unwrap_or(0);
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn header(&mut self, len: usize, kind: u16) {
        let len = u16::try_from(len).unwrap_or(0);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
    }

    /// `NFTA_DATA_VALUE` nested in `kind`.
    pub fn value(&mut self, kind: u16, value: &[u8]) {
        self.nest(kind, |d| d.bytes(NFTA_DATA_VALUE, value));
    }

    /// `NFTA_DATA_VERDICT` { `NFTA_VERDICT_CODE`, `NFTA_VERDICT_CHAIN` } nested in `kind`.
    pub fn verdict(&mut self, kind: u16, v: &Verdict) {
        let (code, chain): (libc::c_int, Option<&str>) = match v {
            Verdict::Drop => (libc::NF_DROP, None),
            Verdict::Accept => (libc::NF_ACCEPT, None),
            Verdict::Jump(c) => (libc::NFT_JUMP, Some(c)),
            Verdict::Goto(c) => (libc::NFT_GOTO, Some(c)),
            Verdict::Return => (libc::NFT_RETURN, None),
        };
        self.nest(kind, |d| {
            d.nest(NFTA_DATA_VERDICT, |v| {
                v.u32(NFTA_VERDICT_CODE, code);
                if let Some(c) = chain {
                    v.str(NFTA_VERDICT_CHAIN, c);
                }
            });
        });
    }
}
