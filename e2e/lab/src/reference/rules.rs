//! The iptables mode's rules compared with kube-proxy's: `iptables-save` and
//! `ip6tables-save` of both nodes, as chains (by table and name) holding
//! rules in order. Counters and the order of chains are not compared (the
//! kernel keeps chains in creation order, which depends on history); every
//! other difference is reported.

use std::collections::BTreeMap;

use crate::HarnessError;
use crate::netns::Netns;

/// Table → chain → rules in order (each rule without `-A CHAIN`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dump(BTreeMap<String, BTreeMap<String, Vec<String>>>);

impl Dump {
    /// Parse `iptables-save` output.
    pub fn parse(text: &str) -> Dump {
        let mut tables: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        let mut table = String::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = name.to_string();
                tables.entry(table.clone()).or_default();
            } else if let Some(decl) = line.strip_prefix(':') {
                let chain = decl.split(' ').next().unwrap_or_default();
                let chains = tables.entry(table.clone()).or_default();
                chains.entry(chain.to_string()).or_default();
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
                let chains = tables.entry(table.clone()).or_default();
                chains
                    .entry(chain.to_string())
                    .or_default()
                    .push(rest.to_string());
            }
        }
        Dump(tables)
    }

    /// Both families of `ns`, tables prefixed `ip4:` and `ip6:`.
    pub fn of(ns: &Netns) -> Result<Dump, HarnessError> {
        let mut all = BTreeMap::new();
        for (family, program) in [("ip4", "iptables-save"), ("ip6", "ip6tables-save")] {
            let text = ns.exec(program, &[], None)?;
            for (table, chains) in Dump::parse(&text).0 {
                all.insert(format!("{family}:{table}"), chains);
            }
        }
        Ok(Dump(all))
    }

    /// What differs, one line per chain: `mine` is Switchyard's, `theirs`
    /// kube-proxy's. Empty when equal.
    pub fn differences(&self, theirs: &Dump) -> Vec<String> {
        let mut out = Vec::new();
        let empty = BTreeMap::new();
        let tables = self.0.keys().chain(theirs.0.keys());
        let tables: std::collections::BTreeSet<&String> = tables.collect();
        for table in tables {
            let mine = self.0.get(table).unwrap_or(&empty);
            let other = theirs.0.get(table).unwrap_or(&empty);
            let chains: std::collections::BTreeSet<&String> =
                mine.keys().chain(other.keys()).collect();
            for chain in chains {
                match (mine.get(chain), other.get(chain)) {
                    (Some(_), None) => out.push(format!("{table} {chain}: only in Switchyard's")),
                    (None, Some(_)) => out.push(format!("{table} {chain}: only in kube-proxy's")),
                    (Some(a), Some(b)) if a != b => out.push(chain_difference(table, chain, a, b)),
                    _ => {}
                }
            }
        }
        out
    }
}

/// The first rule where two versions of a chain part.
fn chain_difference(table: &str, chain: &str, mine: &[String], theirs: &[String]) -> String {
    let at = mine
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .unwrap_or(mine.len().min(theirs.len()));
    let rule = |rules: &[String]| rules.get(at).map_or("(none)".to_string(), Clone::clone);
    format!(
        "{table} {chain}: {} rules vs {}; rule {}: Switchyard `{}`, kube-proxy `{}`",
        mine.len(),
        theirs.len(),
        at + 1,
        rule(mine),
        rule(theirs)
    )
}

#[cfg(test)]
mod tests {
    use super::Dump;

    const SAVE: &str = "# Generated\n*nat\n:PREROUTING ACCEPT [3:180]\n:KUBE-SVC-X - [0:0]\n\
                        -A PREROUTING -j KUBE-SERVICES\n-A KUBE-SVC-X -j KUBE-SEP-A\nCOMMIT\n";

    #[test]
    fn counters_and_chain_order_do_not_count_but_rule_order_does() {
        let reordered = "*nat\n:KUBE-SVC-X - [0:0]\n:PREROUTING ACCEPT [0:0]\n\
                         -A KUBE-SVC-X -j KUBE-SEP-A\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
        assert!(Dump::parse(SAVE).differences(&Dump::parse(reordered)).is_empty());
        let swapped = format!("{SAVE}*filter\n:F - [0:0]\n-A F -j A\n-A F -j B\nCOMMIT\n");
        let other = format!("{SAVE}*filter\n:F - [0:0]\n-A F -j B\n-A F -j A\nCOMMIT\n");
        let d = Dump::parse(&swapped).differences(&Dump::parse(&other));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].contains("rule 1: Switchyard `-j A`, kube-proxy `-j B`"), "{d:?}");
    }
}
