//! An in-memory kernel with one fake dataplane per mode, for testing the control
//! loop and the switch procedure: syncs are recorded, modes can be made to fail
//! their sync or their datapath (the probe), and the state outlives any one
//! dataplane object, as the kernel outlives a killed agent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;

use switchyard_agent::switch::{DataplaneFactory, Probe, ProbeError};
use switchyard_dataplane::ebpf::masq_ports::MasqueradePorts;
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{ApplyStats, BackendError, Dataplane, Retirement};

/// One recorded sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRecord {
    pub mode: Mode,
    /// The dataplane had no memory of a previous apply (first sync or after invalidate).
    pub full: bool,
    pub ok: bool,
    /// The masquerade ports it was given (`Settings::masquerade_ports`).
    pub masquerade_ports: Option<MasqueradePorts>,
}

#[derive(Debug, Default)]
struct KernelState {
    /// Installed modes and their rules, one line per reachable service VIP.
    tables: BTreeMap<Mode, Vec<String>>,
    failing_sync: BTreeSet<Mode>,
    broken_datapath: BTreeSet<Mode>,
    syncs: Vec<SyncRecord>,
    cleanups: Vec<Mode>,
    /// The modes whose presence was asked, in order.
    presence_checks: Vec<Mode>,
    probes: Vec<SocketAddr>,
    /// Modes still carrying established connections (a retired one drains).
    open: BTreeSet<Mode>,
}

/// The shared fake kernel; clones share state.
#[derive(Clone, Debug, Default)]
pub struct FakeKernel {
    state: Arc<Mutex<KernelState>>,
}

impl FakeKernel {
    fn lock(&self) -> MutexGuard<'_, KernelState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Make the syncs of `mode` fail (or succeed again).
    pub fn fail_sync(&self, mode: Mode, fail: bool) {
        let mut s = self.lock();
        if fail {
            s.failing_sync.insert(mode);
        } else {
            s.failing_sync.remove(&mode);
        }
    }

    /// Make connections through `mode` fail while it is installed.
    pub fn break_datapath(&self, mode: Mode) {
        self.lock().broken_datapath.insert(mode);
    }

    /// Whether connections established through `mode` are still open.
    pub fn connections_open(&self, mode: Mode, open: bool) {
        let mut s = self.lock();
        if open {
            s.open.insert(mode);
        } else {
            s.open.remove(&mode);
        }
    }

    /// Put objects of `mode` in place, as a previous run or kube-proxy left them.
    pub fn install(&self, mode: Mode, rules: Vec<String>) {
        self.lock().tables.insert(mode, rules);
    }

    pub fn installed(&self) -> Vec<Mode> {
        self.lock().tables.keys().copied().collect()
    }

    pub fn rules(&self, mode: Mode) -> Option<Vec<String>> {
        self.lock().tables.get(&mode).cloned()
    }

    pub fn syncs(&self) -> Vec<SyncRecord> {
        self.lock().syncs.clone()
    }

    /// The modes whose presence was asked, in order, since the last call.
    pub fn take_presence_checks(&self) -> Vec<Mode> {
        std::mem::take(&mut self.lock().presence_checks)
    }

    /// The modes whose cleanup ran, in order.
    pub fn cleanups(&self) -> Vec<Mode> {
        self.lock().cleanups.clone()
    }

    pub fn probes(&self) -> Vec<SocketAddr> {
        self.lock().probes.clone()
    }

    pub fn factory(&self) -> FakeFactory {
        FakeFactory {
            kernel: self.clone(),
        }
    }

    pub fn probe(&self) -> FakeProbe {
        FakeProbe {
            kernel: self.clone(),
        }
    }
}

/// The rule lines of a linked ruleset: `VIP:port -> endpoints` per cluster IP.
pub fn rule_lines(ruleset: &LinkedRuleset) -> Vec<String> {
    let mut lines = Vec::new();
    for sp in &ruleset.services {
        let endpoints: Vec<String> = sp.internal_endpoints().map(|b| b.endpoint()).collect();
        for ip in &sp.rule.cluster_ips {
            let vip = SocketAddr::new(*ip, sp.rule.port);
            lines.push(format!("{vip} -> {}", endpoints.join(",")));
        }
    }
    lines
}

/// A dataplane over the fake kernel.
#[derive(Debug)]
pub struct FakeDataplane {
    mode: Mode,
    kernel: FakeKernel,
    applied: Option<Vec<String>>,
}

impl Dataplane for FakeDataplane {
    fn mode(&self) -> Mode {
        self.mode
    }

    fn sync(
        &mut self,
        ruleset: &LinkedRuleset,
        settings: &Settings,
    ) -> Result<ApplyStats, BackendError> {
        let lines = rule_lines(ruleset);
        let mut k = self.kernel.lock();
        let full = self.applied.is_none();
        let ok = !k.failing_sync.contains(&self.mode);
        k.syncs.push(SyncRecord {
            mode: self.mode,
            full,
            ok,
            masquerade_ports: settings.masquerade_ports,
        });
        if !ok {
            return Err(BackendError::Kernel {
                mode: self.mode,
                operation: "fake apply",
                message: "injected failure".to_string(),
            });
        }
        let objects = u32::try_from(lines.len()).unwrap_or(u32::MAX);
        let written = if full || self.applied.as_ref() != Some(&lines) {
            objects
        } else {
            0
        };
        k.tables.insert(self.mode, lines.clone());
        self.applied = Some(lines);
        Ok(ApplyStats {
            objects,
            written,
            full,
        })
    }

    fn render_text(&self, ruleset: &LinkedRuleset, _settings: &Settings) -> String {
        rule_lines(ruleset).join("\n")
    }

    fn invalidate(&mut self) {
        self.applied = None;
    }

    fn present(&self) -> Result<bool, BackendError> {
        let mut k = self.kernel.lock();
        k.presence_checks.push(self.mode);
        Ok(k.tables.contains_key(&self.mode))
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let mut k = self.kernel.lock();
        k.tables.remove(&self.mode);
        k.cleanups.push(self.mode);
        drop(k);
        self.applied = None;
        Ok(())
    }

    fn retire(&mut self, _successor: Mode) -> Result<Retirement, BackendError> {
        self.settle()
    }

    fn settle(&mut self) -> Result<Retirement, BackendError> {
        if self.kernel.lock().open.contains(&self.mode) {
            return Ok(Retirement::Draining);
        }
        self.cleanup().map(|()| Retirement::Done)
    }

    /// eBPF's block on a node with the kernel's default ephemeral range.
    fn masquerade_ports(&self) -> Option<MasqueradePorts> {
        (self.mode == Mode::Ebpf).then_some(EBPF_MASQUERADE_PORTS)
    }
}

/// The fake eBPF mode's masquerade ports.
pub const EBPF_MASQUERADE_PORTS: MasqueradePorts = MasqueradePorts {
    min: 1024,
    max: 32767,
};

/// Builds [`FakeDataplane`]s over one kernel.
#[derive(Clone, Debug)]
pub struct FakeFactory {
    kernel: FakeKernel,
}

impl DataplaneFactory for FakeFactory {
    fn build(&self, mode: Mode) -> Result<Box<dyn Dataplane>, BackendError> {
        Ok(Box::new(FakeDataplane {
            mode,
            kernel: self.kernel.clone(),
            applied: None,
        }))
    }
}

/// Connects when some installed mode has a rule for the target with endpoints
/// and no installed mode has a broken datapath.
#[derive(Clone, Debug)]
pub struct FakeProbe {
    kernel: FakeKernel,
}

impl Probe for FakeProbe {
    fn connect(
        &self,
        target: SocketAddr,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), ProbeError>> {
        let mut k = self.kernel.lock();
        k.probes.push(target);
        let broken = k.tables.keys().any(|m| k.broken_datapath.contains(m));
        let prefix = format!("{target} -> ");
        let routed = k.tables.values().flatten().any(|line| {
            line.strip_prefix(&prefix)
                .is_some_and(|eps| !eps.is_empty())
        });
        let result = if broken {
            Err(ProbeError::Timeout { target, timeout })
        } else if routed {
            Ok(())
        } else {
            Err(ProbeError::Connect {
                target,
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            })
        };
        Box::pin(async move { result })
    }
}
