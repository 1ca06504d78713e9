//! What the encoder refuses before anything is sent: only what the plan
//! never builds (an address of the other family than its table). Names
//! nftables cannot carry are refused by [`crate::nftables::escape`], and
//! comments are cut there to what userdata holds.

use std::net::IpAddr;

use switchyard_api::ruleset::IpFamily;

use crate::nftables::ir::{Key, Match, Rule, Stmt, Value};
use crate::nftables::transaction::Command;

/// Whether the command can be sent over netlink as it is.
pub fn supported(c: &Command) -> bool {
    let family = c.family();
    match c {
        Command::ReplaceTable(t) => {
            t.sets
                .values()
                .all(|s| s.elements.iter().all(|e| element_fits(e, family)))
                && t.chains
                    .values()
                    .flat_map(|c| c.rules.iter())
                    .all(|r| rule_fits(r, family))
        }
        Command::AddElements { elements, .. } => {
            elements.iter().all(|(k, v)| element_fits((k, v), family))
        }
        Command::DeleteElements { keys, .. } => keys.iter().all(|k| key_fits(k, family)),
        Command::AddRule { rule, .. } => rule_fits(rule, family),
        Command::DropTable(_)
        | Command::AddSet { .. }
        | Command::AddChain { .. }
        | Command::DeleteSet { .. }
        | Command::FlushSet { .. }
        | Command::FlushChain { .. }
        | Command::DeleteChain { .. } => true,
    }
}

fn rule_fits(rule: &Rule, family: IpFamily) -> bool {
    let fits = |ip: &IpAddr| IpFamily::of(ip) == family;
    rule.matches.iter().all(|m| match m {
        Match::Addr(_, ip) => fits(ip),
        Match::SaddrInPrefix(c) => fits(&c.addr()),
        _ => true,
    }) && rule.stmts.iter().all(|s| match s {
        Stmt::Dnat(ip, _) => fits(ip),
        _ => true,
    })
}

fn element_fits((key, value): (&Key, &Option<Value>), family: IpFamily) -> bool {
    let fits = |ip: &IpAddr| IpFamily::of(ip) == family;
    let value_fits = match value {
        Some(Value::Endpoint(a, _)) => fits(a),
        Some(Value::Verdict(_)) | None => true,
    };
    value_fits && key_fits(key, family)
}

fn key_fits(key: &Key, family: IpFamily) -> bool {
    let fits = |ip: &IpAddr| IpFamily::of(ip) == family;
    match key {
        Key::Prefix(c) => fits(&c.addr()),
        Key::Addr(a) | Key::AddrProtoPort(a, _, _) | Key::AddrPortIndex(a, _, _) => fits(a),
        Key::AddrPair(a, b) => fits(a) && fits(b),
        Key::ProtoPort(_, _) | Key::PortIndex(_, _) => true,
    }
}
