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
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use switchyard_api::policy::{LinkedRuleset, LinkedShards, NodeInfo, RefusedShard, ShardLinker};
use switchyard_api::proxynode::AppliedCounts;
use switchyard_api::ruleset::{Cidr, ServicePortRule, shard_name};
use switchyard_api::validation::limits::{clip, clip_message};
use switchyard_api::validation::node::ZONE_LABEL;
use switchyard_api::{Mode, ProxyConfig, ProxyNode, ProxyNodeStatus, ProxyRuleset};
use switchyard_dataplane::Dataplane;
use switchyard_dataplane::kubeproxy::Leftovers;
use switchyard_dataplane::settings::Settings;
use tokio::time::Instant;

use crate::events::{EventSink, refused_event};
use crate::health::{HealthCheckServers, ProxyHealth, health_check_services};
use crate::http::HttpServers;
use crate::metrics::Metrics;
use crate::status::{StatusReporter, set_condition};
use crate::switch::{
    Checkpoint, Checkpoints, DataplaneFactory, Probe, ProbeTarget, SwitchError, SwitchInput,
    present_modes, recover, sweep, switch_to,
};
use crate::watch::Source;

/// The condition types the agent reports.
pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";
/// False while the newest ruleset generation is refused.
pub const RULESET_ACCEPTED: &str = "RulesetAccepted";

/// An Event's note may hold 1 kB.
const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// kube-proxy's default probe timeout for the rollout verification.
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the watches currently hold.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Every watch has completed its initial list (until then nothing syncs).
    pub listed: bool,
    pub node: Option<Arc<Node>>,
    pub proxy_node: Option<Arc<ProxyNode>>,
    /// The ProxyConfig named by the ProxyNode's `spec.pool`.
    pub config: Option<Arc<ProxyConfig>>,
    pub shards: Vec<Arc<ProxyRuleset>>,
}

/// The parts of the inputs a sync depends on; an event that changes none of
/// them (a status write coming back, a Node heartbeat) does not sync.
#[derive(Clone, Debug, PartialEq)]
struct InputKey {
    target: Option<Mode>,
    node: Option<(NodeInfo, Vec<Cidr>, bool)>,
    config: Option<switchyard_api::ProxyConfigSpec>,
    shards: Vec<(String, Option<String>)>,
}

impl InputKey {
    fn of(inputs: &Inputs) -> InputKey {
        let mut shards: Vec<(String, Option<String>)> = inputs
            .shards
            .iter()
            .map(|s| {
                (
                    s.metadata.name.clone().unwrap_or_default(),
                    s.metadata.resource_version.clone(),
                )
            })
            .collect();
        shards.sort();
        InputKey {
            target: inputs.proxy_node.as_ref().and_then(|p| p.spec.target_mode),
            node: inputs
                .node
                .as_deref()
                .map(|n| (node_info(n), pod_cidrs(n), being_deleted(n))),
            config: inputs.config.as_ref().map(|c| c.spec.clone()),
            shards,
        }
    }
}

/// The facts link needs from the Node: name, zone label, addresses (InternalIP first).
pub fn node_info(node: &Node) -> NodeInfo {
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .cloned();
    let mut addresses: Vec<IpAddr> = Vec::new();
    let all = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for kind in ["InternalIP", "ExternalIP"] {
        for a in all.iter().filter(|a| a.type_ == kind) {
            match a.address.parse() {
                Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
                Ok(_) => {}
                Err(_) => tracing::warn!(address = %a.address, "skipping unparsable node address"),
            }
        }
    }
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        zone,
        addresses,
    }
}

/// The node's `spec.podCIDRs` (or `spec.podCIDR`), unparsable entries skipped.
pub fn pod_cidrs(node: &Node) -> Vec<Cidr> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The node is going away: being deleted or tainted for removal by the autoscaler.
fn being_deleted(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_some()
        || node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"))
}

/// What a sync pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Rules are in place for the current inputs.
    Synced,
    /// The inputs did not change since the last successful sync.
    Unchanged,
    /// Nothing can be applied yet (named reason); the kernel is left as it is.
    Waiting(String),
    /// The apply failed; the previous rules stay. Retry later.
    Failed(String),
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
    synced_key: Option<InputKey>,
    status: ProxyNodeStatus,
    settings: Settings,
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
        Agent {
            parts,
            active: None,
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
        // The ProxyNode store fills only once its list is complete, so its
        // recorded status can be read back (and status written) even while
        // another watch is still failing.
        let Some(proxy_node) = inputs.proxy_node.as_deref() else {
            return SyncOutcome::Waiting(format!("ProxyNode {} not found", self.parts.node_name));
        };
        self.generation = proxy_node.metadata.generation;
        if !self.recovered {
            self.recover(proxy_node);
        }
        if !inputs.listed {
            return SyncOutcome::Waiting("initial lists not complete".to_string());
        }
        let Some(target) = key.target.or(self.active_mode()) else {
            return SyncOutcome::Waiting("no target mode assigned".to_string());
        };
        let Some(node) = inputs.node.as_deref() else {
            return SyncOutcome::Waiting(format!("Node {} not found", self.parts.node_name));
        };
        // An incomplete or refused generation keeps the last one linked.
        let shards = inputs.shards.iter().map(|s| &s.spec);
        let linked = self.linker.link(shards, &node_info(node));
        self.note_refused(linked.refused, proxy_node).await;
        let Some(assembled) = linked.shards else {
            return SyncOutcome::Waiting(match &self.refused {
                Some(refused) => refused.to_string(),
                None => "no complete ruleset shard generation".to_string(),
            });
        };
        self.parts.health.set_node_deleting(being_deleted(node));
        let config = inputs.config.as_ref().map(|c| &c.spec);
        if let Some(http) = self.parts.http.as_mut() {
            for e in http.reconcile(config) {
                tracing::error!(error = %e, "HTTP server address not changed");
            }
        }
        let spec = config.cloned().unwrap_or_default();
        // A failure is about one target: a new target starts afresh.
        if self.status.failed_mode.is_some_and(|f| f != target) {
            self.status.failed_mode = None;
        }
        let mode = if self.status.failed_mode == Some(target) {
            self.active_mode().unwrap_or(target)
        } else {
            target
        };
        let pods = pod_cidrs(node);
        let settings_for = |mode| {
            let (settings, warnings) = Settings::from_spec(&spec, mode, &pods);
            for w in &warnings {
                tracing::warn!(warning = %w, "ProxyConfig setting skipped");
            }
            settings
        };
        self.settings = settings_for(mode);
        let linked = &assembled.linked;

        let mut note = None;
        let result = if self.active_mode() == Some(mode) {
            self.sync_active(linked)
        } else {
            match self.switch(mode, linked, &spec).await {
                Ok((stats, switch_note)) => {
                    note = switch_note;
                    Ok(stats)
                }
                Err(e) => {
                    // The old mode carries on with the current ruleset.
                    if let Some(kept) = self.active_mode() {
                        self.settings = settings_for(kept);
                    }
                    note = Some(e.clone());
                    self.sync_active(linked)
                        .map_err(|sync_err| format!("{e}; {sync_err}"))
                }
            }
        };
        let stats = match result {
            Ok(stats) => stats,
            Err(e) => {
                self.parts
                    .metrics
                    .sync_failed(self.active_mode().unwrap_or(mode));
                self.status.last_error = Some(clip_message(e.clone()));
                return SyncOutcome::Failed(e);
            }
        };

        if !self.swept {
            self.sweep(linked);
        }
        self.report_synced(&assembled, stats, started, queued_at, note);
        SyncOutcome::Synced
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

    fn recover(&mut self, proxy_node: &ProxyNode) {
        let recorded = proxy_node.status.clone().unwrap_or_default();
        let present = present_modes(self.parts.factory.as_ref());
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

    fn sync_active(
        &mut self,
        linked: &LinkedRuleset,
    ) -> Result<switchyard_dataplane::ApplyStats, String> {
        let Some(active) = self.active.as_mut() else {
            return Err("no dataplane is active".to_string());
        };
        active
            .sync(linked, &self.settings)
            .map_err(|e| e.to_string())
    }

    /// Switch to `to`. Ok carries a note to report (verification skipped for
    /// lack of an old mode, the old mode's removal failed).
    async fn switch(
        &mut self,
        to: Mode,
        linked: &LinkedRuleset,
        spec: &switchyard_api::ProxyConfigSpec,
    ) -> Result<(switchyard_dataplane::ApplyStats, Option<String>), String> {
        let probe = spec.rollout.verification.as_ref().map(|v| {
            let timeout = v
                .timeout
                .as_deref()
                .and_then(|t| switchyard_api::duration::parse_duration(t).ok())
                .unwrap_or(DEFAULT_PROBE_TIMEOUT);
            probe_target(
                linked.services.iter().map(|s| &s.rule),
                &v.service,
                v.port,
                timeout,
            )
            .ok_or_else(|| SwitchError::NoProbeTarget {
                to,
                service: v.service.clone(),
                port: v.port,
            })
        });
        let input = SwitchInput {
            to,
            ruleset: linked,
            settings: &self.settings,
            probe,
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
        let switched = result.map_err(|e| e.to_string())?;
        self.swept = false;
        let notes: Vec<String> = [
            switched
                .old_cleanup
                .map(|e| format!("removing the old dataplane: {e}")),
            switched.unverified.map(|e| e.to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok((
            switched.stats,
            (!notes.is_empty()).then(|| notes.join("; ")),
        ))
    }

    fn sweep(&mut self, linked: &LinkedRuleset) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let present = present_modes(self.parts.factory.as_ref());
        let swept = sweep(
            active.as_mut(),
            &present,
            self.parts.factory.as_ref(),
            &self.parts.leftovers,
            linked,
            &self.settings,
        );
        for e in &swept.errors {
            tracing::warn!(error = %e, "removing leftovers failed; tried again after the next switch or restart");
        }
        self.swept = true;
    }

    fn report_synced(
        &mut self,
        assembled: &LinkedShards,
        stats: switchyard_dataplane::ApplyStats,
        started: Instant,
        queued_at: Option<Instant>,
        note: Option<String>,
    ) {
        let linked = &assembled.linked;
        let now = (self.parts.wall_clock)();
        let took = started.elapsed();
        let mode = self.active_mode();
        if let Some(mode) = mode {
            let waited = queued_at.map(|q| q.elapsed());
            self.parts
                .metrics
                .synced(mode, took, waited, stats.objects, now);
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
        s.applied_shards = assembled
            .generations
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                (shard_name(&assembled.layout, index), *g)
            })
            .collect();
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
            SyncOutcome::Waiting(why) => (false, "Waiting", why.clone()),
            SyncOutcome::Failed(e) => (false, "ApplyFailed", e.clone()),
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

fn display(mode: Option<Mode>) -> String {
    mode.map_or_else(|| "nothing".to_string(), |m| m.to_string())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

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
