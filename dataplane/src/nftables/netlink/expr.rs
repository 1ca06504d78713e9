//! A rule's expressions (`NFTA_RULE_EXPRESSIONS`): each match and statement
//! of the plan as the expression list nft 1.0.6 emits for the same text
//! (`nft --debug=netlink`), attributes in libnftnl's order. Register values
//! of meta/ct/fib are host-endian, packet fields big-endian, as the kernel
//! compares them.

use std::net::{IpAddr, Ipv6Addr};

use libc::c_int;
use switchyard_api::ruleset::{IpFamily, Protocol};

use super::attrs::{Attrs, Word};
use super::uapi::{
    ICMP_PORT_UNREACH, ICMPV6_PORT_UNREACH, IPS_DST_NAT, NF_CT_STATE_BIT_NEW,
    NF_NAT_RANGE_PROTO_RANDOM_FULLY, NF_NAT_RANGE_PROTO_SPECIFIED, NFT_BITWISE_BOOL,
    NFT_FIB_RESULT_ADDRTYPE, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN, NFTA_BITWISE_MASK,
    NFTA_BITWISE_OP, NFTA_BITWISE_SREG, NFTA_BITWISE_XOR, NFTA_CMP_DATA, NFTA_CMP_OP,
    NFTA_CMP_SREG, NFTA_CT_DREG, NFTA_CT_KEY, NFTA_DYNSET_OP, NFTA_DYNSET_SET_NAME,
    NFTA_DYNSET_SREG_KEY, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_FIB_DREG, NFTA_FIB_F_DADDR,
    NFTA_FIB_F_SADDR, NFTA_FIB_FLAGS, NFTA_FIB_RESULT, NFTA_IMMEDIATE_DATA, NFTA_IMMEDIATE_DREG,
    NFTA_LIST_ELEM, NFTA_LOOKUP_DREG, NFTA_LOOKUP_FLAGS, NFTA_LOOKUP_SET, NFTA_LOOKUP_SREG,
    NFTA_MASQ_FLAGS, NFTA_MASQ_REG_PROTO_MAX, NFTA_MASQ_REG_PROTO_MIN, NFTA_META_DREG,
    NFTA_META_KEY, NFTA_META_SREG, NFTA_NAT_FAMILY, NFTA_NAT_FLAGS, NFTA_NAT_REG_ADDR_MIN,
    NFTA_NAT_REG_PROTO_MIN, NFTA_NAT_TYPE, NFTA_NG_DREG, NFTA_NG_MODULUS, NFTA_NG_OFFSET,
    NFTA_NG_TYPE, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_LEN, NFTA_PAYLOAD_OFFSET,
    NFTA_REJECT_ICMP_CODE, NFTA_REJECT_TYPE,
};
use super::{ip_bytes, nfproto};
use crate::nftables::ir::{Dir, Match, Pick, PickKey, Rule, Stmt};

/// A register by the index of its first 4-byte word: nft puts values that
/// start on a 16-byte boundary in `NFT_REG_1`…`NFT_REG_4`, others in
/// `NFT_REG32_nn`.
fn reg32(index: usize) -> c_int {
    let i = c_int::try_from(index).unwrap_or(c_int::MAX);
    if i % 4 == 0 {
        libc::NFT_REG_1 + i / 4
    } else {
        libc::NFT_REG32_00 + i
    }
}

/// Where the address is in the network header: offset and length.
fn addr_at(family: IpFamily, dir: Dir) -> (c_int, usize) {
    match (family, dir) {
        (IpFamily::V4, Dir::Saddr) => (12, 4),
        (IpFamily::V4, Dir::Daddr) => (16, 4),
        (IpFamily::V6, Dir::Saddr) => (8, 16),
        (IpFamily::V6, Dir::Daddr) => (24, 16),
    }
}

/// The transport header's destination port: offset and length.
const DPORT: (c_int, usize) = (2, 2);

/// Appends one rule's expressions.
struct Exprs<'a, 'b> {
    e: &'a mut Attrs<'b>,
    family: IpFamily,
}

/// A rule's expressions, as nft generates them for [`crate::nftables::text::rule_text`].
pub fn rule_exprs(e: &mut Attrs, family: IpFamily, rule: &Rule) {
    let mut x = Exprs { e, family };
    for m in &rule.matches {
        x.matches(m);
    }
    for s in &rule.stmts {
        x.statement(s);
    }
}

impl Exprs<'_, '_> {
    fn matches(&mut self, m: &Match) {
        match m {
            Match::Addr(dir, ip) => {
                self.load_addr(*dir, libc::NFT_REG_1);
                self.cmp(libc::NFT_CMP_EQ, &ip_bytes(ip));
            }
            Match::AddrInSet { dir, set, negate } => {
                self.load_addr(*dir, libc::NFT_REG_1);
                self.lookup(set, None, *negate);
            }
            Match::SaddrInPrefix(c) => self.saddr_in_prefix(&c.addr(), usize::from(c.prefix())),
            Match::AddrPairInSet(set) => {
                let len = self.load_addr(Dir::Saddr, libc::NFT_REG_1);
                self.load_addr(Dir::Daddr, reg32(len / 4));
                self.lookup(set, None, false);
            }
            Match::DaddrProtoPortInSet(set) => {
                self.load_addr_proto_port(Dir::Daddr);
                self.lookup(set, None, false);
            }
            Match::DaddrNotLoopback => match self.family {
                IpFamily::V4 => {
                    let (daddr, _) = addr_at(IpFamily::V4, Dir::Daddr);
                    self.payload(
                        libc::NFT_PAYLOAD_NETWORK_HEADER,
                        (daddr, 1),
                        libc::NFT_REG_1,
                    );
                    self.cmp(libc::NFT_CMP_NEQ, &[127]);
                }
                IpFamily::V6 => {
                    self.load_addr(Dir::Daddr, libc::NFT_REG_1);
                    self.cmp(libc::NFT_CMP_NEQ, &Ipv6Addr::LOCALHOST.octets());
                }
            },
            Match::Dport(p, port) => {
                self.l4proto(p);
                self.payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, DPORT, libc::NFT_REG_1);
                self.cmp(libc::NFT_CMP_EQ, &port.to_be_bytes());
            }
            Match::L4Proto(p) => self.l4proto(p),
            Match::CtStateNew => self.ct_bit(libc::NFT_CT_STATE, NF_CT_STATE_BIT_NEW),
            Match::CtStatusDnat => self.ct_bit(libc::NFT_CT_STATUS, IPS_DST_NAT),
            Match::FibSaddrLocal => self.fib_local(NFTA_FIB_F_SADDR),
            Match::FibDaddrLocal => self.fib_local(NFTA_FIB_F_DADDR),
            Match::MarkClear(mask) => {
                self.meta(libc::NFT_META_MARK, libc::NFT_REG_1);
                self.bitwise(Some(NFT_BITWISE_BOOL), &mask.to_ne_bytes(), &[0; 4]);
                self.cmp(libc::NFT_CMP_EQ, &[0; 4]);
            }
            Match::NumgenZero(n) => {
                self.u32_expr(
                    "numgen",
                    &[
                        (NFTA_NG_DREG, libc::NFT_REG_1.word()),
                        (NFTA_NG_MODULUS, *n),
                        (NFTA_NG_TYPE, libc::NFT_NG_RANDOM.word()),
                        (NFTA_NG_OFFSET, 0),
                    ],
                );
                self.cmp(libc::NFT_CMP_EQ, &[0; 4]);
            }
        }
    }

    fn statement(&mut self, s: &Stmt) {
        match s {
            Stmt::VmapAddrProtoPort(dir, map) => {
                self.load_addr_proto_port(*dir);
                self.lookup(map, Some(libc::NFT_REG_VERDICT), false);
            }
            Stmt::VmapProtoPort(map) => {
                self.meta(libc::NFT_META_L4PROTO, libc::NFT_REG_1);
                self.payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, DPORT, reg32(1));
                self.lookup(map, Some(libc::NFT_REG_VERDICT), false);
            }
            Stmt::UpdateSaddr(set) => {
                self.load_addr(Dir::Saddr, libc::NFT_REG_1);
                self.expr("dynset", |d| {
                    d.u32(NFTA_DYNSET_SREG_KEY, libc::NFT_REG_1);
                    d.u32(NFTA_DYNSET_OP, libc::NFT_DYNSET_OP_UPDATE);
                    d.str(NFTA_DYNSET_SET_NAME, set);
                });
            }
            // mark = (mark & keep) ^ bits: keep = !bits for or, all ones for xor.
            Stmt::MarkOr(bits) => self.set_mark(!bits, *bits),
            Stmt::MarkXor(bits) => self.set_mark(u32::MAX, *bits),
            Stmt::Masquerade(None) => {
                self.u32_expr(
                    "masq",
                    &[(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY)],
                );
            }
            Stmt::Masquerade(Some(ports)) => {
                self.immediate(libc::NFT_REG_1, &ports.min.to_be_bytes());
                self.immediate(libc::NFT_REG_2, &ports.max.to_be_bytes());
                self.u32_expr(
                    "masq",
                    &[
                        (
                            NFTA_MASQ_FLAGS,
                            NF_NAT_RANGE_PROTO_RANDOM_FULLY | NF_NAT_RANGE_PROTO_SPECIFIED,
                        ),
                        (NFTA_MASQ_REG_PROTO_MIN, libc::NFT_REG_1.word()),
                        (NFTA_MASQ_REG_PROTO_MAX, libc::NFT_REG_2.word()),
                    ],
                );
            }
            Stmt::Dnat(ip, port) => self.dnat(ip, *port),
            Stmt::DnatPick(pick) => self.dnat_pick(pick),
            Stmt::Reject => self.reject(),
            Stmt::Verdict(v) => self.expr("immediate", |i| {
                i.u32(NFTA_IMMEDIATE_DREG, libc::NFT_REG_VERDICT);
                i.verdict(NFTA_IMMEDIATE_DATA, v);
            }),
        }
    }

    /// Load an address of the packet into `reg`; its length.
    fn load_addr(&mut self, dir: Dir, reg: c_int) -> usize {
        let at = addr_at(self.family, dir);
        self.payload(libc::NFT_PAYLOAD_NETWORK_HEADER, at, reg);
        at.1
    }

    /// `<addr> . meta l4proto . th dport` from register 1 on.
    fn load_addr_proto_port(&mut self, dir: Dir) {
        let words = self.load_addr(dir, libc::NFT_REG_1) / 4;
        self.meta(libc::NFT_META_L4PROTO, reg32(words));
        self.payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, DPORT, reg32(words + 1));
    }

    /// `saddr <addr>/<bits>`: whole bytes are loaded and compared as they
    /// are, other prefixes masked first (as nft does).
    fn saddr_in_prefix(&mut self, addr: &IpAddr, bits: usize) {
        let ip = ip_bytes(addr);
        let (offset, len) = addr_at(self.family, Dir::Saddr);
        let network = libc::NFT_PAYLOAD_NETWORK_HEADER;
        if bits > 0 && bits.is_multiple_of(8) {
            self.payload(network, (offset, bits / 8), libc::NFT_REG_1);
            self.cmp(libc::NFT_CMP_EQ, &ip[..bits / 8]);
        } else {
            let mask: Vec<u8> = (0..len)
                .map(|i| (0xff00u16 >> bits.saturating_sub(8 * i).min(8)) as u8)
                .collect();
            self.payload(network, (offset, len), libc::NFT_REG_1);
            self.bitwise(None, &mask, &vec![0; len]);
            self.cmp(libc::NFT_CMP_EQ, &ip);
        }
    }

    /// `meta l4proto <p>`; nft's dependency for `<p> dport` too.
    fn l4proto(&mut self, p: &Protocol) {
        self.meta(libc::NFT_META_L4PROTO, libc::NFT_REG_1);
        self.cmp(libc::NFT_CMP_EQ, &[p.number()]);
    }

    /// `ct <key> <bit>`: the bit is set.
    fn ct_bit(&mut self, key: c_int, bit: u32) {
        self.u32_expr(
            "ct",
            &[
                (NFTA_CT_KEY, key.word()),
                (NFTA_CT_DREG, libc::NFT_REG_1.word()),
            ],
        );
        self.bitwise(None, &bit.to_ne_bytes(), &[0; 4]);
        self.cmp(libc::NFT_CMP_NEQ, &[0; 4]);
    }

    /// `fib <saddr|daddr> type local`.
    fn fib_local(&mut self, flag: u32) {
        self.u32_expr(
            "fib",
            &[
                (NFTA_FIB_FLAGS, flag),
                (NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
                (NFTA_FIB_DREG, libc::NFT_REG_1.word()),
            ],
        );
        self.cmp(libc::NFT_CMP_EQ, &u32::from(libc::RTN_LOCAL).to_ne_bytes());
    }

    /// `meta mark set (mark & keep) ^ bits`.
    fn set_mark(&mut self, keep: u32, bits: u32) {
        self.meta(libc::NFT_META_MARK, libc::NFT_REG_1);
        self.bitwise(
            Some(NFT_BITWISE_BOOL),
            &keep.to_ne_bytes(),
            &bits.to_ne_bytes(),
        );
        self.u32_expr(
            "meta",
            &[
                (NFTA_META_KEY, libc::NFT_META_MARK.word()),
                (NFTA_META_SREG, libc::NFT_REG_1.word()),
            ],
        );
    }

    /// `dnat to <ip>:<port>`: address and port in registers 1 and 2.
    fn dnat(&mut self, ip: &IpAddr, port: u16) {
        self.immediate(libc::NFT_REG_1, &ip_bytes(ip));
        self.immediate(libc::NFT_REG_2, &port.to_be_bytes());
        let family = c_int::from(nfproto(IpFamily::of(ip)));
        self.u32_expr(
            "nat",
            &[
                (NFTA_NAT_TYPE, libc::NFT_NAT_DNAT.word()),
                (NFTA_NAT_FAMILY, family.word()),
                (NFTA_NAT_REG_ADDR_MIN, libc::NFT_REG_1.word()),
                (NFTA_NAT_REG_PROTO_MIN, libc::NFT_REG_2.word()),
                (NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED),
            ],
        );
    }

    /// `dnat to <key> . numgen random mod <n> map @<map>`: the key in
    /// register 1 on, the map's `addr . port` into register 1 on, the port
    /// in the word after the address.
    fn dnat_pick(&mut self, pick: &Pick) {
        let mut words = 0;
        if pick.key == PickKey::Vip {
            words = self.load_addr(Dir::Daddr, libc::NFT_REG_1) / 4;
        }
        self.payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, DPORT, reg32(words));
        self.u32_expr(
            "numgen",
            &[
                (NFTA_NG_DREG, reg32(words + 1).word()),
                (NFTA_NG_MODULUS, pick.n),
                (NFTA_NG_TYPE, libc::NFT_NG_RANDOM.word()),
                (NFTA_NG_OFFSET, 0),
            ],
        );
        self.lookup(&pick.map(), Some(libc::NFT_REG_1), false);
        let addr_words = addr_at(self.family, Dir::Daddr).1 / 4;
        self.u32_expr(
            "nat",
            &[
                (NFTA_NAT_TYPE, libc::NFT_NAT_DNAT.word()),
                (NFTA_NAT_FAMILY, c_int::from(nfproto(self.family)).word()),
                (NFTA_NAT_REG_ADDR_MIN, libc::NFT_REG_1.word()),
                (NFTA_NAT_REG_PROTO_MIN, reg32(addr_words).word()),
            ],
        );
    }

    /// `reject`: ICMP port unreachable.
    fn reject(&mut self) {
        let code = match self.family {
            IpFamily::V4 => ICMP_PORT_UNREACH,
            IpFamily::V6 => ICMPV6_PORT_UNREACH,
        };
        self.expr("reject", |r| {
            r.u32(NFTA_REJECT_TYPE, libc::NFT_REJECT_ICMP_UNREACH);
            r.bytes(NFTA_REJECT_ICMP_CODE, &[code]);
        });
    }

    /// One expression: `NFTA_LIST_ELEM` { `NFTA_EXPR_NAME`, `NFTA_EXPR_DATA` }.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Attrs)) {
        self.e.nest(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, name);
            e.nest(NFTA_EXPR_DATA, data);
        });
    }

    /// An expression whose attributes are all 32-bit numbers.
    fn u32_expr(&mut self, name: &str, attrs: &[(u16, u32)]) {
        self.expr(name, |e| {
            for (kind, value) in attrs {
                e.u32(*kind, *value);
            }
        });
    }

    /// Load `len` bytes at `offset` of a header into `dreg`.
    fn payload(&mut self, base: c_int, (offset, len): (c_int, usize), dreg: c_int) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.u32_expr(
            "payload",
            &[
                (NFTA_PAYLOAD_DREG, dreg.word()),
                (NFTA_PAYLOAD_BASE, base.word()),
                (NFTA_PAYLOAD_OFFSET, offset.word()),
                (NFTA_PAYLOAD_LEN, len),
            ],
        );
    }

    fn meta(&mut self, key: c_int, dreg: c_int) {
        self.u32_expr(
            "meta",
            &[(NFTA_META_KEY, key.word()), (NFTA_META_DREG, dreg.word())],
        );
    }

    /// Compare register 1 with `data`.
    fn cmp(&mut self, op: c_int, data: &[u8]) {
        self.expr("cmp", |e| {
            e.u32(NFTA_CMP_SREG, libc::NFT_REG_1);
            e.u32(NFTA_CMP_OP, op);
            e.value(NFTA_CMP_DATA, data);
        });
    }

    /// Register 1 = (register 1 & mask) ^ xor. nft names the operation
    /// (`NFT_BITWISE_BOOL`, the kernel's default) for arithmetic on the
    /// mark, not for a flag test or a prefix.
    fn bitwise(&mut self, op: Option<u32>, mask: &[u8], xor: &[u8]) {
        let len = u32::try_from(mask.len()).unwrap_or(u32::MAX);
        self.expr("bitwise", |e| {
            e.u32(NFTA_BITWISE_SREG, libc::NFT_REG_1);
            e.u32(NFTA_BITWISE_DREG, libc::NFT_REG_1);
            if let Some(op) = op {
                e.u32(NFTA_BITWISE_OP, op);
            }
            e.u32(NFTA_BITWISE_LEN, len);
            e.value(NFTA_BITWISE_MASK, mask);
            e.value(NFTA_BITWISE_XOR, xor);
        });
    }

    /// Look register 1 up in a set (in a map, with `dreg` for its value).
    fn lookup(&mut self, set: &str, dreg: Option<c_int>, invert: bool) {
        self.expr("lookup", |e| {
            e.u32(NFTA_LOOKUP_SREG, libc::NFT_REG_1);
            if let Some(d) = dreg {
                e.u32(NFTA_LOOKUP_DREG, d);
            }
            e.str(NFTA_LOOKUP_SET, set);
            if invert {
                e.u32(NFTA_LOOKUP_FLAGS, libc::NFT_LOOKUP_F_INV);
            }
        });
    }

    fn immediate(&mut self, dreg: c_int, value: &[u8]) {
        self.expr("immediate", |e| {
            e.u32(NFTA_IMMEDIATE_DREG, dreg);
            e.value(NFTA_IMMEDIATE_DATA, value);
        });
    }
}
