//! `versus`: Switchyard against the real kube-proxy of the pinned release,
//! in one run, on this machine, on the same states of one real control
//! plane; one table with ratios.
//!
//! The lab cluster ([`Cluster`]) runs the operator and a node agent as
//! processes; for each size and mode (iptables, nftables) the bench starts
//! kube-proxy in a network namespace of its own (its flags are the
//! reference's: nothing reaches the host), lets it program the state (its
//! full sync), switches the agent's pool to the mode (the agent's full sync),
//! then writes single-endpoint changes both take in (their partial syncs).
//! Every figure is what the program reports about itself: kube-proxy's
//! `kubeproxy_sync_{full,partial}_proxy_rules_duration_seconds` (IPv4's
//! proxier) and the agent's histograms of the same names, as the mean of
//! what each observed in the window; memory is `/proc/PID/status`.
//!
//! A size that fails (kube-proxy not synced within its size's deadline, say)
//! ends the run, larger sizes being slower still; the table of what was
//! measured is printed all the same, with the size that stopped it and why.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use kube::{Api, ResourceExt};
use switchyard_api::{Mode, ProxyNode, ProxyRuleset};
use switchyard_lab::bench::states::{BenchState, NAMESPACE, Size};
use switchyard_lab::bench::table::{Table, mib, ratio, ratio_of, secs};
use switchyard_lab::cleanup;
use switchyard_lab::cluster::layout::{CLUSTER_CIDR, Layout};
use switchyard_lab::cluster::processes::{Program, Programs};
use switchyard_lab::cluster::{Cluster, ClusterError, ClusterOptions, wait};
use switchyard_lab::controlplane::forward::Forwarder;
use switchyard_lab::controlplane::identity::Identity;
use switchyard_lab::controlplane::workdir::Purpose;
use switchyard_lab::metrics::{Histogram, fetch};
use switchyard_lab::netns::Netns;
use switchyard_lab::procstat::{Memory, Process};
use switchyard_lab::reference::KUBE_PROXY_USER;
use switchyard_lab::reference::kube_proxy::{Counters, KubeProxy};
use switchyard_lab::reference::state::{Changes, ClusterState};
use switchyard_lab::scenario::{NodeAddress, NodeSpec};
use switchyard_lab::traffic::role::{self, ChildRole};

#[derive(Parser)]
#[command(about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// The cluster's servers (`__serve`), run by re-executing this binary.
    #[command(subcommand)]
    child: Option<ChildRole>,
    /// A run of a few minutes: 1000x5 and 2000x5, 3 changes each (at
    /// 5000x5 kube-proxy's iptables mode did not finish its first sync in
    /// ten minutes on the two-core machine: see the README).
    #[arg(long)]
    quick: bool,
    /// States as SERVICESxENDPOINTS, measured in increasing order.
    #[arg(long, value_delimiter = ',', default_values_t = ["1000x5", "5000x5", "5000x50", "10000x5", "44000x5"].map(String::from))]
    sizes: Vec<String>,
    /// Single-endpoint changes per size and mode.
    #[arg(long, default_value_t = 5)]
    changes: usize,
}

#[derive(Debug, thiserror::Error)]
enum VersusError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Harness(#[from] switchyard_lab::HarnessError),
    #[error(transparent)]
    ControlPlane(#[from] switchyard_lab::controlplane::ControlPlaneError),
    #[error("{0}")]
    Size(String),
    #[error("{what}: {message}")]
    Measure { what: String, message: String },
    #[error("{at}: {source}")]
    At {
        at: String,
        source: Box<VersusError>,
    },
}

impl VersusError {
    /// This error, saying which size (and mode) it stopped.
    fn at(self, size: Size, mode: Option<Mode>) -> VersusError {
        let at = match mode {
            Some(mode) => format!("{size} {mode}"),
            None => size.to_string(),
        };
        VersusError::At {
            at,
            source: Box::new(self),
        }
    }
}

fn measure(what: impl Into<String>, message: impl Into<String>) -> VersusError {
    VersusError::Measure {
        what: what.into(),
        message: message.into(),
    }
}

/// kube-proxy's node: its name, address and the Node object's address.
const KP_NODE: &str = "kube-proxy-node";
const KP_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 10);
/// Where the agent serves `/metrics` in its node (its default).
const AGENT_METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10249);
const WAIT: Duration = Duration::from_secs(600);
/// The deadline of one sync at a size, kube-proxy's and the agent's switch
/// (the ProxyConfig's verification timeout, which the operator's switch
/// deadline follows): a base, and a share per endpoint (kube-proxy's iptables
/// mode writes a chain per endpoint): 155 s at 1000x5, 655 s at 5000x5,
/// 5530 s at 44000x5.
const SYNC_BASE: Duration = Duration::from_secs(30);
const SYNC_PER_ENDPOINT: Duration = Duration::from_millis(25);

fn sync_deadline(size: Size) -> Duration {
    let endpoints = u32::try_from(size.services * size.endpoints).unwrap_or(u32::MAX);
    SYNC_BASE + SYNC_PER_ENDPOINT * endpoints
}
const POLL: Duration = Duration::from_millis(20);

/// The cluster, the bench's state on it and kube-proxy's identity. Field
/// order is drop order: the cluster goes before the runtime it was made on.
struct Rig {
    cluster: Cluster,
    state: BenchState,
    kp_spec: NodeSpec,
    kp_kubeconfig: PathBuf,
    agent_mode: Option<Mode>,
    runtime: tokio::runtime::Runtime,
}

/// The operator and the agent as they ship, built beside this binary.
fn programs() -> Result<Programs, VersusError> {
    let exe = std::env::current_exe().map_err(|e| measure("this binary's path", e.to_string()))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let program = |name: &str| {
        let path = dir.join(name);
        if path.exists() {
            Ok(Program::new(path))
        } else {
            Err(measure(
                format!("{}", path.display()),
                "not built: cargo build --release -p switchyard-operator -p switchyard-agent",
            ))
        }
    };
    Ok(Programs {
        operator: program("switchyard-operator")?,
        agent: program("node-agent")?,
        traffic: Program::new(exe),
    })
}

fn start_rig() -> Result<Rig, VersusError> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| measure("the bench's runtime", e.to_string()))?;
    let layout = Layout {
        nodes: 1,
        services: 1,
    };
    let mut options = ClusterOptions::new(layout, programs()?, Purpose::Test);
    options.tag = "vs";
    let kp_spec = NodeSpec {
        name: KP_NODE.into(),
        addresses: vec![format!("{KP_IP}/24")],
        zone: None,
        // As the pool's ProxyConfig says: the same rules for local traffic.
        cluster_cidrs: CLUSTER_CIDR.parse().into_iter().collect(),
        service_cidrs: vec![],
        node_port_addresses: None,
        localhost_node_ports: None,
        masquerade_all: false,
    };
    let (cluster, state, kp_kubeconfig) = runtime.block_on(async {
        let cluster = Cluster::start(options).await?;
        let cp = cluster.control_plane();
        let mut reference = ClusterState::new(cp.client()).await?;
        let address = NodeAddress {
            ip: IpAddr::V4(KP_IP),
            prefix: 24,
        };
        reference.set_node(&kp_spec, &[address]).await?;
        let user = Identity::User {
            name: KUBE_PROXY_USER.into(),
            group: None,
        };
        let kubeconfig = cp.kubeconfig_for(&user).await?;
        let state = BenchState::new(cp.client()).await?;
        Ok::<_, VersusError>((cluster, state, kubeconfig))
    })?;
    Ok(Rig {
        cluster,
        state,
        kp_spec,
        kp_kubeconfig,
        agent_mode: None,
        runtime,
    })
}

/// kube-proxy in a namespace of its own. Field order is drop order.
struct KubeProxyNode {
    kube_proxy: KubeProxy,
    _forwarder: Forwarder,
    ns: Netns,
}

impl KubeProxyNode {
    fn start(rig: &Rig, size: Size, mode: Mode, run: usize) -> Result<KubeProxyNode, VersusError> {
        let cp = rig.cluster.control_plane();
        let ns = Netns::create(&format!("{}kp{run}", rig.cluster.netns_prefix()))
            .map_err(switchyard_lab::HarnessError::from)?;
        // Its address on loopback: kube-proxy only serves metrics on it.
        ns.ip(&["addr", "add", &format!("{KP_IP}/32"), "dev", "lo"])
            .map_err(switchyard_lab::HarnessError::from)?;
        let forwarder = cp.forward_into(&ns)?;
        let ip = IpAddr::V4(KP_IP);
        let mut kube_proxy = KubeProxy::start(
            &cp.binaries().path("kube-proxy"),
            cp.dir(),
            mode,
            &rig.kp_spec,
            ip,
            &rig.kp_kubeconfig,
            &ns,
        )?;
        kube_proxy.set_timeout(sync_deadline(size));
        Ok(KubeProxyNode {
            kube_proxy,
            _forwarder: forwarder,
            ns,
        })
    }

    /// Its first syncs, of the whole state: the mean full sync.
    fn full_sync(&mut self, services: usize) -> Result<Duration, VersusError> {
        let n = u64::try_from(services).unwrap_or(u64::MAX);
        let all = Changes {
            services: n,
            endpoint_slices: n,
        };
        let ns = &self.ns;
        self.kube_proxy
            .wait_taken_in(ns, &Counters::default(), all)?;
        let seen = self.kube_proxy.wait_until(ns, "the first full sync", |c| {
            c.full.count > 0 && c.ipv4_programmed()
        })?;
        seen.full
            .mean_since(&Histogram::default())
            .ok_or_else(|| measure("kube-proxy's full sync", "none observed"))
    }

    fn counters(&self) -> Result<Counters, VersusError> {
        Ok(self.kube_proxy.counters(&self.ns)?)
    }

    /// Wait until the one endpoint change after `before` is programmed.
    fn wait_partial(&mut self, before: &Counters) -> Result<(), VersusError> {
        let one = Changes {
            services: 0,
            endpoint_slices: 1,
        };
        let ns = &self.ns;
        self.kube_proxy.wait_taken_in(ns, before, one)?;
        self.kube_proxy.wait_until(ns, "a partial sync", |c| {
            c.partial.count > before.partial.count && c.ipv4_programmed()
        })?;
        Ok(())
    }

    fn memory(&self) -> Memory {
        Process::Pid(self.kube_proxy.pid())
            .memory()
            .unwrap_or_default()
    }
}

/// The agent's full and partial sync histograms.
fn agent_syncs(rig: &Rig) -> Result<(Histogram, Histogram), VersusError> {
    let ns = rig
        .cluster
        .node_netns(0)
        .ok_or_else(|| measure("the agent's node", "no node 0"))?;
    let text = fetch(ns, AGENT_METRICS, "node agent")?;
    let read = |name: &str| Histogram::read(&text, name, "");
    Ok((
        read("kubeproxy_sync_full_proxy_rules_duration_seconds"),
        read("kubeproxy_sync_partial_proxy_rules_duration_seconds"),
    ))
}

/// Read the agent's histograms until `done` holds.
fn wait_agent(
    rig: &Rig,
    what: &str,
    done: impl Fn(&(Histogram, Histogram)) -> bool,
) -> Result<(Histogram, Histogram), VersusError> {
    let began = Instant::now();
    loop {
        // Not serving yet (the first mode's HTTP server): nothing seen.
        let seen = agent_syncs(rig).unwrap_or_default();
        if done(&seen) {
            return Ok(seen);
        }
        if began.elapsed() > WAIT {
            return Err(measure(
                format!("the agent's {what}"),
                format!("not within {WAIT:?}"),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Wait until the operator has published `size` (every bench Service with
/// its endpoints) and the agent has applied those shards.
fn wait_published_and_applied(rig: &Rig, size: Size) -> Result<(), VersusError> {
    let client = rig.cluster.client();
    let node = Layout::node_name(0);
    let shards = wait::until(
        Api::<ProxyRuleset>::all(client.clone()),
        "the operator's shards to hold the state",
        WAIT,
        |list| {
            let epoch = list.iter().map(|s| s.spec.layout.epoch).max().unwrap_or(0);
            let current = list.iter().filter(|s| s.spec.layout.epoch == epoch);
            let held = current
                .clone()
                .flat_map(|s| &s.spec.ruleset.services)
                .filter(|r| r.namespace == NAMESPACE && r.endpoints.len() == size.endpoints)
                .count();
            if held < size.services {
                return Err(format!("{held} of {size} in epoch {epoch}"));
            }
            let (count, generations) =
                current.fold((0u32, 0u64), |(n, sum), s| (n + 1, sum + s.spec.generation));
            // The whole layout, not only the shards that hold the state: the
            // agent applies a layout once every shard of it is there.
            let layout = list.iter().find(|s| s.spec.layout.epoch == epoch);
            let expected = layout.map_or(0, |s| s.spec.layout.shard_count);
            if count < expected {
                return Err(format!("{count} of {expected} shards of epoch {epoch}"));
            }
            Ok((epoch, count, generations))
        },
    );
    let shards = rig.runtime.block_on(shards)?;
    let applied = wait::until(
        Api::<ProxyNode>::all(client),
        "the agent to apply the shards",
        WAIT,
        |nodes| {
            let status = nodes
                .iter()
                .find(|n| n.name_any() == node)
                .and_then(|n| n.status.as_ref());
            // Generations only grow within a layout: the node is current when
            // it applied this layout's shards with at least their sum.
            let (epoch, count, generations) = shards;
            let applied = status.map(|s| {
                (
                    s.applied_epoch,
                    s.applied_shard_count,
                    s.applied_generation_sum,
                )
            });
            match applied {
                Some((Some(e), Some(c), Some(g)))
                    if e == epoch && c == count && g >= generations =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "applied (epoch, shards, generation sum) {applied:?}, published {shards:?}"
                )),
            }
        },
    );
    Ok(rig.runtime.block_on(applied)?)
}

/// Move the agent's pool to `mode` as a user would (the first time, apply
/// the ProxyConfig), with a verification timeout of `deadline` (else the
/// operator rolls a large state's switch back); the mean full sync the
/// switch made.
fn switch_agent(
    rig: &mut Rig,
    mode: Mode,
    deadline: Duration,
) -> Result<Option<Duration>, VersusError> {
    let (full, _) = wait_agent(rig, "metrics", |_| true)?;
    if rig.agent_mode == Some(mode) {
        return Ok(None);
    }
    if rig.agent_mode.is_none() {
        drop(rig.cluster.apply_proxy_config(mode, 1)?);
    }
    let secs = deadline.as_secs();
    let patch = format!(
        r#"{{"spec":{{"mode":"{mode}","rollout":{{"verification":{{"timeout":"{secs}s"}}}}}}}}"#
    );
    drop(rig.cluster.patch_proxy_config(&patch)?);
    let node = Layout::node_name(0);
    let switched = wait::until(
        Api::<ProxyNode>::all(rig.cluster.client()),
        "the agent to switch",
        WAIT,
        |nodes| {
            let status = nodes.iter().find(|n| n.name_any() == node);
            let status = status.and_then(|n| n.status.as_ref());
            match status.and_then(|s| s.applied_mode) {
                Some(m) if m == mode && status.is_some_and(|s| s.switch.is_none()) => Ok(()),
                other => Err(format!("applied {other:?}")),
            }
        },
    );
    rig.runtime.block_on(switched)?;
    rig.agent_mode = Some(mode);
    let (after, _) = wait_agent(rig, "full sync", |(f, _)| f.count > full.count)?;
    Ok(after.mean_since(&full))
}

/// The mode the agent's node reports it runs.
async fn applied_mode(rig: &Rig) -> Result<Option<Mode>, VersusError> {
    let api = Api::<ProxyNode>::all(rig.cluster.client());
    let node = api
        .get(&Layout::node_name(0))
        .await
        .map_err(|e| measure("the agent's ProxyNode", e.to_string()))?;
    Ok(node.status.and_then(|s| s.applied_mode))
}

/// `changes` single-endpoint changes, each programmed by both before the
/// next: the mean partial sync of kube-proxy and of the agent.
fn partial_syncs(
    rig: &mut Rig,
    kp: &mut KubeProxyNode,
    changes: usize,
) -> Result<(Option<Duration>, Option<Duration>), VersusError> {
    let kp_start = kp.counters()?;
    let (_, agent_start) = wait_agent(rig, "metrics", |_| true)?;
    for _ in 0..changes {
        let kp_before = kp.counters()?;
        let (_, agent_before) = wait_agent(rig, "metrics", |_| true)?;
        rig.runtime.block_on(rig.state.change_one_endpoint())?;
        kp.wait_partial(&kp_before)?;
        wait_agent(rig, "partial sync", |(_, p)| p.count > agent_before.count)?;
    }
    let kp_end = kp.counters()?;
    let (_, agent_end) = wait_agent(rig, "metrics", |_| true)?;
    Ok((
        kp_end.partial.mean_since(&kp_start.partial),
        agent_end.mean_since(&agent_start),
    ))
}

/// One size and mode measured on both.
struct Measured {
    full: (Option<Duration>, Option<Duration>),
    partial: (Option<Duration>, Option<Duration>),
    memory: (Memory, Memory),
}

fn measure_mode(
    rig: &mut Rig,
    size: Size,
    mode: Mode,
    run: usize,
    changes: usize,
) -> Result<Measured, VersusError> {
    let mut kp = KubeProxyNode::start(rig, size, mode, run)?;
    let kp_full = kp.full_sync(size.services)?;
    let agent_full = switch_agent(rig, mode, sync_deadline(size))?;
    let partial = partial_syncs(rig, &mut kp, changes)?;
    let applied = rig.runtime.block_on(applied_mode(rig))?;
    if applied != Some(mode) {
        return Err(measure(
            format!("the agent in {mode}"),
            format!(
                "it runs {applied:?} after the changes: the operator rolled the switch back (see its log)"
            ),
        ));
    }
    let agent = rig
        .cluster
        .agents_mut()
        .first()
        .map(|a| Process::Pid(a.pid()));
    let agent_memory = agent.and_then(Process::memory).unwrap_or_default();
    Ok(Measured {
        full: (Some(kp_full), agent_full),
        partial,
        memory: (kp.memory(), agent_memory),
    })
}

/// The modes both programs have here (no IPVS in this kernel; eBPF: see the README).
const MODES: [Mode; 2] = [Mode::Iptables, Mode::Nftables];

fn opt(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), secs)
}

fn opt_ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    a.zip(b).map_or_else(|| "-".into(), |(a, b)| ratio(a, b))
}

fn time_rows(table: &mut Table, size: Size, mode: Mode, m: &Measured) {
    let rows = [("full sync", m.full), ("endpoint change sync", m.partial)];
    for (what, (kp, sy)) in rows {
        table.row(vec![
            size.to_string(),
            what.into(),
            mode.to_string(),
            opt(kp),
            opt(sy),
            opt_ratio(kp, sy),
        ]);
    }
}

fn memory_rows(table: &mut Table, size: Size, mode: Mode, memory: (Memory, Memory)) {
    let (kp, sy) = memory;
    let rows = [
        ("RSS (VmRSS)", kp.rss_kib, sy.rss_kib),
        ("peak RSS (VmHWM)", kp.peak_kib, sy.peak_kib),
    ];
    for (what, kp, sy) in rows {
        #[allow(clippy::cast_precision_loss)]
        let r = ratio_of(kp as f64, sy as f64);
        let cells = [
            size.to_string(),
            what.into(),
            mode.to_string(),
            mib(kp),
            mib(sy),
            r,
        ];
        table.row(cells.into());
    }
}

fn sizes(cli: &Cli) -> Result<Vec<Size>, VersusError> {
    let texts: Vec<String> = if cli.quick {
        vec!["1000x5".into(), "2000x5".into()]
    } else {
        cli.sizes.clone()
    };
    let mut sizes = texts
        .iter()
        .map(|t| t.parse::<Size>().map_err(VersusError::Size))
        .collect::<Result<Vec<_>, _>>()?;
    sizes.sort();
    Ok(sizes)
}

/// The rows measured so far: timings as each mode finishes, memory of the
/// largest size measured (added last).
struct Results {
    table: Table,
    memory: Vec<(Size, Mode, (Memory, Memory))>,
}

impl Results {
    fn new() -> Results {
        let table = Table::new(&[
            "state",
            "measure",
            "mode",
            "kube-proxy",
            "Switchyard",
            "kube-proxy / Switchyard",
        ]);
        Results {
            table,
            memory: Vec::new(),
        }
    }

    fn add(&mut self, size: Size, mode: Mode, m: &Measured) {
        time_rows(&mut self.table, size, mode, m);
        if self.memory.first().is_some_and(|(s, _, _)| *s != size) {
            self.memory.clear();
        }
        self.memory.push((size, mode, m.memory));
    }

    fn finish(mut self) -> Table {
        for (size, mode, memory) in &self.memory {
            memory_rows(&mut self.table, *size, *mode, *memory);
        }
        self.table
    }
}

/// Every size and mode in turn, into `results`, until one fails.
fn run(cli: &Cli, results: &mut Results) -> Result<(), VersusError> {
    let sizes = sizes(cli)?;
    let changes = if cli.quick { 3 } else { cli.changes };
    let began = Instant::now();
    let mut rig = start_rig()?;
    // A mode before the first state, so that each size's first mode is a switch.
    switch_agent(&mut rig, Mode::Nftables, SYNC_BASE)?;
    eprintln!("versus: cluster up in {:?}", began.elapsed());
    let mut run = 0;
    for &size in &sizes {
        rig.runtime
            .block_on(rig.state.grow(size))
            .map_err(|e| VersusError::from(e).at(size, None))?;
        wait_published_and_applied(&rig, size).map_err(|e| e.at(size, None))?;
        eprintln!(
            "versus: {size} written and applied at {:?}",
            began.elapsed()
        );
        for mode in MODES {
            run += 1;
            let m = measure_mode(&mut rig, size, mode, run, changes)
                .map_err(|e| e.at(size, Some(mode)))?;
            results.add(size, mode, &m);
            eprintln!("versus: {size} {mode} measured at {:?}", began.elapsed());
        }
    }
    eprintln!("versus: done in {:?}", began.elapsed());
    Ok(())
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(role) = cli.child.take() {
        return role::run(role);
    }
    cleanup::install_signal_cleanup();
    let mut results = Results::new();
    let outcome = run(&cli, &mut results);
    println!("{}", results.finish());
    println!("ratios are kube-proxy / Switchyard: above 1× Switchyard is faster (smaller)");
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The first line names the size, the mode and the log to read;
            // the whole error (with the log's end) goes to stderr.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            println!("stopped, not measured: {first}");
            eprintln!("versus: {text}");
            ExitCode::FAILURE
        }
    }
}
