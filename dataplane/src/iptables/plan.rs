//! The typed plan and its two text forms: the iptables-save–like listing
//! (`Display`) and the `iptables-restore --noflush` input for a sync. The
//! IPVS mode's iptables part is a [`FamilyPlan`] too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use switchyard_api::ruleset::IpFamily;

use super::escape;
use super::restore::{Found, tools};
use super::rule::{Rule, Table};
use crate::conntrack::UdpSnapshot;
use crate::escape::NameError;

/// A chain this backend owns, with its complete rule list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// The chains of one table in creation order, while a render fills them.
#[derive(Default)]
pub struct ChainList {
    pub chains: Vec<Chain>,
    /// Where each chain is in `chains`: a render pushes a rule per lookup, and
    /// a large ruleset has tens of thousands of chains.
    index: HashMap<String, usize>,
}

impl ChainList {
    /// These chains, empty, in this order.
    pub fn of(names: &[&str]) -> ChainList {
        let mut list = ChainList::default();
        for name in names {
            list.chain(name);
        }
        list
    }

    /// The rules of chain `name`, created empty at the end when new.
    pub fn chain(&mut self, name: &str) -> &mut Vec<Rule> {
        let at = match self.index.get(name) {
            Some(&at) => at,
            None => {
                self.chains.push(Chain {
                    name: name.to_string(),
                    rules: Vec::new(),
                });
                self.index.insert(name.to_string(), self.chains.len() - 1);
                self.chains.len() - 1
            }
        };
        &mut self.chains[at].rules
    }

    pub fn push(&mut self, chain: &str, rule: Rule) {
        self.chain(chain).push(rule);
    }
}

/// A rule in a builtin chain (`INPUT`, `PREROUTING`, …) that jumps to one of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JumpRule {
    pub table: Table,
    pub builtin: &'static str,
    pub rule: Rule,
}

/// Everything for one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: IpFamily,
    /// Set `net.ipv4.conf.all.route_localnet` so NodePorts answer on 127.0.0.1.
    pub route_localnet: bool,
    pub filter: Vec<Chain>,
    pub nat: Vec<Chain>,
    /// In evaluation order per builtin chain.
    pub jumps: Vec<JumpRule>,
}

/// The iptables plan: both families, plus the UDP facts stale-conntrack cleanup diffs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub families: Vec<FamilyPlan>,
    pub udp: UdpSnapshot,
}

impl FamilyPlan {
    pub fn chains(&self, table: Table) -> &[Chain] {
        match table {
            Table::Filter => &self.filter,
            Table::Nat => &self.nat,
        }
    }

    pub fn chain(&self, table: Table, name: &str) -> Option<&Chain> {
        self.chains(table).iter().find(|c| c.name == name)
    }

    pub fn rule_count(&self) -> usize {
        self.filter
            .iter()
            .chain(&self.nat)
            .map(|c| c.rules.len())
            .sum::<usize>()
            + self.jumps.len()
    }

    /// The `*-restore --noflush` input that turns `applied` (what this backend
    /// last wrote, `None` for a full write) into this plan: changed and new
    /// chains are declared (which flushes them) and rewritten, vanished chains
    /// deleted. On a full write `found` is what the kernel holds of ours
    /// (either mode's): its chains not in the plan are deleted, and its
    /// built-in jumps give way to the plan's, inserted first in plan order.
    /// Returns the text and how many rules it writes, or the first name
    /// iptables cannot carry ([`escape`]: nothing is written then).
    pub fn restore_input(
        &self,
        applied: Option<&AppliedFamily>,
        found: &Found,
    ) -> Result<(String, usize), NameError> {
        let mut out = String::new();
        let mut written = 0;
        for table in Table::ALL {
            let old = applied.map(|a| a.table(table));
            let chains = self.chains(table);
            let changed: Vec<&Chain> = chains
                .iter()
                .filter(|c| old.is_none_or(|o| o.get(&c.name) != Some(&c.rules)))
                .collect();
            let in_plan: HashSet<&str> = chains.iter().map(|c| c.name.as_str()).collect();
            let mut removed: Vec<&String> = old
                .map(|o| o.keys().filter(|n| !in_plan.contains(n.as_str())).collect())
                .unwrap_or_default();
            let mut seen: HashSet<&str> = removed.iter().map(|n| n.as_str()).collect();
            for (t, n) in &found.chains {
                if *t == table && !in_plan.contains(n.as_str()) && seen.insert(n) {
                    removed.push(n);
                }
            }
            let full = applied.is_none();
            let old_jumps: Vec<&String> = found
                .jumps
                .iter()
                .filter(|(t, _)| full && *t == table)
                .map(|(_, j)| j)
                .collect();
            let jumps: Vec<&JumpRule> = self
                .jumps
                .iter()
                .filter(|j| full && j.table == table)
                .collect();
            if changed.is_empty() && removed.is_empty() && jumps.is_empty() {
                continue;
            }
            out.push_str(&format!("*{}\n", table.as_str()));
            for c in changed
                .iter()
                .map(|c| &c.name)
                .chain(removed.iter().copied())
            {
                out.push_str(&format!(":{} - [0:0]\n", escape::chain(c)?));
            }
            for j in old_jumps {
                out.push_str(&format!("-D {j}\n"));
            }
            for c in &changed {
                for r in &c.rules {
                    escape::check_rule(r)?;
                    out.push_str(&format!("-A {} {r}\n", c.name));
                    written += 1;
                }
            }
            for j in jumps.iter().rev() {
                escape::check_rule(&j.rule)?;
                out.push_str(&format!("-I {} 1 {}\n", j.builtin, j.rule));
                written += 1;
            }
            for c in &removed {
                out.push_str(&format!("-X {c}\n"));
            }
            out.push_str("COMMIT\n");
        }
        Ok((out, written))
    }

    /// What the kernel holds after this plan is applied.
    pub fn applied(&self) -> AppliedFamily {
        let map = |chains: &[Chain]| {
            chains
                .iter()
                .map(|c| (c.name.clone(), c.rules.clone()))
                .collect()
        };
        AppliedFamily {
            filter: map(&self.filter),
            nat: map(&self.nat),
        }
    }
}

/// The chains this backend last wrote for one family.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedFamily {
    pub filter: BTreeMap<String, Vec<Rule>>,
    pub nat: BTreeMap<String, Vec<Rule>>,
}

impl AppliedFamily {
    fn table(&self, table: Table) -> &BTreeMap<String, Vec<Rule>> {
        match table {
            Table::Filter => &self.filter,
            Table::Nat => &self.nat,
        }
    }

    /// Record that `plan` was applied over `self`, copying only the chains
    /// that changed: a sync that rewrote one service's chains copies those.
    pub fn update(&mut self, plan: &FamilyPlan) {
        for table in Table::ALL {
            let map = match table {
                Table::Filter => &mut self.filter,
                Table::Nat => &mut self.nat,
            };
            let chains = plan.chains(table);
            let in_plan: HashSet<&str> = chains.iter().map(|c| c.name.as_str()).collect();
            map.retain(|name, _| in_plan.contains(name.as_str()));
            for c in chains {
                if map.get(&c.name) != Some(&c.rules) {
                    map.insert(c.name.clone(), c.rules.clone());
                }
            }
        }
    }
}

impl fmt::Display for FamilyPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for table in Table::ALL {
            writeln!(f, "*{}", table.as_str())?;
            for c in self.chains(table) {
                writeln!(f, ":{} - [0:0]", c.name)?;
            }
            for j in self.jumps.iter().filter(|j| j.table == table) {
                writeln!(f, "-A {} {}", j.builtin, j.rule)?;
            }
            for c in self.chains(table) {
                for r in &c.rules {
                    writeln!(f, "-A {} {r}", c.name)?;
                }
            }
            writeln!(f, "COMMIT")?;
        }
        Ok(())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for family in &self.families {
            let (name, _, _) = tools(family.family);
            writeln!(f, "# {name}")?;
            write!(f, "{family}")?;
        }
        Ok(())
    }
}
