//! The `nftables` backend: `table ip switchyard` and `table ip6 switchyard`,
//! verdict maps for O(1) dispatch, applied with `nft -f` transactions. A full
//! sync replaces both tables in one transaction; an incremental sync sends
//! only the difference between the new plan and the one this backend last
//! applied, which it keeps in memory (the kernel table is never listed).
//! See README.md for the layout.

mod diff;
pub mod ir;
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
    udp: UdpSnapshot,
}

impl NftablesBackend {
    pub fn new(runner: Arc<dyn Runner>) -> NftablesBackend {
        NftablesBackend {
            runner,
            applied: None,
            udp: UdpSnapshot::default(),
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

/// The transaction turning `old` (what is applied, if known) into `new`;
/// `true` when it rewrites every table.
pub fn transaction(old: Option<&Plan>, new: &Plan) -> (Transaction, bool) {
    let mut tx = Transaction::default();
    let mut full = true;
    for table in &new.tables {
        match old.and_then(|o| o.table(table.family)) {
            Some(before) if !diff::needs_full_sync(before, table) => {
                diff::diff_table(before, table, &mut tx);
                full = false;
            }
            _ => tx.replace_table(table),
        }
    }
    (tx, full)
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
        let (tx, full) = transaction(self.applied.as_ref(), plan);
        if !tx.is_empty() {
            // One transaction: on failure the kernel keeps the previous rules,
            // and so does our record of them.
            self.nft("apply transaction", tx.text())?;
        }
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
            written: tx.commands,
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
        self.nft("delete tables", tx.text())?;
        self.applied = None;
        self.udp = UdpSnapshot::default();
        Ok(())
    }
}
