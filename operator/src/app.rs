//! The operator process: flags, logs, the Lease, SIGTERM; the ProxyConfig
//! controller and the ruleset publisher run by whichever replica holds the
//! Lease. A replica that loses the Lease stops them at once and stands by to
//! win it back; on SIGTERM the leader finishes its work and releases the
//! Lease. The `switchyard-operator` binary is [`run`] with its flags; the CLI
//! runs the same as `switchyard __operator` (the demo's operator processes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use switchyard_compiler::{CompileSettings, DEFAULT_SHARD_BUDGET_BYTES};
use switchyard_daemon::signal::{Shutdown, shutdown_requested};
use tokio::sync::watch;
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::clock::SystemClock;
use crate::controller::{self, reporter};
use crate::events::EventPublisher;
use crate::http::{Health, serve};
use crate::leader::{LeaderElector, LeaseSettings, run_while_leader};
use crate::metrics::Metrics;
use crate::shards::run_publisher;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The operator's flags.
#[derive(Debug, Parser)]
#[command(name = "switchyard-operator", version = env!("SWITCHYARD_VERSION"), about)]
pub struct Args {
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    #[arg(
        long,
        env = "SWITCHYARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// The Lease replicas compete for.
    #[arg(
        long,
        env = "SWITCHYARD_LEASE_NAME",
        default_value = "switchyard-operator"
    )]
    lease_name: String,
    /// The Lease's namespace (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "switchyard-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease and in Events.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Seconds a standby waits after it last saw the Lease change before it
    /// takes over (client-go's LeaseDuration).
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds the leader keeps leading without a successful renewal; below
    /// --lease-seconds (client-go's RenewDeadline).
    #[arg(long, default_value_t = 10)]
    renew_deadline_seconds: u64,
    /// Seconds between two attempts to take or renew the Lease (client-go's RetryPeriod).
    #[arg(long, default_value_t = 2)]
    retry_period_seconds: u64,
    /// Added to a pool's verification timeout before a switching node counts as failed.
    #[arg(long, default_value_t = 60)]
    switch_margin_seconds: u64,
    /// The `service.kubernetes.io/service-proxy-name` this proxy answers to.
    #[arg(long, env = "SWITCHYARD_PROXY_NAME")]
    proxy_name: Option<String>,
    /// Size budget of one ProxyRuleset shard, in bytes (at most 1 MiB, what
    /// one object may hold).
    #[arg(long, default_value_t = DEFAULT_SHARD_BUDGET_BYTES)]
    shard_budget_bytes: usize,
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The leader's work: the ProxyConfig controller and the shard publisher,
/// until `stop` turns true.
async fn controllers(
    client: Client,
    args: &Args,
    metrics: Arc<Metrics>,
    holder: String,
    stop: watch::Receiver<bool>,
) {
    let pools = controller::run(
        client.clone(),
        metrics.clone(),
        Arc::new(SystemClock),
        Duration::from_secs(args.switch_margin_seconds),
        Some(holder.clone()),
        stopped(stop.clone()),
    );
    let publisher = run_publisher(
        client.clone(),
        CompileSettings {
            proxy_name: args.proxy_name.clone(),
        },
        args.shard_budget_bytes,
        EventPublisher::new(client, reporter(Some(holder))),
        metrics,
        stopped(stop),
    );
    tokio::join!(pools, publisher);
}

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn signalled() {
    match shutdown_requested().await {
        Shutdown::Terminated => info!("SIGTERM: shutting down"),
        Shutdown::Interrupted => info!("interrupted: shutting down"),
    }
}

/// The operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("connecting to the API server: {0}")]
    Client(kube::Error),
    #[error("serving HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lease(#[from] crate::Error),
}

/// Run the operator until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> Result<(), StartError> {
    init_logs(args.log_format);
    let client = Client::try_default().await.map_err(StartError::Client)?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let holder = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("switchyard-operator-{}", std::process::id()));

    let mut elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        LeaseSettings {
            name: args.lease_name.clone(),
            holder: holder.clone(),
            lease_duration: Duration::from_secs(args.lease_seconds),
            renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
            retry_period: Duration::from_secs(args.retry_period_seconds),
        },
        Arc::new(SystemClock),
        health.clone(),
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| StartError::Http {
            addr: args.http_addr,
            source,
        })?;
    let server = tokio::spawn(serve(
        listener,
        health.clone(),
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        signalled().await;
        let _ = stop_on_signal.send(true);
    });

    let lead = || {
        controllers(
            client.clone(),
            &args,
            metrics.clone(),
            holder.clone(),
            stop_rx.clone(),
        )
    };
    run_while_leader(&mut elector, lead, stopped(stop_rx.clone())).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}
