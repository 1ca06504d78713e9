//! `switchyard demo`: a live mode migration of a small cluster on this
//! machine, with traffic running through it, driven as a user drives it.
//!
//! The real pieces, end to end: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager of the pinned release) with `config/base`
//! installed; Nodes, Services and Pods made through the API, the
//! EndpointSlices by the real endpointslice controller; the operator and one
//! node agent per node as processes — this program in its `__operator` and
//! `__node-agent` roles, which run the very code of the `switchyard-operator`
//! and `node-agent` binaries — each agent inside its node's network
//! namespace under its own node-bound identity ([`switchyard_lab::cluster`]).
//! The traffic is processes too, the lab's one generator (this program in its
//! `__serve` and `__traffic` roles, [`switchyard_lab::traffic`]): each node's
//! client pod runs in the node's own cgroup, where the node's agent attaches
//! eBPF's socket programs, so every mode, eBPF included, serves the node's
//! clients as on a real node and nothing on the host.
//! The demo applies the pool's ProxyConfig with kubectl, starts the traffic,
//! patches the mode with kubectl, and follows the rollout through the API
//! ([`observe`]); it only counts.

mod observe;
mod progress;
mod report;

use std::path::Path;
use std::time::Duration;

use kube::Api;
use switchyard_api::{Mode, ProxyConfig, ProxyNode};
use switchyard_lab::cluster::layout::PROXY_CONFIG;
use switchyard_lab::cluster::processes::{Program, Programs};
use switchyard_lab::cluster::wait::until;
use switchyard_lab::cluster::{Cluster, ClusterError, ClusterOptions};
use switchyard_lab::controlplane::workdir::Purpose;
use switchyard_lab::netns::is_root;

pub use progress::Progress;
pub use report::{DemoReport, SwitchReport};
pub use switchyard_lab::cluster::layout::Layout;

use self::observe::Follower;
use self::progress::StatusLine;

/// The CLI's hidden roles that run the operator and the node agent.
pub const OPERATOR_ROLE: &str = "__operator";
pub const AGENT_ROLE: &str = "__node-agent";

/// Deadlock guard for every node to come up in the first mode.
const FIRST_MODE: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub from: Mode,
    pub to: Mode,
    pub nodes: u8,
    pub services: u8,
    /// Nodes switched at once (the rollout's maxUnavailable).
    pub batch: u32,
    /// Traffic time before the mode change and after the rollout.
    pub settle: Duration,
    pub progress: Progress,
    /// The operator and agent processes: see [`DemoOptions::programs_of`].
    pub programs: Programs,
}

impl DemoOptions {
    /// The operator and the agent as roles of the `switchyard` executable at `cli`.
    pub fn programs_of(cli: &Path) -> Programs {
        Programs {
            operator: Program::role(cli, OPERATOR_ROLE),
            agent: Program::role(cli, AGENT_ROLE),
            traffic: Program::new(cli),
        }
    }
}

/// Why the demo could not run (traffic failures are in the report, not here).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo needs root (it creates network namespaces and programs their rules)")]
    NotRoot,
    #[error("{mode} is not available in the demo: {why}; use iptables, nftables or ebpf")]
    UnsupportedMode { mode: Mode, why: &'static str },
    #[error("--from and --to are both {0}: nothing to migrate")]
    SameMode(Mode),
    #[error("the demo cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the rollout: {0}")]
    Rollout(String),
}

fn check_mode(mode: Mode) -> Result<(), DemoError> {
    match mode {
        Mode::Iptables | Mode::Nftables | Mode::Ebpf => Ok(()),
        Mode::Ipvs => Err(DemoError::UnsupportedMode {
            mode,
            why: "IPVS needs the ip_vs kernel module (the ipvs tests boot a VM for it)",
        }),
    }
}

/// Run the demo. Everything it creates is removed before it returns, also on error.
pub fn run_demo(options: DemoOptions) -> Result<DemoReport, DemoError> {
    check_mode(options.from)?;
    check_mode(options.to)?;
    if options.from == options.to {
        return Err(DemoError::SameMode(options.from));
    }
    if !is_root() {
        return Err(DemoError::NotRoot);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?
        .block_on(demo(options))
}

async fn demo(options: DemoOptions) -> Result<DemoReport, DemoError> {
    let progress = options.progress.clone();
    let layout = Layout {
        nodes: options.nodes,
        services: options.services,
    };
    progress.line(&format!(
        "starting a control plane (etcd, kube-apiserver, kube-controller-manager) with config/base; {} nodes ({} pods each, plus a client pod) in network namespaces; {} services; the operator and a node agent per node",
        layout.nodes,
        switchyard_lab::cluster::layout::PODS_PER_NODE,
        layout.services
    ));
    let mut cluster_options = ClusterOptions::new(layout, options.programs.clone(), Purpose::Demo);
    cluster_options.tag = "demo";
    let cluster = Cluster::start(cluster_options).await?;
    let cp = cluster.control_plane();
    let kubectl = format!(
        "{} --kubeconfig {}",
        cp.binaries().path("kubectl").display(),
        cp.admin_kubeconfig().display()
    );
    progress.line(&format!(
        "cluster ready in {:.1?}; kubeconfig: {}",
        cluster.started_in(),
        cp.admin_kubeconfig().display()
    ));
    progress.line(&format!(
        "watch it from another terminal: {kubectl} get proxynodes -w"
    ));

    progress.line(&format!(
        "kubectl apply -f {}/proxyconfig.yaml  (mode {}, maxUnavailable {})",
        cp.dir().display(),
        options.from,
        options.batch
    ));
    cluster.apply_proxy_config(options.from, options.batch)?;
    first_mode(&cluster, options.from, &progress).await?;

    progress.line(
        "starting traffic: long-lived connections (a request every 100 ms), new connections, UDP",
    );
    let clients = cluster.start_clients()?;
    let established = clients.counts().established;
    progress.line(&format!("{established} long-lived connections established"));
    let status = StatusLine::start(&progress, clients.tally());
    tokio::time::sleep(options.settle).await;

    let follower = Follower::start(cluster.client()).await?;
    let patch = format!(r#"{{"spec":{{"mode":"{}"}}}}"#, options.to);
    progress.line(&format!(
        "kubectl patch proxyconfig {PROXY_CONFIG} --type merge -p '{patch}'"
    ));
    cluster.patch_proxy_config(&patch)?;
    let generation = Api::<ProxyConfig>::all(cluster.client())
        .get(PROXY_CONFIG)
        .await
        .map_err(|source| ClusterError::Api {
            operation: format!("read ProxyConfig {PROXY_CONFIG}"),
            source,
        })?
        .metadata
        .generation
        .unwrap_or_default();
    let timeout = Duration::from_secs(120 + 60 * u64::from(layout.nodes));
    let observed = follower
        .until_done(options.to, generation, &progress, timeout)
        .await;
    tokio::time::sleep(options.settle).await;
    drop(status);

    let traffic = clients.stop();
    let mut report = DemoReport::snapshot(&traffic.total);
    progress.line(&report.traffic_line());
    report.from = Some(options.from);
    report.to = Some(options.to);
    report.failures = traffic.failures;
    let observed = observed?;
    report.switches = observed.switches;
    report.rollout = observed.phase;
    report.cleanup_errors = traffic.errors;
    report.cleanup_errors.extend(cluster.shutdown());
    progress.line("removed every namespace, process and file the demo created");
    Ok(report)
}

/// Wait until every node runs `mode`, verified; a line per node.
async fn first_mode(cluster: &Cluster, mode: Mode, progress: &Progress) -> Result<(), DemoError> {
    let nodes = u32::from(cluster.layout().nodes);
    until(
        Api::<ProxyConfig>::all(cluster.client()),
        &format!("every node on {mode}"),
        FIRST_MODE,
        |configs| {
            let status = configs
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(PROXY_CONFIG))
                .and_then(|c| c.status.clone())
                .unwrap_or_default();
            (status.ready_nodes == nodes)
                .then_some(())
                .ok_or_else(|| format!("{} of {nodes} nodes ready", status.ready_nodes))
        },
    )
    .await?;
    let proxy_nodes = Api::<ProxyNode>::all(cluster.client())
        .list(&Default::default())
        .await
        .map_err(|source| ClusterError::Api {
            operation: "list ProxyNodes".into(),
            source,
        })?;
    for node in proxy_nodes {
        let status = node.status.unwrap_or_default();
        progress.line(&format!(
            "{}: {mode} applied and verified by its agent ({} objects)",
            node.metadata.name.unwrap_or_default(),
            status.counts.map_or(0, |c| c.objects)
        ));
    }
    Ok(())
}
