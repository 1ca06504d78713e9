//! The one writer of iptables rules to the kernel, for the iptables mode and
//! the IPVS mode's iptables part alike: a [`FamilyPlan`]'s chains through
//! `iptables-restore --noflush` (only those that changed since the last
//! write; on a full write also the jumps from built-in chains, replacing
//! whatever of ours the kernel held, in the same transaction), and the
//! removal of chains. Every command acts in the caller's network
//! namespace.

use switchyard_api::Mode;
use switchyard_api::ruleset::IpFamily;

use super::plan::{AppliedFamily, FamilyPlan};
use super::rule::Table;
use super::{escape, names};
use crate::BackendError;
use crate::escape::NameError;
use crate::exec::Runner;

/// The command-line tools of one family: `(iptables, iptables-restore, iptables-save)`.
pub fn tools(family: IpFamily) -> (&'static str, &'static str, &'static str) {
    match family {
        IpFamily::V4 => ("iptables", "iptables-restore", "iptables-save"),
        IpFamily::V6 => ("ip6tables", "ip6tables-restore", "ip6tables-save"),
    }
}

/// The built-in chains our jump rules sit in.
const BUILTINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// What one family's tables hold of ours ([`names::is_ours`]): the chains,
/// and the rules of built-in chains that jump to them (as `iptables-save`
/// prints them after `-A `), whichever mode wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub chains: Vec<(Table, String)>,
    pub jumps: Vec<(Table, String)>,
}

impl Found {
    /// Parse one table's `iptables-save` output into `self`.
    pub fn add_saved(&mut self, table: Table, saved: &str) {
        for line in saved.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                let chain = decl.split_whitespace().next().unwrap_or_default();
                if names::is_ours(chain) {
                    self.chains.push((table, chain.to_string()));
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let builtin = rule.split(' ').next().unwrap_or_default();
                let target = rule
                    .rsplit_once(" -j ")
                    .and_then(|(_, t)| t.split_whitespace().next());
                if BUILTINS.contains(&builtin) && target.is_some_and(names::is_ours) {
                    self.jumps.push((table, rule.to_string()));
                }
            }
        }
    }
}

/// Writes one family's rules for one mode (whose name the errors carry).
pub struct Restore<'a> {
    pub runner: &'a dyn Runner,
    pub mode: Mode,
    pub family: IpFamily,
}

impl Restore<'_> {
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
        operation: &'static str,
    ) -> Result<String, BackendError> {
        self.runner
            .run(program, args, stdin.map(str::as_bytes))
            .map_err(|source| BackendError::Exec {
                mode: self.mode,
                operation,
                source,
            })
    }

    fn name_err(&self, operation: &'static str) -> impl FnOnce(NameError) -> BackendError {
        let mode = self.mode;
        move |source| BackendError::Name {
            mode,
            operation,
            source,
        }
    }

    /// Write `plan` in one `iptables-restore`: the chains that differ from
    /// `previous`, deleting vanished ones. With `previous` `None` (a full
    /// write) it takes over whatever of ours the kernel holds, also the other
    /// mode's of the same names: every chain of ours not in the plan is
    /// deleted, every built-in rule jumping to one is replaced by the plan's
    /// jumps, all in the same transaction, so traffic meets the old rules or
    /// the new ones, never neither. Returns how many rules it wrote.
    pub fn write(
        &self,
        plan: &FamilyPlan,
        previous: Option<&AppliedFamily>,
    ) -> Result<usize, BackendError> {
        let (_, restore, _) = tools(self.family);
        let found = match previous {
            None => self.found()?,
            Some(_) => Found::default(),
        };
        let (input, written) = plan
            .restore_input(previous, &found)
            .map_err(self.name_err("restore rules"))?;
        if !input.is_empty() {
            self.run(restore, &["-w", "--noflush"], Some(&input), "restore rules")?;
        }
        Ok(written)
    }

    /// What the kernel holds of ours (restart recovery, a full write, cleanup).
    pub fn found(&self) -> Result<Found, BackendError> {
        let (_, _, save) = tools(self.family);
        let mut found = Found::default();
        for table in Table::ALL {
            let saved = self.run(save, &["-t", table.as_str()], None, "list chains")?;
            found.add_saved(table, &saved);
        }
        Ok(found)
    }

    /// Remove what [`Restore::found`] found in one `iptables-restore`: the
    /// built-in rules jumping to our chains, then the chains.
    pub fn remove(&self, found: &Found) -> Result<(), BackendError> {
        let (_, restore, _) = tools(self.family);
        let mut input = String::new();
        for table in Table::ALL {
            let of_table = |list: &'_ [(Table, String)]| -> Vec<String> {
                list.iter()
                    .filter(|(t, _)| *t == table)
                    .map(|(_, c)| c.clone())
                    .collect()
            };
            let (chains, jumps) = (of_table(&found.chains), of_table(&found.jumps));
            if chains.is_empty() && jumps.is_empty() {
                continue;
            }
            input.push_str(&format!("*{}\n", table.as_str()));
            for j in &jumps {
                input.push_str(&format!("-D {j}\n"));
            }
            for c in &chains {
                let c = escape::chain(c).map_err(self.name_err("delete chains"))?;
                input.push_str(&format!(":{c} - [0:0]\n"));
            }
            for c in &chains {
                input.push_str(&format!("-X {c}\n"));
            }
            input.push_str("COMMIT\n");
        }
        if !input.is_empty() {
            self.run(restore, &["-w", "--noflush"], Some(&input), "delete chains")?;
        }
        Ok(())
    }
}
