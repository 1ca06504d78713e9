//! The typed IPVS plan: virtual servers with their real servers, the addresses
//! on `kube-ipvs0`, kube-proxy's ipsets, the iptables rules around them (the
//! iptables mode's [`FamilyPlan`]), the connection timeouts and strictARP. `Display` prints it as `ipvsadm -Ln`,
//! `ip addr`, `ipset save` and `iptables-save` would.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use switchyard_api::ruleset::{Cidr, IpFamily, Protocol};

use super::objects::{RealServer, ServiceKey, Timeouts, VirtualServer};
use crate::conntrack::UdpSnapshot;
use crate::escape;
use crate::iptables::plan::FamilyPlan;
use crate::iptables::restore::tools;
use crate::iptables::trace::{IpSets, SetLookup};

/// The dummy interface holding every service address.
pub const DUMMY_INTERFACE: &str = "kube-ipvs0";

/// One virtual server and its real servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedService {
    pub server: VirtualServer,
    pub real_servers: BTreeSet<RealServer>,
    /// `namespace/name:port` this virtual server serves.
    pub service_port: String,
}

/// An ipset type kube-proxy uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetType {
    HashIp,
    HashIpPort,
    HashIpPortIp,
    HashIpPortNet,
    BitmapPort,
}

impl SetType {
    pub fn name(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::BitmapPort => "bitmap:port",
        }
    }
}

/// One member of an ipset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetEntry {
    Ip(IpAddr),
    IpPort(IpAddr, Protocol, u16),
    IpPortIp(IpAddr, Protocol, u16, IpAddr),
    IpPortNet(IpAddr, Protocol, u16, Cidr),
    Port(u16),
}

impl SetEntry {
    /// Whether the packet fields `lookup` picks are this member, as the
    /// kernel matches the set's type (ports with their protocol, except
    /// `bitmap:port`'s).
    fn matches(&self, lookup: &SetLookup<'_>) -> bool {
        let ip_port = |ip: IpAddr, protocol: Protocol, port: u16| {
            lookup.address(0) == Some(ip)
                && lookup.protocol == protocol
                && lookup.port(1) == Some(port)
        };
        match self {
            SetEntry::Ip(ip) => lookup.address(0) == Some(*ip),
            SetEntry::IpPort(ip, p, port) => ip_port(*ip, *p, *port),
            SetEntry::IpPortIp(ip, p, port, ip2) => {
                ip_port(*ip, *p, *port) && lookup.address(2) == Some(*ip2)
            }
            SetEntry::IpPortNet(ip, p, port, net) => {
                ip_port(*ip, *p, *port) && lookup.address(2).is_some_and(|a| net.contains(&a))
            }
            SetEntry::Port(port) => lookup.port(0) == Some(*port),
        }
    }
}

impl fmt::Display for SetEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetEntry::Ip(ip) => write!(f, "{ip}"),
            SetEntry::IpPort(ip, p, port) => write!(f, "{ip},{}:{port}", p.as_lower()),
            SetEntry::IpPortIp(ip, p, port, ip2) => {
                write!(f, "{ip},{}:{port},{ip2}", p.as_lower())
            }
            SetEntry::IpPortNet(ip, p, port, net) => {
                write!(f, "{ip},{}:{port},{net}", p.as_lower())
            }
            SetEntry::Port(port) => write!(f, "{port}"),
        }
    }
}

/// One of our ipsets with its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpSet {
    pub name: String,
    pub kind: SetType,
    /// `None` for `bitmap:port`, which has no family.
    pub family: Option<IpFamily>,
    pub comment: &'static str,
    pub entries: BTreeSet<SetEntry>,
}

impl IpSet {
    /// The `create` line of `ipset restore`.
    pub fn create_line(&self) -> String {
        let mut line = format!("create {} {}", self.name, self.kind.name());
        match (self.kind, self.family) {
            (SetType::BitmapPort, _) => line.push_str(" range 0-65535"),
            (_, Some(IpFamily::V6)) => line.push_str(" family inet6 hashsize 1024 maxelem 65536"),
            (_, _) => line.push_str(" family inet hashsize 1024 maxelem 65536"),
        }
        line
    }
}

/// A service port, or one of its frontends, that IPVS cannot express exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limitation {
    pub service_port: String,
    pub reason: &'static str,
}

/// Everything the IPVS backend programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpvsPlan {
    pub services: BTreeMap<ServiceKey, PlannedService>,
    pub addresses: BTreeSet<IpAddr>,
    pub ipsets: Vec<IpSet>,
    /// The iptables rules per family, in the iptables mode's model.
    pub rules: Vec<FamilyPlan>,
    /// Load-balancer virtual servers whose source ranges leave the node out
    /// (`KUBE-IPVS-OUT-FILTER`).
    pub lb_no_node_access: BTreeSet<ServiceKey>,
    pub timeouts: Timeouts,
    pub strict_arp: bool,
    pub limitations: Vec<Limitation>,
    /// What the UDP service ports program, for stale conntrack cleanup.
    pub udp: UdpSnapshot,
}

impl IpvsPlan {
    /// Objects in the plan (virtual servers, real servers, addresses, set members, rules).
    pub fn object_count(&self) -> u32 {
        let vs: usize = self
            .services
            .values()
            .map(|s| 1 + s.real_servers.len())
            .sum();
        let sets: usize = self.ipsets.iter().map(|s| s.entries.len()).sum();
        let rules: usize = self.rules.iter().map(FamilyPlan::rule_count).sum();
        (vs + self.addresses.len() + sets + rules) as u32
    }
}

/// The plan's ipsets answer the iptables tracer's `--match-set` matches.
impl IpSets for IpvsPlan {
    fn contains(&self, name: &str, lookup: &SetLookup<'_>) -> bool {
        self.ipsets
            .iter()
            .filter(|s| s.name == name)
            .any(|s| s.entries.iter().any(|e| e.matches(lookup)))
    }
}

impl fmt::Display for IpvsPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# ipvsadm -Ln")?;
        writeln!(f, "Prot LocalAddress:Port Scheduler Flags")?;
        writeln!(f, "  -> RemoteAddress:Port           Forward Weight")?;
        for s in self.services.values() {
            let vs = &s.server;
            let addr = match vs.key.addr {
                IpAddr::V4(a) => format!("{a}:{}", vs.key.port),
                IpAddr::V6(a) => format!("[{a}]:{}", vs.key.port),
            };
            write!(f, "{} {addr} {}", vs.key.protocol, vs.scheduler)?;
            if vs.timeout != 0 {
                write!(f, " persistent {}", vs.timeout)?;
            }
            if vs.flags & super::genl::SVC_F_SCHED1 != 0 {
                write!(f, " flag-1")?;
            }
            if vs.flags & super::genl::SVC_F_SCHED2 != 0 {
                write!(f, " flag-2")?;
            }
            writeln!(f, "  # {}", escape::printable(&s.service_port))?;
            for rs in &s.real_servers {
                writeln!(f, "  -> {:<28} Masq    {}", rs.endpoint(), rs.weight)?;
            }
        }
        writeln!(f, "# ip addr show dev {DUMMY_INTERFACE}")?;
        for a in &self.addresses {
            writeln!(f, "{a}")?;
        }
        writeln!(f, "# ipset save")?;
        for set in &self.ipsets {
            writeln!(f, "{}", set.create_line())?;
            for e in &set.entries {
                writeln!(f, "add {} {e}", set.name)?;
            }
        }
        for r in &self.rules {
            let (_, _, save) = tools(r.family);
            writeln!(f, "# {save}")?;
            write!(f, "{r}")?;
        }
        if !self.timeouts.is_unset() {
            writeln!(
                f,
                "# ipvsadm --set {} {} {}",
                self.timeouts.tcp, self.timeouts.tcp_fin, self.timeouts.udp
            )?;
        }
        if self.strict_arp {
            writeln!(f, "# strictARP: arp_ignore=1 arp_announce=2")?;
        }
        for l in &self.limitations {
            writeln!(
                f,
                "# not expressible: {}: {}",
                escape::printable(&l.service_port),
                l.reason
            )?;
        }
        Ok(())
    }
}
