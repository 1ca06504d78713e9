//! Classic tc over rtnetlink, for kernels without TCX: the `clsact` qdisc
//! and `cls_bpf` filters in direct-action mode. The messages are
//! netlink-packet-route values built here (checked byte for byte against
//! what iproute2's `tc` sends, `tests/tc_netlink.rs`); [`Rtnl`] sends them.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption,
};
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::netlink::Connection;

/// `TC_H_CLSACT`'s handle (`ffff:0`).
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
const CLSACT_KIND: &str = "clsact";
const BPF_KIND: &str = "bpf";
/// `ETH_P_ALL`: a filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// A hook of the clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub const BOTH: [Hook; 2] = [Hook::Ingress, Hook::Egress];

    fn parent(self) -> TcHandle {
        TcHandle {
            major: 0xffff,
            minor: match self {
                Hook::Ingress => TcHandle::MIN_INGRESS,
                Hook::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// Where a filter sits on a hook: its priority (`pref`) and handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    pub priority: u16,
    pub handle: u32,
}

/// A filter of a hook, as a dump shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub slot: Slot,
    pub kind: String,
    /// `TCA_BPF_NAME` of a bpf filter.
    pub name: Option<String>,
}

fn header(ifindex: u32, handle: TcHandle, parent: TcHandle, info: u32) -> TcHeader {
    TcHeader {
        // Interface indexes are positive i32 in the kernel.
        index: i32::try_from(ifindex).unwrap_or(i32::MAX),
        handle,
        parent,
        info,
        ..TcHeader::default()
    }
}

fn filter_info(priority: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be())
}

/// `tc qdisc add|del dev <ifindex> clsact`.
pub fn clsact(ifindex: u32) -> TcMessage {
    TcMessage::from_parts(
        header(ifindex, CLSACT_HANDLE, TcHandle::CLSACT, 0),
        vec![TcAttribute::Kind(CLSACT_KIND.to_string())],
    )
}

/// `tc qdisc show dev <ifindex>` (the kernel dumps every device's; see [`Rtnl::has_clsact`]).
pub fn qdisc_dump(ifindex: u32) -> TcMessage {
    TcMessage::with_index(i32::try_from(ifindex).unwrap_or(i32::MAX))
}

/// `tc filter add dev <ifindex> <hook> pref P handle H protocol all bpf direct-action fd F name N`.
pub fn bpf_filter(ifindex: u32, hook: Hook, slot: Slot, prog_fd: u32, name: &str) -> TcMessage {
    TcMessage::from_parts(
        header(
            ifindex,
            TcHandle::from(slot.handle),
            hook.parent(),
            filter_info(slot.priority),
        ),
        vec![
            TcAttribute::Kind(BPF_KIND.to_string()),
            TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd)),
                TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
                TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
            ]),
        ],
    )
}

/// `tc filter del dev <ifindex> <hook> pref P handle H protocol all bpf`.
pub fn bpf_filter_delete(ifindex: u32, hook: Hook, slot: Slot) -> TcMessage {
    TcMessage::from_parts(
        header(
            ifindex,
            TcHandle::from(slot.handle),
            hook.parent(),
            filter_info(slot.priority),
        ),
        vec![TcAttribute::Kind(BPF_KIND.to_string())],
    )
}

/// `tc filter show dev <ifindex> <hook>`.
pub fn filter_dump(ifindex: u32, hook: Hook) -> TcMessage {
    TcMessage::from_parts(header(ifindex, TcHandle::UNSPEC, hook.parent(), 0), vec![])
}

/// A filter of a dump answer.
pub fn parse_filter(msg: &TcMessage) -> Filter {
    let mut kind = String::new();
    let mut name = None;
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(k) => kind = k.clone(),
            TcAttribute::Options(options) => {
                for o in options {
                    if let TcOption::Bpf(TcFilterBpfOption::ProgName(n)) = o {
                        name = Some(n.clone());
                    }
                }
            }
            _ => {}
        }
    }
    Filter {
        slot: Slot {
            priority: u16::try_from(msg.header.info >> 16).unwrap_or(0),
            handle: u32::from(msg.header.handle),
        },
        kind,
        name,
    }
}

/// Whether a qdisc dump message is the clsact qdisc of `ifindex`.
pub fn is_clsact(msg: &TcMessage, ifindex: u32) -> bool {
    i64::from(msg.header.index) == i64::from(ifindex)
        && msg.header.parent == TcHandle::CLSACT
        && msg
            .attributes
            .iter()
            .any(|a| matches!(a, TcAttribute::Kind(k) if k == CLSACT_KIND))
}

/// An rtnetlink socket in the calling thread's network namespace.
pub struct Rtnl(Connection);

const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;
const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        Connection::open(NETLINK_ROUTE).map(Rtnl)
    }

    /// Add the clsact qdisc: true when this call created it, false when one
    /// was there already. Another qdisc in its place (`ingress`) is an error.
    pub fn add_clsact(&mut self, ifindex: u32) -> io::Result<bool> {
        let msg = RouteNetlinkMessage::NewQueueDiscipline(clsact(ifindex));
        match self.0.request(msg, CREATE) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if self.has_clsact(ifindex)? {
                    Ok(false)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("interface {ifindex} has an ingress qdisc, not clsact"),
                    ))
                }
            }
            Err(e) => Err(e),
        }
    }

    pub fn has_clsact(&mut self, ifindex: u32) -> io::Result<bool> {
        let msg = RouteNetlinkMessage::GetQueueDiscipline(qdisc_dump(ifindex));
        let answers = self.0.request(msg, DUMP)?;
        Ok(answers.iter().any(|a| match a {
            RouteNetlinkMessage::NewQueueDiscipline(q) => is_clsact(q, ifindex),
            _ => false,
        }))
    }

    pub fn delete_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        let msg = RouteNetlinkMessage::DelQueueDiscipline(clsact(ifindex));
        self.0.request(msg, ACK).map(drop)
    }

    pub fn add_filter(
        &mut self,
        ifindex: u32,
        hook: Hook,
        slot: Slot,
        prog_fd: u32,
        name: &str,
    ) -> io::Result<()> {
        let msg = bpf_filter(ifindex, hook, slot, prog_fd, name);
        self.0
            .request(RouteNetlinkMessage::NewTrafficFilter(msg), CREATE)
            .map(drop)
    }

    /// Delete a bpf filter; false when it was not there.
    pub fn delete_filter(&mut self, ifindex: u32, hook: Hook, slot: Slot) -> io::Result<bool> {
        let msg = RouteNetlinkMessage::DelTrafficFilter(bpf_filter_delete(ifindex, hook, slot));
        match self.0.request(msg, ACK) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The filters of a hook (none when the device has no clsact qdisc).
    pub fn filters(&mut self, ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
        let msg = RouteNetlinkMessage::GetTrafficFilter(filter_dump(ifindex, hook));
        let answers = match self.0.request(msg, DUMP) {
            Ok(a) => a,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(answers
            .iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewTrafficFilter(f) => Some(parse_filter(f)),
                _ => None,
            })
            .collect())
    }
}
