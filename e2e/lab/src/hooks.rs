//! Where a mode plugs into the harness. The default ([`KernelHooks`]) suits
//! modes whose whole dataplane is the node namespace's kernel state (iptables,
//! nftables, ipvs inside its VM); eBPF adds a client cgroup for its socket
//! programs.

use std::path::PathBuf;
use std::sync::Arc;

use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_dataplane::ebpf::tc::TcAttachMode;
use switchyard_dataplane::exec::RealRunner;
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{BackendError, Dataplane, for_mode};

use crate::HarnessError;
use crate::scenario::{Flow, Scenario};
use crate::topology::Topology;

/// Builds the dataplane. Called on the agent thread, already inside the node
/// namespace, so every tool it runs and every socket it opens is there.
pub type DataplaneFactory = Box<dyn FnOnce() -> Result<Box<dyn Dataplane>, BackendError> + Send>;

/// A mode's extension points.
pub trait ModeHooks {
    fn mode(&self) -> Mode;

    /// Called once per scenario after the namespaces and links exist, before
    /// any rules are applied (load programs, create a cgroup, …).
    /// `topology.node` is the node namespace, `topology.node_devices()` its links.
    fn prepare_node(
        &mut self,
        _topology: &Topology,
        _scenario: &Scenario,
    ) -> Result<(), HarnessError> {
        Ok(())
    }

    /// Adjust the render settings derived from the scenario's node (e.g. the
    /// eBPF host devices), once per scenario.
    fn adjust_settings(&self, _settings: &mut Settings, _topology: &Topology) {}

    /// A cgroup v2 directory the client process of `flow` joins before
    /// connecting (never the root cgroup).
    fn client_cgroup(&self, _flow: &Flow) -> Option<PathBuf> {
        None
    }

    /// The dataplane under test; see [`DataplaneFactory`].
    fn dataplane(&self) -> DataplaneFactory;

    /// Why this mode cannot carry `flow` by design, if so (reported as SKIP).
    fn unsupported(&self, _flow: &Flow) -> Option<String> {
        None
    }

    /// As [`ModeHooks::unsupported`], knowing the stage's linked ruleset (a
    /// mode whose limits depend on the services, such as IPVS).
    fn unsupported_in(&self, flow: &Flow, _ruleset: &LinkedRuleset) -> Option<String> {
        self.unsupported(flow)
    }

    /// The masquerade this mode shows for `flow` where it differs by design
    /// from the scenario's (kube-proxy's) expectation; the default keeps it.
    fn masquerade(&self, flow: &Flow) -> Option<bool> {
        flow.masq
    }

    /// Called after the scenario, before its namespaces are removed.
    fn teardown(&mut self) {}
}

/// The default hooks: the agent's own backend for the mode.
pub struct KernelHooks {
    pub mode: Mode,
}

impl ModeHooks for KernelHooks {
    fn mode(&self) -> Mode {
        self.mode
    }

    fn dataplane(&self) -> DataplaneFactory {
        let mode = self.mode;
        Box::new(move || for_mode(mode, Arc::new(RealRunner)))
    }
}

/// The hooks for `mode`; eBPF's tc programs attach with `tc_attach`.
pub fn hooks_for(mode: Mode, tc_attach: TcAttachMode) -> Box<dyn ModeHooks> {
    match mode {
        Mode::Ipvs => Box::new(crate::vm::scenario::IpvsHooks),
        // Never the node defaults (the root cgroup): a scratch bpffs and a child cgroup.
        Mode::Ebpf => Box::new(crate::ebpf::EbpfHooks::new(tc_attach)),
        Mode::Iptables | Mode::Nftables => Box::new(KernelHooks { mode }),
    }
}
