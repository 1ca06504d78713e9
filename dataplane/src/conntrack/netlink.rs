//! The kernel's conntrack table over `NETLINK_NETFILTER` (ctnetlink), in the
//! calling thread's network namespace: `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`
//! filtered to UDP in the kernel (`CTA_FILTER` on the protocol number), and
//! `IPCTNL_MSG_CT_DELETE` by original tuple. The messages are
//! netlink-packet-netfilter values; [`Connection`] sends them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};

use netlink_packet_core::{
    DefaultNla, Emitable, NLA_F_NESTED, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Nla,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, ConntrackMessageType, IPTuple, ProtoInfo, ProtoInfoTCP,
    ProtoTuple, Protocol, Status, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    NetfilterSubsystem,
};
use netlink_sys::protocols::NETLINK_NETFILTER;
use switchyard_api::ruleset::IpFamily;

use super::{ConntrackError, ConntrackTable, UdpFlow};
use crate::netlink::Connection;

/// `CTA_TUPLE_ORIG`.
const CTA_TUPLE_ORIG: u16 = 1;
/// `CTA_ZONE` (be16), which the crate leaves untyped.
const CTA_ZONE: u16 = 18;
/// `CTA_FILTER`, nesting `CTA_FILTER_ORIG_FLAGS` (1): which fields of the
/// request's `CTA_TUPLE_ORIG` a dumped entry must match.
const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// `CTA_FILTER_F_CTA_PROTO_NUM` (kernel `nf_internals.h`).
const FILTER_PROTO_NUM: u32 = 1 << 3;

/// A namespace's table over ctnetlink.
#[derive(Default)]
pub struct NetlinkConntrack {
    /// A socket kept in the namespace it was opened in; `None`: each call
    /// opens one in the calling thread's namespace (a backend may be driven
    /// from a thread that entered a namespace).
    bound: Option<Mutex<Connection>>,
}

impl NetlinkConntrack {
    /// The table of the namespace the calling thread is in at each call.
    pub fn calling_thread() -> NetlinkConntrack {
        NetlinkConntrack::default()
    }

    /// The table of the namespace the calling thread is in now, whichever
    /// thread uses it later.
    pub fn bound_here() -> Result<NetlinkConntrack, ConntrackError> {
        Ok(NetlinkConntrack {
            bound: Some(Mutex::new(open()?)),
        })
    }

    /// Every entry of `family` and `protocol`, filtered by the kernel.
    fn dump(
        &self,
        family: IpFamily,
        protocol: Protocol,
        name: &'static str,
    ) -> Result<Vec<NetfilterMessage>, ConntrackError> {
        self.with(|conn| {
            conn.request(dump_request(family, protocol), NLM_F_REQUEST | NLM_F_DUMP)
                .map_err(|source| ConntrackError::Dump {
                    family,
                    protocol: name,
                    source,
                })
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ConntrackError>,
    ) -> Result<T, ConntrackError> {
        match &self.bound {
            Some(conn) => f(&mut conn.lock().unwrap_or_else(PoisonError::into_inner)),
            None => f(&mut open()?),
        }
    }
}

/// `nfgenmsg` of `family`, version 0.
fn header(family: IpFamily) -> NetfilterHeader {
    let family = match family {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    };
    NetfilterHeader::new(family, 0, 0)
}

/// An attribute nesting `parts`, as raw bytes with `NLA_F_NESTED` set.
fn nested<T: Emitable>(kind: u16, parts: &[T]) -> DefaultNla {
    let mut value = vec![0; parts.iter().map(Emitable::buffer_len).sum()];
    let mut at = 0;
    for part in parts {
        part.emit(&mut value[at..]);
        at += part.buffer_len();
    }
    DefaultNla::new(kind | NLA_F_NESTED, value)
}

/// `TCP_CONNTRACK_ESTABLISHED` (`CTA_PROTOINFO_TCP_STATE`).
const TCP_ESTABLISHED: u8 = 3;

/// `conntrack -L -f <family> -p <protocol>`, filtered by the kernel. Built
/// from raw attributes: the crate has no `CTA_FILTER`, and its catch-all
/// attribute drops `NLA_F_NESTED`, which the kernel's strict parse of
/// `CTA_FILTER` needs.
pub fn dump_request(family: IpFamily, protocol: Protocol) -> NetfilterMessage {
    let flags = DefaultNla::new(
        CTA_FILTER_ORIG_FLAGS,
        FILTER_PROTO_NUM.to_ne_bytes().to_vec(),
    );
    let proto = Tuple::Proto(vec![ProtoTuple::Protocol(protocol)]);
    let inner = NetfilterMessageInner::Other {
        subsys: NetfilterSubsystem::Conntrack,
        message_type: ConntrackMessageType::Get.into(),
        attributes: vec![
            nested(CTA_TUPLE_ORIG, &[proto]),
            nested(CTA_FILTER, &[flags]),
        ],
    };
    NetfilterMessage::new(header(family), inner)
}

/// Delete the entry whose original tuple is `flow`'s.
pub fn delete_request(flow: &UdpFlow) -> NetfilterMessage {
    let (src, dst) = (flow.orig_src, flow.orig_dst);
    let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(src.ip()),
            IPTuple::DestinationAddress(dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Udp),
            ProtoTuple::SourcePort(src.port()),
            ProtoTuple::DestinationPort(dst.port()),
        ]),
    ])];
    if let Some(zone) = flow.zone {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            zone.to_be_bytes().to_vec(),
        )));
    }
    NetfilterMessage::new(
        header(IpFamily::of(&dst.ip())),
        ConntrackMessage::Delete(attrs),
    )
}

/// Source and destination of a tuple, with the protocol number.
fn endpoints(tuple: &[Tuple]) -> Option<(SocketAddr, SocketAddr, Protocol)> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ports) => {
                for p in ports {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(*n),
                        ProtoTuple::SourcePort(n) => sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => dport = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let sock = |ip: Option<IpAddr>, port: Option<u16>| Some(SocketAddr::new(ip?, port?));
    Some((sock(src, sport)?, sock(dst, dport)?, proto?))
}

/// The UDP flow of a dumped entry (`None` for another protocol).
pub fn parse_flow(msg: &NetfilterMessage) -> Option<UdpFlow> {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = &msg.inner else {
        return None;
    };
    let (mut orig, mut reply, mut zone) = (None, None, None);
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => orig = endpoints(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = endpoints(t),
            ConntrackAttribute::Other(nla)
                if nla.kind() & NLA_TYPE_MASK == CTA_ZONE && nla.value_len() == 2 =>
            {
                let mut be = [0u8; 2];
                nla.emit_value(&mut be);
                zone = Some(u16::from_be_bytes(be)).filter(|z| *z != 0);
            }
            _ => {}
        }
    }
    let (orig_src, orig_dst, proto) = orig?;
    let (reply_src, _, _) = reply?;
    (proto == Protocol::Udp).then_some(UdpFlow {
        orig_src,
        orig_dst,
        reply_src,
        zone,
    })
}

/// Whether a dumped entry is an established TCP connection whose
/// destination was translated.
pub fn is_translated_open_tcp(msg: &NetfilterMessage) -> bool {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = &msg.inner else {
        return false;
    };
    let (mut dnat, mut established) = (false, false);
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaStatus(status) => dnat = status.contains(Status::DstNat),
            ConntrackAttribute::CtaProtoInfo(info) => {
                established = info.iter().any(|i| match i {
                    ProtoInfo::TCP(tcp) => tcp.contains(&ProtoInfoTCP::State(TCP_ESTABLISHED)),
                    _ => false,
                });
            }
            _ => {}
        }
    }
    dnat && established
}

fn open() -> Result<Connection, ConntrackError> {
    Connection::open(NETLINK_NETFILTER).map_err(ConntrackError::Socket)
}

impl ConntrackTable for NetlinkConntrack {
    fn udp_flows(&self, family: IpFamily) -> Result<Vec<UdpFlow>, ConntrackError> {
        let answers = self.dump(family, Protocol::Udp, "UDP")?;
        Ok(answers.iter().filter_map(parse_flow).collect())
    }

    fn translated_tcp_open(&self, family: IpFamily) -> Result<usize, ConntrackError> {
        let answers = self.dump(family, Protocol::Tcp, "TCP")?;
        Ok(answers.iter().filter(|m| is_translated_open_tcp(m)).count())
    }

    fn delete(&self, flows: &[UdpFlow]) -> Result<usize, ConntrackError> {
        if flows.is_empty() {
            return Ok(0);
        }
        self.with(|conn| {
            let mut deleted = 0;
            for flow in flows {
                match conn.request(delete_request(flow), NLM_F_REQUEST | NLM_F_ACK) {
                    Ok(_) => deleted += 1,
                    // Expired between the dump and now.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(ConntrackError::Delete {
                            flow: format!("{} -> {}", flow.orig_src, flow.orig_dst),
                            source,
                        });
                    }
                }
            }
            Ok(deleted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{encode, parse_hex};

    /// The UDP dump of IPv4, as the kernel (6.18) accepts it.
    const UDP_DUMP_V4: &str = "
30 00 00 00 01 01 01 03 00 00 00 00 00 00 00 00  # nlmsghdr len=48 CTNETLINK<<8|IPCTNL_MSG_CT_GET REQUEST|DUMP
02 00 00 00                                      # nfgenmsg AF_INET v0 res_id 0
10 00 01 80                                      # CTA_TUPLE_ORIG (nested)
0c 00 02 80 05 00 01 00 11 00 00 00              #   CTA_TUPLE_PROTO { CTA_PROTO_NUM 17 }
0c 00 19 80                                      # CTA_FILTER (nested: the kernel parses it strictly)
08 00 01 00 08 00 00 00                          #   CTA_FILTER_ORIG_FLAGS CTA_FILTER_F_CTA_PROTO_NUM
";

    #[test]
    fn udp_dump_filter_is_sent_nested_as_the_kernel_requires() {
        assert_eq!(
            encode(
                dump_request(IpFamily::V4, Protocol::Udp),
                NLM_F_REQUEST | NLM_F_DUMP,
                0
            ),
            parse_hex(UDP_DUMP_V4)
        );
    }
}
