//! The `ebpf` backend: socket-level load balancing on cgroup v2 hooks for
//! traffic from the node and its pods, tc programs for traffic from outside,
//! service/backend maps keyed by the compiler's stable ids. See `README.md`.

pub mod kernel;
pub mod layout;
pub mod maglev;
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
use self::plan::{EbpfPlan, MapState};
use self::sync::{Snapshot, sync_ops};
use crate::semantics::{ModeSemantics, NodePortScope, UnknownPort};
use crate::settings::Settings;
use crate::{ApplyStats, Backend, BackendError};

/// The eBPF dataplane over a kernel face (the real one: [`kernel::AyaKernel`]).
pub struct EbpfBackend<K: EbpfKernel> {
    kernel: K,
    /// What the maps hold after the last apply; None: read them back first.
    applied: Option<Snapshot>,
}

impl<K: EbpfKernel> EbpfBackend<K> {
    pub fn new(kernel: K) -> EbpfBackend<K> {
        EbpfBackend {
            kernel,
            applied: None,
        }
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
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
