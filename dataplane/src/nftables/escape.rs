//! What an nftables name or comment may hold, for both encoders (the `nft -f`
//! text and the netlink attributes), so they write the same objects. nft's
//! scanner (`scanner.l`) reads a name as `({letter}|[_.])({letter}|{digit}|[/\-_\.])*`
//! and a quoted string as `"[^"]*"`, without escapes; the kernel takes names
//! of at most 255 bytes and a NUL (`NFT_NAME_MAXLEN`), and nft refuses
//! comments over 128 bytes (`NFTNL_UDATA_COMMENT_MAXLEN`). A comment is
//! [`crate::escape::comment`] text within that length; a name outside the
//! scanner's characters (a quote, a blank, a newline, a NUL) or too long is
//! refused: by the render, which skips the service port it would name, and
//! again by each encoder ([`check`]), which sends nothing then.

use std::borrow::Cow;

use super::ir::{Match, Rule, Stmt, Value, Verdict};
use super::transaction::Command;
use crate::escape::{self, NameError, NameRule};

/// Table, chain and set names.
const NAME: NameRule = NameRule {
    format: "nftables",
    max_bytes: 255,
    first: |b| b.is_ascii_alphabetic() || matches!(b, b'_' | b'.'),
    rest: |b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'),
};

/// The longest comment nft reads back.
const COMMENT_MAX: usize = 128;

/// The comment as both encoders write it (unquoted).
pub fn comment(text: &str) -> Cow<'_, str> {
    escape::comment(text, COMMENT_MAX)
}

/// `name`, when nft and the kernel can carry it as a `kind` name.
pub fn name<'a>(kind: &'static str, name: &'a str) -> Result<&'a str, NameError> {
    NAME.check(kind, name)
}

/// Refuse a command that carries a name nftables cannot: its own object's,
/// or one a rule or map element refers to.
pub fn check(command: &Command) -> Result<(), NameError> {
    let mut names: Vec<(&'static str, &str)> = Vec::new();
    match command {
        Command::ReplaceTable(table) => {
            for (set, s) in &table.sets {
                names.push(("set", set));
                names.extend(s.elements.values().flatten().filter_map(value_chain));
            }
            for (chain, c) in &table.chains {
                names.push(("chain", chain));
                c.rules.iter().for_each(|r| rule_names(r, &mut names));
            }
        }
        Command::DropTable(_) => {}
        Command::AddSet { name, .. }
        | Command::DeleteSet { name, .. }
        | Command::FlushSet { name, .. }
        | Command::DeleteElements { set: name, .. } => names.push(("set", name)),
        Command::AddElements { set, elements, .. } => {
            names.push(("set", set));
            names.extend(
                elements
                    .iter()
                    .filter_map(|(_, v)| value_chain(v.as_ref()?)),
            );
        }
        Command::AddChain { name, .. }
        | Command::FlushChain { name, .. }
        | Command::DeleteChain { name, .. } => names.push(("chain", name)),
        Command::AddRule { chain, rule, .. } => {
            names.push(("chain", chain));
            rule_names(rule, &mut names);
        }
    }
    names
        .into_iter()
        .try_for_each(|(kind, n)| name(kind, n).map(|_| ()))
}

fn value_chain(v: &Value) -> Option<(&'static str, &str)> {
    match v {
        Value::Verdict(v) => verdict_chain(v),
        Value::Endpoint(..) => None,
    }
}

fn verdict_chain(v: &Verdict) -> Option<(&'static str, &str)> {
    match v {
        Verdict::Jump(c) | Verdict::Goto(c) => Some(("chain", c)),
        Verdict::Accept | Verdict::Drop | Verdict::Return => None,
    }
}

/// The sets and chains a rule refers to.
fn rule_names<'a>(rule: &'a Rule, out: &mut Vec<(&'static str, &'a str)>) {
    for m in &rule.matches {
        if let Match::AddrInSet { set, .. } | Match::AddrPairInSet(set) = m {
            out.push(("set", set));
        }
    }
    for s in &rule.stmts {
        match s {
            Stmt::VmapAddrProtoPort(_, set) | Stmt::VmapProtoPort(set) | Stmt::UpdateSaddr(set) => {
                out.push(("set", set))
            }
            Stmt::Verdict(v) => out.extend(verdict_chain(v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchyard_api::ruleset::IpFamily;

    use super::*;
    use crate::nftables::ir::{Chain, Key, Set, SetKind, Table, TableId};
    use crate::nftables::netlink::NftNetlink;
    use crate::nftables::transaction::Transaction;

    const V4: IpFamily = IpFamily::V4;

    fn refused(command: Command) -> NameError {
        check(&command).unwrap_err()
    }

    #[test]
    fn names_outside_nft_scanner_and_kernel_limits_are_refused() {
        assert_eq!(
            name("chain", "service-ABCD2345-ns1/svc1/tcp/p80"),
            Ok("service-ABCD2345-ns1/svc1/tcp/p80")
        );
        for bad in ["", "9x", "a\"b", "a b", "a\nb", "a\0b", "aé", "a;b", "a{b"] {
            assert!(name("chain", bad).is_err(), "{bad:?}");
        }
        assert_eq!(name("set", &"a".repeat(255)).map(str::len), Ok(255));
        assert_eq!(
            name("set", &"a".repeat(256)).unwrap_err().reason,
            "too long"
        );
    }

    #[test]
    fn every_name_a_command_carries_is_checked() {
        let bad = "x\"\nflush ruleset".to_string();
        let chain = |name: &str| Command::AddChain {
            table: TableId::main(V4),
            name: name.into(),
            base: None,
        };
        assert_eq!(check(&chain("services")), Ok(()));
        assert_eq!(refused(chain(&bad)).kind, "chain");
        let jump = Rule::new(vec![], vec![Stmt::Verdict(Verdict::Jump(bad.clone()))]);
        let add_rule = Command::AddRule {
            table: TableId::main(V4),
            chain: "services".into(),
            rule: jump,
        };
        assert_eq!(refused(add_rule).kind, "chain");
        let in_set = Rule::new(
            vec![Match::AddrPairInSet(bad.clone())],
            vec![Stmt::Verdict(Verdict::Accept)],
        );
        let mut table = Table::new(V4);
        table
            .chains
            .insert("services".into(), Chain::regular(vec![in_set]));
        assert_eq!(refused(Command::ReplaceTable(Arc::new(table))).kind, "set");
        let goto = Command::AddElements {
            table: TableId::main(V4),
            set: "service-ips".into(),
            elements: vec![(
                Key::Addr("10.0.0.1".parse().unwrap()),
                Some(Verdict::Goto(bad.clone()).into()),
            )],
        };
        assert_eq!(refused(goto).kind, "chain");
        let mut table = Table::new(V4);
        table
            .sets
            .insert(bad.clone(), Set::new(SetKind::Addr, None));
        assert_eq!(refused(Command::ReplaceTable(Arc::new(table))).kind, "set");
        let flush = Command::FlushSet {
            table: TableId::main(V4),
            name: "a\0b".into(),
            map: false,
        };
        assert_eq!(refused(flush).reason, "character not allowed");
    }

    /// Neither encoder writes a command with such a name: the text is
    /// refused as a whole, and netlink does not take the transaction.
    #[test]
    fn encoders_refuse_a_transaction_with_a_name_nftables_cannot_carry() {
        let mut tx = Transaction::default();
        tx.add_chain(TableId::main(V4), "services", &Chain::regular(vec![]));
        assert!(tx.text().is_ok() && NftNetlink::supports(&tx.commands));
        tx.add_chain(TableId::main(V4), &"x".repeat(300), &Chain::regular(vec![]));
        assert_eq!(tx.text().unwrap_err().reason, "too long");
        assert!(!NftNetlink::supports(&tx.commands));
    }

    #[test]
    fn comments_are_cut_to_what_nft_reads_back() {
        assert_eq!(comment("a \"quoted\"\ncomment"), "a 'quoted'?comment");
        assert_eq!(comment(&"x".repeat(200)).len(), COMMENT_MAX);
    }
}
