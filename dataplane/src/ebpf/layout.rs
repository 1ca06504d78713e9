//! The Rust mirrors of the C map layouts in `bpf/lib/maps.h`. Sizes are
//! asserted at compile time; field offsets are checked against the built
//! objects' BTF in `tests::btf_layout`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use switchyard_api::ruleset::Protocol;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// `sy_frontend.kind`.
pub const KIND_CLUSTER_IP: u8 = 0;
pub const KIND_EXTERNAL: u8 = 1;
pub const KIND_NODE_PORT: u8 = 2;

/// `sy_frontend.flags`.
pub const FE_SOURCE_RANGES: u8 = 1;

/// `sy_svc_key.list`: the endpoint list, plus [`LIST_V6`] for the IPv6 half.
pub const LIST_INTERNAL: u8 = 0;
pub const LIST_CLUSTER: u8 = 1;
pub const LIST_EXTERNAL: u8 = 2;
pub const LIST_V6: u8 = 0x10;

/// `sy_svc_slot.flags` (slot 0).
pub const SVC_REJECT: u8 = 1;
pub const SVC_MASQUERADE: u8 = 2;
pub const SVC_AFFINITY: u8 = 4;
pub const SVC_MAGLEV: u8 = 8;

/// `sy_tuple.pad` of conntrack keys: the direction the entry rewrites.
pub const CT_INGRESS: u16 = 1;
pub const CT_EGRESS: u16 = 2;
/// `sy_tuple.pad` of conntrack values: a FIN or RST of the connection passed.
pub const CT_CLOSING: u16 = 1;

/// `sy_tuple.proto` of TCP.
pub const PROTO_TCP: u8 = 6;

/// An address as four network-order words, IPv4 in word 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr(pub [u32; 4]);

impl Addr {
    pub fn from_ip(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(v4) => Addr([u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                Addr([word(0), word(4), word(8), word(12)])
            }
        }
    }

    pub fn to_ip(self, family: u8) -> IpAddr {
        let b = |w: u32| w.to_ne_bytes();
        if family == AF_INET6 {
            let mut o = [0u8; 16];
            for (i, w) in self.0.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&b(*w));
            }
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            IpAddr::V4(Ipv4Addr::from(b(self.0[0])))
        }
    }
}

pub fn family_of(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// `struct sy_frontend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

impl FrontendKey {
    pub fn new(ip: IpAddr, port: u16, protocol: Protocol) -> FrontendKey {
        FrontendKey {
            addr: Addr::from_ip(ip),
            port: port.to_be(),
            proto: protocol.number(),
            family: family_of(&ip),
        }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            6 => "tcp",
            17 => "udp",
            132 => "sctp",
            _ => "?",
        };
        let addr = socket_text(self.addr, self.family, self.port);
        write!(f, "{addr}/{proto}")
    }
}

/// `ip:port` (IPv6 in brackets) of a network-order address and port.
pub fn socket_text(addr: Addr, family: u8, port_be: u16) -> String {
    match addr.to_ip(family) {
        IpAddr::V4(ip) => format!("{ip}:{}", u16::from_be(port_be)),
        IpAddr::V6(ip) => format!("[{ip}]:{}", u16::from_be(port_be)),
    }
}

/// `struct sy_frontend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub svc_id: u32,
    pub kind: u8,
    pub flags: u8,
    pub pad: u16,
}

/// `struct sy_svc_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvcKey {
    pub svc_id: u32,
    pub slot: u16,
    pub list: u8,
    pub rev: u8,
}

/// `struct sy_svc_slot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvcSlot {
    pub backend_id: u32,
    pub count: u16,
    pub rev: u8,
    pub flags: u8,
    pub affinity_timeout: u32,
}

/// `struct sy_backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendEntry {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub pad: u8,
}

impl BackendEntry {
    pub fn new(ip: IpAddr, port: u16) -> BackendEntry {
        BackendEntry {
            addr: Addr::from_ip(ip),
            port: port.to_be(),
            family: family_of(&ip),
            pad: 0,
        }
    }
}

impl fmt::Display for BackendEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&socket_text(self.addr, self.family, self.port))
    }
}

/// `struct sy_sock_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: Addr,
    pub port: u16,
    pub family: u16,
    pub pad: u32,
}

/// `struct sy_addr_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrPort {
    pub addr: Addr,
    pub port: u16,
    pub pad: u16,
}

/// `struct sy_tuple`: a conntrack key, and the tuple its packets are rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: u16,
}

/// `struct sy_affinity_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityKey {
    pub client_cookie: u64,
    pub client: Addr,
    pub svc_id: u32,
    pub list: u8,
    pub pad: [u8; 3],
}

/// `struct sy_affinity`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affinity {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub pad: u32,
}

/// `struct sy_source_range_key` without its leading `prefixlen`, which aya's
/// `lpm_trie::Key` carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange {
    pub svc_id: u32,
    pub family: u32,
    pub addr: Addr,
}

/// `sy_source_range_key.svc_id` of the local-traffic detector's ranges.
pub const LOCAL_DETECTOR_ID: u32 = u32::MAX;

/// `struct sy_source_range_key.prefixlen` covers `svc_id` and `family` too.
pub const SOURCE_RANGE_PREFIX_BASE: u32 = 64;

/// `struct sy_maglev_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaglevKey {
    pub svc_id: u32,
    pub list: u8,
    pub pad: [u8; 3],
    pub index: u32,
}

const _: () = assert!(size_of::<Addr>() == 16);
const _: () = assert!(size_of::<FrontendKey>() == 20);
const _: () = assert!(size_of::<Frontend>() == 8);
const _: () = assert!(size_of::<SvcKey>() == 8);
const _: () = assert!(size_of::<SvcSlot>() == 12);
const _: () = assert!(size_of::<BackendEntry>() == 20);
const _: () = assert!(size_of::<SockKey>() == 32);
const _: () = assert!(size_of::<AddrPort>() == 20);
const _: () = assert!(size_of::<Tuple>() == 40);
const _: () = assert!(size_of::<AffinityKey>() == 32);
const _: () = assert!(size_of::<Affinity>() == 16);
const _: () = assert!(size_of::<SourceRange>() == 24);
const _: () = assert!(size_of::<MaglevKey>() == 12);

// SAFETY: every type is #[repr(C)] of integers with no implicit padding (the
// size asserts above pin that), so any bit pattern is valid.
unsafe impl aya::Pod for Addr {}
unsafe impl aya::Pod for FrontendKey {}
unsafe impl aya::Pod for Frontend {}
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcSlot {}
unsafe impl aya::Pod for BackendEntry {}
unsafe impl aya::Pod for SockKey {}
unsafe impl aya::Pod for AddrPort {}
unsafe impl aya::Pod for Tuple {}
unsafe impl aya::Pod for AffinityKey {}
unsafe impl aya::Pod for Affinity {}
unsafe impl aya::Pod for SourceRange {}
unsafe impl aya::Pod for MaglevKey {}
