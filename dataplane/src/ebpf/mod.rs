//! The `ebpf` backend: socket-level load balancing on cgroup v2 hooks for
//! traffic from the node and its pods, tc programs for traffic from outside,
//! service/backend maps keyed by the compiler's stable ids. See `README.md`.

pub mod drain;
pub mod kernel;
pub mod layout;
pub mod maglev;
pub mod masq_ports;
pub mod objects;
pub mod plan;
pub mod probe;
pub mod scratch;
pub mod sync;
pub mod tc;
#[cfg(test)]
mod tests;

use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;

use self::kernel::EbpfKernel;
use self::masq_ports::MasqueradePorts;
use self::plan::{EbpfPlan, MapState};
use self::sync::{MapOp, Snapshot, sync_ops};
use crate::nat_drain::{DrainState, NatDrain};
use crate::semantics::{ModeSemantics, NodePortScope, UnknownPort};
use crate::settings::Settings;
use crate::sysctl::ProcSysctl;
use crate::{ApplyStats, Backend, BackendError, Retirement};

/// The eBPF dataplane over a kernel face (the real one: [`kernel::AyaKernel`]).
pub struct EbpfBackend<K: EbpfKernel> {
    kernel: K,
    /// What the maps hold after the last apply; None: read them back first.
    applied: Option<Snapshot>,
    /// Retired: the flows it balanced drain ([`drain`]).
    drain: NatDrain,
}

impl<K: EbpfKernel> EbpfBackend<K> {
    pub fn new(kernel: K) -> EbpfBackend<K> {
        EbpfBackend {
            kernel,
            applied: None,
            drain: NatDrain::default(),
        }
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Empty `sy_conntrack`, inbound entries first ([`drain::removal_order`]).
    fn forget_flows(&mut self) -> Result<(), BackendError> {
        let entries = self.kernel.conntrack()?;
        for key in drain::removal_order(&entries) {
            self.kernel.forget_flow(&key)?;
        }
        Ok(())
    }
}

fn count(maps: &MapState) -> u32 {
    let slots: usize = maps.lists.values().map(|l| l.backends.len() + 1).sum();
    let maglev: usize = maps.maglev.values().map(Vec::len).sum();
    let n = maps.frontends.len() + slots + maps.backends.len() + maps.source_ranges.len() + maglev;
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<K: EbpfKernel> Backend for EbpfBackend<K> {
    type Plan = EbpfPlan;

    fn mode(&self) -> Mode {
        Mode::Ebpf
    }

    fn render(&self, ruleset: &LinkedRuleset, settings: &Settings) -> EbpfPlan {
        plan::render(ruleset, settings)
    }

    fn apply(&mut self, plan: &EbpfPlan) -> Result<ApplyStats, BackendError> {
        self.kernel.load(&plan.config)?;
        let full = self.applied.is_none();
        let before = match self.applied.take() {
            Some(snap) => snap,
            None => self.kernel.snapshot()?,
        };
        let (ops, revisions) = sync_ops(&before, &plan.maps);
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = self.kernel.write(op) {
                // The maps are partly written: read them back on the next apply.
                self.applied = None;
                return Err(kernel::kernel_err(
                    "apply map writes",
                    format!("write {} of {}: {e}", i + 1, ops.len()),
                ));
            }
        }
        self.applied = Some(Snapshot {
            state: std::sync::Arc::clone(&plan.maps),
            revisions,
            stale_slots: Vec::new(),
        });
        Ok(ApplyStats {
            objects: count(&plan.maps),
            written: u32::try_from(ops.len()).unwrap_or(u32::MAX),
            full,
        })
    }

    fn invalidate(&mut self) {
        self.applied = None;
    }

    fn present(&self) -> Result<bool, BackendError> {
        self.kernel.present()
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.applied = None;
        self.kernel.cleanup()
    }

    /// No new flow is balanced here any more (the frontends go), so new
    /// flows meet the successor; the programs stay for the flows they
    /// balanced ([`drain`]).
    fn retire(&mut self, _successor: Mode) -> Result<Retirement, BackendError> {
        self.applied = None;
        let frontends = self.kernel.snapshot()?.state.frontends.clone();
        for key in frontends.into_keys() {
            self.kernel.write(&MapOp::DeleteFrontend(key))?;
        }
        self.drain.start();
        self.settle()
    }

    fn settle(&mut self) -> Result<Retirement, BackendError> {
        let kernel = &mut self.kernel;
        let state = self
            .drain
            .settle_counting(|| Ok(drain::open_connections(&kernel.conntrack()?)))?;
        match state {
            DrainState::Draining => Ok(Retirement::Draining),
            DrainState::Ended => {
                self.forget_flows()?;
                self.cleanup().map(|()| Retirement::Done)
            }
            DrainState::Idle => Ok(Retirement::Done),
        }
    }

    /// The block the tc masquerade picks from on this node (`masq_ports`).
    fn masquerade_ports(&self) -> Option<MasqueradePorts> {
        MasqueradePorts::read(&ProcSysctl)
            .map_err(|e| tracing::warn!(error = %e, "the eBPF masquerade's ports are unknown"))
            .ok()
    }
}

/// What this mode does differently: a port no service uses is not
/// translated; NodePorts are served on the node's primary addresses by
/// default and, with `localhostNodePorts`, on 127.0.0.1 (translated at
/// connect time).
pub fn semantics(settings: &Settings) -> ModeSemantics {
    ModeSemantics::new(
        settings,
        UnknownPort::NotTranslated,
        NodePortScope::PrimaryAddresses,
        settings.localhost_node_ports,
    )
}
