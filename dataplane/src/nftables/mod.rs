//! The `nftables` backend: `table ip switchyard` and `table ip6 switchyard`,
//! verdict maps for O(1) dispatch, applied as `nf_tables` netlink batches
//! (or `nft -f` scripts when the runner acts in another namespace). A full
//! sync replaces both tables in one transaction; an incremental sync sends
//! only the difference between the new plan and the one this backend last
//! applied, which it keeps in memory (the kernel table is never listed).
//! See README.md for the layout.

mod diff;
pub mod escape;
pub mod ir;
pub mod netlink;
pub mod render;
pub mod table_count;
pub mod text;
#[cfg(test)]
mod trace;
pub mod transaction;

#[cfg(test)]
mod netns_tables_tests;
#[cfg(test)]
mod netns_tests;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_api::ruleset::IpFamily;

use crate::conntrack::{self, ConntrackTable, UdpSnapshot};
use crate::exec::Runner;
use crate::nat_drain::{DrainState, NatDrain};
use crate::semantics::{ModeSemantics, NodePortScope, UnknownPort};
use crate::settings::Settings;
use crate::{ApplyStats, Backend, BackendError, Retirement};

use self::diff::{Applied, IndexStep};
pub use self::ir::Plan;
use self::ir::{TABLE, TableId};
use self::netlink::{NetlinkError, ThreadSocket};
use self::table_count::TableCount;
use self::text::family_word;
use self::transaction::Transaction;

/// The nftables dataplane.
pub struct NftablesBackend {
    runner: Arc<dyn Runner>,
    conntrack: Arc<dyn ConntrackTable>,
    /// What the kernel holds, as this backend last applied it.
    applied: Option<Applied>,
    /// The next sync renders and writes everything (periodic resync).
    full_next: bool,
    /// Empty chains of removed services, deleted at the start of the next apply.
    stale_chains: Vec<(TableId, String)>,
    /// How many tables per family the service chains are spread over.
    tables: TableCount,
    /// Transactions go over netlink when the runner's tools act on the
    /// calling thread's namespace (else through `nft -f`).
    netlink: bool,
    /// The netlink socket, in the namespace of the thread that syncs.
    socket: ThreadSocket,
    /// Retired for eBPF: the table stays while its connections last.
    drain: NatDrain,
}

impl NftablesBackend {
    pub fn new(runner: Arc<dyn Runner>) -> NftablesBackend {
        NftablesBackend {
            netlink: runner.acts_here(),
            conntrack: runner.conntrack(),
            runner,
            applied: None,
            full_next: false,
            stale_chains: Vec::new(),
            tables: TableCount::default(),
            socket: ThreadSocket::default(),
            drain: NatDrain::default(),
        }
    }

    /// The backend with another rule for the number of tables (benchmarks,
    /// and tests of the multi-table layout at small sizes).
    pub fn with_tables(runner: Arc<dyn Runner>, tables: TableCount) -> NftablesBackend {
        NftablesBackend {
            tables,
            ..NftablesBackend::new(runner)
        }
    }

    /// The number of tables a plan for `ruleset` gets, keeping the one in use
    /// where [`TableCount`] allows.
    fn table_count(&self, ruleset: &LinkedRuleset) -> u8 {
        let in_use = self.applied.as_ref().map(|a| a.plan.context.tables);
        self.tables.tables(ruleset.services.len(), in_use)
    }

    /// Send one transaction: over netlink when it can carry it, else `nft -f`
    /// (the netlink encoder checks what it can carry before it sends
    /// anything; checking first here too cost a full sync every name twice).
    fn send(&self, operation: &'static str, tx: &Transaction) -> Result<(), BackendError> {
        if self.netlink {
            match self.socket.apply(&tx.commands) {
                Err(NetlinkError::Unsupported(_) | NetlinkError::Name(_)) => {}
                sent => {
                    return sent.map_err(|e| BackendError::Kernel {
                        mode: Mode::Nftables,
                        operation,
                        message: e.to_string(),
                    });
                }
            }
        }
        let script = tx.text().map_err(|source| BackendError::Name {
            mode: Mode::Nftables,
            operation,
            source,
        })?;
        self.nft(operation, &script)
    }

    /// Delete the chains earlier syncs emptied (a plan using one again
    /// creates it anew). A failure is not fatal: they are empty and
    /// unreferenced, and the next apply tries again.
    fn delete_stale_chains(&mut self) {
        if self.stale_chains.is_empty() {
            return;
        }
        let mut tx = Transaction::default();
        for (table, name) in &self.stale_chains {
            tx.delete_chain(*table, name);
        }
        match self.send("delete stale chains", &tx) {
            Ok(()) => self.stale_chains.clear(),
            Err(e) => tracing::warn!(error = %e, "stale nftables chains stay until the next sync"),
        }
    }

    fn apply_owned(&mut self, plan: Plan) -> Result<ApplyStats, BackendError> {
        self.delete_stale_chains();
        // The periodic resync rewrites the tables in place; if the kernel
        // refuses (its tables are not what we recorded), they are replaced.
        let resynced = match &self.applied {
            Some(applied) if self.full_next => {
                let step = resync(applied, &plan);
                self.send("rewrite tables in place", &step.tx)
                    .map_err(|e| tracing::warn!(error = %e, "in-place resync refused; replacing the tables"))
                    .ok()
                    .map(|()| step)
            }
            _ => None,
        };
        let step = match resynced {
            Some(step) => step,
            None => {
                let old = self.applied.as_ref().filter(|_| !self.full_next);
                let step = transaction(old, &plan);
                if !step.tx.is_empty() {
                    // One transaction: on failure the kernel keeps the previous
                    // rules, and so does our record of them.
                    self.send("apply transaction", &step.tx)?;
                }
                step
            }
        };
        let Step {
            tx,
            full,
            replaced,
            flushed,
            index,
            service_rules,
        } = step;
        self.stale_chains
            .retain(|(t, _)| !replaced.contains(&t.family));
        self.stale_chains.extend(flushed);
        let stale = stale_udp(self.applied.as_ref().map(|a| &a.plan), &plan);
        let old = if self.full_next {
            None
        } else {
            self.applied.take()
        };
        let applied = Applied::commit(old, plan, index, service_rules);
        let objects = applied.object_count();
        self.applied = Some(applied);
        self.full_next = false;
        conntrack::delete_stale(self.conntrack.as_ref(), &stale).map_err(|e| {
            BackendError::Kernel {
                mode: Mode::Nftables,
                operation: "delete stale UDP conntrack entries",
                message: e.to_string(),
            }
        })?;
        Ok(ApplyStats {
            objects: u32::try_from(objects).unwrap_or(u32::MAX),
            written: tx.objects,
            full,
        })
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

/// A transaction from what is applied to a new plan.
pub struct Step {
    pub tx: Transaction,
    /// Every table is rewritten.
    pub full: bool,
    /// Families whose tables are rewritten (their stale chains are gone with them).
    pub replaced: Vec<IpFamily>,
    /// Chains the transaction flushes and a later one must delete.
    pub flushed: Vec<(TableId, String)>,
    /// How the element index changes once the transaction is applied.
    pub index: IndexStep,
    /// Rules of the new plan's service ports.
    pub service_rules: usize,
}

/// The transaction turning `old` (what is applied, if known) into `new`.
pub fn transaction(old: Option<&Applied>, new: &Plan) -> Step {
    let changed = old.map(|o| diff::changed_services(&o.plan, new));
    let mut step = Step::new(match (old, &changed) {
        (Some(o), Some(c)) => o.service_rules_after(c),
        _ => new.service_rule_count(),
    });
    for family in new.families() {
        let incremental = old
            .zip(changed.as_deref())
            .and_then(|(o, c)| diff::diff_family(o, new, family, c, &mut step.tx));
        match incremental {
            Some((removed, update)) => {
                step.flushed.extend(removed);
                step.index.push((family, update));
                step.full = false;
            }
            None => step.replace(new, family),
        }
    }
    step
}

impl Step {
    /// A full, empty step.
    fn new(service_rules: usize) -> Step {
        Step {
            tx: Transaction::default(),
            full: true,
            replaced: Vec::new(),
            flushed: Vec::new(),
            index: Vec::new(),
            service_rules,
        }
    }

    /// Rewrite `family`'s tables by replacing them, and remove the service
    /// tables the plan does not use (an earlier plan, or an earlier run of
    /// the agent, may have had more).
    fn replace(&mut self, new: &Plan, family: IpFamily) {
        if let Some((tables, update)) = diff::full_tables(new, family) {
            for table in &tables {
                self.tx.replace_table(table);
            }
            let used = u8::try_from(tables.len()).unwrap_or(u8::MAX);
            for shard in used..ir::MAX_TABLES {
                self.tx.drop_table(TableId { family, shard });
            }
            self.replaced.push(family);
            self.index.push((family, update));
        }
    }
}

/// The periodic resync: every table rewritten in place from `new`, keeping
/// session-affinity entries (a table replacement would drop them).
pub fn resync(old: &Applied, new: &Plan) -> Step {
    let mut step = Step::new(new.service_rule_count());
    for family in new.families() {
        match diff::rewrite_family(old, new, family, &mut step.tx) {
            Some((removed, update)) => {
                step.flushed.extend(removed);
                step.index.push((family, update));
            }
            None => step.replace(new, family),
        }
    }
    step
}

/// The UDP conntrack entries that became stale from `old` to `new`.
fn stale_udp(old: Option<&Plan>, new: &Plan) -> Vec<conntrack::StaleEntry> {
    let Some(old) = old else {
        return conntrack::stale_entries(&UdpSnapshot::default(), &new.udp());
    };
    let (mut before, mut after) = (UdpSnapshot::default(), UdpSnapshot::default());
    for (_, o, n) in diff::changed_services(old, new) {
        before.ports.extend(o.and_then(|s| s.udp.clone()));
        after.ports.extend(n.and_then(|s| s.udp.clone()));
    }
    conntrack::stale_entries(&before, &after)
}

impl Backend for NftablesBackend {
    type Plan = Plan;

    fn mode(&self) -> Mode {
        Mode::Nftables
    }

    fn render(&self, ruleset: &LinkedRuleset, settings: &Settings) -> Plan {
        render::render_counted(ruleset, settings, self.tables)
    }

    /// Renders only the service ports that changed since the last apply.
    fn sync(
        &mut self,
        ruleset: &LinkedRuleset,
        settings: &Settings,
    ) -> Result<ApplyStats, BackendError> {
        let previous = self
            .applied
            .as_ref()
            .filter(|_| !self.full_next)
            .map(|a| &a.plan);
        let tables = self.table_count(ruleset);
        let plan = render::render_reusing(previous, ruleset, settings, tables);
        self.apply_owned(plan)
    }

    fn apply(&mut self, plan: &Plan) -> Result<ApplyStats, BackendError> {
        self.apply_owned(plan.clone())
    }

    fn invalidate(&mut self) {
        self.full_next = true;
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
        for table in TableId::all() {
            tx.drop_table(table);
        }
        self.send("delete tables", &tx)?;
        self.applied = None;
        self.full_next = false;
        self.stale_chains.clear();
        Ok(())
    }

    /// eBPF leaves our table's connections to it: it drains ([`NatDrain`]).
    fn retire(&mut self, successor: Mode) -> Result<Retirement, BackendError> {
        if self.drain.start_for(successor) {
            return self.settle();
        }
        self.cleanup().map(|()| Retirement::Done)
    }

    fn settle(&mut self) -> Result<Retirement, BackendError> {
        match self.drain.settle(self.runner.as_ref(), Mode::Nftables)? {
            DrainState::Draining => Ok(Retirement::Draining),
            DrainState::Ended => self.cleanup().map(|()| Retirement::Done),
            DrainState::Idle => Ok(Retirement::Done),
        }
    }
}

/// What this mode does differently: a port no service uses on a service
/// address is rejected; NodePorts are served on the node's primary addresses
/// by default, never on 127.0.0.1.
pub fn semantics(settings: &Settings) -> ModeSemantics {
    ModeSemantics::new(
        settings,
        UnknownPort::Rejected,
        NodePortScope::PrimaryAddresses,
        false,
    )
}
