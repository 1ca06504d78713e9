//! One size and mode measured on both programs: kube-proxy's first sync
//! against the agent's mode switch, then endpoint changes both take in (the
//! mean partial sync from each one's metrics, and per change the time from
//! the EndpointSlice write until the new endpoint answers a connect to the
//! Service address from inside each node), then first-packet connect latency
//! through a Service address against a direct connect, and memory. In a mode
//! kube-proxy lacks (eBPF) the agent is measured alone.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_api::Mode;

use super::fresh::first_sync;
use super::kube_proxy::KubeProxyNode;
use super::rig::Rig;
use super::switchyard::{applied_mode, switch_agent, wait_agent};
use super::{Figures, Measured, VersusError, measure_error, sync_deadline};
use crate::bench::connect::Latency;
use crate::bench::probed::ProbedServices;
use crate::bench::prober::{Prober, monotonic};
use crate::bench::states::Size;
use crate::procstat::Process;

/// How many changes and connects.
#[derive(Clone, Copy, Debug)]
pub struct Counts {
    pub changes: usize,
    pub connects: usize,
}

/// What the changes gave one program.
#[derive(Default)]
struct Changed {
    partial: Option<Duration>,
    programming: Vec<Duration>,
}

impl Changed {
    fn into_figures(self, first: Option<Duration>) -> Figures {
        Figures {
            first,
            partial: self.partial,
            programming: (!self.programming.is_empty()).then(|| Latency::of(self.programming)),
            ..Figures::default()
        }
    }
}

/// Between two changes' writes at least: the operator publishes, and the
/// agent syncs, at most once per second (kube-proxy's `minSyncPeriod`
/// default), so a change written sooner after the last one waits out that
/// second on our side (kube-proxy runs here with a minimum period of 0).
/// Spaced, each change is measured as a change alone is programmed.
const CHANGE_GAP: Duration = Duration::from_millis(1100);

/// `count` single-endpoint changes of the probed Services, each programmed
/// by both (by the agent alone without kube-proxy) before the next, and
/// written [`CHANGE_GAP`] after it.
fn changes(
    rig: &mut Rig,
    mut kp: Option<&mut KubeProxyNode>,
    count: usize,
    deadline: Duration,
) -> Result<(Changed, Changed), VersusError> {
    let kp_start = kp.as_deref().map(KubeProxyNode::counters).transpose()?;
    let (_, agent_start) = wait_agent(rig.node()?, "metrics", |_| true)?;
    let (mut kp_changed, mut sy_changed) = (Changed::default(), Changed::default());
    let mut last_write: Option<std::time::Instant> = None;
    for _ in 0..count {
        if let Some(last) = last_write {
            std::thread::sleep(CHANGE_GAP.saturating_sub(last.elapsed()));
        }
        let kp_before = kp.as_deref().map(KubeProxyNode::counters).transpose()?;
        let (_, agent_before) = wait_agent(rig.node()?, "metrics", |_| true)?;
        let change = rig.probed.next_change();
        if let Some(kp) = kp.as_deref_mut() {
            kp.prober.arm(change.vip, change.to, deadline)?;
        }
        rig.prober.arm(change.vip, change.to, deadline)?;
        let t0 = monotonic();
        last_write = Some(std::time::Instant::now());
        rig.runtime.block_on(rig.probed.write(&change))?;
        sy_changed.programming.push(rig.prober.seen_since(t0)?);
        if let (Some(kp), Some(before)) = (kp.as_deref_mut(), &kp_before) {
            kp_changed.programming.push(kp.prober.seen_since(t0)?);
            kp.wait_partial(before)?;
        }
        wait_agent(rig.node()?, "partial sync", |(_, p)| {
            p.count > agent_before.count
        })?;
    }
    if let (Some(kp), Some(start)) = (kp, kp_start) {
        kp_changed.partial = kp.counters()?.partial.mean_since(&start.partial);
    }
    let (_, agent_end) = wait_agent(rig.node()?, "metrics", |_| true)?;
    sy_changed.partial = agent_end.mean_since(&agent_start);
    Ok((kp_changed, sy_changed))
}

/// Connect latency through a Service address and to its endpoint (`targets`).
fn connects(
    prober: &mut Prober,
    targets: (SocketAddr, SocketAddr),
    count: usize,
) -> Result<(Latency, Latency), VersusError> {
    let measured = prober.connects(&[targets.0, targets.1], count)?;
    match measured.as_slice() {
        [v, d] => Ok((*v, *d)),
        _ => Err(measure_error(
            "connect latency",
            "not one figure per target",
        )),
    }
}

/// Measure `mode` at `size`: with kube-proxy beside the agent when
/// kube-proxy has the mode (`run` numbers its node).
pub fn measure_mode(
    rig: &mut Rig,
    size: Size,
    mode: Mode,
    run: usize,
    counts: Counts,
) -> Result<Measured, VersusError> {
    let deadline = sync_deadline(size);
    let mut kp = if mode == Mode::Ebpf {
        None
    } else {
        Some(KubeProxyNode::start(rig, size, mode, run)?)
    };
    let kp_full = kp
        .as_mut()
        .map(|kp| kp.full_sync(size.services))
        .transpose()?;
    let agent_switch = switch_agent(rig, mode, deadline, &ProbedServices::verification())?;
    let agent_first = first_sync(rig, size, mode, run)?;
    let (kp_changed, sy_changed) = changes(rig, kp.as_mut(), counts.changes, deadline)?;
    let applied = rig.runtime.block_on(applied_mode(rig))?;
    if applied != Some(mode) {
        return Err(measure_error(
            format!("the agent in {mode}"),
            format!(
                "it runs {applied:?} after the changes: the operator rolled the switch back (see its log)"
            ),
        ));
    }
    // The first probed Service, and its endpoint now.
    let targets = rig
        .probed
        .first()
        .ok_or_else(|| measure_error("the probed Services", "none"))?;
    let mut switchyard = sy_changed.into_figures(Some(agent_first));
    switchyard.switch = agent_switch;
    switchyard.connect = Some(connects(&mut rig.prober, targets, counts.connects)?);
    let agent = rig
        .cluster
        .agents_mut()
        .first()
        .map(|a| Process::Pid(a.pid()));
    switchyard.memory = agent.and_then(Process::memory).unwrap_or_default();
    let kube_proxy = match kp.as_mut() {
        Some(kp) => {
            let mut figures = kp_changed.into_figures(kp_full);
            figures.connect = Some(connects(&mut kp.prober, targets, counts.connects)?);
            figures.memory = kp.memory();
            Some(figures)
        }
        None => None,
    };
    Ok(Measured {
        kube_proxy,
        switchyard,
    })
}
