//! The real kube-proxy of the pinned release, run inside a node namespace of
//! the lab: its flags (the scenario node's settings, nothing that reaches
//! the host: `--conntrack-max-per-core=0` and both TCP conntrack timeouts 0
//! leave every sysctl of the host alone; healthz and metrics listen on the
//! node's own address inside the namespace), and the wait until it has
//! programmed a state, read from its own metrics.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_api::Mode;

use super::state::Changes;
use crate::HarnessError;
use crate::controlplane::process::{Daemon, Launch, log_tail};
use crate::metrics::{Histogram, fetch, series};
use crate::netns::Netns;
use crate::scenario::NodeSpec;

const METRICS_PORT: u16 = 10249;
/// `/healthz`, which the agent takes over once kube-proxy is gone.
pub const HEALTHZ_PORT: u16 = 10256;
/// Deadlock guard for a sync (kube-proxy syncs in milliseconds here, but a
/// two-core machine busy building stretches that).
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// kube-proxy's metrics the harness reads: watch events taken in (one
/// count per family's proxier for a Service, one for an EndpointSlice, which
/// only its family's proxier takes); per family, syncs completed (the
/// histogram's count, observed after stale conntrack entries are deleted),
/// when a sync was last asked for and when one last programmed the rules.
const SERVICE_CHANGES: &str = "kubeproxy_sync_proxy_rules_service_changes_total";
const ENDPOINT_CHANGES: &str = "kubeproxy_sync_proxy_rules_endpoint_changes_total";
const SYNCS: &str = "kubeproxy_sync_proxy_rules_duration_seconds_count";
const QUEUED: &str = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds";
const PROGRAMMED: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
/// How long full and partial syncs took (the benches' figures), of IPv4's proxier.
const FULL_SYNCS: &str = "kubeproxy_sync_full_proxy_rules_duration_seconds";
const PARTIAL_SYNCS: &str = "kubeproxy_sync_partial_proxy_rules_duration_seconds";
const IPV4: &str = "ip_family=\"IPv4\"";
/// kube-proxy runs a proxier per family the kernel has: both, here.
const FAMILIES: usize = 2;

/// A running kube-proxy; killed on drop (and by the cleanup registry).
pub struct KubeProxy {
    daemon: Daemon,
    metrics: SocketAddr,
    /// Deadlock guard of every wait ([`SYNC_TIMEOUT`] unless set).
    timeout: Duration,
}

/// One reading of kube-proxy's metrics.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub service_changes: u64,
    pub endpoint_changes: u64,
    /// Completed syncs by family.
    syncs: BTreeMap<String, u64>,
    queued: BTreeMap<String, f64>,
    programmed: BTreeMap<String, f64>,
    /// IPv4's full and partial syncs.
    pub full: Histogram,
    pub partial: Histogram,
}

impl Counters {
    /// IPv4's rules were programmed by a sync asked for after every earlier request.
    pub fn ipv4_programmed(&self) -> bool {
        let queued = self.queued.get(IPV4).copied().unwrap_or(f64::MAX);
        self.programmed.get(IPV4).copied().unwrap_or(0.0) >= queued
    }

    fn has(&self, changes: Changes, families: u64) -> bool {
        self.syncs.len() == FAMILIES
            && self.service_changes >= families * changes.services
            && self.endpoint_changes >= changes.endpoint_slices
    }
}

fn setup(what: &str, message: impl ToString) -> HarnessError {
    HarnessError::Setup {
        what: what.to_string(),
        message: message.to_string(),
    }
}

/// kube-proxy's flags for the scenario node.
fn args(mode: Mode, node: &NodeSpec, node_ip: IpAddr, kubeconfig: &Path) -> Vec<String> {
    let mut args = vec![
        format!("--proxy-mode={mode}"),
        format!("--hostname-override={}", node.name),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        format!(
            "--healthz-bind-address={}",
            SocketAddr::new(node_ip, HEALTHZ_PORT)
        ),
        format!(
            "--metrics-bind-address={}",
            SocketAddr::new(node_ip, METRICS_PORT)
        ),
        // Every change synced at once (the iptables and nftables modes; the
        // ipvs mode's own flag below).
        "--iptables-min-sync-period=0".into(),
        "--oom-score-adj=0".into(),
        "--v=2".into(),
    ];
    if mode == Mode::Ipvs {
        args.push("--ipvs-min-sync-period=0".into());
    }
    if !node.cluster_cidrs.is_empty() {
        let cidrs: Vec<String> = node.cluster_cidrs.iter().map(ToString::to_string).collect();
        args.push(format!("--cluster-cidr={}", cidrs.join(",")));
        args.push("--detect-local-mode=ClusterCIDR".into());
    }
    if let Some(cidrs) = &node.node_port_addresses {
        let cidrs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        args.push(format!("--nodeport-addresses={}", cidrs.join(",")));
    }
    if node.masquerade_all {
        args.push("--masquerade-all".into());
    }
    if let Some(v) = node.localhost_node_ports {
        args.push(format!("--iptables-localhost-nodeports={v}"));
    }
    args
}

impl KubeProxy {
    /// Start `program` (kube-proxy) in `ns` as `node`; `dir` holds its log.
    pub fn start(
        program: &Path,
        dir: &Path,
        mode: Mode,
        node: &NodeSpec,
        node_ip: IpAddr,
        kubeconfig: &Path,
        ns: &Netns,
    ) -> Result<KubeProxy, HarnessError> {
        let launch = Launch {
            name: "kube-proxy",
            program: program.to_path_buf(),
            args: args(mode, node, node_ip, kubeconfig),
            cwd: dir.to_path_buf(),
            log: dir.join(format!("kube-proxy-{}.log", ns.name())),
            netns: Some(ns.open()?),
            cgroup: None,
            env: Vec::new(),
        };
        Ok(KubeProxy {
            daemon: Daemon::start(launch)?,
            metrics: SocketAddr::new(node_ip, METRICS_PORT),
            timeout: SYNC_TIMEOUT,
        })
    }

    pub fn log(&self) -> &Path {
        self.daemon.log()
    }

    /// A longer deadlock guard, for states far larger than a scenario's.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The process, for its memory.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// kube-proxy's `/metrics`, fetched from inside `ns`.
    pub fn metrics(&self, ns: &Netns) -> Result<String, HarnessError> {
        fetch(ns, self.metrics, "kube-proxy")
    }

    /// Kill it, as deleting its pod does: its rules stay in the kernel.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    pub fn counters(&self, ns: &Netns) -> Result<Counters, HarnessError> {
        let text = self.metrics(ns)?;
        // Counters are whole numbers; truncation is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = |v: f64| v as u64;
        let total = |name: &str| whole(series(&text, name).values().sum());
        Ok(Counters {
            service_changes: total(SERVICE_CHANGES),
            endpoint_changes: total(ENDPOINT_CHANGES),
            syncs: series(&text, SYNCS)
                .into_iter()
                .map(|(labels, v)| (labels, whole(v)))
                .collect(),
            queued: series(&text, QUEUED),
            programmed: series(&text, PROGRAMMED),
            full: Histogram::read(&text, FULL_SYNCS, IPV4),
            partial: Histogram::read(&text, PARTIAL_SYNCS, IPV4),
        })
    }

    /// Wait until kube-proxy has taken in the watch events of `changes`
    /// more than `before` counted, in every family's proxier; what it then counts.
    pub fn wait_taken_in(
        &mut self,
        ns: &Netns,
        before: &Counters,
        changes: Changes,
    ) -> Result<Counters, HarnessError> {
        let families = u64::try_from(FAMILIES).unwrap_or(2);
        let want = Changes {
            services: before.service_changes / families + changes.services,
            endpoint_slices: before.endpoint_changes + changes.endpoint_slices,
        };
        self.wait_until(
            ns,
            &format!("{changes:?} taken in after {before:?}"),
            |seen| seen.has(want, families),
        )
    }

    /// Wait until every family has completed a sync asked for after
    /// `taken_in` was read (the harness's nudge, see `ClusterState::nudge`):
    /// once the nudge is taken in, a family is synced when it has completed
    /// a sync since `taken_in` and its rules were last programmed after its
    /// last request. A sync that began before the stage's changes were all
    /// taken in and programmed its rules only after the nudge was queued
    /// could pass for it (one sync that outlasts an API write and two
    /// metrics reads, as syncs under emulation do): the caller nudges twice
    /// (see `ReferenceNode::apply`). Returns what it last read.
    pub fn wait_synced(
        &mut self,
        ns: &Netns,
        taken_in: &Counters,
        nudge: Changes,
    ) -> Result<Counters, HarnessError> {
        self.wait_taken_in(ns, taken_in, nudge)?;
        self.wait_until(ns, "sync after the nudge", |seen| {
            taken_in.syncs.iter().all(|(family, n)| {
                let synced = seen.syncs.get(family).is_some_and(|m| m > n);
                let queued = seen.queued.get(family).copied().unwrap_or(f64::MAX);
                let programmed = seen.programmed.get(family).copied().unwrap_or(0.0);
                synced && programmed >= queued
            })
        })
    }

    /// Read the metrics until `done` holds, within the timeout.
    pub fn wait_until(
        &mut self,
        ns: &Netns,
        what: &str,
        done: impl Fn(&Counters) -> bool,
    ) -> Result<Counters, HarnessError> {
        let began = Instant::now();
        loop {
            self.daemon.check_running(&format!("waiting for {what}"))?;
            // Not up yet (a first start): treated as nothing seen.
            let seen = self.counters(ns).unwrap_or_default();
            if done(&seen) {
                return Ok(seen);
            }
            if began.elapsed() > self.timeout {
                return Err(setup(
                    "kube-proxy sync",
                    format!(
                        "no {what} after {:?} (saw {seen:?}); the end of {}:\n{}",
                        began.elapsed(),
                        self.log().display(),
                        log_tail(self.log())
                    ),
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}
