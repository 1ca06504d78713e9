//! The one writer of iptables rules to the kernel, for the iptables mode and
//! the IPVS mode's iptables part alike: a [`FamilyPlan`]'s chains through
//! `iptables-restore --noflush` (only those that changed since the last
//! write), the jumps from built-in chains through `iptables -C` / `-I` / `-D`,
//! and the removal of chains. Every command acts in the caller's network
//! namespace.

use switchyard_api::Mode;
use switchyard_api::ruleset::IpFamily;

use super::escape;
use super::plan::{AppliedFamily, FamilyPlan, JumpRule};
use super::rule::Table;
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

/// `-w -t <table> <op> <builtin> <rule…>`; `-I` inserts at the top.
fn jump_args<'a>(j: &'a JumpRule, op: &'a str, rule: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["-w", "-t", j.table.as_str(), op, j.builtin];
    if op == "-I" {
        args.push("1");
    }
    args.extend(rule.iter().map(String::as_str));
    args
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

    /// Write `plan`: the chains that differ from `previous` (every chain when
    /// `None`, a full write, which also inserts the missing jumps), deleting
    /// vanished chains and `leftovers` not in the plan. Returns how many rules
    /// it wrote.
    pub fn write(
        &self,
        plan: &FamilyPlan,
        previous: Option<&AppliedFamily>,
        leftovers: &[(Table, String)],
    ) -> Result<usize, BackendError> {
        let (_, restore, _) = tools(self.family);
        let (input, mut written) = plan
            .restore_input(previous, leftovers)
            .map_err(self.name_err("restore rules"))?;
        if !input.is_empty() {
            self.run(restore, &["-w", "--noflush"], Some(&input), "restore rules")?;
        }
        if previous.is_none() {
            self.ensure_jumps(&plan.jumps)?;
            written += plan.jumps.len();
        }
        Ok(written)
    }

    fn jump_exists(&self, j: &JumpRule, rule: &[String]) -> bool {
        let (bin, _, _) = tools(self.family);
        self.runner
            .run(bin, &jump_args(j, "-C", rule), None)
            .is_ok()
    }

    /// Insert missing jump rules so that each builtin chain holds them in plan order, first.
    fn ensure_jumps(&self, jumps: &[JumpRule]) -> Result<(), BackendError> {
        let (bin, _, _) = tools(self.family);
        for j in jumps.iter().rev() {
            escape::check_rule(&j.rule).map_err(self.name_err("insert jump rule"))?;
            let rule = escape::argv(&j.rule.to_string());
            if !self.jump_exists(j, &rule) {
                self.run(bin, &jump_args(j, "-I", &rule), None, "insert jump rule")?;
            }
        }
        Ok(())
    }

    /// Delete every copy of these jump rules.
    pub fn remove_jumps(&self, jumps: &[JumpRule]) -> Result<(), BackendError> {
        let (bin, _, _) = tools(self.family);
        for j in jumps {
            escape::check_rule(&j.rule).map_err(self.name_err("delete jump rule"))?;
            let rule = escape::argv(&j.rule.to_string());
            while self.jump_exists(j, &rule) {
                self.run(bin, &jump_args(j, "-D", &rule), None, "delete jump rule")?;
            }
        }
        Ok(())
    }

    /// The chains in the kernel that `is_ours` claims (restart recovery, cleanup).
    pub fn chains(&self, is_ours: fn(&str) -> bool) -> Result<Vec<(Table, String)>, BackendError> {
        let (_, _, save) = tools(self.family);
        let mut out = Vec::new();
        for table in Table::ALL {
            let saved = self.run(save, &["-t", table.as_str()], None, "list chains")?;
            out.extend(
                saved
                    .lines()
                    .filter_map(|l| l.strip_prefix(':'))
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|c| is_ours(c))
                    .map(|c| (table, c.to_string())),
            );
        }
        Ok(out)
    }

    /// Flush and delete these chains (nothing may jump to them any more).
    pub fn delete_chains(&self, chains: &[(Table, String)]) -> Result<(), BackendError> {
        let (_, restore, _) = tools(self.family);
        let mut input = String::new();
        for table in Table::ALL {
            let ours: Vec<&String> = chains
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, c)| c)
                .collect();
            if ours.is_empty() {
                continue;
            }
            input.push_str(&format!("*{}\n", table.as_str()));
            for c in &ours {
                let c = escape::chain(c).map_err(self.name_err("delete chains"))?;
                input.push_str(&format!(":{c} - [0:0]\n"));
            }
            for c in &ours {
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
