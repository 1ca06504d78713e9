//! The text encoder: the typed plan as `nft` text (the `nft list` form
//! `Display` shows) and a [`Transaction`] as an `nft -f` script; the sibling
//! of [`super::netlink`], which sends the same transaction as one batch.
//! Comments and names are held to what nft reads by [`super::escape`].

use std::fmt::{self, Write};
use std::net::IpAddr;

use switchyard_api::ruleset::IpFamily;

use super::escape;
use super::ir::{
    BaseChain, Dir, Hook, Key, Match, Pick, PickKey, Plan, Rule, Set, SetKind, Stmt, Table, Value,
    Verdict,
};
use super::transaction::{Command, Transaction};
use crate::escape::NameError;

/// `ip` / `ip6`: the table family and the address payload keyword.
pub fn family_word(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

fn addr_type(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    }
}

/// What a set or map holds: `type …`, or for a pick map `typeof …` (nft
/// has no type name for the `numgen` field).
fn set_type(kind: SetKind, family: IpFamily) -> String {
    let a = addr_type(family);
    let t = match kind {
        SetKind::Addr | SetKind::Prefix => a.to_string(),
        SetKind::AddrPair => format!("{a} . {a}"),
        SetKind::AddrProtoPort => format!("{a} . inet_proto . inet_service"),
        SetKind::AddrProtoPortVerdict => format!("{a} . inet_proto . inet_service : verdict"),
        SetKind::ProtoPortVerdict => "inet_proto . inet_service : verdict".to_string(),
        SetKind::Pick(pick) => {
            let ipx = family_word(family);
            let dport = format!("{} dport", pick.protocol.as_lower());
            return format!("typeof {} : {ipx} daddr . {dport}", pick_key(&pick, family));
        }
    };
    format!("type {t}")
}

/// A pick map's key: `ip daddr . tcp dport . numgen random mod <n>` (the
/// protocol's `dport`, not `th dport`: nft 1.0.6 refuses a rule that
/// matches `meta l4proto tcp` and looks up a map of `th dport` it read
/// from the kernel, "conflicting protocols specified: tcp vs. th").
fn pick_key(pick: &Pick, family: IpFamily) -> String {
    let (proto, n) = (pick.protocol.as_lower(), pick.n);
    let numgen = format!("{proto} dport . numgen random mod {n}");
    match pick.key {
        PickKey::Vip => format!("{} daddr . {numgen}", family_word(family)),
        PickKey::NodePort => numgen,
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Addr(a) => write!(f, "{a}"),
            Key::Prefix(c) => write!(f, "{c}"),
            Key::AddrPair(a, b) => write!(f, "{a} . {b}"),
            Key::AddrProtoPort(a, p, port) => write!(f, "{a} . {} . {port}", p.as_lower()),
            Key::ProtoPort(p, port) => write!(f, "{} . {port}", p.as_lower()),
            Key::AddrPortIndex(a, port, k) => write!(f, "{a} . {port} . {k}"),
            Key::PortIndex(port, k) => write!(f, "{port} . {k}"),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Verdict(v) => v.fmt(f),
            Value::Endpoint(a, port) => write!(f, "{a} . {port}"),
        }
    }
}

fn element(key: &Key, value: &Option<Value>) -> String {
    match value {
        Some(v) => format!("{key} : {v}"),
        None => key.to_string(),
    }
}

/// nft comments are double-quoted strings without escapes.
fn quote(comment: &str) -> String {
    format!("\"{}\"", escape::comment(comment))
}

/// A rule's body, as it follows `add rule <family> <table> <chain>`.
pub fn rule_text(rule: &Rule, family: IpFamily) -> String {
    let ipx = family_word(family);
    let mut parts: Vec<String> = Vec::new();
    for m in &rule.matches {
        parts.push(match m {
            Match::Addr(dir, ip) => format!("{ipx} {} {ip}", dir_word(*dir)),
            Match::AddrInSet { dir, set, negate } => {
                let op = if *negate { "!= " } else { "" };
                format!("{ipx} {} {op}@{set}", dir_word(*dir))
            }
            Match::SaddrInPrefix(c) => format!("{ipx} saddr {c}"),
            Match::AddrPairInSet(set) => format!("{ipx} saddr . {ipx} daddr @{set}"),
            Match::DaddrProtoPortInSet(set) => {
                format!("{ipx} daddr . meta l4proto . th dport @{set}")
            }
            Match::DaddrNotLoopback => match family {
                IpFamily::V4 => "ip daddr != 127.0.0.0/8".to_string(),
                IpFamily::V6 => "ip6 daddr != ::1".to_string(),
            },
            Match::Dport(p, port) => format!("{} dport {port}", p.as_lower()),
            Match::L4Proto(p) => format!("meta l4proto {}", p.as_lower()),
            Match::CtStateNew => "ct state new".to_string(),
            Match::CtStatusDnat => "ct status dnat".to_string(),
            Match::FibSaddrLocal => "fib saddr type local".to_string(),
            Match::FibDaddrLocal => "fib daddr type local".to_string(),
            Match::MarkClear(mask) => format!("mark and 0x{mask:08x} == 0"),
            Match::NumgenZero(n) => format!("numgen random mod {n} == 0"),
        });
    }
    for s in &rule.stmts {
        parts.push(match s {
            Stmt::VmapAddrProtoPort(dir, map) => {
                format!(
                    "{ipx} {} . meta l4proto . th dport vmap @{map}",
                    dir_word(*dir)
                )
            }
            Stmt::VmapProtoPort(map) => format!("meta l4proto . th dport vmap @{map}"),
            Stmt::UpdateSaddr(set) => format!("update @{set} {{ {ipx} saddr }}"),
            Stmt::MarkOr(bits) => format!("meta mark set mark or 0x{bits:08x}"),
            Stmt::MarkXor(bits) => format!("meta mark set mark xor 0x{bits:08x}"),
            Stmt::Masquerade(None) => "masquerade fully-random".to_string(),
            Stmt::Masquerade(Some(p)) => {
                format!("masquerade to :{}-{} fully-random", p.min, p.max)
            }
            Stmt::Dnat(ip, port) => match ip {
                IpAddr::V4(ip) => format!("dnat to {ip}:{port}"),
                IpAddr::V6(ip) => format!("dnat to [{ip}]:{port}"),
            },
            Stmt::DnatPick(pick) => {
                let map = pick.map();
                format!("dnat {ipx} to {} map @{map}", pick_key(pick, family))
            }
            Stmt::Reject => "reject".to_string(),
            Stmt::Verdict(v) => v.to_string(),
        });
    }
    if let Some(c) = &rule.comment {
        parts.push(format!("comment {}", quote(c)));
    }
    parts.join(" ")
}

fn dir_word(dir: Dir) -> &'static str {
    match dir {
        Dir::Saddr => "saddr",
        Dir::Daddr => "daddr",
    }
}

fn base_chain_text(b: &BaseChain) -> String {
    let hook = match b.hook {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    };
    // Numeric: nft 1.0.6 accepts the names only in some hooks.
    format!(
        "type {} hook {hook} priority {}; policy accept;",
        b.kind.name(),
        b.priority.value()
    )
}

/// The set's declaration body (`type ...; flags ...; timeout ...; comment ...;`).
fn set_decl(set: &Set, family: IpFamily) -> Vec<String> {
    let mut lines = vec![set_type(set.kind, family)];
    if set.kind == SetKind::Prefix {
        lines.push("flags interval".to_string());
    }
    if let Some(t) = set.timeout_seconds {
        lines.push("flags dynamic,timeout".to_string());
        lines.push(format!("timeout {t}s"));
    }
    if let Some(c) = &set.comment {
        lines.push(format!("comment {}", quote(c)));
    }
    lines
}

/// `map` or `set`.
fn keyword(map: bool) -> &'static str {
    if map { "map" } else { "set" }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "table {} {} {{",
            family_word(self.family),
            self.id().name()
        )?;
        for (name, set) in &self.sets {
            writeln!(f, "\t{} {name} {{", keyword(set.kind.is_map()))?;
            for line in set_decl(set, self.family) {
                writeln!(f, "\t\t{line}")?;
            }
            if !set.elements.is_empty() {
                let elems: Vec<String> = set.elements.iter().map(|(k, v)| element(k, v)).collect();
                writeln!(f, "\t\telements = {{ {} }}", elems.join(",\n\t\t\t     "))?;
            }
            writeln!(f, "\t}}")?;
        }
        for (name, chain) in &self.chains {
            writeln!(f, "\tchain {name} {{")?;
            if let Some(b) = &chain.base {
                writeln!(f, "\t\t{}", base_chain_text(b))?;
            }
            for rule in chain.rules.iter() {
                writeln!(f, "\t\t{}", rule_text(rule, self.family))?;
            }
            writeln!(f, "\t}}")?;
        }
        writeln!(f, "}}")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for family in self.families() {
            for t in self.tables(family) {
                t.fmt(f)?;
            }
        }
        for s in self.skipped() {
            writeln!(f, "# skipped: {}", crate::escape::printable(s))?;
        }
        Ok(())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fam = family_word(self.family());
        let table = self.table().name();
        match self {
            Command::ReplaceTable(t) => {
                write!(
                    f,
                    "add table {fam} {table}\ndelete table {fam} {table}\n{t}"
                )
            }
            Command::DropTable(_) => {
                writeln!(f, "add table {fam} {table}\ndelete table {fam} {table}")
            }
            Command::AddSet { name, set, .. } => writeln!(
                f,
                "add {} {fam} {table} {name} {{ {}; }}",
                keyword(set.kind.is_map()),
                set_decl(set, self.family()).join("; ")
            ),
            Command::DeleteSet { name, map, .. } => {
                writeln!(f, "delete {} {fam} {table} {name}", keyword(*map))
            }
            Command::FlushSet { name, map, .. } => {
                writeln!(f, "flush {} {fam} {table} {name}", keyword(*map))
            }
            Command::AddElements { set, elements, .. } => {
                let elems: Vec<String> = elements.iter().map(|(k, v)| element(k, v)).collect();
                writeln!(
                    f,
                    "add element {fam} {table} {set} {{ {} }}",
                    elems.join(", ")
                )
            }
            Command::DeleteElements { set, keys, .. } => {
                let keys: Vec<String> = keys.iter().map(Key::to_string).collect();
                writeln!(
                    f,
                    "delete element {fam} {table} {set} {{ {} }}",
                    keys.join(", ")
                )
            }
            Command::AddChain { name, base, .. } => match base {
                Some(b) => writeln!(
                    f,
                    "add chain {fam} {table} {name} {{ {} }}",
                    base_chain_text(b)
                ),
                None => writeln!(f, "add chain {fam} {table} {name}"),
            },
            Command::FlushChain { name, .. } => writeln!(f, "flush chain {fam} {table} {name}"),
            Command::DeleteChain { name, .. } => writeln!(f, "delete chain {fam} {table} {name}"),
            Command::AddRule { chain, rule, .. } => writeln!(
                f,
                "add rule {fam} {table} {chain} {}",
                rule_text(rule, self.family())
            ),
        }
    }
}

impl Transaction {
    /// The transaction as an `nft -f` script, or the first name nftables
    /// cannot carry ([`escape::check`]: nothing is written then).
    pub fn text(&self) -> Result<String, NameError> {
        let mut out = String::new();
        for c in &self.commands {
            escape::check(c)?;
            // Writing to a String cannot fail.
            let _ = write!(out, "{c}");
        }
        Ok(out)
    }
}
