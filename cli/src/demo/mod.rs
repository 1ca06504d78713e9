//! `switchyard demo`: a live mode migration of a small cluster built from
//! network namespaces on this machine, with traffic running through it.
//!
//! The real pieces, end to end: the cluster state goes through the loader and
//! the compiler; each node links it and its agent thread applies it with the
//! real backend through the agent's switch procedure; batches come from the
//! operator's rollout state machine. The demo only builds the namespaces, runs
//! the servers and clients, and counts.

mod agent;
mod layout;
mod rollout;
mod topology;
mod workload;

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_api::Mode;
use switchyard_api::proxyconfig::RolloutPhase;
use switchyard_lab::HarnessError;
use switchyard_lab::netns::{NetnsError, is_root};

pub use agent::SwitchReport;
pub use layout::Layout;

use self::agent::DemoNode;
use self::topology::Topology;
use self::workload::{ClientPlan, Counters};

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub from: Mode,
    pub to: Mode,
    pub nodes: u8,
    pub services: u8,
    /// Nodes switched at once.
    pub batch: u32,
    /// Traffic time before the first batch and after each.
    pub settle: Duration,
    pub progress: Progress,
}

/// Why the demo could not run (traffic failures are in the report, not here).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo needs root (it creates network namespaces and programs their rules)")]
    NotRoot,
    #[error("{mode} is not available in the demo: {why}; use iptables or nftables")]
    UnsupportedMode { mode: Mode, why: &'static str },
    #[error("--from and --to are both {0}: nothing to migrate")]
    SameMode(Mode),
    #[error("building the demo cluster: {0}")]
    Setup(#[from] HarnessError),
    #[error("building the demo cluster: {0}")]
    Netns(#[from] NetnsError),
    #[error("demo state: {0}")]
    State(String),
    #[error("{0}")]
    Thread(String),
    #[error("applying {mode} on {node}: {message}")]
    InitialApply {
        node: String,
        mode: Mode,
        message: String,
    },
    #[error("the rollout made no progress: {0}")]
    Rollout(String),
}

/// Where progress goes: live lines, and a redrawn status line on a terminal.
#[derive(Clone)]
pub struct Progress {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    tty: bool,
    started: Instant,
    /// Nodes switched so far and in all, for the terminal's progress bar.
    nodes: Arc<Mutex<(usize, usize)>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("tty", &self.tty).finish()
    }
}

impl Progress {
    /// Standard output; a status bar only when it is a terminal.
    pub fn stdout() -> Progress {
        let tty = std::io::stdout().is_terminal();
        Progress::to(Box::new(std::io::stdout()), tty)
    }

    pub fn to(out: Box<dyn Write + Send>, tty: bool) -> Progress {
        Progress {
            out: Arc::new(Mutex::new(out)),
            tty,
            started: Instant::now(),
            nodes: Arc::new(Mutex::new((0, 0))),
        }
    }

    fn write(&self, text: &str) {
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Progress output is best effort: a closed pipe must not stop the demo (or its cleanup).
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// A permanent line, stamped with the time since the start.
    pub fn line(&self, text: &str) {
        let clear = if self.tty { "\r\x1b[2K" } else { "" };
        let secs = self.started.elapsed().as_secs_f64();
        self.write(&format!("{clear}[{secs:6.1}s] {text}\n"));
    }

    /// The live traffic status: redrawn in place on a terminal, a line every few seconds otherwise.
    /// Record rollout progress: `done` of `total` nodes switched.
    pub fn nodes_switched(&self, done: usize, total: usize) {
        *self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (done, total);
    }

    fn status(&self, text: &str, every: u64) {
        if self.tty {
            let secs = self.started.elapsed().as_secs_f64();
            let (done, total) = *self
                .nodes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            const WIDTH: usize = 20;
            let filled = (done * WIDTH).checked_div(total).unwrap_or(0);
            let bar = format!(
                "[{}{}] {done}/{total} nodes",
                "#".repeat(filled),
                "-".repeat(WIDTH - filled)
            );
            self.write(&format!("\r\x1b[2K[{secs:6.1}s] {bar} | {text}"));
        } else if self.started.elapsed().as_secs().is_multiple_of(every) {
            self.line(text);
        }
    }
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    pub from: Option<Mode>,
    pub to: Option<Mode>,
    pub attempted: u64,
    pub failed: u64,
    pub established: u64,
    pub dropped: u64,
    pub exchanges: u64,
    pub udp_sent: u64,
    pub udp_lost: u64,
    pub misrouted: u64,
    /// The phase the rollout ended in (`Complete` when it went through).
    pub rollout: Option<RolloutPhase>,
    /// Every node switch of the rollout, in order.
    pub switches: Vec<SwitchReport>,
    /// The first failures, in full.
    pub failures: Vec<String>,
    /// Cleanup problems (the namespaces are removed regardless).
    pub cleanup_errors: Vec<String>,
}

impl DemoReport {
    /// No connection failed, none dropped, nothing misrouted, every switch succeeded.
    pub fn clean(&self) -> bool {
        self.rollout == Some(RolloutPhase::Complete)
            && self.failed == 0
            && self.dropped == 0
            && self.udp_lost == 0
            && self.misrouted == 0
            && self
                .switches
                .iter()
                .all(|s| s.error.is_none() && s.cleanup_error.is_none())
            && self.cleanup_errors.is_empty()
    }

    fn snapshot(counters: &Counters) -> DemoReport {
        DemoReport {
            attempted: Counters::get(&counters.attempted),
            failed: Counters::get(&counters.failed),
            established: Counters::get(&counters.established),
            dropped: Counters::get(&counters.dropped),
            exchanges: Counters::get(&counters.exchanges),
            udp_sent: Counters::get(&counters.udp_sent),
            udp_lost: Counters::get(&counters.udp_lost),
            misrouted: Counters::get(&counters.misrouted),
            ..DemoReport::default()
        }
    }

    fn traffic_line(&self) -> String {
        format!(
            "traffic: {} connections ({} failed), {} established ({} dropped, {} requests), {} UDP ({} lost)",
            self.attempted,
            self.failed,
            self.established,
            self.dropped,
            self.exchanges,
            self.udp_sent,
            self.udp_lost
        )
    }

    /// The final report, as printed.
    pub fn to_text(&self) -> String {
        let mode = |m: Option<Mode>| m.map_or("-", Mode::as_str);
        let mut out = format!(
            "\n== switchyard demo report: {} -> {} ==\n",
            mode(self.from),
            mode(self.to)
        );
        let rollout = self
            .rollout
            .map_or_else(|| "not started".to_string(), |p| format!("{p:?}"));
        let rows = [
            ("rollout", rollout),
            ("connections attempted", self.attempted.to_string()),
            ("connections failed", self.failed.to_string()),
            ("established (long-lived)", self.established.to_string()),
            ("established connections dropped", self.dropped.to_string()),
            ("requests on long-lived conns", self.exchanges.to_string()),
            (
                "UDP requests",
                format!("{} ({} unanswered)", self.udp_sent, self.udp_lost),
            ),
            ("answers from a wrong backend", self.misrouted.to_string()),
        ];
        for (name, value) in rows {
            out.push_str(&format!("{:<33}{value}\n", format!("{name}:")));
        }
        out.push_str("node switches (build / verify / remove old = total):\n");
        for s in &self.switches {
            out.push_str(&format!(
                "  {:<8} {} -> {}: {:>6.1} / {:>6.1} / {:>6.1} = {:>6.1} ms, {} objects{}\n",
                s.node,
                mode(s.from),
                s.to,
                ms(s.build),
                ms(s.verify),
                ms(s.remove_old),
                ms(s.total),
                s.objects,
                match (&s.error, &s.cleanup_error) {
                    (Some(e), _) => format!(", FAILED: {e}"),
                    (None, Some(e)) => format!(", old mode not fully removed: {e}"),
                    (None, None) => String::new(),
                }
            ));
        }
        for f in &self.failures {
            out.push_str(&format!("failure: {f}\n"));
        }
        for e in &self.cleanup_errors {
            out.push_str(&format!("cleanup: {e}\n"));
        }
        out.push_str(if self.clean() {
            "result: PASS (no failed connection, no dropped established connection)\n"
        } else {
            "result: FAIL\n"
        });
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn check_mode(mode: Mode) -> Result<(), DemoError> {
    match mode {
        Mode::Iptables | Mode::Nftables => Ok(()),
        Mode::Ipvs => Err(DemoError::UnsupportedMode {
            mode,
            why: "IPVS needs the ip_vs kernel module (the ipvs tests boot a VM for it)",
        }),
        Mode::Ebpf => Err(DemoError::UnsupportedMode {
            mode,
            why: "its socket hooks attach to cgroups, which network namespaces do not isolate from the host",
        }),
    }
}

/// A single-threaded tokio runtime for a thread in a namespace.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// A thread in a namespace: its work's result, unless it never entered the namespace.
type NsThread = std::thread::JoinHandle<Result<Result<(), String>, NetnsError>>;

/// Threads that run until told to stop.
struct Group {
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<NsThread>,
}

impl Group {
    fn new() -> Group {
        Group {
            stop: tokio::sync::watch::channel(false).0,
            threads: Vec::new(),
        }
    }

    fn halt(&mut self) -> Vec<String> {
        let _ = self.stop.send(true);
        self.threads
            .drain(..)
            .filter_map(|t| match t.join() {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(e))) => Some(e),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("a traffic thread panicked".to_string()),
            })
            .collect()
    }
}

/// The running servers and clients. Clients stop first, after their requests
/// in flight are answered, so that stopping is never counted as a failure.
struct Traffic {
    clients: Group,
    servers: Group,
}

impl Traffic {
    fn stop(mut self) -> Vec<String> {
        self.halt()
    }

    fn halt(&mut self) -> Vec<String> {
        let mut errors = self.clients.halt();
        errors.extend(self.servers.halt());
        errors
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Start every pod's servers; returns once all are listening.
fn start_servers(topology: &Topology, traffic: &mut Traffic) -> Result<(), DemoError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut expected = 0;
    for n in &topology.nodes {
        for (j, pod_ns) in n.pods.iter().enumerate() {
            let pod = format!("web-{}-{j}", n.index);
            let stop = traffic.servers.stop.subscribe();
            let ready = ready_tx.clone();
            traffic
                .servers
                .threads
                .push(pod_ns.spawn(&pod.clone(), move || {
                    let rt = runtime()?;
                    rt.block_on(workload::serve(pod, stop, ready));
                    Ok(())
                })?);
            expected += 1;
        }
    }
    for _ in 0..expected {
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(DemoError::Thread(e)),
            Err(_) => return Err(DemoError::Thread("a server did not start".to_string())),
        }
    }
    Ok(())
}

/// Start every client; returns once their long-lived connections are open.
fn start_clients(
    topology: &Topology,
    layout: &Layout,
    counters: &Arc<Counters>,
    traffic: &mut Traffic,
) -> Result<(), DemoError> {
    let (pod_http, pod_udp) = layout.pod_targets();
    let (ext_http, ext_udp) = layout.external_targets();
    let mut clients = vec![(
        &topology.external,
        ClientPlan {
            name: "external client".to_string(),
            http: ext_http,
            udp: ext_udp,
        },
    )];
    for n in &topology.nodes {
        clients.push((
            &n.client,
            ClientPlan {
                name: format!("{} client pod", Layout::node_name(n.index)),
                http: pod_http.clone(),
                udp: pod_udp.clone(),
            },
        ));
    }
    let (open_tx, open_rx) = std::sync::mpsc::channel();
    let expected = clients.len();
    for (ns, plan) in clients {
        let stop = traffic.clients.stop.subscribe();
        let counters = counters.clone();
        let opened = open_tx.clone();
        traffic.clients.threads.push(ns.spawn("client", move || {
            let rt = runtime()?;
            rt.block_on(async move {
                let mut long_lived = workload::open_long_lived(&plan, &counters, &stop).await;
                let _ = opened.send(());
                workload::run_streams(plan, counters, stop).await;
                while long_lived.join_next().await.is_some() {}
            });
            Ok(())
        })?);
    }
    for _ in 0..expected {
        open_rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| DemoError::Thread("a client did not start".to_string()))?;
    }
    Ok(())
}

/// Watch the counters while `work` runs, printing the traffic status.
fn with_status<T>(progress: &Progress, counters: &Arc<Counters>, work: impl FnOnce() -> T) -> T {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (progress, counters, done) = (progress.clone(), counters.clone(), done.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(200));
                let secs = progress.started.elapsed().as_secs();
                if secs != last {
                    last = secs;
                    progress.status(&DemoReport::snapshot(&counters).traffic_line(), 5);
                }
            }
        })
    };
    let out = work();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.thread().unpark();
    let _ = watcher.join();
    out
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
    let progress = options.progress.clone();
    let layout = Layout {
        nodes: options.nodes,
        services: options.services,
    };
    let prefix = format!("sycli{}-", std::process::id());
    progress.line(&format!(
        "building {} nodes ({} pods each, plus a client pod) and {} services in network namespaces {prefix}*",
        layout.nodes,
        layout::PODS_PER_NODE,
        layout.services
    ));
    let cluster = rollout::DemoCluster::new(&layout, options.from, options.batch)?;
    let topology = Topology::build(&prefix, &layout)?;
    let mut agents = Vec::new();
    for n in &topology.nodes {
        agents.push(DemoNode::start(&n.node, &Layout::node_name(n.index))?);
    }
    let counters = Arc::new(Counters::default());
    let mut traffic = Traffic {
        clients: Group::new(),
        servers: Group::new(),
    };
    start_servers(&topology, &mut traffic)?;

    cluster.apply_everywhere(&agents, options.from, &progress)?;
    progress.line(
        "starting traffic: long-lived connections (a request every 100 ms), new connections, UDP",
    );
    start_clients(&topology, &layout, &counters, &mut traffic)?;
    let established = Counters::get(&counters.established);
    progress.line(&format!("{established} long-lived connections established"));

    let switches = with_status(&progress, &counters, || {
        std::thread::sleep(options.settle);
        cluster.migrate(&agents, options.from, options.to, options.settle, &progress)
    });
    let mut thread_errors = traffic.stop();
    let mut report = DemoReport::snapshot(&counters);
    progress.line(&report.traffic_line());
    report.from = Some(options.from);
    report.to = Some(options.to);
    report.failures = counters.failures();
    let (switches, phase) = switches?;
    report.switches = switches;
    report.rollout = phase;
    for agent in agents {
        if let Err(e) = agent.remove() {
            thread_errors.push(e);
        }
    }
    report.cleanup_errors = thread_errors;
    drop(topology);
    progress.line("removed every namespace, link and rule the demo created");
    Ok(report)
}
