//! `kube-ipvs0`, the dummy interface holding every service address, behind
//! [`DummyInterface`]: [`RtnlDummy`] speaks rtnetlink (netlink-packet-route
//! messages built here, sent by [`Connection`]) in the namespace it was
//! opened in; `fake::FakeDummy` (unit tests only) is in memory.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::plan::DUMMY_INTERFACE;
use crate::netlink::Connection;

/// `kube-ipvs0` and its addresses.
pub trait DummyInterface: Send {
    fn exists(&self) -> io::Result<bool>;
    /// Create it (down, as kube-proxy leaves it) unless it exists.
    fn ensure(&self) -> io::Result<()>;
    /// Delete it if it exists.
    fn delete(&self) -> io::Result<()>;
    /// Its addresses (none when it does not exist).
    fn addresses(&self) -> io::Result<BTreeSet<IpAddr>>;
    /// Add and remove host addresses (`/32`, `/128`).
    fn change_addresses(&self, add: &BTreeSet<IpAddr>, remove: &BTreeSet<IpAddr>)
    -> io::Result<()>;
}

/// `ip link show dev kube-ipvs0`.
pub fn link_by_name() -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(DUMMY_INTERFACE.to_string()));
    msg
}

/// `ip link add kube-ipvs0 type dummy`.
pub fn new_dummy() -> LinkMessage {
    let mut msg = link_by_name();
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Dummy,
        )]));
    msg
}

/// `ip addr add|del <ip>/<32|128> dev <index>`: local and peer address both
/// the host address, as iproute2 sends them.
pub fn host_address(index: u32, ip: IpAddr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    (msg.header.family, msg.header.prefix_len) = match ip {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    msg
}

/// The address of a dump answer, when it is on interface `index`.
pub fn address_on(msg: &AddressMessage, index: u32) -> Option<IpAddr> {
    if msg.header.index != index {
        return None;
    }
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// `kube-ipvs0` over an rtnetlink socket kept in the namespace it was opened in.
pub struct RtnlDummy(Mutex<Connection>);

impl RtnlDummy {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<RtnlDummy> {
        Connection::open(NETLINK_ROUTE).map(|c| RtnlDummy(Mutex::new(c)))
    }

    fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .request(msg, flags)
    }

    /// The interface index of `kube-ipvs0`, if it exists.
    fn index(&self) -> io::Result<Option<u32>> {
        match self.request(RouteNetlinkMessage::GetLink(link_by_name()), ACK) {
            Ok(answers) => Ok(answers.iter().find_map(|a| match a {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn change(&self, index: u32, ips: &BTreeSet<IpAddr>, add: bool) -> io::Result<()> {
        for ip in ips {
            let msg = host_address(index, *ip);
            let (msg, flags) = if add {
                (
                    RouteNetlinkMessage::NewAddress(msg),
                    ACK | NLM_F_CREATE | NLM_F_EXCL,
                )
            } else {
                (RouteNetlinkMessage::DelAddress(msg), ACK)
            };
            match self.request(msg, flags) {
                Ok(_) => {}
                // Already as wanted (someone else got there first).
                Err(e) if add && e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if !add && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn missing() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{DUMMY_INTERFACE} does not exist"),
    )
}

impl DummyInterface for RtnlDummy {
    fn exists(&self) -> io::Result<bool> {
        self.index().map(|i| i.is_some())
    }

    fn ensure(&self) -> io::Result<()> {
        if self.exists()? {
            return Ok(());
        }
        let msg = RouteNetlinkMessage::NewLink(new_dummy());
        match self.request(msg, ACK | NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    fn delete(&self) -> io::Result<()> {
        let Some(index) = self.index()? else {
            return Ok(());
        };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(msg), ACK) {
            Err(e) if e.raw_os_error() != Some(libc::ENODEV) => Err(e),
            _ => Ok(()),
        }
    }

    fn addresses(&self) -> io::Result<BTreeSet<IpAddr>> {
        let Some(index) = self.index()? else {
            return Ok(BTreeSet::new());
        };
        let msg = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let answers = self.request(msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        Ok(answers
            .iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewAddress(m) => address_on(m, index),
                _ => None,
            })
            .collect())
    }

    fn change_addresses(
        &self,
        add: &BTreeSet<IpAddr>,
        remove: &BTreeSet<IpAddr>,
    ) -> io::Result<()> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let index = self.index()?.ok_or_else(missing)?;
        self.change(index, add, true)?;
        self.change(index, remove, false)
    }
}
