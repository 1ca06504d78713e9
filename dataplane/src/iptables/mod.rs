//! The `iptables` backend: kube-proxy's iptables layout, rendered as typed
//! rules ([`rule`]) into a [`Plan`] per IP family and applied with
//! `iptables-restore --noflush` / `ip6tables-restore --noflush`, rewriting only
//! the chains that changed since the last sync. See `README.md`.

pub mod names;
pub mod plan;
pub mod render;
pub mod rule;
pub mod trace;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_api::ruleset::IpFamily;

use self::plan::{AppliedFamily, FamilyPlan, JumpRule};
use self::rule::Table;
use super::{ApplyStats, Backend, BackendError};
use crate::conntrack::{self, UdpSnapshot};
use crate::exec::{ExecError, Runner};
use crate::settings::Settings;
use crate::sysctl::Sysctl;

pub use self::plan::Plan;

const ROUTE_LOCALNET: &str = "net.ipv4.conf.all.route_localnet";

/// The iptables dataplane.
pub struct IptablesBackend {
    runner: Arc<dyn Runner>,
    sysctl: Arc<dyn Sysctl>,
    /// What was last written per family; `None` forces a full sync.
    applied: [Option<AppliedFamily>; 2],
    udp: UdpSnapshot,
    /// route_localnet before we first set it, restored by cleanup.
    localnet_before: Option<String>,
}

fn slot(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

fn tools(family: IpFamily) -> (&'static str, &'static str, &'static str) {
    match family {
        IpFamily::V4 => ("iptables", "iptables-restore", "iptables-save"),
        IpFamily::V6 => ("ip6tables", "ip6tables-restore", "ip6tables-save"),
    }
}

/// Split a rendered rule into arguments (comments are the only quoted words).
fn argv(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for ch in text.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(ch),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

impl IptablesBackend {
    pub fn new(runner: Arc<dyn Runner>, sysctl: Arc<dyn Sysctl>) -> IptablesBackend {
        IptablesBackend {
            runner,
            sysctl,
            applied: [None, None],
            udp: UdpSnapshot::default(),
            localnet_before: None,
        }
    }

    fn exec_err(operation: &'static str) -> impl FnOnce(ExecError) -> BackendError {
        move |source| BackendError::Exec {
            mode: Mode::Iptables,
            operation,
            source,
        }
    }

    fn run(
        &self,
        program: &str,
        args: &[&str],
        operation: &'static str,
    ) -> Result<String, BackendError> {
        self.runner
            .run(program, args, None)
            .map_err(Self::exec_err(operation))
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

    fn jump_exists(&self, family: IpFamily, j: &JumpRule, rule: &[String]) -> bool {
        let (bin, _, _) = tools(family);
        self.runner
            .run(bin, &Self::jump_args(j, "-C", rule), None)
            .is_ok()
    }

    /// Insert missing jump rules so that each builtin chain holds them in plan order, first.
    fn ensure_jumps(&self, fp: &FamilyPlan) -> Result<(), BackendError> {
        let (bin, _, _) = tools(fp.family);
        for j in fp.jumps.iter().rev() {
            let rule = argv(&j.rule.to_string());
            if !self.jump_exists(fp.family, j, &rule) {
                self.run(bin, &Self::jump_args(j, "-I", &rule), "insert jump rule")?;
            }
        }
        Ok(())
    }

    fn set_route_localnet(&mut self) -> Result<(), BackendError> {
        let io_err = |operation| {
            move |source| BackendError::Io {
                mode: Mode::Iptables,
                operation,
                source,
            }
        };
        let current = self
            .sysctl
            .read(ROUTE_LOCALNET)
            .map_err(io_err("read route_localnet"))?;
        if current != "1" {
            self.localnet_before.get_or_insert(current);
            self.sysctl
                .write(ROUTE_LOCALNET, "1")
                .map_err(io_err("set route_localnet"))?;
        }
        Ok(())
    }

    fn apply_family(&mut self, fp: &FamilyPlan) -> Result<(usize, bool), BackendError> {
        let (_, restore, _) = tools(fp.family);
        let previous = self.applied[slot(fp.family)].as_ref();
        let full = previous.is_none();
        let leftovers = if full {
            self.existing_chains(fp.family)?
        } else {
            Vec::new()
        };
        let (input, written) = fp.restore_input(previous, &leftovers);
        if fp.route_localnet {
            self.set_route_localnet()?;
        }
        if !input.is_empty() {
            self.runner
                .run(restore, &["-w", "--noflush"], Some(input.as_bytes()))
                .map_err(Self::exec_err("restore rules"))?;
        }
        if full {
            self.ensure_jumps(fp)?;
        }
        self.applied[slot(fp.family)] = Some(fp.applied());
        Ok((written + if full { fp.jumps.len() } else { 0 }, full))
    }

    /// Our chains present in the kernel (restart recovery, cleanup).
    fn existing_chains(&self, family: IpFamily) -> Result<Vec<(Table, String)>, BackendError> {
        let (_, _, save) = tools(family);
        let mut out = Vec::new();
        for table in Table::ALL {
            let saved = self.run(save, &["-t", table.as_str()], "list chains")?;
            out.extend(
                saved
                    .lines()
                    .filter_map(|l| l.strip_prefix(':'))
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|c| names::is_ours(c))
                    .map(|c| (table, c.to_string())),
            );
        }
        Ok(out)
    }

    /// Remove our jump rules and chains from one family's tables.
    fn cleanup_family(&self, fp: &FamilyPlan) -> Result<(), BackendError> {
        let (bin, restore, _) = tools(fp.family);
        for j in &fp.jumps {
            let rule = argv(&j.rule.to_string());
            while self.jump_exists(fp.family, j, &rule) {
                self.run(bin, &Self::jump_args(j, "-D", &rule), "delete jump rule")?;
            }
        }
        let existing = self.existing_chains(fp.family)?;
        let mut input = String::new();
        for table in Table::ALL {
            let ours: Vec<&String> = existing
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, c)| c)
                .collect();
            if ours.is_empty() {
                continue;
            }
            input.push_str(&format!("*{}\n", table.as_str()));
            for c in &ours {
                input.push_str(&format!(":{c} - [0:0]\n"));
            }
            for c in &ours {
                input.push_str(&format!("-X {c}\n"));
            }
            input.push_str("COMMIT\n");
        }
        if !input.is_empty() {
            self.runner
                .run(restore, &["-w", "--noflush"], Some(input.as_bytes()))
                .map_err(Self::exec_err("delete chains"))?;
        }
        Ok(())
    }
}

impl Backend for IptablesBackend {
    type Plan = Plan;

    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    fn render(&self, ruleset: &LinkedRuleset, settings: &Settings) -> Plan {
        render::render(ruleset, settings)
    }

    fn apply(&mut self, plan: &Plan) -> Result<ApplyStats, BackendError> {
        let mut stats = ApplyStats {
            full: true,
            ..ApplyStats::default()
        };
        for fp in &plan.families {
            let (written, full) = self.apply_family(fp)?;
            stats.objects += fp.rule_count() as u32;
            stats.written += written as u32;
            stats.full &= full;
        }
        let stale = conntrack::stale_entries(&self.udp, &plan.udp);
        conntrack::delete(self.runner.as_ref(), &stale).map_err(|e| BackendError::Kernel {
            mode: Mode::Iptables,
            operation: "delete stale UDP conntrack entries",
            message: e.to_string(),
        })?;
        self.udp = plan.udp.clone();
        Ok(stats)
    }

    fn invalidate(&mut self) {
        self.applied = [None, None];
    }

    fn present(&self) -> Result<bool, BackendError> {
        for family in [IpFamily::V4, IpFamily::V6] {
            let (bin, _, _) = tools(family);
            if self
                .runner
                .run(bin, &["-w", "-t", "nat", "-S", names::KUBE_SERVICES], None)
                .is_ok()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let empty = render::render(
            &LinkedRuleset::default(),
            &Settings::defaults(Mode::Iptables),
        );
        for fp in &empty.families {
            self.cleanup_family(fp)?;
        }
        if let Some(before) = self.localnet_before.take() {
            self.sysctl
                .write(ROUTE_LOCALNET, &before)
                .map_err(|source| BackendError::Io {
                    mode: Mode::Iptables,
                    operation: "restore route_localnet",
                    source,
                })?;
        }
        self.applied = [None, None];
        self.udp = UdpSnapshot::default();
        Ok(())
    }
}
