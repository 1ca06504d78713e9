//! The `IPVS` generic netlink family as data (`include/uapi/linux/ip_vs.h`).
//!
//! A message is a command plus a list of attributes; every attribute enum ends
//! in `Other(DefaultNla)` so what we do not know round-trips unchanged. The
//! kernel nests without `NLA_F_NESTED` (`nla_nest_start_noflag`), and so do we.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_u16, emit_u16_be, emit_u32, emit_u64, parse_string, parse_u16,
    parse_u16_be, parse_u32, parse_u64,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// The family name the kernel registers.
pub const FAMILY_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const VERSION: u8 = 1;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `IPVS_CMD_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpvsCmd {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    SetConfig,
    GetConfig,
    SetInfo,
    GetInfo,
    Flush,
    Other(u8),
}

impl IpvsCmd {
    pub fn number(self) -> u8 {
        match self {
            IpvsCmd::NewService => 1,
            IpvsCmd::SetService => 2,
            IpvsCmd::DelService => 3,
            IpvsCmd::GetService => 4,
            IpvsCmd::NewDest => 5,
            IpvsCmd::SetDest => 6,
            IpvsCmd::DelDest => 7,
            IpvsCmd::GetDest => 8,
            IpvsCmd::SetConfig => 12,
            IpvsCmd::GetConfig => 13,
            IpvsCmd::SetInfo => 14,
            IpvsCmd::GetInfo => 15,
            IpvsCmd::Flush => 17,
            IpvsCmd::Other(n) => n,
        }
    }

    pub fn from_number(n: u8) -> IpvsCmd {
        [
            IpvsCmd::NewService,
            IpvsCmd::SetService,
            IpvsCmd::DelService,
            IpvsCmd::GetService,
            IpvsCmd::NewDest,
            IpvsCmd::SetDest,
            IpvsCmd::DelDest,
            IpvsCmd::GetDest,
            IpvsCmd::SetConfig,
            IpvsCmd::GetConfig,
            IpvsCmd::SetInfo,
            IpvsCmd::GetInfo,
            IpvsCmd::Flush,
        ]
        .into_iter()
        .find(|c| c.number() == n)
        .unwrap_or(IpvsCmd::Other(n))
    }

    /// Info replies reuse attribute numbers 1 and 2 for `IPVS_INFO_ATTR_*`.
    fn carries_info(self) -> bool {
        matches!(self, IpvsCmd::SetInfo | IpvsCmd::GetInfo)
    }
}

/// One message of the family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: IpvsCmd,
    pub attrs: Vec<IpvsAttr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.number()
    }

    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd = IpvsCmd::from_number(header.cmd);
        let attrs = NlasIterator::new(buf)
            .map(|nla| IpvsAttr::parse(&nla?, cmd))
            .collect::<Result<_, _>>()
            .context("invalid IPVS message")?;
        Ok(IpvsMessage { cmd, attrs })
    }
}

/// `IPVS_CMD_ATTR_*` (and `IPVS_INFO_ATTR_*` in info messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsAttr {
    Service(Vec<ServiceAttr>),
    Dest(Vec<DestAttr>),
    TimeoutTcp(u32),
    TimeoutTcpFin(u32),
    TimeoutUdp(u32),
    InfoVersion(u32),
    InfoConnTabSize(u32),
    Other(DefaultNla),
}

impl Nla for IpvsAttr {
    fn value_len(&self) -> usize {
        match self {
            IpvsAttr::Service(a) => a.as_slice().buffer_len(),
            IpvsAttr::Dest(a) => a.as_slice().buffer_len(),
            IpvsAttr::TimeoutTcp(_)
            | IpvsAttr::TimeoutTcpFin(_)
            | IpvsAttr::TimeoutUdp(_)
            | IpvsAttr::InfoVersion(_)
            | IpvsAttr::InfoConnTabSize(_) => 4,
            IpvsAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            IpvsAttr::Service(_) | IpvsAttr::InfoVersion(_) => 1,
            IpvsAttr::Dest(_) | IpvsAttr::InfoConnTabSize(_) => 2,
            IpvsAttr::TimeoutTcp(_) => 4,
            IpvsAttr::TimeoutTcpFin(_) => 5,
            IpvsAttr::TimeoutUdp(_) => 6,
            IpvsAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            IpvsAttr::Service(a) => a.as_slice().emit(buffer),
            IpvsAttr::Dest(a) => a.as_slice().emit(buffer),
            IpvsAttr::TimeoutTcp(v)
            | IpvsAttr::TimeoutTcpFin(v)
            | IpvsAttr::TimeoutUdp(v)
            | IpvsAttr::InfoVersion(v)
            | IpvsAttr::InfoConnTabSize(v) => put_u32(buffer, *v),
            IpvsAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl IpvsAttr {
    fn parse(buf: &NlaBuffer<&[u8]>, cmd: IpvsCmd) -> Result<IpvsAttr, DecodeError> {
        let v = buf.value();
        Ok(match (buf.kind(), cmd.carries_info()) {
            (1, true) => IpvsAttr::InfoVersion(parse_u32(v).context("IPVS_INFO_ATTR_VERSION")?),
            (2, true) => {
                IpvsAttr::InfoConnTabSize(parse_u32(v).context("IPVS_INFO_ATTR_CONN_TAB_SIZE")?)
            }
            (1, false) => IpvsAttr::Service(parse_nested(v, ServiceAttr::parse)?),
            (2, false) => IpvsAttr::Dest(parse_nested(v, DestAttr::parse)?),
            (4, _) => IpvsAttr::TimeoutTcp(parse_u32(v).context("IPVS_CMD_ATTR_TIMEOUT_TCP")?),
            (5, _) => {
                IpvsAttr::TimeoutTcpFin(parse_u32(v).context("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN")?)
            }
            (6, _) => IpvsAttr::TimeoutUdp(parse_u32(v).context("IPVS_CMD_ATTR_TIMEOUT_UDP")?),
            _ => IpvsAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `struct ip_vs_flags`: the flag bits and which of them to change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceFlags {
    pub flags: u32,
    pub mask: u32,
}

/// `IP_VS_SVC_F_PERSISTENT`.
pub const SVC_F_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_HASHED` (set by the kernel, reported in dumps).
pub const SVC_F_HASHED: u32 = 0x2;
/// `IP_VS_SVC_F_SCHED1`: `sh-fallback` / `mh-fallback`.
pub const SVC_F_SCHED1: u32 = 0x8;
/// `IP_VS_SVC_F_SCHED2`: `sh-port` / `mh-port`.
pub const SVC_F_SCHED2: u32 = 0x10;

/// `IPVS_SVC_ATTR_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceAttr {
    AddressFamily(u16),
    Protocol(u16),
    /// `union nf_inet_addr`: always 16 bytes, IPv4 in the first four.
    Address([u8; 16]),
    /// Host order here, network order on the wire.
    Port(u16),
    Fwmark(u32),
    SchedName(String),
    Flags(ServiceFlags),
    Timeout(u32),
    Netmask(u32),
    Stats(Vec<StatsAttr>),
    PeName(String),
    Stats64(Vec<StatsAttr>),
    Other(DefaultNla),
}

impl Nla for ServiceAttr {
    fn value_len(&self) -> usize {
        match self {
            ServiceAttr::AddressFamily(_) | ServiceAttr::Protocol(_) | ServiceAttr::Port(_) => 2,
            ServiceAttr::Address(_) => 16,
            ServiceAttr::Fwmark(_) | ServiceAttr::Timeout(_) | ServiceAttr::Netmask(_) => 4,
            ServiceAttr::SchedName(s) | ServiceAttr::PeName(s) => s.len() + 1,
            ServiceAttr::Flags(_) => 8,
            ServiceAttr::Stats(a) | ServiceAttr::Stats64(a) => a.as_slice().buffer_len(),
            ServiceAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            ServiceAttr::AddressFamily(_) => 1,
            ServiceAttr::Protocol(_) => 2,
            ServiceAttr::Address(_) => 3,
            ServiceAttr::Port(_) => 4,
            ServiceAttr::Fwmark(_) => 5,
            ServiceAttr::SchedName(_) => 6,
            ServiceAttr::Flags(_) => 7,
            ServiceAttr::Timeout(_) => 8,
            ServiceAttr::Netmask(_) => 9,
            ServiceAttr::Stats(_) => 10,
            ServiceAttr::PeName(_) => 11,
            ServiceAttr::Stats64(_) => 12,
            ServiceAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            ServiceAttr::AddressFamily(v) | ServiceAttr::Protocol(v) => put_u16(buffer, *v),
            ServiceAttr::Port(v) => put_u16_be(buffer, *v),
            ServiceAttr::Address(a) => buffer[..16].copy_from_slice(a),
            ServiceAttr::Fwmark(v) | ServiceAttr::Timeout(v) | ServiceAttr::Netmask(v) => {
                put_u32(buffer, *v)
            }
            ServiceAttr::SchedName(s) | ServiceAttr::PeName(s) => put_string(buffer, s),
            ServiceAttr::Flags(f) => {
                put_u32(buffer, f.flags);
                put_u32(&mut buffer[4..], f.mask);
            }
            ServiceAttr::Stats(a) | ServiceAttr::Stats64(a) => a.as_slice().emit(buffer),
            ServiceAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl ServiceAttr {
    fn parse(buf: &NlaBuffer<&[u8]>) -> Result<ServiceAttr, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            1 => ServiceAttr::AddressFamily(parse_u16(v).context("IPVS_SVC_ATTR_AF")?),
            2 => ServiceAttr::Protocol(parse_u16(v).context("IPVS_SVC_ATTR_PROTOCOL")?),
            3 => ServiceAttr::Address(parse_inet_addr(v).context("IPVS_SVC_ATTR_ADDR")?),
            4 => ServiceAttr::Port(parse_u16_be(v).context("IPVS_SVC_ATTR_PORT")?),
            5 => ServiceAttr::Fwmark(parse_u32(v).context("IPVS_SVC_ATTR_FWMARK")?),
            6 => ServiceAttr::SchedName(parse_string(v).context("IPVS_SVC_ATTR_SCHED_NAME")?),
            7 => ServiceAttr::Flags(parse_flags(v).context("IPVS_SVC_ATTR_FLAGS")?),
            8 => ServiceAttr::Timeout(parse_u32(v).context("IPVS_SVC_ATTR_TIMEOUT")?),
            9 => ServiceAttr::Netmask(parse_u32(v).context("IPVS_SVC_ATTR_NETMASK")?),
            10 => ServiceAttr::Stats(parse_nested(v, StatsAttr::parse)?),
            11 => ServiceAttr::PeName(parse_string(v).context("IPVS_SVC_ATTR_PE_NAME")?),
            12 => ServiceAttr::Stats64(parse_nested(v, StatsAttr::parse)?),
            _ => ServiceAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `IP_VS_CONN_F_MASQ`: the forwarding method kube-proxy uses.
pub const FWD_MASQ: u32 = 0;

/// `IPVS_DEST_ATTR_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    Address([u8; 16]),
    /// Host order here, network order on the wire.
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UpperThreshold(u32),
    LowerThreshold(u32),
    ActiveConns(u32),
    InactiveConns(u32),
    PersistConns(u32),
    Stats(Vec<StatsAttr>),
    AddressFamily(u16),
    Stats64(Vec<StatsAttr>),
    TunType(u8),
    /// Network order on the wire.
    TunPort(u16),
    TunFlags(u16),
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Address(_) => 16,
            DestAttr::Port(_)
            | DestAttr::AddressFamily(_)
            | DestAttr::TunPort(_)
            | DestAttr::TunFlags(_) => 2,
            DestAttr::TunType(_) => 1,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UpperThreshold(_)
            | DestAttr::LowerThreshold(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactiveConns(_)
            | DestAttr::PersistConns(_) => 4,
            DestAttr::Stats(a) | DestAttr::Stats64(a) => a.as_slice().buffer_len(),
            DestAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Address(_) => 1,
            DestAttr::Port(_) => 2,
            DestAttr::FwdMethod(_) => 3,
            DestAttr::Weight(_) => 4,
            DestAttr::UpperThreshold(_) => 5,
            DestAttr::LowerThreshold(_) => 6,
            DestAttr::ActiveConns(_) => 7,
            DestAttr::InactiveConns(_) => 8,
            DestAttr::PersistConns(_) => 9,
            DestAttr::Stats(_) => 10,
            DestAttr::AddressFamily(_) => 11,
            DestAttr::Stats64(_) => 12,
            DestAttr::TunType(_) => 13,
            DestAttr::TunPort(_) => 14,
            DestAttr::TunFlags(_) => 15,
            DestAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DestAttr::Address(a) => buffer[..16].copy_from_slice(a),
            DestAttr::Port(v) | DestAttr::TunPort(v) => put_u16_be(buffer, *v),
            DestAttr::AddressFamily(v) | DestAttr::TunFlags(v) => put_u16(buffer, *v),
            DestAttr::TunType(v) => buffer[0] = *v,
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UpperThreshold(v)
            | DestAttr::LowerThreshold(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactiveConns(v)
            | DestAttr::PersistConns(v) => put_u32(buffer, *v),
            DestAttr::Stats(a) | DestAttr::Stats64(a) => a.as_slice().emit(buffer),
            DestAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl DestAttr {
    fn parse(buf: &NlaBuffer<&[u8]>) -> Result<DestAttr, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            1 => DestAttr::Address(parse_inet_addr(v).context("IPVS_DEST_ATTR_ADDR")?),
            2 => DestAttr::Port(parse_u16_be(v).context("IPVS_DEST_ATTR_PORT")?),
            3 => DestAttr::FwdMethod(parse_u32(v).context("IPVS_DEST_ATTR_FWD_METHOD")?),
            4 => DestAttr::Weight(parse_u32(v).context("IPVS_DEST_ATTR_WEIGHT")?),
            5 => DestAttr::UpperThreshold(parse_u32(v).context("IPVS_DEST_ATTR_U_THRESH")?),
            6 => DestAttr::LowerThreshold(parse_u32(v).context("IPVS_DEST_ATTR_L_THRESH")?),
            7 => DestAttr::ActiveConns(parse_u32(v).context("IPVS_DEST_ATTR_ACTIVE_CONNS")?),
            8 => DestAttr::InactiveConns(parse_u32(v).context("IPVS_DEST_ATTR_INACT_CONNS")?),
            9 => DestAttr::PersistConns(parse_u32(v).context("IPVS_DEST_ATTR_PERSIST_CONNS")?),
            10 => DestAttr::Stats(parse_nested(v, StatsAttr::parse)?),
            11 => DestAttr::AddressFamily(parse_u16(v).context("IPVS_DEST_ATTR_ADDR_FAMILY")?),
            12 => DestAttr::Stats64(parse_nested(v, StatsAttr::parse)?),
            13 if v.len() == 1 => DestAttr::TunType(v[0]),
            14 => DestAttr::TunPort(parse_u16_be(v).context("IPVS_DEST_ATTR_TUN_PORT")?),
            15 => DestAttr::TunFlags(parse_u16(v).context("IPVS_DEST_ATTR_TUN_FLAGS")?),
            _ => DestAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// One counter of `IPVS_STATS_ATTR_*` (kind 1 conns … 10 outbps). The same
/// kinds appear in `STATS` (mostly 32-bit) and `STATS64` (all 64-bit), so the
/// width read is the width written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsAttr {
    Counter { kind: u16, value: u64, wide: bool },
    Other(DefaultNla),
}

impl Nla for StatsAttr {
    fn value_len(&self) -> usize {
        match self {
            StatsAttr::Counter { wide: true, .. } => 8,
            StatsAttr::Counter { wide: false, .. } => 4,
            StatsAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            StatsAttr::Counter { kind, .. } => *kind,
            StatsAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            StatsAttr::Counter {
                value, wide: true, ..
            } => {
                let _ = emit_u64(buffer, *value);
            }
            StatsAttr::Counter {
                value, wide: false, ..
            } => put_u32(buffer, *value as u32),
            StatsAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl StatsAttr {
    fn parse(buf: &NlaBuffer<&[u8]>) -> Result<StatsAttr, DecodeError> {
        let v = buf.value();
        let kind = buf.kind();
        Ok(match (kind, v.len()) {
            (1..=10, 4) => StatsAttr::Counter {
                kind,
                value: u64::from(parse_u32(v)?),
                wide: false,
            },
            (1..=10, 8) => StatsAttr::Counter {
                kind,
                value: parse_u64(v)?,
                wide: true,
            },
            _ => StatsAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

fn parse_nested<T>(
    buf: &[u8],
    parse: fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    NlasIterator::new(buf).map(|nla| parse(&nla?)).collect()
}

fn parse_inet_addr(v: &[u8]) -> Result<[u8; 16], DecodeError> {
    v.try_into()
        .map_err(|_| DecodeError::from(format!("address of {} bytes, want 16", v.len())))
}

fn parse_flags(v: &[u8]) -> Result<ServiceFlags, DecodeError> {
    if v.len() != 8 {
        return Err(DecodeError::from(format!(
            "flags of {} bytes, want 8",
            v.len()
        )));
    }
    Ok(ServiceFlags {
        flags: parse_u32(&v[..4])?,
        mask: parse_u32(&v[4..])?,
    })
}

// The emit helpers only fail on a short buffer, which `value_len` rules out.
fn put_u16(buffer: &mut [u8], v: u16) {
    let _ = emit_u16(buffer, v);
}

fn put_u16_be(buffer: &mut [u8], v: u16) {
    let _ = emit_u16_be(buffer, v);
}

fn put_u32(buffer: &mut [u8], v: u32) {
    let _ = emit_u32(buffer, v);
}

fn put_string(buffer: &mut [u8], s: &str) {
    buffer[..s.len()].copy_from_slice(s.as_bytes());
    buffer[s.len()] = 0;
}

/// An address as `union nf_inet_addr`.
pub fn inet_addr(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// The address in a `union nf_inet_addr` of family `af`.
pub fn ip_from_inet(af: u16, raw: &[u8; 16]) -> IpAddr {
    if af == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

pub fn family_of(ip: &IpAddr) -> u16 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}
