//! Switchyard's dataplane library: one module per mode, each implementing
//! [`Backend`]: `render` (pure: linked ruleset + settings → typed plan) and
//! `apply` / `cleanup` (the only code that touches the kernel), plus what the
//! modes share: the [`exec`] chokepoint for kernel tools, what text from data
//! may hold ([`escape`]), the render [`settings`], [`conntrack`] cleanup and
//! kube-proxy's leftovers ([`kubeproxy`]), and what each mode does
//! differently ([`semantics`]). The node agent's runtime drives it; the CLI's
//! `plan` and `diff` and the benches render with it.
//!
//! [`Dataplane`] is the object-safe face the agent's control loop drives, so a
//! node can hold the old and the new mode side by side during a switch.

pub mod conntrack;
pub mod escape;
pub mod exec;
pub mod kubeproxy;
pub mod nat_drain;
pub mod netlink;
pub mod semantics;
pub mod settings;
pub mod sysctl;

pub mod ebpf;
#[cfg(test)]
mod hostile;
pub mod iptables;
pub mod ipvs;
pub mod nftables;
#[cfg(test)]
pub mod testns;

use std::fmt;
use std::sync::Arc;

use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;

use crate::ebpf::masq_ports::MasqueradePorts;
use crate::exec::{ExecError, Runner};
use crate::settings::Settings;

/// A backend failed to render or apply.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{mode}: {operation}: {source}")]
    Exec {
        mode: Mode,
        operation: &'static str,
        #[source]
        source: ExecError,
    },
    #[error("{mode}: {operation}: {source}")]
    Io {
        mode: Mode,
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{mode}: {operation}: {message}")]
    Kernel {
        mode: Mode,
        operation: &'static str,
        message: String,
    },
    /// Text the format cannot carry (a name from a ruleset that skipped validation).
    #[error("{mode}: {operation}: {source}")]
    Name {
        mode: Mode,
        operation: &'static str,
        #[source]
        source: escape::NameError,
    },
    #[error("{mode} is not available on this node: {reason}")]
    Unavailable { mode: Mode, reason: String },
}

/// What one apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Objects (rules, elements, virtual servers, map entries) in the applied plan.
    pub objects: u32,
    /// Objects written by this apply (less than `objects` on an incremental sync).
    pub written: u32,
    /// This apply rewrote everything.
    pub full: bool,
}

/// A dataplane mode.
pub trait Backend: Send {
    /// The typed plan; `Display` prints it in the mode's native form
    /// (iptables-save, `nft list`, `ipvsadm -Ln` + `ipset list`, map tables).
    type Plan: fmt::Display + fmt::Debug + Send;

    fn mode(&self) -> Mode;

    /// Pure: what to program for this linked ruleset.
    fn render(&self, ruleset: &LinkedRuleset, settings: &Settings) -> Self::Plan;

    /// Program the kernel. Incremental against what this backend last applied;
    /// on error, the previously applied rules stay in place.
    fn apply(&mut self, plan: &Self::Plan) -> Result<ApplyStats, BackendError>;

    /// Render and apply. A backend that can render only what changed since
    /// its last apply overrides this (nftables); the result must equal
    /// `apply(&render(..))`.
    fn sync(
        &mut self,
        ruleset: &LinkedRuleset,
        settings: &Settings,
    ) -> Result<ApplyStats, BackendError> {
        let plan = self.render(ruleset, settings);
        self.apply(&plan)
    }

    /// Forget what was applied so the next apply is a full sync (periodic resync).
    fn invalidate(&mut self);

    /// Whether this mode's kernel objects exist (restart recovery, switch convergence).
    fn present(&self) -> Result<bool, BackendError>;

    /// Remove every trace of this mode, and nothing else.
    fn cleanup(&mut self) -> Result<(), BackendError>;

    /// Remove this mode once `successor` carries the traffic: what the
    /// successor's full write has taken over (kernel objects of the same
    /// names) stays, and what still serves connections established through
    /// this mode may stay a while ([`Retirement::Draining`]).
    fn retire(&mut self, successor: Mode) -> Result<Retirement, BackendError>;

    /// A retired mode still draining: remove the rest once its connections
    /// ended or its grace period passed.
    fn settle(&mut self) -> Result<Retirement, BackendError>;

    /// The source ports this mode's own masquerade picks, outside the
    /// kernel's conntrack (eBPF); `None`: conntrack's NAT picks them.
    fn masquerade_ports(&self) -> Option<MasqueradePorts> {
        None
    }
}

/// What is left of a mode after [`Backend::retire`] or [`Backend::settle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retirement {
    /// Nothing: it is removed.
    Done,
    /// Objects that serve connections established through it; call
    /// [`Backend::settle`] again later.
    Draining,
}

/// Object-safe form of [`Backend`] for the control loop.
pub trait Dataplane: Send {
    fn mode(&self) -> Mode;
    fn sync(
        &mut self,
        ruleset: &LinkedRuleset,
        settings: &Settings,
    ) -> Result<ApplyStats, BackendError>;
    /// The rendered plan in the mode's native form.
    fn render_text(&self, ruleset: &LinkedRuleset, settings: &Settings) -> String;
    fn invalidate(&mut self);
    fn present(&self) -> Result<bool, BackendError>;
    fn cleanup(&mut self) -> Result<(), BackendError>;
    /// [`Backend::retire`]; a dataplane that keeps nothing for its
    /// connections (a test double) is removed at once.
    fn retire(&mut self, _successor: Mode) -> Result<Retirement, BackendError> {
        self.cleanup().map(|()| Retirement::Done)
    }
    /// [`Backend::settle`].
    fn settle(&mut self) -> Result<Retirement, BackendError> {
        Ok(Retirement::Done)
    }
    /// [`Backend::masquerade_ports`].
    fn masquerade_ports(&self) -> Option<MasqueradePorts> {
        None
    }
}

impl<B: Backend> Dataplane for B {
    fn mode(&self) -> Mode {
        Backend::mode(self)
    }

    fn sync(
        &mut self,
        ruleset: &LinkedRuleset,
        settings: &Settings,
    ) -> Result<ApplyStats, BackendError> {
        Backend::sync(self, ruleset, settings)
    }

    fn render_text(&self, ruleset: &LinkedRuleset, settings: &Settings) -> String {
        self.render(ruleset, settings).to_string()
    }

    fn invalidate(&mut self) {
        Backend::invalidate(self)
    }

    fn present(&self) -> Result<bool, BackendError> {
        Backend::present(self)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        Backend::cleanup(self)
    }

    fn retire(&mut self, successor: Mode) -> Result<Retirement, BackendError> {
        Backend::retire(self, successor)
    }

    fn settle(&mut self) -> Result<Retirement, BackendError> {
        Backend::settle(self)
    }

    fn masquerade_ports(&self) -> Option<MasqueradePorts> {
        Backend::masquerade_ports(self)
    }
}

/// The dataplane for `mode`, running kernel tools through `runner`; eBPF
/// with a node's defaults (/sys/fs/bpf/switchyard and the cgroup v2 root).
/// Tests must not use it for eBPF: they build the backend on a scratch bpffs
/// and a child cgroup (ebpf::scratch, the lab's EbpfHooks).
pub fn for_mode(mode: Mode, runner: Arc<dyn Runner>) -> Result<Box<dyn Dataplane>, BackendError> {
    for_mode_with(mode, runner, ebpf::kernel::KernelConfig::for_node())
}

/// As [`for_mode`], with eBPF's programs pinned and attached where `ebpf` says.
pub fn for_mode_with(
    mode: Mode,
    runner: Arc<dyn Runner>,
    ebpf: ebpf::kernel::KernelConfig,
) -> Result<Box<dyn Dataplane>, BackendError> {
    match mode {
        Mode::Iptables => Ok(Box::new(iptables::IptablesBackend::new(
            runner,
            Arc::new(sysctl::ProcSysctl),
        ))),
        Mode::Nftables => Ok(Box::new(nftables::NftablesBackend::new(runner))),
        Mode::Ebpf => Ok(Box::new(ebpf::EbpfBackend::new(
            ebpf::kernel::AyaKernel::new(ebpf),
        ))),
        Mode::Ipvs => Ok(Box::new(ipvs::IpvsBackend::open(runner)?)),
    }
}
