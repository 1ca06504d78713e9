//! Each [`Command`] as the messages nft 1.0.6 sends for its text: tables,
//! chains (base chains with their hook), sets (key type and length, flags,
//! userdata), elements and rules, and a table replacement as all of them in
//! nft's order.

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE};
use switchyard_api::ruleset::IpFamily;

use super::batch::Batch;
use super::elements::{element_messages, set_elements};
use super::expr::rule_exprs;
use super::uapi::{
    NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY, NFTA_CHAIN_TABLE, NFTA_CHAIN_TYPE,
    NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE,
    NFTA_RULE_USERDATA, NFTA_SET_DATA_LEN, NFTA_SET_DATA_TYPE, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_FLAGS, NFTA_SET_ID, NFTA_SET_KEY_LEN, NFTA_SET_KEY_TYPE,
    NFTA_SET_NAME, NFTA_SET_TABLE, NFTA_SET_TIMEOUT, NFTA_SET_USERDATA, NFTA_TABLE_FLAGS,
    NFTA_TABLE_NAME, TYPE_BITS, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE, TYPE_INTEGER, TYPE_IP6ADDR,
    TYPE_IPADDR,
};
use super::userdata;
use crate::nftables::ir::{BaseChain, Hook, Pick, PickKey, Rule, Set, SetKind, Table, TableId};
use crate::nftables::transaction::Command;

/// The batch of `commands`, its sequence numbers following `after`.
pub fn batch(commands: &[Command], after: u32) -> Batch {
    let mut b = Batch::begin(after);
    for (i, c) in commands.iter().enumerate() {
        encode(&mut b, i, c);
    }
    b
}

/// The messages of command `i`.
fn encode(b: &mut Batch, i: usize, c: &Command) {
    b.part = 0;
    let id = c.table();
    let (family, name_of_table) = (id.family, id.name());
    match c {
        Command::ReplaceTable(t) => replace_table(b, i, t),
        Command::DropTable(_) => {
            table(b, i, libc::NFT_MSG_NEWTABLE, id);
            table(b, i, libc::NFT_MSG_DELTABLE, id);
        }
        Command::AddChain { name, base, .. } => add_chain(b, i, id, name, base.as_ref()),
        Command::FlushChain { name, .. } => b.command(i, libc::NFT_MSG_DELRULE, 0, family, |a| {
            a.str(NFTA_RULE_TABLE, name_of_table);
            a.str(NFTA_RULE_CHAIN, name);
        }),
        Command::DeleteChain { name, .. } => b.command(i, libc::NFT_MSG_DELCHAIN, 0, family, |a| {
            a.str(NFTA_CHAIN_TABLE, name_of_table);
            a.str(NFTA_CHAIN_NAME, name);
        }),
        Command::DeleteSet { name, .. } => b.command(i, libc::NFT_MSG_DELSET, 0, family, |a| {
            a.str(NFTA_SET_TABLE, name_of_table);
            a.str(NFTA_SET_NAME, name);
        }),
        Command::AddSet { name, set, .. } => {
            add_set(b, i, id, name, set);
        }
        Command::AddElements { set, elements, .. } => {
            let elements = elements.iter().map(|(k, v)| (k, v.as_ref()));
            let elements = set_elements(family, elements, true);
            let msg = libc::NFT_MSG_NEWSETELEM;
            element_messages(b, i, msg, id, set, &elements);
        }
        // A DELSETELEM without an element list flushes the set.
        Command::FlushSet { name, .. } => b.command(i, libc::NFT_MSG_DELSETELEM, 0, family, |a| {
            a.str(NFTA_SET_ELEM_LIST_SET, name);
            a.str(NFTA_SET_ELEM_LIST_TABLE, name_of_table);
        }),
        Command::DeleteElements { set, keys, .. } => {
            let elements = set_elements(family, keys.iter().map(|k| (k, None)), false);
            let msg = libc::NFT_MSG_DELSETELEM;
            element_messages(b, i, msg, id, set, &elements);
        }
        Command::AddRule { chain, rule, .. } => add_rule(b, i, id, chain, rule),
    }
}

/// The objects of a table replacement in the order they are sent, as nft
/// 1.0.6 does: the table (created if missing, deleted, created anew), the
/// chains, each set followed by its elements, and the rules (map elements
/// and rules reference chains and sets).
pub enum Part<'a> {
    /// `NFT_MSG_NEWTABLE` or `NFT_MSG_DELTABLE`.
    Table(libc::c_int),
    Chain(&'a str, Option<&'a BaseChain>),
    Set(&'a str, &'a Set),
    Rule(&'a str, &'a Rule),
}

pub fn table_parts(t: &Table) -> impl Iterator<Item = Part<'_>> {
    let rules = t
        .chains
        .iter()
        .flat_map(|(name, c)| c.rules.iter().map(move |r| Part::Rule(name, r)));
    [
        libc::NFT_MSG_NEWTABLE,
        libc::NFT_MSG_DELTABLE,
        libc::NFT_MSG_NEWTABLE,
    ]
    .into_iter()
    .map(Part::Table)
    .chain(
        t.chains
            .iter()
            .map(|(name, c)| Part::Chain(name, c.base.as_ref())),
    )
    .chain(t.sets.iter().map(|(name, s)| Part::Set(name, s)))
    .chain(rules)
}

fn replace_table(b: &mut Batch, i: usize, t: &Table) {
    let id = t.id();
    for (part, p) in table_parts(t).enumerate() {
        b.part = part;
        match p {
            Part::Table(msg) => table(b, i, msg, id),
            Part::Chain(name, base) => add_chain(b, i, id, name, base),
            Part::Set(name, set) => {
                add_set(b, i, id, name, set);
                let elements = set.elements.iter().map(|(k, v)| (k, v.as_ref()));
                let elements = set_elements(t.family, elements, true);
                let msg = libc::NFT_MSG_NEWSETELEM;
                element_messages(b, i, msg, id, name, &elements);
            }
            Part::Rule(chain, rule) => add_rule(b, i, id, chain, rule),
        }
    }
}

/// `NEWTABLE` (created if missing: no `NLM_F_EXCL`) or `DELTABLE`.
fn table(b: &mut Batch, i: usize, msg: libc::c_int, id: TableId) {
    let new = msg == libc::NFT_MSG_NEWTABLE;
    b.command(i, msg, 0, id.family, |a| {
        a.str(NFTA_TABLE_NAME, id.name());
        if new {
            a.u32(NFTA_TABLE_FLAGS, 0u32);
        }
    });
}

fn add_chain(b: &mut Batch, i: usize, id: TableId, name: &str, base: Option<&BaseChain>) {
    b.command(i, libc::NFT_MSG_NEWCHAIN, NLM_F_CREATE, id.family, |a| {
        a.str(NFTA_CHAIN_TABLE, id.name());
        a.str(NFTA_CHAIN_NAME, name);
        let Some(base) = base else {
            return;
        };
        let hook = match base.hook {
            Hook::Prerouting => libc::NF_INET_PRE_ROUTING,
            Hook::Input => libc::NF_INET_LOCAL_IN,
            Hook::Forward => libc::NF_INET_FORWARD,
            Hook::Output => libc::NF_INET_LOCAL_OUT,
            Hook::Postrouting => libc::NF_INET_POST_ROUTING,
        };
        a.str(NFTA_CHAIN_TYPE, base.kind.name());
        a.u32(NFTA_CHAIN_POLICY, libc::NF_ACCEPT);
        a.nest(NFTA_CHAIN_HOOK, |h| {
            h.u32(NFTA_HOOK_HOOKNUM, hook);
            h.u32(NFTA_HOOK_PRIORITY, base.priority.value());
        });
    });
}

fn add_set(b: &mut Batch, i: usize, id: TableId, name: &str, set: &Set) {
    let (key_type, key_len) = set_key(set.kind, id.family);
    let mut flags = 0;
    if set.kind.is_map() {
        flags |= libc::NFT_SET_MAP;
    }
    if set.kind == SetKind::Prefix {
        flags |= libc::NFT_SET_INTERVAL;
    }
    if set.timeout_seconds.is_some() {
        flags |= libc::NFT_SET_TIMEOUT | libc::NFT_SET_EVAL;
    }
    let set_id = b.next_set_id();
    b.command(i, libc::NFT_MSG_NEWSET, NLM_F_CREATE, id.family, |a| {
        a.str(NFTA_SET_TABLE, id.name());
        a.str(NFTA_SET_NAME, name);
        a.u32(NFTA_SET_FLAGS, flags);
        a.u32(NFTA_SET_KEY_TYPE, key_type);
        a.u32(NFTA_SET_KEY_LEN, key_len);
        if let SetKind::Pick(..) = set.kind {
            let (addr, len) = addr_type(id.family);
            a.u32(NFTA_SET_DATA_TYPE, addr << TYPE_BITS | TYPE_INET_SERVICE);
            a.u32(NFTA_SET_DATA_LEN, len + 4);
        } else if set.kind.is_map() {
            a.u32(NFTA_SET_DATA_TYPE, libc::NFT_DATA_VERDICT);
            a.u32(NFTA_SET_DATA_LEN, 0u32);
        }
        // The kernel requires one, unique in the batch.
        a.u32(NFTA_SET_ID, set_id);
        if let Some(t) = set.timeout_seconds {
            // Milliseconds.
            a.bytes(NFTA_SET_TIMEOUT, &(u64::from(t) * 1000).to_be_bytes());
        }
        a.bytes(
            NFTA_SET_USERDATA,
            &userdata::set(set.kind, id.family, set.comment.as_deref()),
        );
    });
}

/// nft's key datatype (a concatenation: its fields', [`TYPE_BITS`] each)
/// and key length (each field padded to 4 bytes).
fn set_key(kind: SetKind, family: IpFamily) -> (u32, u32) {
    let (addr, len) = addr_type(family);
    let proto_port = TYPE_INET_PROTOCOL << TYPE_BITS | TYPE_INET_SERVICE;
    match kind {
        SetKind::Addr | SetKind::Prefix => (addr, len),
        SetKind::AddrPair => (addr << TYPE_BITS | addr, 2 * len),
        SetKind::AddrProtoPort | SetKind::AddrProtoPortVerdict => {
            (addr << (2 * TYPE_BITS) | proto_port, len + 8)
        }
        SetKind::ProtoPortVerdict => (proto_port, 8),
        // The index is an `integer` of the `numgen` register's 4 bytes.
        SetKind::Pick(Pick {
            key: PickKey::Vip, ..
        }) => (
            addr << (2 * TYPE_BITS) | TYPE_INET_SERVICE << TYPE_BITS | TYPE_INTEGER,
            len + 8,
        ),
        SetKind::Pick(Pick {
            key: PickKey::NodePort,
            ..
        }) => (TYPE_INET_SERVICE << TYPE_BITS | TYPE_INTEGER, 8),
    }
}

/// nft's address datatype of a family, and its length.
fn addr_type(family: IpFamily) -> (u32, u32) {
    match family {
        IpFamily::V4 => (TYPE_IPADDR, 4),
        IpFamily::V6 => (TYPE_IP6ADDR, 16),
    }
}

fn add_rule(b: &mut Batch, i: usize, id: TableId, chain: &str, rule: &Rule) {
    let flags = NLM_F_CREATE | NLM_F_APPEND;
    b.command(i, libc::NFT_MSG_NEWRULE, flags, id.family, |a| {
        a.str(NFTA_RULE_TABLE, id.name());
        a.str(NFTA_RULE_CHAIN, chain);
        a.nest(NFTA_RULE_EXPRESSIONS, |e| rule_exprs(e, id.family, rule));
        if let Some(c) = &rule.comment {
            a.bytes(NFTA_RULE_USERDATA, &userdata::rule(c));
        }
    });
}
