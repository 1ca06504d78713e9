//! A packet tracer over the typed plan (kube-proxy's `iptablestracer`): walks
//! a new connection's first packet through the nat and filter hooks and
//! reports every outcome the rules allow, following both sides of each
//! random-probability rule. It traces the IPVS mode's iptables part too, with
//! the IPVS plan's ipsets answering its `--match-set` matches ([`IpSets`]).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use switchyard_api::ruleset::Protocol;

use super::plan::FamilyPlan;
use super::rule::{Match, Rule, Side, Table, Target};

/// Where the packet starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Sent by a process on the node (nat/filter OUTPUT).
    Node,
    /// Arriving from another host or a pod (nat PREROUTING).
    Remote,
}

/// The first packet of a new connection.
#[derive(Clone, Debug)]
pub struct Packet {
    pub origin: Origin,
    pub protocol: Protocol,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub port: u16,
}

/// Where one path through the rules ends.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// DNATed to this endpoint.
    Endpoint(SocketAddr),
    Reject,
    Drop,
    /// Accepted by a filter rule, untranslated.
    Accept,
    /// No proxy rule matched: continues untranslated.
    Untranslated,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Endpoint(addr) => write!(f, "{addr}"),
            Verdict::Reject => f.write_str("REJECT"),
            Verdict::Drop => f.write_str("DROP"),
            Verdict::Accept => f.write_str("ACCEPT"),
            Verdict::Untranslated => f.write_str(""),
        }
    }
}

/// One possible outcome.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The packet leaves masqueraded (nat POSTROUTING's MASQUERADE).
    pub masquerade: bool,
}

/// The packet fields an ipset match looks up: one address or port per
/// dimension of the set, picked by the match's `src` / `dst` flags.
#[derive(Clone, Copy, Debug)]
pub struct SetLookup<'a> {
    pub dimensions: &'a [Side],
    pub protocol: Protocol,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub port: u16,
}

impl SetLookup<'_> {
    /// The address dimension `at` looks up.
    pub fn address(&self, at: usize) -> Option<IpAddr> {
        self.dimensions.get(at).map(|side| match side {
            Side::Source => self.source,
            Side::Destination => self.destination,
        })
    }

    /// The port dimension `at` looks up; the tracer knows no source port.
    pub fn port(&self, at: usize) -> Option<u16> {
        match self.dimensions.get(at)? {
            Side::Source => None,
            Side::Destination => Some(self.port),
        }
    }
}

/// The members of the ipsets a plan's `--match-set` matches name.
pub trait IpSets {
    /// Whether set `name` holds the fields `lookup` picks from the packet.
    fn contains(&self, name: &str, lookup: &SetLookup<'_>) -> bool;
}

/// No ipsets: the iptables mode's plans name none.
pub struct NoSets;

impl IpSets for NoSets {
    fn contains(&self, _: &str, _: &SetLookup<'_>) -> bool {
        false
    }
}

#[derive(Clone, Debug)]
struct State {
    destination: IpAddr,
    port: u16,
    mark: u32,
    dnat: bool,
    masquerade: bool,
    stop: Option<Stop>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Dnat,
    Accept,
    Drop,
    Reject,
}

struct Tracer<'a> {
    plan: &'a FamilyPlan,
    local: &'a [IpAddr],
    sets: &'a dyn IpSets,
    packet: &'a Packet,
}

impl Tracer<'_> {
    fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.local.contains(ip)
    }

    /// Whether `m` matches; `None` for a random match (both ways possible).
    fn matches(&self, m: &Match, s: &State) -> Option<bool> {
        let p = self.packet;
        Some(match m {
            Match::Protocol(proto) | Match::ProtocolOnly(proto) => *proto == p.protocol,
            Match::Source { cidr, negate } => cidr.contains(&p.source) != *negate,
            Match::Destination { cidr, negate } => cidr.contains(&s.destination) != *negate,
            Match::DestinationPort(port) => *port == s.port,
            Match::LocalAddress(Side::Source) => self.is_local(&p.source),
            Match::LocalAddress(Side::Destination) => self.is_local(&s.destination),
            Match::Mark { mark, negate } => (s.mark & mark == *mark) != *negate,
            Match::CtState { states, negate } => {
                let any = states
                    .split(',')
                    .any(|st| st == "NEW" || (st == "DNAT" && s.dnat));
                any != *negate
            }
            Match::RandomOneOf(_) => return None,
            Match::RecentCheck { .. } => false,
            Match::Comment(_) => true,
            Match::RecentSet { .. } => true,
            Match::Set { name, dimensions } => self.sets.contains(
                name,
                &SetLookup {
                    dimensions,
                    protocol: p.protocol,
                    source: p.source,
                    destination: s.destination,
                    port: s.port,
                },
            ),
            // The virtual server the packet was sent to, before IPVS rewrote it.
            Match::IpvsVirtual {
                addr,
                protocol,
                port,
            } => *addr == p.destination && *protocol == p.protocol && *port == p.port,
        })
    }

    /// Run `state` through `rules` from `at`; every resulting state, each either
    /// stopped or having fallen off the end (return to the caller).
    fn run_rules(
        &self,
        table: Table,
        rules: &[Rule],
        at: usize,
        state: State,
        depth: u32,
    ) -> Vec<State> {
        let Some(rule) = rules.get(at) else {
            return vec![state];
        };
        if depth > 64 {
            return vec![state];
        }
        let mut random = false;
        for m in &rule.matches {
            match self.matches(m, &state) {
                Some(true) => {}
                Some(false) => return self.run_rules(table, rules, at + 1, state, depth),
                None => random = true,
            }
        }
        let mut out = Vec::new();
        if random {
            out.extend(self.run_rules(table, rules, at + 1, state.clone(), depth));
        }
        for s in self.apply_target(table, rule, state, depth) {
            if s.state.stop.is_some() || s.returned {
                out.push(s.state);
            } else {
                out.extend(self.run_rules(table, rules, at + 1, s.state, depth));
            }
        }
        out
    }

    fn apply_target(&self, table: Table, rule: &Rule, mut state: State, depth: u32) -> Vec<After> {
        let go_on = |state| {
            vec![After {
                state,
                returned: false,
            }]
        };
        match &rule.target {
            Target::Jump(chain) => {
                let Some(c) = self.plan.chain(table, chain) else {
                    return go_on(state);
                };
                self.run_rules(table, &c.rules, 0, state, depth + 1)
                    .into_iter()
                    .map(|state| After {
                        state,
                        returned: false,
                    })
                    .collect()
            }
            Target::Return => vec![After {
                state,
                returned: true,
            }],
            Target::Nothing => go_on(state),
            Target::OrMark(m) => {
                state.mark |= m;
                go_on(state)
            }
            Target::XorMark(m) => {
                state.mark ^= m;
                go_on(state)
            }
            Target::Masquerade { .. } => {
                state.masquerade = true;
                state.stop = Some(Stop::Accept);
                go_on(state)
            }
            Target::Dnat(to) => {
                state.destination = to.ip();
                state.port = to.port();
                state.dnat = true;
                state.stop = Some(Stop::Dnat);
                go_on(state)
            }
            Target::Accept => stop(state, Stop::Accept),
            Target::Drop => stop(state, Stop::Drop),
            Target::Reject => stop(state, Stop::Reject),
        }
    }

    /// Run the jump rules of one builtin chain.
    fn hook(&self, table: Table, builtin: &str, state: State) -> Vec<State> {
        let rules: Vec<Rule> = self
            .plan
            .jumps
            .iter()
            .filter(|j| j.table == table && j.builtin == builtin)
            .map(|j| j.rule.clone())
            .collect();
        self.run_rules(table, &rules, 0, state, 0)
            .into_iter()
            .map(|mut s| {
                // A stop inside nat only ends the nat hook.
                if table == Table::Nat {
                    s.stop = None;
                }
                s
            })
            .collect()
    }
}

struct After {
    state: State,
    returned: bool,
}

fn stop(mut state: State, how: Stop) -> Vec<After> {
    state.stop = Some(how);
    vec![After {
        state,
        returned: false,
    }]
}

/// Every outcome the plan allows for `packet`; `local` are the node's addresses.
pub fn trace(plan: &FamilyPlan, local: &[IpAddr], packet: &Packet) -> BTreeSet<Outcome> {
    trace_with_sets(plan, local, &NoSets, packet)
}

/// [`trace`] for a plan whose rules match ipsets, with their members in `sets`.
pub fn trace_with_sets(
    plan: &FamilyPlan,
    local: &[IpAddr],
    sets: &dyn IpSets,
    packet: &Packet,
) -> BTreeSet<Outcome> {
    let t = Tracer {
        plan,
        local,
        sets,
        packet,
    };
    let start = State {
        destination: packet.destination,
        port: packet.port,
        mark: 0,
        dnat: false,
        masquerade: false,
        stop: None,
    };
    let nat_hook = match packet.origin {
        Origin::Node => "OUTPUT",
        Origin::Remote => "PREROUTING",
    };
    let mut out = BTreeSet::new();
    for s in t.hook(Table::Nat, nat_hook, start) {
        let mut hooks = Vec::new();
        if packet.origin == Origin::Node {
            hooks.push("OUTPUT");
        }
        if t.is_local(&s.destination) {
            hooks.push("INPUT");
        } else if packet.origin == Origin::Remote {
            hooks.push("FORWARD");
        }
        let mut states = vec![s];
        for h in hooks {
            states = states
                .into_iter()
                .flat_map(|s| {
                    if s.stop.is_some() {
                        vec![s]
                    } else {
                        t.hook(Table::Filter, h, s)
                    }
                })
                .collect();
        }
        for s in states {
            let verdict = match s.stop {
                Some(Stop::Drop) => Verdict::Drop,
                Some(Stop::Reject) => Verdict::Reject,
                _ if s.dnat => Verdict::Endpoint(SocketAddr::new(s.destination, s.port)),
                Some(Stop::Accept) => Verdict::Accept,
                _ => Verdict::Untranslated,
            };
            // A dropped or rejected packet is never masqueraded. One that IPVS
            // translates (after the nat hooks: untranslated here) meets
            // POSTROUTING on its way to the real server.
            let leaves = !matches!(verdict, Verdict::Drop | Verdict::Reject);
            let masquerade = leaves && {
                let post = State { stop: None, ..s };
                t.hook(Table::Nat, "POSTROUTING", post)
                    .iter()
                    .any(|p| p.masquerade)
            };
            out.insert(Outcome {
                verdict,
                masquerade,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::plan::{Chain, JumpRule};

    #[test]
    fn random_rules_yield_every_branch() {
        let ep = |ip: &str| Target::Dnat(format!("{ip}:80").parse().unwrap());
        let plan = FamilyPlan {
            family: switchyard_api::ruleset::IpFamily::V4,
            route_localnet: false,
            filter: vec![],
            nat: vec![Chain {
                name: "KUBE-SVC-X".into(),
                rules: vec![
                    Rule::new(ep("10.1.0.1")).with(Match::RandomOneOf(2)),
                    Rule::new(ep("10.1.0.2")),
                ],
            }],
            jumps: vec![JumpRule {
                table: Table::Nat,
                builtin: "PREROUTING",
                rule: Rule::new(Target::Jump("KUBE-SVC-X".into())).to_port(
                    Protocol::Tcp,
                    Some("172.30.0.1".parse().unwrap()),
                    80,
                ),
            }],
        };
        let packet = Packet {
            origin: Origin::Remote,
            protocol: Protocol::Tcp,
            source: "10.0.0.2".parse().unwrap(),
            destination: "172.30.0.1".parse().unwrap(),
            port: 80,
        };
        let verdicts: Vec<String> = trace(&plan, &[], &packet)
            .into_iter()
            .map(|o| o.verdict.to_string())
            .collect();
        assert_eq!(verdicts, ["10.1.0.1:80", "10.1.0.2:80"]);
        let other_port = Packet { port: 81, ..packet };
        let verdicts: Vec<Verdict> = trace(&plan, &[], &other_port)
            .into_iter()
            .map(|o| o.verdict)
            .collect();
        assert_eq!(verdicts, [Verdict::Untranslated]);
    }
}
