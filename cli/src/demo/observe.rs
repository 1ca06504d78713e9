//! Following a rollout through the API, as `kubectl get proxynodes -w` and
//! `kubectl get events -w` would: each ProxyNode's switch steps (its agent
//! records one before each) become a [`SwitchReport`] timed as observed, the
//! operator's Events become progress lines, and the ProxyConfig's status says
//! when the rollout is over.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use k8s_openapi::api::events::v1::Event;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use switchyard_api::proxyconfig::RolloutPhase;
use switchyard_api::proxynode::SwitchStep;
use switchyard_api::{Mode, ProxyConfig, ProxyNode};
use switchyard_lab::cluster::layout::PROXY_CONFIG;
use switchyard_operator::FIELD_MANAGER;
use tokio::time::Instant;

use super::DemoError;
use super::progress::Progress;
use super::report::SwitchReport;

/// A change on one of the three watches.
enum Change {
    Node(watcher::Event<ProxyNode>),
    Config(watcher::Event<ProxyConfig>),
    Event(watcher::Event<Event>),
}

/// A switch in flight on one node: when each step was first seen.
struct Track {
    from: Option<Mode>,
    to: Mode,
    building: Instant,
    verifying: Option<Instant>,
    removing: Option<Instant>,
}

impl Track {
    fn report(
        &self,
        node: &str,
        now: Instant,
        error: Option<String>,
        note: Option<String>,
    ) -> SwitchReport {
        let verifying = self.verifying.unwrap_or(now);
        let removing = self.removing.unwrap_or(now);
        SwitchReport {
            node: node.to_string(),
            from: self.from,
            to: self.to,
            total: now - self.building,
            build: verifying - self.building,
            verify: removing.saturating_duration_since(verifying),
            remove_old: now.saturating_duration_since(removing),
            objects: 0,
            error,
            cleanup_error: note,
        }
    }
}

/// How the rollout ended.
#[derive(Debug)]
pub struct Observed {
    pub switches: Vec<SwitchReport>,
    pub phase: Option<RolloutPhase>,
}

/// The watches, listed and running: start it before the change it follows.
pub struct Follower {
    changes: BoxStream<'static, Result<Change, watcher::Error>>,
    tracks: BTreeMap<String, Track>,
    /// The last status of each ProxyNode.
    nodes: BTreeMap<String, ProxyNode>,
    switches: Vec<SwitchReport>,
}

fn boxed<K, F>(api: Api<K>, wrap: F) -> BoxStream<'static, Result<Change, watcher::Error>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    F: Fn(watcher::Event<K>) -> Change + Send + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |e| e.map(&wrap))
        .boxed()
}

impl Follower {
    /// Watch the ProxyNodes, the pool's ProxyConfig and the Events; returns
    /// once the three initial lists are in (the Events before now are skipped).
    pub async fn start(client: Client) -> Result<Follower, DemoError> {
        let mut changes = stream::select_all([
            boxed(Api::<ProxyNode>::all(client.clone()), Change::Node),
            boxed(Api::<ProxyConfig>::all(client.clone()), Change::Config),
            boxed(Api::<Event>::all(client), Change::Event),
        ])
        .boxed();
        let mut follower = Follower {
            changes: stream::empty().boxed(),
            tracks: BTreeMap::new(),
            nodes: BTreeMap::new(),
            switches: Vec::new(),
        };
        let mut listed = 0;
        while listed < 3 {
            match changes.next().await {
                Some(Ok(Change::Node(event))) => {
                    listed += usize::from(matches!(event, watcher::Event::InitDone));
                    if let watcher::Event::InitApply(node) = event {
                        follower.nodes.insert(node.name_any(), node);
                    }
                }
                Some(Ok(Change::Config(watcher::Event::InitDone)))
                | Some(Ok(Change::Event(watcher::Event::InitDone))) => listed += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(DemoError::Rollout(format!("watching: {e}"))),
                None => return Err(DemoError::Rollout("the watches ended".into())),
            }
        }
        follower.changes = changes;
        Ok(follower)
    }

    /// Follow until the rollout to `to` (of ProxyConfig generation
    /// `generation` or later) has ended and no node is switching.
    pub async fn until_done(
        mut self,
        to: Mode,
        generation: i64,
        progress: &Progress,
        timeout: Duration,
    ) -> Result<Observed, DemoError> {
        let deadline = Instant::now() + timeout;
        let mut phase = None;
        loop {
            let ended =
                phase.is_some_and(|p| p != RolloutPhase::Progressing && p != RolloutPhase::Paused);
            if ended && self.tracks.is_empty() {
                break;
            }
            let change = tokio::time::timeout_at(deadline, self.changes.next())
                .await
                .map_err(|_| DemoError::Rollout(format!("not over after {timeout:?}")))?;
            match change {
                Some(Ok(Change::Node(watcher::Event::Apply(node)))) => {
                    self.node_changed(node, to, progress)
                }
                Some(Ok(Change::Config(watcher::Event::Apply(config)))) => {
                    phase = rollout_phase(&config, to, generation).or(phase);
                }
                Some(Ok(Change::Event(watcher::Event::Apply(event)))) => {
                    if event.reporting_controller.as_deref() == Some(FIELD_MANAGER) {
                        progress.line(&format!(
                            "event {}: {}",
                            event.reason.unwrap_or_default(),
                            event.note.unwrap_or_default()
                        ));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => progress.line(&format!("watch error (retrying): {e}")),
                None => return Err(DemoError::Rollout("the watches ended".into())),
            }
        }
        for report in &mut self.switches {
            report.objects = self
                .nodes
                .get(&report.node)
                .and_then(|n| n.status.as_ref()?.counts.as_ref())
                .map_or(0, |c| c.objects);
        }
        Ok(Observed {
            switches: self.switches,
            phase,
        })
    }

    fn node_changed(&mut self, node: ProxyNode, to: Mode, progress: &Progress) {
        let name = node.name_any();
        let now = Instant::now();
        let status = node.status.clone().unwrap_or_default();
        match &status.switch {
            Some(s) => {
                let track = self.tracks.entry(name.clone()).or_insert_with(|| {
                    progress.line(&format!(
                        "{name}: switching {} -> {} (build beside, verify, remove old)",
                        s.from.map_or("nothing", Mode::as_str),
                        s.to
                    ));
                    Track {
                        from: s.from,
                        to: s.to,
                        building: now,
                        verifying: None,
                        removing: None,
                    }
                });
                match s.step {
                    SwitchStep::Building => {}
                    SwitchStep::Verifying => {
                        track.verifying.get_or_insert(now);
                    }
                    SwitchStep::RemovingOld => {
                        track.verifying.get_or_insert(now);
                        track.removing.get_or_insert(now);
                    }
                }
            }
            None => {
                let finished = self.tracks.get(&name).and_then(|t| {
                    if status.failed_mode == Some(t.to) {
                        Some(t.report(&name, now, status.last_error.clone(), None))
                    } else if status.applied_mode == Some(t.to) {
                        Some(t.report(&name, now, None, status.last_error.clone()))
                    } else {
                        None
                    }
                });
                if let Some(report) = finished {
                    self.tracks.remove(&name);
                    progress.line(&describe_switch(&report));
                    self.switches.push(report);
                }
            }
        }
        self.nodes.insert(name, node);
        let done = self
            .nodes
            .values()
            .filter(|n| n.status.as_ref().and_then(|s| s.applied_mode) == Some(to))
            .count();
        progress.nodes_switched(done, self.nodes.len());
    }
}

/// The phase of the rollout to `to` recorded for `generation` or later.
fn rollout_phase(config: &ProxyConfig, to: Mode, generation: i64) -> Option<RolloutPhase> {
    if config.name_any() != PROXY_CONFIG {
        return None;
    }
    let status = config.status.as_ref()?;
    let rollout = status.rollout.as_ref()?;
    (status.observed_generation >= Some(generation) && rollout.to == to).then_some(rollout.phase)
}

fn describe_switch(r: &SwitchReport) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match &r.error {
        None => format!(
            "{}: now {} (build {:.1} ms, verify {:.1} ms, remove old {:.1} ms)",
            r.node,
            r.to,
            ms(r.build),
            ms(r.verify),
            ms(r.remove_old),
        ),
        Some(e) => format!("{}: switch to {} FAILED, old mode kept: {e}", r.node, r.to),
    }
}
