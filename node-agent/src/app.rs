//! The node agent process (the DaemonSet's), and a standalone mode that
//! applies a directory of YAML without a cluster. The `node-agent` binary is
//! [`run`] with its command line; the CLI runs the same as
//! `switchyard __node-agent` (the demo's agent processes).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchyard_api::Mode;
use switchyard_api::duration::parse_duration;
use switchyard_daemon::logs::{self, LogFormat};
use switchyard_daemon::signal::shutdown_requested;
use switchyard_dataplane::BackendError;
use switchyard_dataplane::ebpf::kernel::{DEFAULT_PIN_ROOT, KernelConfig};
use switchyard_dataplane::exec::RealRunner;
use switchyard_dataplane::kubeproxy::{KubeProxyCanaries, KubeProxyNftables};

use crate::agent::{Agent, AgentParts};
use crate::cleanup;
use crate::events::ApiEvents;
use crate::health::{HealthCheckServers, ProxyHealth, proxy_health_handler};
use crate::http::{HttpServers, Rebindable};
use crate::metrics::{Metrics, metrics_handler};
use crate::standalone::{self, StandaloneError, StandaloneOptions};
use crate::status::{ApiStatusWriter, StatusReporter};
use crate::switch::{BackendFactory, DataplaneFactory, TcpProbe};
use crate::{sync, watch};

const EXAMPLES: &str = "\
Examples:
  # The DaemonSet: node name from the downward API (env NODE_NAME)
  node-agent run --node-name \"$NODE_NAME\" --healthz-bind-address 0.0.0.0:10266

  # Apply a directory of Services/EndpointSlices once with nftables
  node-agent apply --mode nftables --state ./demo --node-name node-a --node-ip 192.168.0.10

  # Show what would be programmed, without touching the kernel
  node-agent apply --mode iptables --state ./demo --node-name node-a --dry-run

  # Re-apply whenever a file in the directory changes
  node-agent apply --mode ipvs --state ./demo --node-name node-a --watch-dir

  # Remove every mode's rules, interfaces, sets and BPF objects from this node
  node-agent cleanup";

/// The Switchyard node agent.
#[derive(Debug, Parser)]
#[command(name = "node-agent", version = env!("SWITCHYARD_VERSION"), about, after_help = EXAMPLES)]
pub struct Cli {
    /// Log lines as text or as one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// What the agent does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch this node's ProxyNode, its pool's ProxyConfig and the ProxyRuleset
    /// shards; apply them with the target mode; report ProxyNode.status.
    Run(RunArgs),
    /// Compile the Services/EndpointSlices (and optional Node, ProxyConfig) YAML
    /// of a directory and apply them with one mode, without a cluster.
    Apply(ApplyArgs),
    /// Remove every object of every Switchyard mode from this node (iptables
    /// chains, nftables tables, IPVS virtual servers, kube-ipvs0 and ipsets,
    /// eBPF programs, links and pins) and nothing else, then exit.
    Cleanup(CleanupArgs),
}

/// Where the eBPF mode keeps its objects.
#[derive(Debug, clap::Args)]
pub struct EbpfArgs {
    /// The bpffs directory eBPF mode pins its maps and links under.
    #[arg(long, default_value = DEFAULT_PIN_ROOT)]
    bpf_pin_root: PathBuf,
    /// The cgroup v2 directory the socket programs attach to. Default: the
    /// cgroup v2 root (every process and pod of the node).
    #[arg(long)]
    bpf_cgroup: Option<PathBuf>,
}

impl EbpfArgs {
    fn kernel_config(&self) -> KernelConfig {
        let node = KernelConfig::for_node();
        KernelConfig {
            pin_root: self.bpf_pin_root.clone(),
            cgroup: self.bpf_cgroup.clone().or(node.cgroup),
            ..node
        }
    }

    fn factory(&self) -> BackendFactory {
        BackendFactory::with_ebpf(Arc::new(RealRunner), self.kernel_config())
    }
}

/// The flags of `cleanup`.
#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    ebpf: EbpfArgs,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// The flags of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// This node's name (the ProxyNode and Node to watch).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where /healthz and /livez are served; overrides the ProxyConfig's
    /// healthzBindAddress. Default 0.0.0.0:10256 (kube-proxy's port, often taken
    /// while kube-proxy still runs).
    #[arg(long)]
    healthz_bind_address: Option<SocketAddr>,
    /// Where /metrics is served; overrides the ProxyConfig's metricsBindAddress.
    /// Default 127.0.0.1:10249.
    #[arg(long)]
    metrics_bind_address: Option<SocketAddr>,
    /// Address the healthCheckNodePort servers listen on.
    #[arg(long, default_value = "0.0.0.0")]
    health_check_bind_address: IpAddr,
    /// How long a change may wait for a successful sync before /healthz fails
    /// (kube-proxy: twice its 30s sync period).
    #[arg(long, default_value = "60s", value_parser = duration)]
    healthz_timeout: Duration,
    /// Minimum time between status writes (mode-switch steps are written at once).
    #[arg(long, default_value = "5s", value_parser = duration)]
    status_min_interval: Duration,
    /// On SIGTERM or Ctrl-C, remove every mode's objects from this node before
    /// exiting (as `node-agent cleanup`), instead of leaving the rules in place.
    /// For uninstalling; an agent update must not set it.
    #[arg(long, env = "SWITCHYARD_CLEANUP_ON_EXIT")]
    cleanup_on_exit: bool,
    #[command(flatten)]
    ebpf: EbpfArgs,
}

/// The flags of `apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The dataplane: iptables, ipvs, nftables or ebpf.
    #[arg(long)]
    mode: Mode,
    /// Directory of *.yaml / *.yml files.
    #[arg(long)]
    state: PathBuf,
    /// The node to link for (its local endpoints, its Node object if present).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The node's addresses (NodePorts); repeatable. Default: from its Node object.
    #[arg(long = "node-ip")]
    node_ips: Vec<IpAddr>,
    /// Keep running and re-apply when the directory changes.
    #[arg(long)]
    watch_dir: bool,
    /// How often --watch-dir looks at the directory.
    #[arg(long, default_value = "1s", value_parser = duration)]
    poll_interval: Duration,
    /// Print the rendered plan instead of applying it.
    #[arg(long)]
    dry_run: bool,
    /// With --watch-dir: on SIGTERM or Ctrl-C, remove every mode's objects
    /// from this node before exiting (as `node-agent cleanup`).
    #[arg(long, requires = "watch_dir")]
    cleanup_on_exit: bool,
    #[command(flatten)]
    ebpf: EbpfArgs,
}

async fn shutdown_signal(cleanup_on_exit: bool) {
    shutdown_requested().await;
    if cleanup_on_exit {
        tracing::info!("shutting down; removing every mode's objects (--cleanup-on-exit)");
    } else {
        tracing::info!("shutting down; the applied rules stay in place");
    }
}

/// `node-agent cleanup`, and `--cleanup-on-exit`: an error when a mode's
/// objects could not all be removed.
fn clean_node(factory: &BackendFactory) -> Result<(), AppError> {
    if cleanup::clean_and_log(factory) {
        Ok(())
    } else {
        Err(AppError::CleanupIncomplete)
    }
}

async fn run_agent(args: RunArgs) -> Result<(), AppError> {
    let client = kube::Client::try_default()
        .await
        .map_err(AppError::Client)?;
    let runner = Arc::new(RealRunner);
    let backends = Arc::new(args.ebpf.factory());
    let factory: Arc<dyn DataplaneFactory> = backends.clone();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ProxyHealth::new(args.healthz_timeout));

    let mut http = HttpServers {
        healthz: Rebindable::new(
            "healthz",
            proxy_health_handler(health.clone()),
            args.healthz_bind_address,
            SocketAddr::from(([0, 0, 0, 0], 10256)),
        ),
        metrics: Rebindable::new(
            "metrics",
            metrics_handler(metrics.clone()),
            args.metrics_bind_address,
            SocketAddr::from(([127, 0, 0, 1], 10249)),
        ),
    };
    for e in http.reconcile(None) {
        tracing::error!(error = %e, "HTTP server not started; retried on the next sync");
    }

    let mut agent = Agent::new(AgentParts {
        node_name: args.node_name.clone(),
        factory,
        probe: Arc::new(TcpProbe),
        leftovers: vec![
            Box::new(KubeProxyNftables::new(runner.clone())),
            Box::new(KubeProxyCanaries::new(runner)),
        ],
        reporter: StatusReporter::new(
            Box::new(ApiStatusWriter::new(client.clone(), &args.node_name)),
            args.status_min_interval,
        ),
        events: Box::new(ApiEvents::new(client.clone(), &args.node_name)),
        metrics,
        health: health.clone(),
        health_checks: Some(HealthCheckServers::new(
            args.health_check_bind_address,
            health,
        )),
        http: Some(http),
        wall_clock: std::time::SystemTime::now,
    });
    let (watches, events) = watch::start(client, &args.node_name);
    tracing::info!(node = %args.node_name, "node agent started");
    let stop = shutdown_signal(args.cleanup_on_exit);
    sync::run(&mut agent, events, || watches.inputs(), stop).await;
    if args.cleanup_on_exit {
        return clean_node(&backends);
    }
    Ok(())
}

async fn apply(args: ApplyArgs) -> Result<(), AppError> {
    let opts = StandaloneOptions {
        mode: args.mode,
        state: args.state,
        node_name: args.node_name,
        node_ips: args.node_ips,
    };
    let factory = args.ebpf.factory();
    let mut dataplane = factory.build(args.mode)?;
    if args.dry_run {
        let prepared = standalone::prepare(&opts)?;
        println!(
            "{}",
            dataplane.render_text(&prepared.ruleset, &prepared.settings)
        );
        return Ok(());
    }
    if args.watch_dir {
        standalone::watch(
            dataplane.as_mut(),
            &opts,
            args.poll_interval,
            shutdown_signal(args.cleanup_on_exit),
        )
        .await;
        if args.cleanup_on_exit {
            drop(dataplane);
            return clean_node(&factory);
        }
        return Ok(());
    }
    let stats = standalone::apply_once(dataplane.as_mut(), &opts)?;
    println!(
        "applied {}: {} objects ({} written)",
        args.mode, stats.objects, stats.written
    );
    Ok(())
}

/// The agent could not start, or `apply` failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("connecting to the API server: {0}")]
    Client(kube::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Standalone(Box<StandaloneError>),
    #[error("some objects could not be removed (see the errors above)")]
    CleanupIncomplete,
}

impl From<StandaloneError> for AppError {
    fn from(e: StandaloneError) -> AppError {
        AppError::Standalone(Box::new(e))
    }
}

/// Run the command line (with the agent's logs on standard error).
pub async fn run(cli: Cli) -> Result<(), AppError> {
    logs::init(cli.log_format);
    match cli.command {
        Command::Run(args) => run_agent(args).await,
        Command::Apply(args) => apply(args).await,
        Command::Cleanup(args) => clean_node(&args.ebpf.factory()),
    }
}
