//! The `nftables` backend: `table ip switchyard` and `table ip6 switchyard`,
//! verdict maps for O(1) dispatch, applied with `nft -f` transactions. A full
//! sync replaces both tables in one transaction; an incremental sync sends
//! only the difference between the new plan and the one this backend last
//! applied, which it keeps in memory (the kernel table is never listed).
//! See README.md for the layout.

mod diff;
pub mod ir;
pub mod netlink;
pub mod render;
pub mod text;
#[cfg(test)]
mod trace;

#[cfg(test)]
mod netns_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_api::ruleset::IpFamily;

use crate::backend::{ApplyStats, Backend, BackendError};
use crate::conntrack::{self, UdpSnapshot};
use crate::exec::Runner;
use crate::settings::Settings;

pub use self::ir::Plan;
use self::ir::TABLE;
use self::text::{Transaction, family_word};

/// The nftables dataplane.
pub struct NftablesBackend {
    runner: Arc<dyn Runner>,
    /// What the kernel holds, as this backend last applied it.
    applied: Option<Plan>,
    /// Empty chains of removed services, deleted at the start of the next apply.
    stale_chains: Vec<(IpFamily, String)>,
    udp: UdpSnapshot,
}

impl NftablesBackend {
    pub fn new(runner: Arc<dyn Runner>) -> NftablesBackend {
        NftablesBackend {
            runner,
            applied: None,
            stale_chains: Vec::new(),
            udp: UdpSnapshot::default(),
        }
    }

    /// Delete the chains earlier syncs emptied, unless `plan` uses them again.
    /// A failure is not fatal: they are empty and unreferenced, and the next
    /// apply tries again.
    fn delete_stale_chains(&mut self, plan: &Plan) {
        self.stale_chains.retain(|(family, name)| {
            plan.table(*family)
                .is_none_or(|t| !t.chains.contains_key(name))
        });
        if self.stale_chains.is_empty() {
            return;
        }
        let mut tx = Transaction::default();
        for (family, name) in &self.stale_chains {
            tx.delete_chain(*family, name);
        }
        match self.nft("delete stale chains", &tx.text()) {
            Ok(()) => self.stale_chains.clear(),
            Err(e) => tracing::warn!(error = %e, "stale nftables chains stay until the next sync"),
        }
    }

    fn nft(&self, operation: &'static str, script: &str) -> Result<(), BackendError> {
        self.runner
            .run("nft", &["-f", "-"], Some(script.as_bytes()))
            .map(|_| ())
            .map_err(|source| BackendError::Exec {
                mode: Mode::Nftables,
                operation,
                source,
            })
    }
}

/// A transaction from one plan to the next.
pub struct Step {
    pub tx: Transaction,
    /// Every table is rewritten.
    pub full: bool,
    /// Tables rewritten (their stale chains are gone with them).
    pub replaced: Vec<IpFamily>,
    /// Chains the transaction flushes and a later one must delete.
    pub flushed: Vec<(IpFamily, String)>,
}

/// The transaction turning `old` (what is applied, if known) into `new`.
pub fn transaction(old: Option<&Plan>, new: &Plan) -> Step {
    let mut step = Step {
        tx: Transaction::default(),
        full: true,
        replaced: Vec::new(),
        flushed: Vec::new(),
    };
    for table in &new.tables {
        match old.and_then(|o| o.table(table.family)) {
            Some(before) if !diff::needs_full_sync(before, table) => {
                let removed = diff::diff_table(before, table, &mut step.tx);
                step.flushed
                    .extend(removed.into_iter().map(|c| (table.family, c)));
                step.full = false;
            }
            _ => {
                step.tx.replace_table(table);
                step.replaced.push(table.family);
            }
        }
    }
    step
}

impl Backend for NftablesBackend {
    type Plan = Plan;

    fn mode(&self) -> Mode {
        Mode::Nftables
    }

    fn render(&self, ruleset: &LinkedRuleset, settings: &Settings) -> Plan {
        render::render(ruleset, settings)
    }

    fn apply(&mut self, plan: &Plan) -> Result<ApplyStats, BackendError> {
        if self.applied.is_some() {
            self.delete_stale_chains(plan);
        }
        let Step {
            tx,
            full,
            replaced,
            flushed,
        } = transaction(self.applied.as_ref(), plan);
        if !tx.is_empty() {
            // One transaction: on failure the kernel keeps the previous rules,
            // and so does our record of them.
            self.nft("apply transaction", &tx.text())?;
        }
        self.stale_chains.retain(|(f, _)| !replaced.contains(f));
        self.stale_chains.extend(flushed);
        self.applied = Some(plan.clone());
        let stale = conntrack::stale_entries(&self.udp, &plan.udp);
        self.udp = plan.udp.clone();
        conntrack::delete(self.runner.as_ref(), &stale).map_err(|e| BackendError::Kernel {
            mode: Mode::Nftables,
            operation: "delete stale UDP conntrack entries",
            message: e.to_string(),
        })?;
        Ok(ApplyStats {
            objects: plan.object_count(),
            written: tx.objects,
            full,
        })
    }

    fn invalidate(&mut self) {
        self.applied = None;
    }

    fn present(&self) -> Result<bool, BackendError> {
        // `nft list tables` would fetch every chain and rule of every table
        // (seconds at 44k services); listing one small map fetches only the
        // table and set definitions.
        Ok([IpFamily::V4, IpFamily::V6].iter().any(|f| {
            self.runner
                .run(
                    "nft",
                    &[
                        "list",
                        "map",
                        family_word(*f),
                        TABLE,
                        render::NO_ENDPOINT_NODEPORTS,
                    ],
                    None,
                )
                .is_ok()
        }))
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let mut tx = Transaction::default();
        for family in [IpFamily::V4, IpFamily::V6] {
            tx.drop_table(family);
        }
        self.nft("delete tables", &tx.text())?;
        self.applied = None;
        self.stale_chains.clear();
        self.udp = UdpSnapshot::default();
        Ok(())
    }
}
