//! The one chokepoint to the kernel's IPVS table: [`IpvsKernel`] sends one
//! request and returns the replies. [`NetlinkIpvs`] speaks generic netlink in
//! the calling thread's network namespace; `fake::FakeIpvs` (unit tests only)
//! is an in-memory table. [`Ipvs`] puts typed operations on top of either.

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_sys::protocols::NETLINK_GENERIC;

use super::genl::{FAMILY_NAME, IpvsAttr, IpvsCmd, IpvsMessage, family_of};
use super::objects::{DestState, RealServer, ServiceKey, Timeouts, VirtualServer};
use crate::netlink::Connection;

/// A request to the IPVS family failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("ipvs netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("the IPVS generic netlink family is not available (ip_vs not loaded?): {0}")]
    NoFamily(String),
    #[error("ipvs {cmd:?}: {source}")]
    Request {
        cmd: IpvsCmd,
        #[source]
        source: std::io::Error,
    },
    #[error("ipvs {cmd:?}: undecodable reply: {detail}")]
    Decode { cmd: IpvsCmd, detail: String },
}

/// Sends one IPVS request, returning the reply messages (a dump's, or none for an ack).
pub trait IpvsKernel: Send {
    fn request(&mut self, msg: IpvsMessage, dump: bool) -> Result<Vec<IpvsMessage>, KernelError>;
}

/// The kernel over generic netlink.
pub struct NetlinkIpvs {
    conn: Connection,
    family: u16,
}

impl NetlinkIpvs {
    /// Open a socket in the calling thread's network namespace and resolve the family.
    pub fn open() -> Result<NetlinkIpvs, KernelError> {
        let conn = Connection::open(NETLINK_GENERIC).map_err(KernelError::Socket)?;
        let mut nl = NetlinkIpvs { conn, family: 0 };
        nl.family = nl.resolve_family()?;
        Ok(nl)
    }

    /// Keep the raw bytes of every reply from now on.
    pub fn record(&mut self) {
        self.conn.record();
    }

    /// The raw replies recorded since [`NetlinkIpvs::record`].
    pub fn take_recorded(&mut self) -> Vec<Vec<u8>> {
        self.conn.take_recorded()
    }

    /// The family id the kernel assigned to `IPVS`.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    fn resolve_family(&mut self) -> Result<u16, KernelError> {
        let msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.to_string())],
        });
        let replies = self
            .conn
            .request(msg, NLM_F_REQUEST | NLM_F_ACK)
            .map_err(|e| KernelError::NoFamily(e.to_string()))?;
        replies
            .iter()
            .flat_map(|m: &GenlMessage<GenlCtrl>| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| KernelError::NoFamily("no family id in the reply".into()))
    }
}

impl IpvsKernel for NetlinkIpvs {
    fn request(&mut self, msg: IpvsMessage, dump: bool) -> Result<Vec<IpvsMessage>, KernelError> {
        let cmd = msg.cmd;
        let flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST | NLM_F_ACK
        };
        let mut msg = GenlMessage::from_payload(msg);
        msg.set_resolved_family_id(self.family);
        let replies = self
            .conn
            .request(msg, flags)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::InvalidData => KernelError::Decode {
                    cmd,
                    detail: source.to_string(),
                },
                _ => KernelError::Request { cmd, source },
            })?;
        Ok(replies.into_iter().map(|m| m.payload).collect())
    }
}

/// Typed operations over an [`IpvsKernel`].
pub struct Ipvs<'k>(pub &'k mut dyn IpvsKernel);

impl Ipvs<'_> {
    pub fn services(&mut self) -> Result<Vec<VirtualServer>, KernelError> {
        let replies = self.0.request(message(IpvsCmd::GetService, vec![]), true)?;
        Ok(replies
            .iter()
            .filter_map(|m| VirtualServer::from_message(&m.attrs))
            .collect())
    }

    pub fn dests(&mut self, key: &ServiceKey) -> Result<Vec<DestState>, KernelError> {
        let msg = message(IpvsCmd::GetDest, vec![IpvsAttr::Service(key.attrs())]);
        let family = family_of(&key.addr);
        Ok(self
            .0
            .request(msg, true)?
            .iter()
            .filter_map(|m| DestState::from_message(&m.attrs, family))
            .collect())
    }

    pub fn add_service(&mut self, vs: &VirtualServer) -> Result<(), KernelError> {
        self.send(IpvsCmd::NewService, vec![IpvsAttr::Service(vs.attrs())])
    }

    pub fn update_service(&mut self, vs: &VirtualServer) -> Result<(), KernelError> {
        self.send(IpvsCmd::SetService, vec![IpvsAttr::Service(vs.attrs())])
    }

    pub fn delete_service(&mut self, key: &ServiceKey) -> Result<(), KernelError> {
        self.send(IpvsCmd::DelService, vec![IpvsAttr::Service(key.attrs())])
    }

    pub fn add_dest(&mut self, key: &ServiceKey, rs: &RealServer) -> Result<(), KernelError> {
        self.send(
            IpvsCmd::NewDest,
            vec![IpvsAttr::Service(key.attrs()), IpvsAttr::Dest(rs.attrs())],
        )
    }

    pub fn update_dest(&mut self, key: &ServiceKey, rs: &RealServer) -> Result<(), KernelError> {
        self.send(
            IpvsCmd::SetDest,
            vec![IpvsAttr::Service(key.attrs()), IpvsAttr::Dest(rs.attrs())],
        )
    }

    pub fn delete_dest(&mut self, key: &ServiceKey, rs: &RealServer) -> Result<(), KernelError> {
        self.send(
            IpvsCmd::DelDest,
            vec![
                IpvsAttr::Service(key.attrs()),
                IpvsAttr::Dest(rs.key_attrs()),
            ],
        )
    }

    pub fn timeouts(&mut self) -> Result<Timeouts, KernelError> {
        let replies = self.0.request(message(IpvsCmd::GetConfig, vec![]), false)?;
        Ok(replies
            .first()
            .map(|m| Timeouts::from_attrs(&m.attrs))
            .unwrap_or_default())
    }

    pub fn set_timeouts(&mut self, t: &Timeouts) -> Result<(), KernelError> {
        self.send(IpvsCmd::SetConfig, t.attrs())
    }

    fn send(&mut self, cmd: IpvsCmd, attrs: Vec<IpvsAttr>) -> Result<(), KernelError> {
        self.0.request(message(cmd, attrs), false).map(|_| ())
    }
}

pub fn message(cmd: IpvsCmd, attrs: Vec<IpvsAttr>) -> IpvsMessage {
    IpvsMessage { cmd, attrs }
}
