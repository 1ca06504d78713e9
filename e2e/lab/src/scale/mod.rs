//! The control path at scale: the real operator (a process, with a given
//! shard budget) and N node agents against the lab's real kube-apiserver,
//! with S Services × 5 endpoints. The agents are the node agent's runtime
//! over a dataplane that records when each node applied a change instead of
//! programming a kernel ([`recorder`], [`agents`]).
//!
//! Per shard budget it measures: the shard count; the time from the
//! operator's start until every agent applied the whole ruleset, and for
//! every agent to list and apply it again (a restart of all of them); per
//! single-endpoint change, the time from the EndpointSlice write until every
//! agent applied it; the bytes one agent's watches receive for that change
//! against kube-proxy's EndpointSlice watch ([`wire`]); the operator's CPU
//! time and resident memory ([`crate::procstat`]).
//!
//! Everything it starts is stopped on return and on failure: the operator
//! and the control plane are killed on drop (and on SIGINT/SIGTERM through
//! the cleanup registry), the agents are tasks aborted on drop.

pub mod agents;
pub mod recorder;
pub mod state;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, ListParams};
use switchyard_api::ProxyRuleset;

use self::agents::Agents;
use self::recorder::{ApplyLog, Goal};
use self::wire::{ByteWatch, JSON, PROTOBUF};
use crate::controlplane::identity::NAMESPACE as SYSTEM_NAMESPACE;
use crate::controlplane::identity::{Identity, OPERATOR_SA};
use crate::controlplane::process::{Daemon, Launch};
use crate::controlplane::{ControlPlane, ControlPlaneError};
use crate::procstat::Process;

/// The bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error("{operation}: {source}")]
    Api {
        operation: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting up: {0}")]
    Setup(String),
    #[error("{what}: not within {waited:?} ({reached} of {nodes} nodes)")]
    Timeout {
        what: String,
        waited: Duration,
        reached: usize,
        nodes: usize,
    },
}

impl ScaleError {
    fn api(operation: String, source: kube::Error) -> ScaleError {
        ScaleError::Api { operation, source }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    pub agents: usize,
    pub services: usize,
    /// One row per operator shard budget.
    pub budgets: Vec<usize>,
    /// Single-endpoint changes per row.
    pub changes: usize,
    /// The `switchyard-operator` executable.
    pub operator: PathBuf,
}

/// One row: the figures of one shard budget.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub budget: usize,
    pub shards: usize,
    /// Operator start until every agent applied the whole ruleset.
    pub first_sync: Duration,
    /// Every agent restarted until every one applied the whole ruleset again.
    pub relist: Duration,
    /// Bytes of one LIST of every shard (what an agent's initial list reads).
    pub list_bytes: u64,
    /// Per change: write until the last agent applied it.
    pub all_nodes: Vec<Duration>,
    /// Per change and agent: write until that agent applied it.
    pub per_node: Vec<Duration>,
    /// Per change, received by one agent: shard events.
    pub shard_bytes: u64,
    /// Per change, received by one agent: its Node, ProxyNode and the ProxyConfigs.
    pub other_bytes: u64,
    /// Per change, received by kube-proxy's EndpointSlice watch.
    pub slice_json_bytes: u64,
    pub slice_protobuf_bytes: u64,
    /// Operator CPU until every agent applied the first ruleset.
    pub operator_cpu_start: Duration,
    /// Operator CPU per change (including the agents' status writes it reads).
    pub operator_cpu_change: Duration,
    pub operator_rss_kib: u64,
    pub operator_peak_kib: u64,
}

/// Deadlock guard for one change to reach every agent.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadlock guard for a whole ruleset to reach every agent.
const SYNC_TIMEOUT: Duration = Duration::from_secs(1800);
/// After a change reached every agent: the agents' status writes (at most one
/// per 5 s each) and the operator's ProxyConfig status follow within this.
const SETTLE: Duration = Duration::from_secs(7);

/// Start the control plane, create the state, measure each budget.
pub async fn run(
    options: &Options,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Row>, ScaleError> {
    let cp = ControlPlane::start(crate::controlplane::workdir::Purpose::Test).await?;
    cp.install(&crate::controlplane::config_base())?;
    let client = cp.client();
    let began = Instant::now();
    state::create_nodes(&client, options.agents).await?;
    state::create_services(&client, options.services, options.agents).await?;
    progress(&format!(
        "{} nodes, {} services × {} endpoints created in {:.1?}",
        options.agents,
        options.services,
        state::ENDPOINTS_PER_SERVICE,
        began.elapsed()
    ));
    let nodes: Vec<String> = (0..options.agents).map(state::node_name).collect();
    let identities = Identities::make(&cp, &nodes).await?;
    let mut rows = Vec::new();
    for (round, budget) in options.budgets.iter().enumerate() {
        if round > 0 {
            delete_shards(&client).await?;
        }
        let row = measure(&cp, options, &identities, &nodes, *budget, round).await?;
        progress(&format!("budget {budget}: {row:?}"));
        rows.push(row);
    }
    Ok(rows)
}

/// Whom the operator and the agents authenticate as: their ServiceAccounts,
/// each agent's token bound to a Pod on its Node, as `config/` deploys them,
/// so that the API server's priority and fairness treats their requests as
/// on a cluster (the admin's would be exempt from it: the agents' lists of
/// the shards unqueued, the operator's Lease renewals not in their own
/// priority level). Made before anything is timed.
struct Identities {
    operator: PathBuf,
    agents: Vec<PathBuf>,
}

impl Identities {
    async fn make(cp: &ControlPlane, nodes: &[String]) -> Result<Identities, ScaleError> {
        let operator = cp.kubeconfig_for(&Identity::unbound(OPERATOR_SA)).await?;
        let mut agents = Vec::with_capacity(nodes.len());
        for node in nodes {
            agents.push(cp.kubeconfig_for(&Identity::agent_on(node)).await?);
        }
        Ok(Identities { operator, agents })
    }
}

fn start_operator(
    cp: &ControlPlane,
    kubeconfig: &Path,
    program: &Path,
    budget: usize,
) -> Result<Daemon, ScaleError> {
    Ok(Daemon::start(Launch {
        name: "switchyard-operator",
        program: program.to_path_buf(),
        args: vec![
            "--http-addr=127.0.0.1:0".to_string(),
            format!("--shard-budget-bytes={budget}"),
        ],
        cwd: cp.dir().to_path_buf(),
        log: cp.dir().join(format!("operator-{budget}.log")),
        netns: None,
        cgroup: None,
        env: vec![
            ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
            ("POD_NAME".to_string(), "switchyard-operator-0".to_string()),
            ("POD_NAMESPACE".to_string(), SYSTEM_NAMESPACE.to_string()),
            ("NO_COLOR".to_string(), "1".to_string()),
        ],
    })?)
}

/// Wait until every node reached the log's goal; when each did.
async fn all_applied(
    log: &ApplyLog,
    what: &str,
    timeout: Duration,
    operator: &mut Daemon,
) -> Result<Vec<Instant>, ScaleError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(times) = log.all_reached() {
            return Ok(times);
        }
        operator.check_running(what)?;
        if Instant::now() > deadline {
            return Err(ScaleError::Timeout {
                what: what.to_string(),
                waited: timeout,
                reached: log.count_reached(),
                nodes: log.nodes(),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn last_after(times: &[Instant], start: Instant) -> Duration {
    times
        .iter()
        .map(|t| t.saturating_duration_since(start))
        .max()
        .unwrap_or_default()
}

/// One agent's view (node 0) and kube-proxy's, as raw watches.
struct Wire {
    shards: ByteWatch,
    other: Vec<ByteWatch>,
    slices_json: ByteWatch,
    slices_protobuf: ByteWatch,
}

impl Wire {
    async fn start(client: &kube::Client, node: &str) -> Result<Wire, ScaleError> {
        let by_name = format!("metadata.name={node}");
        let group = "/apis/switchyard.dev/v1alpha1";
        Ok(Wire {
            shards: ByteWatch::start(client, &format!("{group}/proxyrulesets"), None, JSON).await?,
            other: vec![
                ByteWatch::start(client, &format!("{group}/proxynodes"), Some(&by_name), JSON)
                    .await?,
                ByteWatch::start(client, &format!("{group}/proxyconfigs"), None, JSON).await?,
                ByteWatch::start(client, "/api/v1/nodes", Some(&by_name), JSON).await?,
            ],
            slices_json: ByteWatch::start(
                client,
                "/apis/discovery.k8s.io/v1/endpointslices",
                None,
                JSON,
            )
            .await?,
            slices_protobuf: ByteWatch::start(
                client,
                "/apis/discovery.k8s.io/v1/endpointslices",
                None,
                PROTOBUF,
            )
            .await?,
        })
    }

    fn counts(&self) -> [u64; 4] {
        [
            self.shards.bytes(),
            self.other.iter().map(ByteWatch::bytes).sum(),
            self.slices_json.bytes(),
            self.slices_protobuf.bytes(),
        ]
    }
}

async fn measure(
    cp: &ControlPlane,
    options: &Options,
    identities: &Identities,
    nodes: &[String],
    budget: usize,
    round: usize,
) -> Result<Row, ScaleError> {
    let client = cp.client();
    let log = ApplyLog::new(nodes.len());
    log.expect(Goal::ServicePorts(options.services));
    let started = Instant::now();
    let mut operator = start_operator(cp, &identities.operator, &options.operator, budget)?;
    let pid = Process::Pid(operator.pid());
    let agents = Agents::start(&identities.agents, nodes, &log).await?;
    let times = all_applied(
        &log,
        "the first ruleset at every agent",
        SYNC_TIMEOUT,
        &mut operator,
    )
    .await?;
    let mut row = Row {
        budget,
        first_sync: last_after(&times, started),
        operator_cpu_start: pid.cpu_time(),
        ..Row::default()
    };
    agents.stop().await;

    log.expect(Goal::ServicePorts(options.services));
    let started = Instant::now();
    let agents = Agents::start(&identities.agents, nodes, &log).await?;
    let times = all_applied(
        &log,
        "the ruleset at every restarted agent",
        SYNC_TIMEOUT,
        &mut operator,
    )
    .await?;
    row.relist = last_after(&times, started);
    (row.shards, row.list_bytes) = shard_list(&client).await?;

    let wire = Wire::start(&client, &nodes[0]).await?;
    let before = wire.counts();
    let cpu_before = pid.cpu_time();
    for c in 0..options.changes {
        let k = (c * 7919 + round * 104_729) % options.services;
        let ip = state::changed_ip(round * options.changes + c);
        log.expect(Goal::Endpoint {
            namespace: state::NAMESPACE.to_string(),
            name: state::service_name(k),
            ip: ip.into(),
        });
        let written = Instant::now();
        state::change_endpoint(&client, k, nodes.len(), ip).await?;
        let times = all_applied(
            &log,
            "a change at every agent",
            CHANGE_TIMEOUT,
            &mut operator,
        )
        .await?;
        row.all_nodes.push(last_after(&times, written));
        row.per_node
            .extend(times.iter().map(|t| t.saturating_duration_since(written)));
        // Let the status writes a change causes land before the next one.
        tokio::time::sleep(SETTLE).await;
    }
    let changes = options.changes.max(1) as u64;
    let after = wire.counts();
    let per_change = |i: usize| (after[i] - before[i]) / changes;
    row.shard_bytes = per_change(0);
    row.other_bytes = per_change(1);
    row.slice_json_bytes = per_change(2);
    row.slice_protobuf_bytes = per_change(3);
    row.operator_cpu_change = (pid.cpu_time().saturating_sub(cpu_before)) / changes as u32;
    row.operator_rss_kib = pid.status_kib("VmRSS:");
    row.operator_peak_kib = pid.status_kib("VmHWM:");
    drop(wire);
    agents.stop().await;
    operator.stop();
    Ok(row)
}

/// The number of shard objects, and the bytes of one JSON LIST of them all.
async fn shard_list(client: &kube::Client) -> Result<(usize, u64), ScaleError> {
    let uri = "/apis/switchyard.dev/v1alpha1/proxyrulesets";
    let request = http::Request::get(uri)
        .header(http::header::ACCEPT, JSON)
        .body(Vec::new())
        .map_err(|e| ScaleError::Setup(format!("request {uri}: {e}")))?;
    let text = client
        .request_text(request)
        .await
        .map_err(|source| ScaleError::api("list the shards".to_string(), source))?;
    let shards = Api::<ProxyRuleset>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(|source| ScaleError::api("list the shards' names".to_string(), source))?
        .items
        .len();
    Ok((shards, text.len() as u64))
}

/// Shards deleted per request: one DELETE of tens of thousands of objects
/// outlasted the client's timeout on the loaded API server.
const DELETE_BATCH: u32 = 1000;

/// Remove every shard, so the next operator starts from nothing.
async fn delete_shards(client: &kube::Client) -> Result<(), ScaleError> {
    let api = Api::<ProxyRuleset>::all(client.clone());
    let error = |source| ScaleError::api("delete the shards".to_string(), source);
    loop {
        api.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().limit(DELETE_BATCH),
        )
        .await
        .map_err(error)?;
        let left = api
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map_err(error)?;
        if left.items.is_empty() {
            return Ok(());
        }
    }
}
