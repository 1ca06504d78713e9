//! Changing this node's dataplane, and finding it again after a restart.
//!
//! The procedure (DESIGN.md, "Mode switch on one node"):
//! 1. `Building`: build the new dataplane beside the old one and sync it.
//! 2. `Verifying`: probe through it (a TCP connect to the rollout's service VIP).
//! 3. `RemovingOld`: the new one is now the applied mode; retire the old one
//!    (`Dataplane::retire`: what the new one took over stays).
//!
//! Before each step a [`Checkpoint`] is recorded (in `ProxyNode.status`), so an
//! agent killed at any point finds, on restart, the recorded applied mode and
//! whatever the kernel holds ([`recover`]) and converges: a new dataplane that
//! was not yet verified is rebuilt and verified again (its sync converges on the
//! half-built state), an old one that was being removed is removed.
//!
//! A failed build or verification removes the new dataplane and keeps the old
//! one. With no old dataplane to go back to the new one is kept: removing it
//! could only leave the node with no service routing at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_api::proxyconfig::Verification;
use switchyard_api::proxynode::{ProxyNodeStatus, SwitchStatus, SwitchStep};
use switchyard_api::ruleset::ServicePortRule;

use switchyard_dataplane::ebpf::kernel::KernelConfig;
use switchyard_dataplane::ebpf::masq_ports::MasqueradePorts;
use switchyard_dataplane::exec::Runner;
use switchyard_dataplane::kubeproxy::Leftovers;
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{ApplyStats, BackendError, Dataplane, Retirement};

/// Builds the dataplane of a mode (without touching the kernel).
pub trait DataplaneFactory: Send + Sync {
    fn build(&self, mode: Mode) -> Result<Box<dyn Dataplane>, BackendError>;
}

/// Builds the real backends, running kernel tools through `runner`.
pub struct BackendFactory {
    runner: Arc<dyn Runner>,
    ebpf: KernelConfig,
}

impl BackendFactory {
    /// eBPF where a node keeps it ([`KernelConfig::for_node`]).
    pub fn new(runner: Arc<dyn Runner>) -> BackendFactory {
        BackendFactory::with_ebpf(runner, KernelConfig::for_node())
    }

    /// eBPF's pins and cgroup where `ebpf` says.
    pub fn with_ebpf(runner: Arc<dyn Runner>, ebpf: KernelConfig) -> BackendFactory {
        BackendFactory { runner, ebpf }
    }
}

impl DataplaneFactory for BackendFactory {
    fn build(&self, mode: Mode) -> Result<Box<dyn Dataplane>, BackendError> {
        switchyard_dataplane::for_mode_with(mode, self.runner.clone(), self.ebpf.clone())
    }
}

/// A connect probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe connect to {target} failed: {source}")]
    Connect {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("probe connect to {target} timed out after {timeout:?}")]
    Timeout {
        target: SocketAddr,
        timeout: Duration,
    },
}

/// The rollout's verification: a TCP connect from this node.
pub trait Probe: Send + Sync {
    fn connect(
        &self,
        target: SocketAddr,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), ProbeError>>;
}

/// Connects with a real TCP socket from the agent's network namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpProbe;

impl Probe for TcpProbe {
    fn connect(
        &self,
        target: SocketAddr,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), ProbeError>> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
                Ok(Ok(_stream)) => Ok(()),
                Ok(Err(source)) => Err(ProbeError::Connect { target, source }),
                Err(_) => Err(ProbeError::Timeout { target, timeout }),
            }
        })
    }
}

/// Where and how long to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

/// kube-proxy's default probe timeout for the rollout verification.
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The address the rollout probe connects to: the named service port's first cluster IP.
pub fn probe_target<'a>(
    rules: impl IntoIterator<Item = &'a ServicePortRule>,
    service: &str,
    port: u16,
    timeout: Duration,
) -> Option<ProbeTarget> {
    let (namespace, name) = service.split_once('/')?;
    rules
        .into_iter()
        .find(|r| r.namespace == namespace && r.name == name && r.port == port)
        .and_then(|r| r.cluster_ips.first())
        .map(|ip| ProbeTarget {
            addr: SocketAddr::new(*ip, port),
            timeout,
        })
}

/// The pool's verification for a switch to `to` (`spec.rollout.verification`):
/// `None` when it configures none, an error when its service port is not in
/// `ruleset` (which fails the switch).
pub fn verification_probe(
    verification: Option<&Verification>,
    ruleset: &LinkedRuleset,
    to: Mode,
) -> Option<Result<ProbeTarget, SwitchError>> {
    verification.map(|v| {
        let timeout = v
            .timeout
            .as_deref()
            .and_then(|t| switchyard_api::duration::parse_duration(t).ok())
            .unwrap_or(DEFAULT_PROBE_TIMEOUT);
        probe_target(
            ruleset.services.iter().map(|s| &s.rule),
            &v.service,
            v.port,
            timeout,
        )
        .ok_or_else(|| SwitchError::NoProbeTarget {
            to,
            service: v.service.clone(),
            port: v.port,
        })
    })
}

/// A point of the procedure that is recorded before the agent goes on.
#[derive(Clone, Debug, PartialEq)]
pub enum Checkpoint {
    /// About to run `step`. From `RemovingOld` on, `to` is the applied mode.
    Step(SwitchStatus),
    /// The switch is complete.
    Done { mode: Mode },
    /// The switch failed; `kept` carries the traffic.
    Failed {
        kept: Option<Mode>,
        failed: Mode,
        error: String,
    },
}

impl Checkpoint {
    /// Fold this checkpoint into a status: what a restarted agent reads back.
    pub fn record(&self, status: &mut ProxyNodeStatus) {
        match self {
            Checkpoint::Step(s) => {
                if s.step == SwitchStep::RemovingOld {
                    status.applied_mode = Some(s.to);
                }
                status.switch = Some(s.clone());
            }
            Checkpoint::Done { mode } => {
                status.applied_mode = Some(*mode);
                status.switch = None;
                status.failed_mode = None;
            }
            Checkpoint::Failed {
                kept,
                failed,
                error,
            } => {
                status.applied_mode = *kept;
                status.switch = None;
                status.failed_mode = Some(*failed);
                status.last_error = Some(error.clone());
            }
        }
    }
}

/// Records checkpoints (the agent writes them to `ProxyNode.status` at once).
pub trait Checkpoints: Send {
    fn reached<'a>(&'a mut self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, ()>;
}

/// Why a switch did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("switch to {to}: building the dataplane: {source}")]
    Build {
        to: Mode,
        #[source]
        source: BackendError,
    },
    #[error("switch to {to}: verification: {source}")]
    Verify {
        to: Mode,
        #[source]
        source: ProbeError,
    },
    #[error("switch to {to}: verification service {service} port {port} is not in the ruleset")]
    NoProbeTarget {
        to: Mode,
        service: String,
        port: u16,
    },
}

/// What the new dataplane is built from.
pub struct SwitchInput<'a> {
    pub to: Mode,
    pub ruleset: &'a LinkedRuleset,
    pub settings: &'a Settings,
    /// `None`: the pool configures no verification. `Some(Err)`: it does, but the
    /// probe target cannot be resolved (fails the switch).
    pub probe: Option<Result<ProbeTarget, SwitchError>>,
}

/// How a completed switch went.
pub struct Switched {
    pub stats: ApplyStats,
    /// Removing the old dataplane failed (its leftovers are swept later).
    pub old_cleanup: Option<BackendError>,
    /// Verification failed but there was no old dataplane to go back to.
    pub unverified: Option<SwitchError>,
    /// The old dataplane, still serving connections established through it
    /// ([`Retirement::Draining`]): [`Dataplane::settle`] it until done.
    pub retiring: Option<Box<dyn Dataplane>>,
}

/// Move `active` to `input.to`. On error `active` is unchanged and the new
/// dataplane has been removed.
pub async fn switch_to(
    active: &mut Option<Box<dyn Dataplane>>,
    input: SwitchInput<'_>,
    factory: &dyn DataplaneFactory,
    probe: &dyn Probe,
    checkpoints: &mut dyn Checkpoints,
) -> Result<Switched, SwitchError> {
    let from = active.as_ref().map(|d| d.mode());
    let to = input.to;
    let step = |step| Checkpoint::Step(SwitchStatus { from, to, step });

    checkpoints.reached(&step(SwitchStep::Building)).await;
    let built = factory.build(to).and_then(|mut new| {
        let stats = new.sync(input.ruleset, input.settings);
        match stats {
            Ok(stats) => Ok((new, stats)),
            Err(e) => {
                remove(new.as_mut());
                Err(e)
            }
        }
    });
    let (mut new, stats) = match built {
        Ok(built) => built,
        Err(source) => {
            let err = SwitchError::Build { to, source };
            fail(from, to, &err, checkpoints).await;
            return Err(err);
        }
    };

    checkpoints.reached(&step(SwitchStep::Verifying)).await;
    let verified = match input.probe {
        None => Ok(()),
        Some(Err(e)) => Err(e),
        Some(Ok(target)) => probe
            .connect(target.addr, target.timeout)
            .await
            .map_err(|source| SwitchError::Verify { to, source }),
    };
    let mut unverified = None;
    if let Err(err) = verified {
        if from.is_some() {
            remove(new.as_mut());
            fail(from, to, &err, checkpoints).await;
            return Err(err);
        }
        tracing::warn!(%to, error = %err, "verification failed; no previous dataplane to return to, keeping {to}");
        unverified = Some(err);
    }

    checkpoints.reached(&step(SwitchStep::RemovingOld)).await;
    let old = active.replace(new);
    // The new mode's full write took over what the old one shares with it
    // (iptables and ipvs: chains of the same names), so the old one is
    // retired beside it, never removed first.
    let (old_cleanup, retiring) = match old.map(|mut old| (old.retire(to), old)) {
        None | Some((Ok(Retirement::Done), _)) => (None, None),
        Some((Ok(Retirement::Draining), old)) => (None, Some(old)),
        Some((Err(e), _)) => (Some(e), None),
    };
    checkpoints.reached(&Checkpoint::Done { mode: to }).await;
    Ok(Switched {
        stats,
        old_cleanup,
        unverified,
        retiring,
    })
}

async fn fail(from: Option<Mode>, to: Mode, err: &SwitchError, checkpoints: &mut dyn Checkpoints) {
    let checkpoint = Checkpoint::Failed {
        kept: from,
        failed: to,
        error: err.to_string(),
    };
    checkpoints.reached(&checkpoint).await;
}

fn remove(dataplane: &mut dyn Dataplane) {
    if let Err(e) = dataplane.cleanup() {
        tracing::error!(mode = %dataplane.mode(), error = %e, "removing the dataplane failed");
    }
}

/// The source ports `mode`'s masquerade takes beside `others` (the mode it
/// replaces, one that drains): beside eBPF (draining, or about to when the
/// switch is away from it), the block eBPF's leaves
/// ([`MasqueradePorts::beside`]), so that eBPF's un-SNAT entries never take
/// `mode`'s answers; else the kernel's.
pub fn masquerade_beside<'a>(
    mode: Mode,
    others: impl IntoIterator<Item = &'a dyn Dataplane>,
) -> Option<MasqueradePorts> {
    others
        .into_iter()
        .filter(|d| d.mode() != mode)
        .find_map(|d| d.masquerade_ports())
        .and_then(MasqueradePorts::beside)
}

/// Invalidate and sync: a full rewrite after something else touched the kernel.
pub fn resync(
    dataplane: &mut dyn Dataplane,
    ruleset: &LinkedRuleset,
    settings: &Settings,
) -> Option<ApplyStats> {
    dataplane.invalidate();
    dataplane
        .sync(ruleset, settings)
        .map_err(|e| tracing::error!(mode = %dataplane.mode(), error = %e, "full resync failed"))
        .ok()
}

/// Which of `modes` have kernel objects now. Each check lists a table or
/// a chain of the kernel's (an iptables-nft listing fetches the whole
/// table), so a caller asks only about the modes it acts on.
pub fn present_modes(factory: &dyn DataplaneFactory, modes: &[Mode]) -> Vec<Mode> {
    modes
        .iter()
        .copied()
        .filter(
            |&mode| match factory.build(mode).and_then(|d| d.present()) {
                Ok(present) => present,
                Err(e) => {
                    tracing::debug!(%mode, error = %e, "mode unavailable; treated as absent");
                    false
                }
            },
        )
        .collect()
}

/// After a restart: which present mode carries the traffic, from what the kernel
/// holds and what was recorded in status.
///
/// A mode the last run verified (recorded applied, or being switched to past
/// verification) is taken when its objects exist. Otherwise a present mode
/// other than `target` is preferred, so that `target` is verified before the
/// other is removed; that is also how a node is adopted from kube-proxy, whose
/// iptables or IPVS layout shows as the matching mode being present. IPVS's
/// chains have the iptables mode's names, so where IPVS is present the
/// iptables mode shows present too: unrecorded, it is IPVS that carries the
/// traffic (kube-proxy's ipvs layout), and it is retired as IPVS.
pub fn recover(present: &[Mode], recorded: &ProxyNodeStatus, target: Option<Mode>) -> Option<Mode> {
    let verified = match &recorded.switch {
        Some(s) if s.step == SwitchStep::RemovingOld => Some(s.to),
        _ => recorded.applied_mode,
    };
    let ipvs = present.contains(&Mode::Ipvs);
    let carrying: Vec<Mode> = present
        .iter()
        .copied()
        .filter(|&m| !(ipvs && m == Mode::Iptables))
        .collect();
    verified
        .filter(|m| present.contains(m))
        .or_else(|| carrying.iter().copied().find(|&m| Some(m) != target))
        .or_else(|| target.filter(|t| present.contains(t)))
}

/// Modes that share kernel objects (the iptables chains the ipvs mode uses have
/// the iptables mode's names): removing one's leftovers would remove the other's rules.
pub fn shares_kernel_objects(a: Mode, b: Mode) -> bool {
    matches!(
        (a, b),
        (Mode::Iptables, Mode::Ipvs) | (Mode::Ipvs, Mode::Iptables)
    )
}

/// What a sweep removed, and the modes it left draining.
#[derive(Default)]
pub struct Swept {
    pub removed: Vec<String>,
    pub errors: Vec<String>,
    /// Present modes retired in favour of the active one that still serve
    /// connections established through them (an agent restarted while a
    /// retired mode drained finds it so): settle them later.
    pub draining: Vec<Box<dyn Dataplane>>,
}

/// Remove `leftovers` (those present), noting what went into `swept`.
pub fn remove_leftovers(leftovers: &[&dyn Leftovers], swept: &mut Swept) {
    for l in leftovers {
        match l.remove() {
            Ok(true) => swept.removed.push(l.name().to_string()),
            Ok(false) => {}
            Err(e) => swept.errors.push(e.to_string()),
        }
    }
}

/// Retire every other present mode in favour of the active one (each
/// drains as it would after a switch, [`Dataplane::retire`]) and remove
/// foreign leftovers, once the active mode is in place, then rewrite the
/// active mode whole. A `draining` mode is not a leftover until it settles,
/// nor are the objects a mode shares with the active or the draining one
/// (IPVS's iptables chains); only the other modes are looked for (at 1000
/// Services the active iptables mode's own presence check listed 1000
/// rules, inside the first sync).
pub fn sweep(
    active: &mut dyn Dataplane,
    draining: Option<Mode>,
    factory: &dyn DataplaneFactory,
    leftovers: &[&dyn Leftovers],
    ruleset: &LinkedRuleset,
    settings: &Settings,
) -> Swept {
    let mode = active.mode();
    let apart = |a: Mode, m: Mode| a != m && !shares_kernel_objects(a, m);
    let others: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|&m| apart(mode, m) && draining.is_none_or(|d| apart(d, m)))
        .collect();
    let mut swept = Swept::default();
    for other in present_modes(factory, &others) {
        let retired = factory
            .build(other)
            .and_then(|mut d| d.retire(mode).map(|r| (d, r)));
        match retired {
            Ok((_, Retirement::Done)) => swept.removed.push(format!("{other} dataplane")),
            Ok((draining, Retirement::Draining)) => swept.draining.push(draining),
            Err(e) => swept.errors.push(e.to_string()),
        }
    }
    remove_leftovers(leftovers, &mut swept);
    if !swept.removed.is_empty() {
        tracing::info!(removed = ?swept.removed, "removed leftovers");
        resync(active, ruleset, settings);
    }
    swept
}
