//! The edge: the typed plan as `nft` text, both the `nft list` form (what
//! `Display` shows and a full sync loads) and the single commands an
//! incremental transaction is made of.

use std::fmt::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;

use switchyard_api::ruleset::IpFamily;

use super::ir::{
    BaseChain, Chain, ChainType, Dir, Hook, Key, Match, Plan, Priority, Rule, Set, SetKind, Stmt,
    TABLE, Table, Verdict,
};

/// NF_IP_PRI_NAT_DST and NF_IP_PRI_NAT_SRC.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;

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

fn set_type(kind: SetKind, family: IpFamily) -> String {
    let a = addr_type(family);
    match kind {
        SetKind::Addr | SetKind::Prefix => a.to_string(),
        SetKind::AddrPair => format!("{a} . {a}"),
        SetKind::AddrProtoPortVerdict => format!("{a} . inet_proto . inet_service : verdict"),
        SetKind::ProtoPortVerdict => "inet_proto . inet_service : verdict".to_string(),
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
        }
    }
}

fn element(key: &Key, value: &Option<Verdict>) -> String {
    match value {
        Some(v) => format!("{key} : {v}"),
        None => key.to_string(),
    }
}

fn quote(comment: &str) -> String {
    // nft comments are double-quoted strings without escapes.
    format!("\"{}\"", comment.replace('"', "'"))
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
            Stmt::Masquerade => "masquerade fully-random".to_string(),
            Stmt::Dnat(ip, port) => match ip {
                IpAddr::V4(ip) => format!("dnat to {ip}:{port}"),
                IpAddr::V6(ip) => format!("dnat to [{ip}]:{port}"),
            },
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
    let kind = match b.kind {
        ChainType::Filter => "filter",
        ChainType::Nat => "nat",
    };
    let hook = match b.hook {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    };
    // Numeric: nft 1.0.6 accepts the names only in some hooks.
    let prio = match b.priority {
        Priority::Dstnat(o) => DSTNAT + o,
        Priority::Srcnat(o) => SRCNAT + o,
    };
    format!("type {kind} hook {hook} priority {prio}; policy accept;")
}

/// The set's declaration body (`type ...; flags ...; timeout ...; comment ...;`).
fn set_decl(set: &Set, family: IpFamily) -> Vec<String> {
    let mut lines = vec![format!("type {}", set_type(set.kind, family))];
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

fn keyword(set: &Set) -> &'static str {
    if set.kind.is_map() { "map" } else { "set" }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table {} {TABLE} {{", family_word(self.family))?;
        for (name, set) in &self.sets {
            writeln!(f, "\t{} {name} {{", keyword(set))?;
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
            for rule in &chain.rules {
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
            if let Some(t) = self.table(family) {
                t.fmt(f)?;
            }
        }
        for s in self.skipped() {
            writeln!(f, "# skipped: {s}")?;
        }
        Ok(())
    }
}

/// One command of a transaction, typed: [`Transaction::text`] writes it for
/// `nft -f`, and the incremental path sends it over netlink as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create the table if missing, delete it, and write it anew (full sync).
    ReplaceTable(Arc<Table>),
    /// Remove the table if it exists.
    DropTable(IpFamily),
    /// A set or map's definition; its elements are left out.
    AddSet {
        family: IpFamily,
        name: String,
        set: Set,
    },
    DeleteSet {
        family: IpFamily,
        name: String,
        map: bool,
    },
    /// Remove every element of a set or map.
    FlushSet {
        family: IpFamily,
        name: String,
        map: bool,
    },
    AddElements {
        family: IpFamily,
        set: String,
        elements: Vec<(Key, Option<Verdict>)>,
    },
    DeleteElements {
        family: IpFamily,
        set: String,
        keys: Vec<Key>,
    },
    AddChain {
        family: IpFamily,
        name: String,
        base: Option<BaseChain>,
    },
    FlushChain {
        family: IpFamily,
        name: String,
    },
    DeleteChain {
        family: IpFamily,
        name: String,
    },
    AddRule {
        family: IpFamily,
        chain: String,
        rule: Rule,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::ReplaceTable(table) => {
                let fam = family_word(table.family);
                writeln!(f, "add table {fam} {TABLE}")?;
                writeln!(f, "delete table {fam} {TABLE}")?;
                write!(f, "{table}")
            }
            Command::DropTable(family) => {
                let fam = family_word(*family);
                writeln!(f, "add table {fam} {TABLE}")?;
                writeln!(f, "delete table {fam} {TABLE}")
            }
            Command::AddSet { family, name, set } => writeln!(
                f,
                "add {} {} {TABLE} {name} {{ {}; }}",
                keyword(set),
                family_word(*family),
                set_decl(set, *family).join("; ")
            ),
            Command::DeleteSet { family, name, map } => writeln!(
                f,
                "delete {} {} {TABLE} {name}",
                if *map { "map" } else { "set" },
                family_word(*family)
            ),
            Command::FlushSet { family, name, map } => writeln!(
                f,
                "flush {} {} {TABLE} {name}",
                if *map { "map" } else { "set" },
                family_word(*family)
            ),
            Command::AddElements {
                family,
                set,
                elements,
            } => {
                let elems: Vec<String> = elements.iter().map(|(k, v)| element(k, v)).collect();
                writeln!(
                    f,
                    "add element {} {TABLE} {set} {{ {} }}",
                    family_word(*family),
                    elems.join(", ")
                )
            }
            Command::DeleteElements { family, set, keys } => {
                let keys: Vec<String> = keys.iter().map(Key::to_string).collect();
                writeln!(
                    f,
                    "delete element {} {TABLE} {set} {{ {} }}",
                    family_word(*family),
                    keys.join(", ")
                )
            }
            Command::AddChain { family, name, base } => match base {
                Some(b) => writeln!(
                    f,
                    "add chain {} {TABLE} {name} {{ {} }}",
                    family_word(*family),
                    base_chain_text(b)
                ),
                None => writeln!(f, "add chain {} {TABLE} {name}", family_word(*family)),
            },
            Command::FlushChain { family, name } => {
                writeln!(f, "flush chain {} {TABLE} {name}", family_word(*family))
            }
            Command::DeleteChain { family, name } => {
                writeln!(f, "delete chain {} {TABLE} {name}", family_word(*family))
            }
            Command::AddRule {
                family,
                chain,
                rule,
            } => writeln!(
                f,
                "add rule {} {TABLE} {chain} {}",
                family_word(*family),
                rule_text(rule, *family)
            ),
        }
    }
}

/// One `nft` transaction, as typed commands.
#[derive(Debug, Default)]
pub struct Transaction {
    pub commands: Vec<Command>,
    /// Objects written (rules, elements, chain and set operations).
    pub objects: u32,
}

impl Transaction {
    /// The transaction as an `nft -f` script.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.commands {
            // Writing to a String cannot fail.
            let _ = write!(out, "{c}");
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Whether some command rewrites a whole table (only `nft -f` does that).
    pub fn replaces_tables(&self) -> bool {
        self.commands
            .iter()
            .any(|c| matches!(c, Command::ReplaceTable(_) | Command::DropTable(_)))
    }

    fn push(&mut self, command: Command, objects: usize) {
        self.commands.push(command);
        self.objects = self
            .objects
            .saturating_add(u32::try_from(objects).unwrap_or(u32::MAX));
    }

    /// Replace a table atomically: create it if missing, delete it, write it anew.
    pub fn replace_table(&mut self, table: &Arc<Table>) {
        let objects = table.chains.values().map(|c| c.rules.len()).sum::<usize>()
            + table.sets.values().map(|s| s.elements.len()).sum::<usize>();
        self.push(Command::ReplaceTable(Arc::clone(table)), objects + 2);
    }

    /// Remove a table if it exists.
    pub fn drop_table(&mut self, family: IpFamily) {
        self.push(Command::DropTable(family), 2);
    }

    pub fn add_set(&mut self, family: IpFamily, name: &str, set: &Set) {
        let set = Set {
            elements: Default::default(),
            ..set.clone()
        };
        self.push(
            Command::AddSet {
                family,
                name: name.to_string(),
                set,
            },
            1,
        );
    }

    pub fn delete_set(&mut self, family: IpFamily, name: &str, set: &Set) {
        self.push(
            Command::DeleteSet {
                family,
                name: name.to_string(),
                map: set.kind.is_map(),
            },
            1,
        );
    }

    pub fn flush_set(&mut self, family: IpFamily, name: &str, set: &Set) {
        self.push(
            Command::FlushSet {
                family,
                name: name.to_string(),
                map: set.kind.is_map(),
            },
            1,
        );
    }

    pub fn add_elements<'a>(
        &mut self,
        family: IpFamily,
        set: &str,
        elems: impl IntoIterator<Item = (&'a Key, &'a Option<Verdict>)>,
    ) {
        let elements: Vec<(Key, Option<Verdict>)> = elems
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if elements.is_empty() {
            return;
        }
        let n = elements.len();
        self.push(
            Command::AddElements {
                family,
                set: set.to_string(),
                elements,
            },
            n,
        );
    }

    pub fn delete_elements<'a>(
        &mut self,
        family: IpFamily,
        set: &str,
        keys: impl IntoIterator<Item = &'a Key>,
    ) {
        let keys: Vec<Key> = keys.into_iter().cloned().collect();
        if keys.is_empty() {
            return;
        }
        let n = keys.len();
        self.push(
            Command::DeleteElements {
                family,
                set: set.to_string(),
                keys,
            },
            n,
        );
    }

    pub fn add_chain(&mut self, family: IpFamily, name: &str, chain: &Chain) {
        self.push(
            Command::AddChain {
                family,
                name: name.to_string(),
                base: chain.base,
            },
            1,
        );
    }

    pub fn flush_chain(&mut self, family: IpFamily, name: &str) {
        self.push(
            Command::FlushChain {
                family,
                name: name.to_string(),
            },
            1,
        );
    }

    pub fn delete_chain(&mut self, family: IpFamily, name: &str) {
        self.push(
            Command::DeleteChain {
                family,
                name: name.to_string(),
            },
            1,
        );
    }

    pub fn add_rules(&mut self, family: IpFamily, name: &str, chain: &Chain) {
        for rule in &chain.rules {
            self.push(
                Command::AddRule {
                    family,
                    chain: name.to_string(),
                    rule: rule.clone(),
                },
                1,
            );
        }
    }
}
