//! One node's agent: from its inputs (own Node and ProxyNode, the pool's
//! ProxyConfig, the ruleset shards) to the kernel and back to status.
//!
//! A sync: assemble a complete shard generation (an incomplete one keeps the
//! last complete one), validate and link it for this node (an invalid shard
//! refuses its generation: the last valid one stays, and the refusal is
//! reported in the status and as an Event), resolve the pool's settings for
//! the target mode, then either sync the active dataplane or switch to the
//! target mode ([`crate::switch`]). Fail-static throughout: an apply error keeps
//! the previous rules (the backend contract) and is reported; a restart finds
//! the kernel's state ([`crate::switch::recover`]) and converges on it instead
//! of flushing it; nothing is removed for lack of input.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use switchyard_api::policy::{LinkedRuleset, LinkedShards, RefusedShard, ShardLinker};
use switchyard_api::proxynode::AppliedCounts;
use switchyard_api::ruleset::Cidr;
use switchyard_api::validation::limits::{clip, clip_message};
use switchyard_api::{Mode, ProxyConfigSpec, ProxyNode, ProxyNodeStatus, ProxyRuleset};
use switchyard_dataplane::kubeproxy::Leftovers;
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{ApplyStats, BackendError, Dataplane, Retirement};
use tokio::time::Instant;

use crate::changes::ChangeTracker;
use crate::events::{EventSink, refused_event};
use crate::health::{HealthCheckServers, ProxyHealth, health_check_services};
use crate::http::HttpServers;
use crate::inputs::{InputKey, Inputs};
use crate::leftover_drain::LeftoverDrain;
use crate::metrics::{Metrics, SyncReport};
use crate::node::{being_deleted, node_info, pod_cidrs};
use crate::status::{StatusReporter, set_condition};
use crate::switch::{
    Checkpoint, Checkpoints, DataplaneFactory, Probe, Swept, SwitchError, SwitchInput, Switched,
    masquerade_beside, present_modes, recover, sweep, switch_to, verification_probe,
};
use crate::watch::Source;

/// The condition types the agent reports.
pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";
/// False while the newest ruleset generation is refused.
pub const RULESET_ACCEPTED: &str = "RulesetAccepted";

/// An Event's note may hold 1 kB.
const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// What a sync pass did.
#[derive(Debug)]
pub enum SyncOutcome {
    /// Rules are in place for the current inputs.
    Synced,
    /// The inputs did not change since the last successful sync.
    Unchanged,
    /// Nothing can be applied yet; the kernel is left as it is.
    Waiting(Waiting),
    /// The apply failed; the previous rules stay. Retry later.
    Failed(SyncError),
}

/// Why nothing can be applied yet (not an error: the inputs are incomplete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    ProxyNodeMissing {
        node: String,
    },
    InitialLists,
    NoTargetMode,
    NodeMissing {
        node: String,
    },
    NoCompleteGeneration,
    /// The newest generation failed validation (the message says where).
    Refused(String),
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::ProxyNodeMissing { node } => write!(f, "ProxyNode {node} not found"),
            Waiting::InitialLists => f.write_str("initial lists not complete"),
            Waiting::NoTargetMode => f.write_str("no target mode assigned"),
            Waiting::NodeMissing { node } => write!(f, "Node {node} not found"),
            Waiting::NoCompleteGeneration => f.write_str("no complete ruleset shard generation"),
            Waiting::Refused(why) => f.write_str(why),
        }
    }
}

/// Why a sync pass could not apply its inputs (the previous rules stay).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no dataplane is active")]
    NoActiveDataplane,
    /// Syncing the active dataplane failed (the error names mode and operation).
    #[error(transparent)]
    SyncActive(#[from] BackendError),
    /// The switch failed, and so did syncing the dataplane that was kept.
    #[error("{switch}; {kept}")]
    SwitchThenKept {
        switch: Box<SwitchError>,
        #[source]
        kept: Box<SyncError>,
    },
}

/// A pass's inputs before its shard generation is validated and linked.
struct Unlinked<'a> {
    target: Mode,
    node: &'a Node,
    proxy_node: &'a ProxyNode,
    shards: &'a [Arc<ProxyRuleset>],
}

/// What a sync pass applies: the target mode, the Node and the linked generation.
struct Ready<'a> {
    target: Mode,
    node: &'a Node,
    assembled: LinkedShards,
}

/// What the agent needs besides its inputs.
pub struct AgentParts {
    pub node_name: String,
    pub factory: Arc<dyn DataplaneFactory>,
    pub probe: Arc<dyn Probe>,
    /// Foreign objects to remove once our mode is active (kube-proxy's nftables tables).
    pub leftovers: Vec<Box<dyn Leftovers>>,
    pub reporter: StatusReporter,
    /// Events about this node's ProxyNode.
    pub events: Box<dyn EventSink>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<ProxyHealth>,
    pub health_checks: Option<HealthCheckServers>,
    /// `/healthz` and `/metrics`, following the pool's bind addresses.
    pub http: Option<HttpServers>,
    /// Wall clock for status times (tests fix it).
    pub wall_clock: fn() -> SystemTime,
}

/// The node agent's state.
pub struct Agent {
    parts: AgentParts,
    active: Option<Box<dyn Dataplane>>,
    recovered: bool,
    swept: bool,
    /// Validates and links shard generations, reusing what did not change.
    linker: ShardLinker,
    /// Why the newest shard generation is refused.
    refused: Option<RefusedShard>,
    /// The service ports last applied, for the change metrics.
    changes: ChangeTracker,
    synced_key: Option<InputKey>,
    status: ProxyNodeStatus,
    settings: Settings,
    /// The mode switched away from, still serving connections established
    /// through it (`Dataplane::settle` at each sync removes it once done).
    retiring: Option<Box<dyn Dataplane>>,
    /// Leftovers kept while connections they translated are established.
    leftover_drain: LeftoverDrain,
    /// Failing watches and their last error.
    api_errors: BTreeMap<Source, String>,
    generation: Option<i64>,
}

struct Recorder<'a> {
    status: &'a mut ProxyNodeStatus,
    reporter: &'a mut StatusReporter,
}

impl Checkpoints for Recorder<'_> {
    fn reached<'a>(&'a mut self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            checkpoint.record(self.status);
            tracing::info!(?checkpoint, "mode switch");
            if let Err(e) = self.reporter.write_now(self.status, Instant::now()).await {
                tracing::warn!(error = %e, "recording the switch step failed; continuing");
            }
        })
    }
}

impl Agent {
    pub fn new(parts: AgentParts) -> Agent {
        let started = (parts.wall_clock)();
        Agent {
            changes: ChangeTracker::new(started),
            parts,
            active: None,
            retiring: None,
            leftover_drain: LeftoverDrain::default(),
            recovered: false,
            swept: false,
            linker: ShardLinker::default(),
            refused: None,
            synced_key: None,
            status: ProxyNodeStatus::default(),
            settings: Settings::defaults(Mode::default()),
            api_errors: BTreeMap::new(),
            generation: None,
        }
    }

    /// The settings of the last sync (periods for the loop).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The mode carrying traffic.
    pub fn active_mode(&self) -> Option<Mode> {
        self.active.as_ref().map(|d| d.mode())
    }

    /// The status model (what is or will be written).
    pub fn status(&self) -> &ProxyNodeStatus {
        &self.status
    }

    pub fn reporter(&mut self) -> &mut StatusReporter {
        &mut self.parts.reporter
    }

    pub fn health(&self) -> &Arc<ProxyHealth> {
        &self.parts.health
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.parts.metrics
    }

    /// A change arrived.
    pub fn queued(&self) {
        let now = (self.parts.wall_clock)();
        self.parts.health.queued(now);
        self.parts.metrics.queued(now);
    }

    /// The periodic full resync: the next sync rewrites everything.
    pub fn invalidate(&mut self) {
        self.synced_key = None;
        if let Some(d) = self.active.as_mut() {
            d.invalidate();
        }
    }

    /// The watch of `source` failed (`Some`) or delivered again (`None`).
    pub fn set_api_error(&mut self, source: Source, error: Option<String>) {
        let changed = match error {
            Some(e) => self.api_errors.insert(source, e.clone()) != Some(e),
            None => self.api_errors.remove(&source).is_some(),
        };
        if changed && self.recovered {
            self.update_conditions();
            self.parts.reporter.offer(&self.status, Instant::now());
        }
    }

    /// One sync pass over the current inputs. `queued_at`: when the oldest change
    /// it applies arrived.
    pub async fn sync(&mut self, inputs: &Inputs, queued_at: Option<Instant>) -> SyncOutcome {
        let started = Instant::now();
        // A rewrite it asks for is this pass (it forgot the synced inputs).
        self.settle_drains();
        let key = InputKey::of(inputs);
        if self.synced_key.as_ref() == Some(&key) {
            self.parts.health.updated((self.parts.wall_clock)());
            return SyncOutcome::Unchanged;
        }
        let outcome = self.sync_inputs(inputs, &key, started, queued_at).await;
        match &outcome {
            SyncOutcome::Synced => self.synced_key = Some(key),
            SyncOutcome::Waiting(why) => tracing::info!(reason = %why, "waiting"),
            SyncOutcome::Failed(e) => {
                tracing::error!(error = %e, "sync failed; previous rules stay")
            }
            SyncOutcome::Unchanged => {}
        }
        // Before recovery has read the recorded status back, writing would
        // overwrite what a restarted agent needs (and the ProxyNode may not exist).
        if self.recovered {
            self.update_conditions_with(&outcome);
            self.parts.reporter.offer(&self.status, Instant::now());
        }
        outcome
    }

    async fn sync_inputs(
        &mut self,
        inputs: &Inputs,
        key: &InputKey,
        started: Instant,
        queued_at: Option<Instant>,
    ) -> SyncOutcome {
        let ready = match self.ready(inputs, key) {
            Ok(ready) => ready,
            Err(why) => return SyncOutcome::Waiting(why),
        };
        let ready = match self.link(ready).await {
            Ok(ready) => ready,
            Err(why) => return SyncOutcome::Waiting(why),
        };
        self.parts
            .health
            .set_node_deleting(being_deleted(ready.node));
        let config = inputs.config.as_ref().map(|c| &c.spec);
        if let Some(http) = self.parts.http.as_mut() {
            for e in http.reconcile(config) {
                tracing::error!(error = %e, "HTTP server address not changed");
            }
        }
        let spec = config.cloned().unwrap_or_default();
        // A failure is about one target: a new target starts afresh.
        if self.status.failed_mode.is_some_and(|f| f != ready.target) {
            self.status.failed_mode = None;
        }
        let mode = if self.status.failed_mode == Some(ready.target) {
            self.active_mode().unwrap_or(ready.target)
        } else {
            ready.target
        };
        let pods = pod_cidrs(ready.node);
        self.settings = self.settings_for(&spec, mode, &pods);
        let linked = &ready.assembled.linked;
        let (stats, note) = match self.apply(mode, linked, &spec, &pods).await {
            Ok(applied) => applied,
            Err(e) => {
                self.parts
                    .metrics
                    .sync_failed(self.active_mode().unwrap_or(mode));
                self.status.last_error = Some(clip_message(e.to_string()));
                return SyncOutcome::Failed(e);
            }
        };
        if !self.swept {
            self.sweep(linked);
        }
        self.report_synced(&ready.assembled, stats, started, queued_at, note);
        SyncOutcome::Synced
    }

    /// What this pass applies, or why it must wait. Recovers the kernel's
    /// state first, once the ProxyNode's recorded status can be read back.
    fn ready<'a>(&mut self, inputs: &'a Inputs, key: &InputKey) -> Result<Unlinked<'a>, Waiting> {
        // The ProxyNode store fills only once its list is complete, so its
        // recorded status can be read back (and status written) even while
        // another watch is still failing.
        let proxy_node = inputs
            .proxy_node
            .as_deref()
            .ok_or_else(|| Waiting::ProxyNodeMissing {
                node: self.parts.node_name.clone(),
            })?;
        self.generation = proxy_node.metadata.generation;
        if !self.recovered {
            self.recover(proxy_node);
        }
        if !inputs.listed {
            return Err(Waiting::InitialLists);
        }
        let target = key
            .target
            .or(self.active_mode())
            .ok_or(Waiting::NoTargetMode)?;
        let node = inputs.node.as_deref().ok_or_else(|| Waiting::NodeMissing {
            node: self.parts.node_name.clone(),
        })?;
        Ok(Unlinked {
            target,
            node,
            proxy_node,
            shards: &inputs.shards,
        })
    }

    /// Validate and link the shard generation. An incomplete or refused
    /// generation keeps the last one linked; a refusal is reported.
    async fn link<'a>(&mut self, unlinked: Unlinked<'a>) -> Result<Ready<'a>, Waiting> {
        let shards = unlinked.shards.iter().map(|s| &s.spec);
        let linked = self.linker.link(shards, &node_info(unlinked.node));
        self.note_refused(linked.refused, unlinked.proxy_node).await;
        let assembled = linked.shards.ok_or_else(|| match &self.refused {
            Some(refused) => Waiting::Refused(refused.to_string()),
            None => Waiting::NoCompleteGeneration,
        })?;
        Ok(Ready {
            target: unlinked.target,
            node: unlinked.node,
            assembled,
        })
    }

    /// Keep the refusal of the newest generation; a new one is logged and
    /// published as an Event on the ProxyNode.
    async fn note_refused(&mut self, refused: Option<RefusedShard>, proxy_node: &ProxyNode) {
        if refused == self.refused {
            return;
        }
        if let Some(r) = &refused {
            tracing::error!(refused = %r, "ruleset shard refused; the last valid rules stay");
            let event = refused_event(clip(r.to_string(), MAX_EVENT_NOTE_BYTES));
            let regarding = proxy_node.object_ref(&());
            if let Err(e) = self.parts.events.publish(&event, &regarding).await {
                tracing::warn!(error = %e, "publishing the refusal as an Event failed");
            }
        }
        self.refused = refused;
    }

    /// Sync the active dataplane when it runs `mode`, else switch to `mode`;
    /// when the switch fails the kept dataplane syncs the ruleset. Ok carries
    /// a note to report (a failed switch, or a completed one's caveats).
    async fn apply(
        &mut self,
        mode: Mode,
        linked: &LinkedRuleset,
        spec: &ProxyConfigSpec,
        pods: &[Cidr],
    ) -> Result<(ApplyStats, Option<String>), SyncError> {
        if self.active_mode() == Some(mode) {
            return Ok((self.sync_active(linked)?, None));
        }
        match self.switch(mode, linked, spec).await {
            Ok(switched) => {
                let note = switch_note(&switched);
                Ok((switched.stats, note))
            }
            Err(switch) => {
                // The old mode carries on with the current ruleset.
                if let Some(kept) = self.active_mode() {
                    self.settings = self.settings_for(spec, kept, pods);
                }
                let note = switch.to_string();
                match self.sync_active(linked) {
                    Ok(stats) => Ok((stats, Some(note))),
                    Err(kept) => Err(SyncError::SwitchThenKept {
                        switch: Box::new(switch),
                        kept: Box::new(kept),
                    }),
                }
            }
        }
    }

    fn recover(&mut self, proxy_node: &ProxyNode) {
        let recorded = proxy_node.status.clone().unwrap_or_default();
        let present = present_modes(self.parts.factory.as_ref(), &Mode::ALL);
        let active = recover(&present, &recorded, proxy_node.spec.target_mode);
        tracing::info!(?present, ?active, recorded_mode = ?recorded.applied_mode, "recovered kernel state");
        self.active = active.and_then(|m| {
            self.parts
                .factory
                .build(m)
                .map_err(
                    |e| tracing::error!(mode = %m, error = %e, "cannot drive the present mode"),
                )
                .ok()
        });
        self.status = ProxyNodeStatus {
            applied_mode: self.active_mode(),
            failed_mode: recorded.failed_mode,
            ..Default::default()
        };
        self.recovered = true;
    }

    fn sync_active(&mut self, linked: &LinkedRuleset) -> Result<ApplyStats, SyncError> {
        let active = self.active.as_mut().ok_or(SyncError::NoActiveDataplane)?;
        Ok(active.sync(linked, &self.settings)?)
    }

    /// Switch to `to` with the switch procedure, recording its checkpoints.
    async fn switch(
        &mut self,
        to: Mode,
        linked: &LinkedRuleset,
        spec: &ProxyConfigSpec,
    ) -> Result<Switched, SwitchError> {
        let input = SwitchInput {
            to,
            ruleset: linked,
            settings: &self.settings,
            probe: verification_probe(spec.rollout.verification.as_ref(), linked, to),
        };
        let mut recorder = Recorder {
            status: &mut self.status,
            reporter: &mut self.parts.reporter,
        };
        let result = switch_to(
            &mut self.active,
            input,
            self.parts.factory.as_ref(),
            self.parts.probe.as_ref(),
            &mut recorder,
        )
        .await;
        self.parts.metrics.switched(to, result.is_ok());
        let mut switched = result?;
        // A second switch before the first one's old mode drained: that one
        // goes now, unless the new mode is it again and took its objects over.
        if self.retiring.as_ref().is_some_and(|d| d.mode() == to) {
            self.retiring = None;
        }
        self.finish_retiring();
        self.retiring = switched.retiring.take();
        self.swept = false;
        Ok(switched)
    }

    /// Whether something waits for the connections through it to end (a
    /// retired mode, leftovers): [`Agent::settle_drains`] removes it once they did.
    pub fn draining(&self) -> bool {
        self.retiring.is_some() || self.leftover_drain.holding()
    }

    /// Remove what drains if its connections ended or its grace passed.
    /// True when the active mode is to be synced again now (its settings
    /// changed with the retired mode gone).
    pub fn settle_drains(&mut self) -> bool {
        let rewrite = self.settle_retiring();
        // Under eBPF only, which shares nothing with them: no resync after.
        if let Some(swept) = self.leftover_drain.settle(&self.parts.leftovers) {
            tracing::info!(removed = ?swept.removed, "removed leftovers after their connections");
            log_swept(&swept);
        }
        rewrite
    }

    /// Remove the retiring dataplane if its connections ended or its grace
    /// passed. Once an eBPF mode is gone, the active one masquerades on all
    /// of the kernel's ports again: the next sync rewrites its masquerade.
    fn settle_retiring(&mut self) -> bool {
        let Some(retiring) = self.retiring.as_mut() else {
            return false;
        };
        match retiring.settle() {
            Ok(Retirement::Draining) => return false,
            Ok(Retirement::Done) => {}
            Err(e) => {
                tracing::warn!(mode = %retiring.mode(), error = %e, "removing the drained mode failed; swept later");
            }
        }
        self.retiring = None;
        let rewrite = self.settings.masquerade_ports.is_some();
        if rewrite {
            self.synced_key = None;
        }
        rewrite
    }

    /// The pool's settings for `mode`, with the masquerade ports it takes
    /// beside the modes in the kernel ([`masquerade_beside`]).
    fn settings_for(&self, spec: &ProxyConfigSpec, mode: Mode, pods: &[Cidr]) -> Settings {
        let mut settings = settings_for(spec, mode, pods);
        let beside = [self.active.as_deref(), self.retiring.as_deref()];
        settings.masquerade_ports = masquerade_beside(mode, beside.into_iter().flatten());
        settings
    }

    /// Remove the retiring dataplane now, cutting what it still serves.
    fn finish_retiring(&mut self) {
        if let Some(mut retiring) = self.retiring.take()
            && let Err(e) = retiring.cleanup()
        {
            tracing::warn!(mode = %retiring.mode(), error = %e, "removing the retired mode failed; swept later");
        }
    }

    fn sweep(&mut self, linked: &LinkedRuleset) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let draining = self.retiring.as_ref().map(|d| d.mode());
        let mode = active.mode();
        let leftovers = self.leftover_drain.start(mode, &self.parts.leftovers);
        let swept = sweep(
            active.as_mut(),
            draining,
            self.parts.factory.as_ref(),
            &leftovers,
            linked,
            &self.settings,
        );
        log_swept(&swept);
        for draining in swept.draining {
            tracing::info!(mode = %draining.mode(), "a retired mode still serves connections; it drains");
            if self.retiring.is_some() {
                // One drains at a time: the older one goes now.
                self.finish_retiring();
            }
            self.retiring = Some(draining);
        }
        self.swept = true;
    }

    fn report_synced(
        &mut self,
        assembled: &LinkedShards,
        stats: ApplyStats,
        started: Instant,
        queued_at: Option<Instant>,
        note: Option<String>,
    ) {
        let linked = &assembled.linked;
        let now = (self.parts.wall_clock)();
        let took = started.elapsed();
        let mode = self.active_mode();
        let changes = self.changes.applied(linked, now);
        if let Some(mode) = mode {
            let sync = SyncReport {
                duration: took,
                full: stats.full,
                waited: queued_at.map(|q| q.elapsed()),
                changes,
            };
            self.parts.metrics.synced(mode, &sync, stats.objects, now);
        }
        self.parts.health.updated(now);
        if let Some(hc) = self.parts.health_checks.as_mut() {
            for e in hc.sync(health_check_services(linked)) {
                tracing::warn!(error = %e, "health check node port not served");
            }
        }
        let endpoints: usize = linked.services.iter().map(|s| s.rule.endpoints.len()).sum();
        let s = &mut self.status;
        s.applied_mode = mode;
        s.applied_epoch = Some(assembled.layout.epoch);
        s.applied_shard_count = Some(assembled.layout.shard_count);
        s.applied_generation_sum = Some(assembled.generations.iter().sum());
        s.last_sync_time = Timestamp::try_from(now).ok().map(Time);
        s.last_sync_seconds = Some(took.as_secs_f64());
        s.counts = Some(AppliedCounts {
            service_ports: count(linked.services.len()),
            endpoints: count(endpoints),
            objects: stats.objects,
        });
        // A failed switch's error stays until a switch succeeds.
        if note.is_some() || s.failed_mode.is_none() {
            s.last_error = note.map(clip_message);
        }
    }

    fn update_conditions_with(&mut self, outcome: &SyncOutcome) {
        self.status.observed_generation = self.generation;
        let (ready, reason, message) = match outcome {
            SyncOutcome::Synced | SyncOutcome::Unchanged => {
                match (self.active_mode(), self.status.failed_mode) {
                    (Some(m), None) => (true, "Synced", format!("{m} rules applied")),
                    (m, Some(f)) => (
                        false,
                        "SwitchFailed",
                        format!("switch to {f} failed; {} carries traffic", display(m)),
                    ),
                    (None, None) => (false, "NoDataplane", "no dataplane active".to_string()),
                }
            }
            SyncOutcome::Waiting(why) => (false, "Waiting", why.to_string()),
            SyncOutcome::Failed(e) => (false, "ApplyFailed", e.to_string()),
        };
        let now = self.now_time();
        set_condition(
            &mut self.status.conditions,
            READY,
            ready,
            reason,
            message,
            &now,
            self.generation,
        );
        self.update_conditions();
    }

    /// `Degraded`: the API is unreachable, a switch failed, or the last apply failed.
    fn update_conditions(&mut self) {
        let apply_failed = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY && c.reason == "ApplyFailed")
            .map(|c| c.message.clone());
        let api_error = (!self.api_errors.is_empty()).then(|| {
            let errors: Vec<String> = self
                .api_errors
                .iter()
                .map(|(source, e)| format!("watching {source}: {e}"))
                .collect();
            errors.join("; ")
        });
        let (degraded, reason, message) = match (&api_error, self.status.failed_mode, apply_failed)
        {
            (Some(e), _, _) => (
                true,
                "APIUnreachable",
                format!("keeping the last applied rules: {e}"),
            ),
            (None, Some(_), _) => (
                true,
                "SwitchFailed",
                self.status.last_error.clone().unwrap_or_default(),
            ),
            (None, None, Some(e)) => (true, "ApplyFailed", e),
            (None, None, None) => match (&self.refused, &self.status.last_error) {
                (Some(r), _) => (true, "InvalidRuleset", r.to_string()),
                // A switch that completed with a caveat (unverified, old not removed).
                (None, Some(e)) => (true, "SwitchIncomplete", e.clone()),
                (None, None) => (false, "AsExpected", String::new()),
            },
        };
        let now = self.now_time();
        set_condition(
            &mut self.status.conditions,
            DEGRADED,
            degraded,
            reason,
            message,
            &now,
            self.generation,
        );
        let (accepted, reason, message) = match &self.refused {
            Some(r) => (false, "InvalidShard", r.to_string()),
            None => (
                true,
                "Valid",
                "every shard applied passed validation".to_string(),
            ),
        };
        set_condition(
            &mut self.status.conditions,
            RULESET_ACCEPTED,
            accepted,
            reason,
            message,
            &now,
            self.generation,
        );
    }

    fn now_time(&self) -> Time {
        Time(Timestamp::try_from((self.parts.wall_clock)()).unwrap_or(Timestamp::UNIX_EPOCH))
    }
}

/// The pool's settings for `mode` on this node; unusable settings are logged and skipped.
/// Warn about what a sweep could not remove.
fn log_swept(swept: &Swept) {
    for e in &swept.errors {
        tracing::warn!(error = %e, "removing leftovers failed; tried again after the next switch or restart");
    }
}

fn settings_for(spec: &ProxyConfigSpec, mode: Mode, pods: &[Cidr]) -> Settings {
    let (settings, warnings) = Settings::from_spec(spec, mode, pods);
    for w in &warnings {
        tracing::warn!(warning = %w, "ProxyConfig setting skipped");
    }
    settings
}

/// What a completed switch leaves to report: the old dataplane's removal
/// failed, or the new one is unverified (there was no old one to go back to).
fn switch_note(switched: &Switched) -> Option<String> {
    let notes: Vec<String> = [
        switched
            .old_cleanup
            .as_ref()
            .map(|e| format!("removing the old dataplane: {e}")),
        switched.unverified.as_ref().map(|e| e.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!notes.is_empty()).then(|| notes.join("; "))
}

fn display(mode: Option<Mode>) -> String {
    mode.map_or_else(|| "nothing".to_string(), |m| m.to_string())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
