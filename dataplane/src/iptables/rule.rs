//! The typed rule IR of both iptables layouts (the iptables mode's and the
//! IPVS mode's). Rules are values; [`fmt::Display`] renders one as the
//! argument text of an `iptables-restore` `-A` line, the only place text is
//! made (its comment through [`escape::comment`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use switchyard_api::ruleset::{Cidr, Protocol};

use super::escape;
use crate::ebpf::masq_ports::MasqueradePorts;

/// The two tables the backend writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Nat,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Filter, Table::Nat];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// Which address (or port) of a packet a match looks at: the side of an
/// `addrtype` match, one dimension of an ipset match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// One match of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `-m <proto> -p <proto>`.
    Protocol(Protocol),
    /// `-p <proto>` alone, where no port match follows (the IPVS mode's node-port rules).
    ProtocolOnly(Protocol),
    /// `[!] -s <cidr>`.
    Source { cidr: Cidr, negate: bool },
    /// `[!] -d <cidr>`.
    Destination { cidr: Cidr, negate: bool },
    /// `--dport <port>`; follows a [`Match::Protocol`].
    DestinationPort(u16),
    /// `-m addrtype --src-type|--dst-type LOCAL`.
    LocalAddress(Side),
    /// `-m mark [!] --mark <mark>/<mark>`.
    Mark { mark: u32, negate: bool },
    /// `-m conntrack [!] --ctstate <states>`.
    CtState { states: &'static str, negate: bool },
    /// `-m statistic --mode random --probability 1/<of>`: one of `of` remaining endpoints.
    RandomOneOf(usize),
    /// `-m recent --name <chain> --rcheck --seconds <s> --reap`.
    RecentCheck { name: String, seconds: u32 },
    /// `-m recent --name <chain> --set`.
    RecentSet { name: String },
    /// `-m set --match-set <set> dst,dst,src`: the packet's fields, one per
    /// dimension of the ipset, are a member.
    Set {
        name: String,
        dimensions: &'static [Side],
    },
    /// `-m comment --comment <text>` at this place among the matches, for
    /// rules whose comment kube-proxy writes after a match (its jumps from
    /// the builtin chains: `-m conntrack --ctstate NEW -m comment …`); other
    /// rules carry theirs in [`Rule::comment`].
    Comment(String),
    /// `-m ipvs --vaddr <ip> --vproto <proto> --vport <port>`: the packet
    /// belongs to an IPVS connection of that virtual server.
    IpvsVirtual {
        addr: IpAddr,
        protocol: Protocol,
        port: u16,
    },
}

/// What a matching rule does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Jump(String),
    Accept,
    Drop,
    /// REJECT with the default icmp(6)-port-unreachable.
    Reject,
    Return,
    Dnat(SocketAddr),
    OrMark(u32),
    XorMark(u32),
    /// `-j MASQUERADE [--to-ports <min>-<max>] [--random-fully]`; the ports
    /// only after a TCP or UDP match.
    Masquerade {
        random_fully: bool,
        ports: Option<MasqueradePorts>,
    },
    /// No target: a rule that only counts and documents (kube-proxy's end of a KUBE-FW chain).
    Nothing,
}

/// One rule: an optional comment, matches in order, a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub comment: Option<String>,
    pub matches: Vec<Match>,
    pub target: Target,
}

impl Rule {
    pub fn new(target: Target) -> Rule {
        Rule {
            comment: None,
            matches: Vec::new(),
            target,
        }
    }

    pub fn comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }

    pub fn with(mut self, m: Match) -> Rule {
        self.matches.push(m);
        self
    }

    /// `-m <proto> -p <proto> [-d <ip>] --dport <port>`, kube-proxy's order.
    pub fn to_port(mut self, protocol: Protocol, dest: Option<Cidr>, port: u16) -> Rule {
        self.matches.push(Match::Protocol(protocol));
        if let Some(cidr) = dest {
            self.matches.push(Match::Destination {
                cidr,
                negate: false,
            });
        }
        self.matches.push(Match::DestinationPort(port));
        self
    }

    /// The chain this rule jumps to, if any.
    pub fn jump_target(&self) -> Option<&str> {
        match &self.target {
            Target::Jump(chain) => Some(chain),
            _ => None,
        }
    }
}

fn not(negate: bool) -> &'static str {
    if negate { "! " } else { "" }
}

/// The probability kube-proxy writes: 1/n with ten decimals.
pub fn probability(of: usize) -> String {
    format!("{:.10}", 1.0 / of as f64)
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Protocol(p) => write!(f, "-m {0} -p {0}", p.as_lower()),
            Match::ProtocolOnly(p) => write!(f, "-p {}", p.as_lower()),
            Match::Source { cidr, negate } => {
                write!(f, "{}-s {}", not(*negate), host_or_cidr(cidr))
            }
            Match::Destination { cidr, negate } => {
                write!(f, "{}-d {}", not(*negate), host_or_cidr(cidr))
            }
            Match::DestinationPort(port) => write!(f, "--dport {port}"),
            Match::LocalAddress(Side::Source) => f.write_str("-m addrtype --src-type LOCAL"),
            Match::LocalAddress(Side::Destination) => f.write_str("-m addrtype --dst-type LOCAL"),
            Match::Mark { mark, negate } => {
                write!(f, "-m mark {}--mark {mark:#x}/{mark:#x}", not(*negate))
            }
            Match::Comment(text) => write!(f, "-m comment --comment {}", escape::comment(text)),
            Match::CtState { states, negate } => {
                write!(f, "-m conntrack {}--ctstate {states}", not(*negate))
            }
            Match::RandomOneOf(of) => write!(
                f,
                "-m statistic --mode random --probability {}",
                probability(*of)
            ),
            Match::RecentCheck { name, seconds } => write!(
                f,
                "-m recent --name {name} --rcheck --seconds {seconds} --reap"
            ),
            Match::RecentSet { name } => write!(f, "-m recent --name {name} --set"),
            Match::Set { name, dimensions } => {
                let sides: Vec<&str> = dimensions
                    .iter()
                    .map(|side| match side {
                        Side::Source => "src",
                        Side::Destination => "dst",
                    })
                    .collect();
                write!(f, "-m set --match-set {name} {}", sides.join(","))
            }
            Match::IpvsVirtual {
                addr,
                protocol,
                port,
            } => write!(
                f,
                "-m ipvs --vaddr {} --vproto {} --vport {port}",
                host_or_cidr(&Cidr::host(*addr)),
                protocol.as_lower()
            ),
        }
    }
}

/// A host prefix prints as the bare address, as kube-proxy writes `-d 172.30.0.41`.
fn host_or_cidr(cidr: &Cidr) -> String {
    if *cidr == Cidr::host(cidr.addr()) {
        cidr.addr().to_string()
    } else {
        cidr.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Jump(chain) => write!(f, "-j {chain}"),
            Target::Accept => f.write_str("-j ACCEPT"),
            Target::Drop => f.write_str("-j DROP"),
            Target::Reject => f.write_str("-j REJECT"),
            Target::Return => f.write_str("-j RETURN"),
            Target::Dnat(to) => write!(f, "-j DNAT --to-destination {to}"),
            Target::OrMark(mark) => write!(f, "-j MARK --or-mark {mark:#x}"),
            Target::XorMark(mark) => write!(f, "-j MARK --xor-mark {mark:#x}"),
            Target::Masquerade {
                random_fully,
                ports,
            } => {
                f.write_str("-j MASQUERADE")?;
                if let Some(p) = ports {
                    write!(f, " --to-ports {}-{}", p.min, p.max)?;
                }
                if *random_fully {
                    f.write_str(" --random-fully")?;
                }
                Ok(())
            }
            Target::Nothing => Ok(()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(c) = &self.comment {
            parts.push(format!("-m comment --comment {}", escape::comment(c)));
        }
        parts.extend(self.matches.iter().map(Match::to_string));
        let target = self.target.to_string();
        if !target.is_empty() {
            parts.push(target);
        }
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kube_proxy_argument_order() {
        let rule = Rule::new(Target::Jump("KUBE-SVC-X".into()))
            .comment("ns1/svc1:p80 cluster IP")
            .to_port(Protocol::Tcp, Some("172.30.0.41".parse().unwrap()), 80);
        assert_eq!(
            rule.to_string(),
            r#"-m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-X"#
        );
        let masq = Rule::new(Target::Return).with(Match::Mark {
            mark: 0x4000,
            negate: true,
        });
        assert_eq!(masq.to_string(), "-m mark ! --mark 0x4000/0x4000 -j RETURN");
        assert_eq!(probability(3), "0.3333333333");
    }
}
