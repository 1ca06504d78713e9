//! The bench's node agents: tasks in this process, each the node agent's own
//! runtime (its watches, linker, sync loop, status and Events through its own
//! kube client) over a [`RecordingFactory`] instead of the kernel. Processes
//! would be closer to a real node, but hundreds of them do not fit on the
//! bench's machine; the API server sees the same clients either way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchyard_agent::agent::{Agent, AgentParts};
use switchyard_agent::events::ApiEvents;
use switchyard_agent::health::ProxyHealth;
use switchyard_agent::metrics::Metrics;
use switchyard_agent::status::{ApiStatusWriter, StatusReporter};
use switchyard_agent::switch::TcpProbe;
use switchyard_agent::{sync, watch};
use tokio::task::JoinSet;

use super::ScaleError;
use super::recorder::{ApplyLog, RecordingFactory};
use crate::controlplane::kubeconfig;

/// The node agent's defaults (`node-agent run`).
const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(60);
const STATUS_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Running agents; aborted on drop.
pub struct Agents {
    tasks: JoinSet<()>,
}

impl Agents {
    /// One agent per name in `nodes`, agent `i` recording into `log` as
    /// node `i` and authenticating with `kubeconfigs[i]`.
    pub async fn start(
        kubeconfigs: &[PathBuf],
        nodes: &[String],
        log: &Arc<ApplyLog>,
    ) -> Result<Agents, ScaleError> {
        let mut tasks = JoinSet::new();
        for (i, (node, kubeconfig)) in nodes.iter().zip(kubeconfigs).enumerate() {
            // Its own client: its own connections, as a separate process has.
            let client = kubeconfig::client(kubeconfig).await?;
            let mut agent = Agent::new(AgentParts {
                node_name: node.clone(),
                factory: Arc::new(RecordingFactory {
                    node: i,
                    log: log.clone(),
                }),
                probe: Arc::new(TcpProbe),
                leftovers: Vec::new(),
                reporter: StatusReporter::new(
                    Box::new(ApiStatusWriter::new(client.clone(), node)),
                    STATUS_MIN_INTERVAL,
                ),
                events: Box::new(ApiEvents::new(client.clone(), node)),
                metrics: Arc::new(Metrics::new()),
                health: Arc::new(ProxyHealth::new(HEALTHZ_TIMEOUT)),
                health_checks: None,
                http: None,
                wall_clock: SystemTime::now,
            });
            let (watches, events) = watch::start(client, node);
            tasks.spawn(async move {
                sync::run(
                    &mut agent,
                    events,
                    || watches.inputs(),
                    std::future::pending(),
                )
                .await;
            });
        }
        Ok(Agents { tasks })
    }

    /// Stop every agent (their watches close with them).
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}
