//! The iptables mode's rules compared with kube-proxy's: `iptables-save` and
//! `ip6tables-save` of both nodes, as chains (by table and name) holding
//! rules in order. Counters and the order of chains are not compared (the
//! kernel keeps chains in creation order, which depends on history), and
//! kube-proxy's dump is normalized where only kube-proxy's bookkeeping or
//! Go's map order shows ([`Dump::normalize_kube_proxy`]); every other
//! difference is reported.

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

    /// Every chain, as (table, chain).
    pub fn chains(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flat_map(|(table, chains)| {
            chains
                .keys()
                .map(move |chain| (table.as_str(), chain.as_str()))
        })
    }

    /// The rules of `chain` in `table` (`ip4:filter`), if it exists.
    pub fn rules(&self, table: &str, chain: &str) -> Option<&[String]> {
        self.0.get(table)?.get(chain).map(Vec::as_slice)
    }

    /// Remove from kube-proxy's dump what is its own bookkeeping, and order
    /// what it writes in Go map order:
    /// - the `KUBE-PROXY-CANARY` chains (it watches them to notice a flush of
    ///   its tables), and a table left with nothing but empty chains (the
    ///   mangle table exists only for its canary);
    /// - `-m nfacct --nfacct-name NAME` matches (packet counters for its
    ///   metrics, present when the kernel has nfacct), and the
    ///   `localhost_nps_accepted_pkts` rule of a localhost node port, which
    ///   only counts: the next rule is the same without `-d 127.0.0.0/8` and
    ///   takes the same packets to the same chain;
    /// - the per-Service rules of `KUBE-SERVICES`, `KUBE-NODEPORTS`,
    ///   `KUBE-EXTERNAL-SERVICES` and `KUBE-PROXY-FIREWALL`, which kube-proxy
    ///   writes in Go's (random) map order: compared sorted, on both sides,
    ///   except the jump to `KUBE-NODEPORTS`, which keeps its place (last).
    pub fn normalize_kube_proxy(&mut self) {
        const LOCALHOST_COUNTER: &str = "-m nfacct --nfacct-name  localhost_nps_accepted_pkts ";
        for chains in self.0.values_mut() {
            chains.remove("KUBE-PROXY-CANARY");
            for rules in chains.values_mut() {
                let counts_only = |i: usize| {
                    let rule: &String = &rules[i];
                    rule.contains(LOCALHOST_COUNTER)
                        && rules.get(i + 1).is_some_and(|next| {
                            *next == strip_nfacct(rule).replacen("-d 127.0.0.0/8 ", "", 1)
                        })
                };
                let keep: Vec<bool> = (0..rules.len()).map(|i| !counts_only(i)).collect();
                let mut index = 0;
                rules.retain(|_| {
                    index += 1;
                    keep[index - 1]
                });
                for rule in rules.iter_mut() {
                    *rule = strip_nfacct(rule);
                }
            }
        }
        self.0
            .retain(|_, chains| chains.values().any(|rules| !rules.is_empty()));
    }

    /// Sort the chains kube-proxy fills in map order (see
    /// [`Dump::normalize_kube_proxy`]); applied to both dumps.
    pub fn sort_map_ordered(&mut self) {
        const MAP_ORDERED: [&str; 4] = [
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-PROXY-FIREWALL",
        ];
        for chains in self.0.values_mut() {
            for (name, rules) in chains.iter_mut() {
                if !MAP_ORDERED.contains(&name.as_str()) {
                    continue;
                }
                let movable: Vec<usize> = (0..rules.len())
                    .filter(|i| !rules[*i].ends_with("-j KUBE-NODEPORTS"))
                    .collect();
                let mut sorted: Vec<String> = movable.iter().map(|i| rules[*i].clone()).collect();
                sorted.sort();
                for (i, rule) in movable.into_iter().zip(sorted) {
                    rules[i] = rule;
                }
            }
        }
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

/// `rule` without its `-m nfacct --nfacct-name NAME` match.
fn strip_nfacct(rule: &str) -> String {
    let Some(at) = rule.find("-m nfacct --nfacct-name ") else {
        return rule.to_string();
    };
    let rest = rule[at + "-m nfacct --nfacct-name ".len()..].trim_start();
    let after = rest.split_once(' ').map_or("", |(_, after)| after);
    format!("{}{after}", &rule[..at])
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
    fn kube_proxys_canaries_counters_and_map_order_are_normalized() {
        let kube_proxy = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n\
            *nat\n:KUBE-PROXY-CANARY - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-SERVICES - [0:0]\n\
            -A KUBE-NODEPORTS -d 127.0.0.0/8 -p tcp -m tcp --dport 3001 -m nfacct --nfacct-name  localhost_nps_accepted_pkts -j KUBE-EXT-A\n\
            -A KUBE-NODEPORTS -p tcp -m tcp --dport 3001 -j KUBE-EXT-A\n\
            -A KUBE-SERVICES -d 10.0.0.2/32 -j KUBE-SVC-B\n-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-A\n\
            -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n\
            *filter\n:KUBE-FORWARD - [0:0]\n\
            -A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name  ct_state_invalid_dropped_pkts -j DROP\nCOMMIT\n";
        let switchyard = "*nat\n:KUBE-NODEPORTS - [0:0]\n:KUBE-SERVICES - [0:0]\n\
            -A KUBE-NODEPORTS -p tcp -m tcp --dport 3001 -j KUBE-EXT-A\n\
            -A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-A\n-A KUBE-SERVICES -d 10.0.0.2/32 -j KUBE-SVC-B\n\
            -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n\
            *filter\n:KUBE-FORWARD - [0:0]\n-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n";
        let mut theirs = Dump::parse(kube_proxy);
        theirs.normalize_kube_proxy();
        theirs.sort_map_ordered();
        let mut mine = Dump::parse(switchyard);
        mine.sort_map_ordered();
        assert_eq!(mine.differences(&theirs), Vec::<String>::new());
        // The KUBE-NODEPORTS jump must stay last.
        let mut moved = Dump::parse(&switchyard.replace(
            "-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-A\n-A KUBE-SERVICES -d 10.0.0.2/32 -j KUBE-SVC-B\n-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
            "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-A\n-A KUBE-SERVICES -d 10.0.0.2/32 -j KUBE-SVC-B\n",
        ));
        moved.sort_map_ordered();
        assert_eq!(moved.differences(&theirs).len(), 1);
    }

    #[test]
    fn counters_and_chain_order_do_not_count_but_rule_order_does() {
        let reordered = "*nat\n:KUBE-SVC-X - [0:0]\n:PREROUTING ACCEPT [0:0]\n\
                         -A KUBE-SVC-X -j KUBE-SEP-A\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
        assert!(
            Dump::parse(SAVE)
                .differences(&Dump::parse(reordered))
                .is_empty()
        );
        let swapped = format!("{SAVE}*filter\n:F - [0:0]\n-A F -j A\n-A F -j B\nCOMMIT\n");
        let other = format!("{SAVE}*filter\n:F - [0:0]\n-A F -j B\n-A F -j A\nCOMMIT\n");
        let d = Dump::parse(&swapped).differences(&Dump::parse(&other));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("rule 1: Switchyard `-j A`, kube-proxy `-j B`"),
            "{d:?}"
        );
    }
}
