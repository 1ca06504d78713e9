//! A packet tracer over the typed plan: walks the chains a packet's first
//! packet meets, hook by hook, and reports the verdict, the DNAT target and
//! whether it is masqueraded.

use std::net::IpAddr;

use switchyard_api::ruleset::{IpFamily, Protocol};

use super::ir::{Dir, Key, Match, Pick, PickKey, Plan, SetKind, Stmt, Table, Value, Verdict};
use super::render::{
    FILTER_FORWARD, FILTER_INPUT, FILTER_OUTPUT, FILTER_OUTPUT_POST_DNAT, FILTER_PREROUTING,
    NAT_OUTPUT, NAT_POSTROUTING, NAT_PREROUTING,
};

/// The first packet of a connection.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Protocol,
    pub dport: u16,
    /// Sent by the node itself (output hook) rather than arriving (prerouting).
    pub from_host: bool,
    /// `fib saddr type local`.
    pub src_local: bool,
    /// `fib daddr type local`.
    pub dst_local: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Drop,
    Reject,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub outcome: Outcome,
    pub dnat: Option<(IpAddr, u16)>,
    pub masquerade: bool,
}

enum Flow {
    /// The chain ended (or returned): continue in the caller.
    Continue,
    /// A terminal verdict for this hook's base chain.
    Stop(Outcome),
}

struct State<'a> {
    table: &'a Table,
    pkt: Packet,
    mark: u32,
    dnat: Option<(IpAddr, u16)>,
    masquerade: bool,
    /// Which `numgen random mod n == 0` match (counting from 0) comes out
    /// true, and the index a `numgen random mod n` of a pick map yields
    /// (at most n - 1).
    choice: usize,
    rolls: usize,
    depth: usize,
}

/// Trace `pkt`; `choice` selects the endpoint a `numgen` cascade or pick
/// map picks (0 = the first, anything too large = the last).
pub fn trace(plan: &Plan, pkt: &Packet, choice: usize) -> Trace {
    let family = IpFamily::of(&pkt.dst);
    let Some(table) = plan.table(family) else {
        return Trace {
            outcome: Outcome::Accept,
            dnat: None,
            masquerade: false,
        };
    };
    let mut st = State {
        table: &table,
        pkt: pkt.clone(),
        mark: 0,
        dnat: None,
        masquerade: false,
        choice,
        rolls: 0,
        depth: 0,
    };
    let hooks: &[&str] = if pkt.from_host {
        &[FILTER_OUTPUT, NAT_OUTPUT, FILTER_OUTPUT_POST_DNAT]
    } else {
        &[FILTER_PREROUTING, NAT_PREROUTING]
    };
    let mut outcome = Outcome::Accept;
    for hook in hooks {
        if let Flow::Stop(o @ (Outcome::Drop | Outcome::Reject)) = st.chain(hook) {
            outcome = o;
            break;
        }
    }
    if outcome == Outcome::Accept && !pkt.from_host {
        // Input or forward sees the destination after DNAT.
        let hook = if st.dnat.is_none() && pkt.dst_local {
            FILTER_INPUT
        } else {
            FILTER_FORWARD
        };
        if let Flow::Stop(o @ (Outcome::Drop | Outcome::Reject)) = st.chain(hook) {
            outcome = o;
        }
    }
    if outcome == Outcome::Accept {
        st.chain(NAT_POSTROUTING);
    }
    Trace {
        outcome,
        dnat: st.dnat,
        masquerade: st.masquerade,
    }
}

impl State<'_> {
    fn daddr(&self) -> IpAddr {
        self.dnat.map_or(self.pkt.dst, |(ip, _)| ip)
    }

    fn dport(&self) -> u16 {
        self.dnat.map_or(self.pkt.dport, |(_, p)| p)
    }

    fn addr(&self, dir: Dir) -> IpAddr {
        match dir {
            Dir::Saddr => self.pkt.src,
            Dir::Daddr => self.daddr(),
        }
    }

    fn in_set(&self, set: &str, ip: IpAddr) -> bool {
        self.table.sets.get(set).is_some_and(|s| match s.kind {
            SetKind::Prefix => s.elements.keys().any(|k| match k {
                Key::Prefix(c) => c.contains(&ip),
                _ => false,
            }),
            _ => s.elements.contains_key(&Key::Addr(ip)),
        })
    }

    fn matches(&mut self, m: &Match) -> bool {
        match m {
            Match::Addr(dir, ip) => self.addr(*dir) == *ip,
            Match::AddrInSet { dir, set, negate } => self.in_set(set, self.addr(*dir)) != *negate,
            Match::SaddrInPrefix(c) => c.contains(&self.pkt.src),
            Match::AddrPairInSet(set) => self.table.sets.get(set).is_some_and(|s| {
                s.elements
                    .contains_key(&Key::AddrPair(self.pkt.src, self.daddr()))
            }),
            Match::DaddrProtoPortInSet(set) => self.table.sets.get(set).is_some_and(|s| {
                s.elements.contains_key(&Key::AddrProtoPort(
                    self.daddr(),
                    self.pkt.proto,
                    self.dport(),
                ))
            }),
            Match::DaddrNotLoopback => !self.daddr().is_loopback(),
            Match::Dport(p, port) => self.pkt.proto == *p && self.dport() == *port,
            Match::L4Proto(p) => self.pkt.proto == *p,
            // The tracer follows a connection's first packet.
            Match::CtStateNew => true,
            Match::CtStatusDnat => self.dnat.is_some(),
            Match::FibSaddrLocal => self.pkt.src_local,
            Match::FibDaddrLocal => self.pkt.dst_local,
            Match::MarkClear(mask) => self.mark & mask == 0,
            Match::NumgenZero(_) => {
                let hit = self.rolls == self.choice;
                self.rolls += 1;
                hit
            }
        }
    }

    fn lookup(&self, map: &str, key: Key) -> Option<Value> {
        self.table
            .sets
            .get(map)?
            .elements
            .get(&key)
            .cloned()
            .flatten()
    }

    fn vmap(&mut self, map: &str, key: Key) -> Option<Flow> {
        match self.lookup(map, key) {
            Some(Value::Verdict(v)) => self.verdict(&v),
            _ => None,
        }
    }

    /// The pick map's endpoint for the packet (none: the rule does not match).
    fn pick(&self, pick: &Pick) -> Option<(IpAddr, u16)> {
        let k = u32::try_from(self.choice)
            .unwrap_or(u32::MAX)
            .min(pick.n.saturating_sub(1));
        let key = match pick.key {
            PickKey::Vip => Key::AddrPortIndex(self.daddr(), self.dport(), k),
            PickKey::NodePort => Key::PortIndex(self.dport(), k),
        };
        match self.lookup(&pick.map(), key)? {
            Value::Endpoint(ip, port) => Some((ip, port)),
            Value::Verdict(_) => None,
        }
    }

    fn verdict(&mut self, v: &Verdict) -> Option<Flow> {
        match v {
            Verdict::Accept => Some(Flow::Stop(Outcome::Accept)),
            Verdict::Drop => Some(Flow::Stop(Outcome::Drop)),
            Verdict::Return => Some(Flow::Continue),
            Verdict::Jump(c) => match self.chain(c) {
                Flow::Continue => None,
                stop => Some(stop),
            },
            Verdict::Goto(c) => Some(self.chain(c)),
        }
    }

    /// Run a chain; `Continue` means it ended without a terminal verdict.
    fn chain(&mut self, name: &str) -> Flow {
        let Some(chain) = self.table.chains.get(name) else {
            return Flow::Continue;
        };
        self.depth += 1;
        if self.depth > 32 {
            // nft refuses deeper jump stacks; a loop in a plan is a bug.
            return Flow::Stop(Outcome::Drop);
        }
        for rule in chain.rules.iter() {
            if !rule.matches.iter().all(|m| self.matches(m)) {
                continue;
            }
            for stmt in &rule.stmts {
                let flow = match stmt {
                    Stmt::VmapAddrProtoPort(dir, map) => {
                        let key = Key::AddrProtoPort(self.addr(*dir), self.pkt.proto, self.dport());
                        self.vmap(map, key)
                    }
                    Stmt::VmapProtoPort(map) => {
                        self.vmap(map, Key::ProtoPort(self.pkt.proto, self.dport()))
                    }
                    Stmt::UpdateSaddr(_) => None,
                    Stmt::MarkOr(bits) => {
                        self.mark |= bits;
                        None
                    }
                    Stmt::MarkXor(bits) => {
                        self.mark ^= bits;
                        None
                    }
                    Stmt::Masquerade(_) => {
                        self.masquerade = true;
                        Some(Flow::Stop(Outcome::Accept))
                    }
                    Stmt::Dnat(ip, port) => {
                        self.dnat = Some((*ip, *port));
                        Some(Flow::Stop(Outcome::Accept))
                    }
                    Stmt::DnatPick(pick) => match self.pick(pick) {
                        Some(to) => {
                            self.dnat = Some(to);
                            Some(Flow::Stop(Outcome::Accept))
                        }
                        // A lookup that misses ends the rule.
                        None => break,
                    },
                    Stmt::Reject => Some(Flow::Stop(Outcome::Reject)),
                    Stmt::Verdict(v) => self.verdict(v),
                };
                if let Some(flow) = flow {
                    self.depth -= 1;
                    return flow;
                }
            }
        }
        self.depth -= 1;
        Flow::Continue
    }
}
