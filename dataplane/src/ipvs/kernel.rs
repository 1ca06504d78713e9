//! The one chokepoint to the kernel's IPVS table: [`IpvsKernel`] sends one
//! request and returns the replies. [`NetlinkIpvs`] speaks generic netlink in
//! the calling thread's network namespace; [`FakeIpvs`] is an in-memory table
//! for unit tests. [`Ipvs`] puts typed operations on top of either.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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

/// A fake virtual server with its real servers by address and port.
pub type FakeService = (VirtualServer, BTreeMap<(IpAddr, u16), DestState>);

/// The state of a [`FakeIpvs`].
#[derive(Debug, Default)]
pub struct FakeTable {
    pub services: BTreeMap<ServiceKey, FakeService>,
    pub timeouts: Timeouts,
    /// Every command received, in order.
    pub log: Vec<IpvsCmd>,
}

impl FakeTable {
    /// Pretend real server `rs` of `key` has `active` connections.
    pub fn set_active(&mut self, key: &ServiceKey, rs: (IpAddr, u16), active: u32) {
        if let Some(d) = self.services.get_mut(key).and_then(|(_, d)| d.get_mut(&rs)) {
            d.active = active;
        }
    }
}

/// An in-memory IPVS table answering like the kernel (for unit tests); clones
/// share the table, so a test keeps one to look inside.
#[derive(Clone, Debug, Default)]
pub struct FakeIpvs(Arc<Mutex<FakeTable>>);

impl FakeIpvs {
    pub fn table(&self) -> MutexGuard<'_, FakeTable> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn errno(cmd: IpvsCmd, code: i32) -> KernelError {
    KernelError::Request {
        cmd,
        source: std::io::Error::from_raw_os_error(code),
    }
}

impl IpvsKernel for FakeIpvs {
    fn request(&mut self, msg: IpvsMessage, dump: bool) -> Result<Vec<IpvsMessage>, KernelError> {
        self.table().request(msg, dump)
    }
}

impl FakeTable {
    fn request(&mut self, msg: IpvsMessage, _dump: bool) -> Result<Vec<IpvsMessage>, KernelError> {
        let cmd = msg.cmd;
        self.log.push(cmd);
        let service = msg.attrs.iter().find_map(|a| match a {
            IpvsAttr::Service(s) => VirtualServer::from_attrs(s),
            _ => None,
        });
        let dest = DestState::from_message(
            &msg.attrs,
            service
                .as_ref()
                .map(|s| family_of(&s.key.addr))
                .unwrap_or(2),
        );
        let need_service = || service.clone().ok_or_else(|| errno(cmd, libc::EINVAL));
        match cmd {
            IpvsCmd::GetService => Ok(self
                .services
                .values()
                .map(|(vs, _)| message(IpvsCmd::NewService, vec![IpvsAttr::Service(vs.attrs())]))
                .collect()),
            IpvsCmd::NewService => {
                let vs = need_service()?;
                if self.services.contains_key(&vs.key) {
                    return Err(errno(cmd, libc::EEXIST));
                }
                self.services.insert(vs.key, (vs, BTreeMap::new()));
                Ok(vec![])
            }
            IpvsCmd::SetService => {
                let vs = need_service()?;
                let entry = self
                    .services
                    .get_mut(&vs.key)
                    .ok_or_else(|| errno(cmd, libc::ESRCH))?;
                entry.0 = vs;
                Ok(vec![])
            }
            IpvsCmd::DelService => {
                let vs = need_service()?;
                self.services
                    .remove(&vs.key)
                    .map(|_| vec![])
                    .ok_or_else(|| errno(cmd, libc::ESRCH))
            }
            IpvsCmd::GetDest => {
                let vs = need_service()?;
                let (_, dests) = self
                    .services
                    .get(&vs.key)
                    .ok_or_else(|| errno(cmd, libc::ESRCH))?;
                Ok(dests
                    .values()
                    .map(|d| {
                        let mut attrs = d.server.attrs();
                        attrs.push(super::genl::DestAttr::ActiveConns(d.active));
                        attrs.push(super::genl::DestAttr::InactiveConns(d.inactive));
                        message(IpvsCmd::NewDest, vec![IpvsAttr::Dest(attrs)])
                    })
                    .collect())
            }
            IpvsCmd::NewDest | IpvsCmd::SetDest | IpvsCmd::DelDest => {
                let vs = need_service()?;
                let d = dest.ok_or_else(|| errno(cmd, libc::EINVAL))?;
                let (_, dests) = self
                    .services
                    .get_mut(&vs.key)
                    .ok_or_else(|| errno(cmd, libc::ESRCH))?;
                let k = (d.server.addr, d.server.port);
                match (cmd, dests.contains_key(&k)) {
                    (IpvsCmd::NewDest, true) => return Err(errno(cmd, libc::EEXIST)),
                    (IpvsCmd::SetDest | IpvsCmd::DelDest, false) => {
                        return Err(errno(cmd, libc::ENOENT));
                    }
                    (IpvsCmd::DelDest, true) => {
                        dests.remove(&k);
                    }
                    (IpvsCmd::NewDest, false) => {
                        dests.insert(k, d);
                    }
                    _ => {
                        if let Some(existing) = dests.get_mut(&k) {
                            existing.server.weight = d.server.weight;
                        }
                    }
                }
                Ok(vec![])
            }
            IpvsCmd::GetConfig => Ok(vec![message(IpvsCmd::SetConfig, self.timeouts.attrs())]),
            IpvsCmd::SetConfig => {
                let t = Timeouts::from_attrs(&msg.attrs);
                for (new, old) in [
                    (t.tcp, &mut self.timeouts.tcp),
                    (t.tcp_fin, &mut self.timeouts.tcp_fin),
                    (t.udp, &mut self.timeouts.udp),
                ] {
                    if new != 0 {
                        *old = new;
                    }
                }
                Ok(vec![])
            }
            _ => Err(errno(cmd, libc::EOPNOTSUPP)),
        }
    }
}
