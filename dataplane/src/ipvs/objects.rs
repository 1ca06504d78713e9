//! Virtual servers, real servers and the connection timeouts as typed values,
//! converted to and from the family's attribute lists.

use std::fmt;
use std::net::IpAddr;

use switchyard_api::ruleset::Protocol;

use super::genl::{
    DestAttr, FWD_MASQ, IpvsAttr, ServiceAttr, ServiceFlags, family_of, inet_addr, ip_from_inet,
};

/// What identifies a virtual server: protocol, address, port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub protocol: Protocol,
    pub addr: IpAddr,
    pub port: u16,
}

impl ServiceKey {
    /// The attributes naming this service in requests.
    pub fn attrs(&self) -> Vec<ServiceAttr> {
        vec![
            ServiceAttr::AddressFamily(family_of(&self.addr)),
            ServiceAttr::Protocol(u16::from(self.protocol.number())),
            ServiceAttr::Address(inet_addr(self.addr)),
            ServiceAttr::Port(self.port),
        ]
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{} {a}:{}", self.protocol, self.port),
            IpAddr::V6(a) => write!(f, "{} [{a}]:{}", self.protocol, self.port),
        }
    }
}

/// A virtual server as we program it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VirtualServer {
    pub key: ServiceKey,
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` bits we set (persistence, scheduler flags); never HASHED.
    pub flags: u32,
    /// Persistence timeout in seconds (0: not persistent).
    pub timeout: u32,
    /// Persistence netmask: a prefix length for IPv6, a mask for IPv4.
    pub netmask: u32,
}

impl VirtualServer {
    /// NEW_SERVICE / SET_SERVICE attributes, in ipvsadm's order.
    pub fn attrs(&self) -> Vec<ServiceAttr> {
        let mut attrs = self.key.attrs();
        attrs.extend([
            ServiceAttr::SchedName(self.scheduler.clone()),
            ServiceAttr::Flags(ServiceFlags {
                flags: self.flags,
                mask: u32::MAX,
            }),
            ServiceAttr::Timeout(self.timeout),
            ServiceAttr::Netmask(self.netmask),
        ]);
        attrs
    }

    /// A virtual server from a dump; `None` for fwmark services and unknown protocols.
    pub fn from_attrs(attrs: &[ServiceAttr]) -> Option<VirtualServer> {
        let mut af = None;
        let mut protocol = None;
        let mut addr = None;
        let mut port = None;
        let mut vs = VirtualServer {
            key: ServiceKey {
                protocol: Protocol::Tcp,
                addr: IpAddr::from([0, 0, 0, 0]),
                port: 0,
            },
            scheduler: String::new(),
            flags: 0,
            timeout: 0,
            netmask: 0,
        };
        for a in attrs {
            match a {
                ServiceAttr::AddressFamily(v) => af = Some(*v),
                ServiceAttr::Protocol(v) => protocol = protocol_from_number(*v),
                ServiceAttr::Address(v) => addr = Some(*v),
                ServiceAttr::Port(v) => port = Some(*v),
                ServiceAttr::SchedName(s) => vs.scheduler = s.clone(),
                ServiceAttr::Flags(f) => vs.flags = f.flags & !super::genl::SVC_F_HASHED,
                ServiceAttr::Timeout(v) => vs.timeout = *v,
                ServiceAttr::Netmask(v) => vs.netmask = *v,
                _ => {}
            }
        }
        vs.key = ServiceKey {
            protocol: protocol?,
            addr: ip_from_inet(af?, &addr?),
            port: port?,
        };
        Some(vs)
    }

    /// The first service in a message's attributes.
    pub fn from_message(attrs: &[IpvsAttr]) -> Option<VirtualServer> {
        attrs.iter().find_map(|a| match a {
            IpvsAttr::Service(s) => VirtualServer::from_attrs(s),
            _ => None,
        })
    }
}

fn protocol_from_number(n: u16) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| u16::from(p.number()) == n)
}

/// A real server as we program it (masquerading, as kube-proxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
}

impl RealServer {
    /// NEW_DEST / SET_DEST attributes.
    pub fn attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::Address(inet_addr(self.addr)),
            DestAttr::Port(self.port),
            DestAttr::FwdMethod(FWD_MASQ),
            DestAttr::Weight(self.weight),
            DestAttr::UpperThreshold(0),
            DestAttr::LowerThreshold(0),
            DestAttr::AddressFamily(family_of(&self.addr)),
        ]
    }

    /// The attributes naming this real server in DEL_DEST.
    pub fn key_attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::Address(inet_addr(self.addr)),
            DestAttr::Port(self.port),
            DestAttr::AddressFamily(family_of(&self.addr)),
        ]
    }

    /// `ip:port`, IPv6 in brackets.
    pub fn endpoint(&self) -> String {
        match self.addr {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        }
    }
}

/// A real server as the kernel reports it, with its connection counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestState {
    pub server: RealServer,
    pub active: u32,
    pub inactive: u32,
}

impl DestState {
    /// From a GET_DEST dump message; `family` is the service's.
    pub fn from_message(attrs: &[IpvsAttr], family: u16) -> Option<DestState> {
        let dest = attrs.iter().find_map(|a| match a {
            IpvsAttr::Dest(d) => Some(d),
            _ => None,
        })?;
        let mut addr = None;
        let mut af = family;
        let mut state = DestState {
            server: RealServer {
                addr: IpAddr::from([0, 0, 0, 0]),
                port: 0,
                weight: 0,
            },
            active: 0,
            inactive: 0,
        };
        let mut port = None;
        for a in dest {
            match a {
                DestAttr::Address(v) => addr = Some(*v),
                DestAttr::Port(v) => port = Some(*v),
                DestAttr::Weight(v) => state.server.weight = *v,
                DestAttr::ActiveConns(v) => state.active = *v,
                DestAttr::InactiveConns(v) => state.inactive = *v,
                DestAttr::AddressFamily(v) => af = *v,
                _ => {}
            }
        }
        state.server.addr = ip_from_inet(af, &addr?);
        state.server.port = port?;
        Some(state)
    }
}

/// IPVS connection timeouts in seconds (`ipvsadm --set`); 0 leaves one unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

impl Timeouts {
    pub fn attrs(&self) -> Vec<IpvsAttr> {
        vec![
            IpvsAttr::TimeoutTcp(self.tcp),
            IpvsAttr::TimeoutTcpFin(self.tcp_fin),
            IpvsAttr::TimeoutUdp(self.udp),
        ]
    }

    pub fn from_attrs(attrs: &[IpvsAttr]) -> Timeouts {
        let mut t = Timeouts::default();
        for a in attrs {
            match a {
                IpvsAttr::TimeoutTcp(v) => t.tcp = *v,
                IpvsAttr::TimeoutTcpFin(v) => t.tcp_fin = *v,
                IpvsAttr::TimeoutUdp(v) => t.udp = *v,
                _ => {}
            }
        }
        t
    }

    pub fn is_unset(&self) -> bool {
        *self == Timeouts::default()
    }
}
