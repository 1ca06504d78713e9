//! The typed plan: tables, chains, sets, maps, elements and rules as Rust
//! values. Text exists only in [`super::text`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use switchyard_api::ruleset::{Cidr, IpFamily, Protocol};

use crate::conntrack::UdpSnapshot;

/// The one table name, in both families.
pub const TABLE: &str = "switchyard";

/// Everything this backend programs: one table per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Shared, so keeping the applied plan for the next diff costs no copy.
    pub tables: Vec<Arc<Table>>,
    /// Service ports left out of the plan, with the reason (bad input is skipped, not fatal).
    pub skipped: Vec<String>,
    /// What the plan programs for UDP, for stale conntrack cleanup.
    pub udp: UdpSnapshot,
}

impl Plan {
    pub fn table(&self, family: IpFamily) -> Option<&Table> {
        self.tables
            .iter()
            .map(|t| &**t)
            .find(|t| t.family == family)
    }

    /// Rules plus set/map elements, for [`crate::backend::ApplyStats`].
    pub fn object_count(&self) -> u32 {
        let n: usize = self
            .tables
            .iter()
            .map(|t| {
                t.chains.values().map(|c| c.rules.len()).sum::<usize>()
                    + t.sets.values().map(|s| s.elements.len()).sum::<usize>()
            })
            .sum();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// `table ip switchyard` or `table ip6 switchyard`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: IpFamily,
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
}

impl Table {
    pub fn new(family: IpFamily) -> Table {
        Table {
            family,
            sets: BTreeMap::new(),
            chains: BTreeMap::new(),
        }
    }
}

/// The netfilter hook of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

/// Priority of a base chain relative to the nat priorities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// `dstnat + offset`
    Dstnat(i32),
    /// `srcnat + offset`
    Srcnat(i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: Priority,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Set for chains attached to a netfilter hook.
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn regular(rules: Vec<Rule>) -> Chain {
        Chain { base: None, rules }
    }
}

/// What a set holds and what its elements map to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetKind {
    /// `ipv4_addr` / `ipv6_addr`.
    Addr,
    /// Address prefixes (`flags interval`).
    Prefix,
    /// `addr . addr` (source and destination).
    AddrPair,
    /// `addr . inet_proto . inet_service : verdict`.
    AddrProtoPortVerdict,
    /// `inet_proto . inet_service : verdict`.
    ProtoPortVerdict,
}

impl SetKind {
    pub fn is_map(self) -> bool {
        matches!(
            self,
            SetKind::AddrProtoPortVerdict | SetKind::ProtoPortVerdict
        )
    }
}

/// A named set or verdict map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    /// `flags dynamic,timeout; timeout Ns` (session affinity).
    pub timeout_seconds: Option<u32>,
    pub comment: Option<String>,
    pub elements: BTreeMap<Key, Option<Verdict>>,
}

impl Set {
    pub fn new(kind: SetKind, comment: Option<&str>) -> Set {
        Set {
            kind,
            timeout_seconds: None,
            comment: comment.map(str::to_string),
            elements: BTreeMap::new(),
        }
    }

    /// The definition without the elements (what a change of definition compares).
    pub fn same_definition(&self, other: &Set) -> bool {
        self.kind == other.kind
            && self.timeout_seconds == other.timeout_seconds
            && self.comment == other.comment
    }
}

/// A set element's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Addr(IpAddr),
    Prefix(Cidr),
    AddrPair(IpAddr, IpAddr),
    AddrProtoPort(IpAddr, Protocol, u16),
    ProtoPort(Protocol, u16),
}

/// A verdict, in a rule or as a map value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// Which address of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Saddr,
    Daddr,
}

/// A match; all matches of a rule must hold for its statements to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `ip saddr 10.0.0.1` / `ip daddr 10.0.0.1`.
    Addr(Dir, IpAddr),
    /// `ip saddr @set` (or `!= @set` when `negate`).
    AddrInSet { dir: Dir, set: String, negate: bool },
    /// `ip saddr 10.0.0.0/8` (loadBalancerSourceRanges: one rule per range,
    /// not an inline set, whose anonymous sets cost the kernel quadratic time).
    SaddrInPrefix(Cidr),
    /// `ip saddr . ip daddr @set`.
    AddrPairInSet(String),
    /// `ip daddr != 127.0.0.0/8` / `ip6 daddr != ::1`.
    DaddrNotLoopback,
    /// `<proto> dport <port>`.
    Dport(Protocol, u16),
    /// `meta l4proto <proto>`.
    L4Proto(Protocol),
    /// `ct state new`.
    CtStateNew,
    /// `ct status dnat`.
    CtStatusDnat,
    /// `fib saddr type local`.
    FibSaddrLocal,
    /// `fib daddr type local`.
    FibDaddrLocal,
    /// `mark and <mask> == 0`.
    MarkClear(u32),
    /// `numgen random mod <n> 0`: true with probability 1/n.
    NumgenZero(u32),
}

/// A statement; the last one of a rule may be a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `<addr> . meta l4proto . th dport vmap @map`.
    VmapAddrProtoPort(Dir, String),
    /// `meta l4proto . th dport vmap @map`.
    VmapProtoPort(String),
    /// `update @set { ip saddr }`.
    UpdateSaddr(String),
    /// `meta mark set mark or <bits>`.
    MarkOr(u32),
    /// `meta mark set mark xor <bits>`.
    MarkXor(u32),
    Masquerade,
    /// `dnat to <ip>:<port>`.
    Dnat(IpAddr, u16),
    Reject,
    Verdict(Verdict),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub stmts: Vec<Stmt>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, stmts: Vec<Stmt>) -> Rule {
        Rule {
            matches,
            stmts,
            comment: None,
        }
    }

    pub fn with_comment(mut self, comment: &str) -> Rule {
        self.comment = Some(comment.to_string());
        self
    }
}
