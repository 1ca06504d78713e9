//! The real kube-proxy of the pinned release, run inside a node namespace of
//! the lab: its flags (the scenario node's settings, nothing that reaches
//! the host: `--conntrack-max-per-core=0` and both TCP conntrack timeouts 0
//! leave every sysctl of the host alone; healthz and metrics listen on the
//! node's own address inside the namespace), and the wait until it has
//! programmed a state, read from its own metrics.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_api::Mode;

use super::state::Changes;
use crate::HarnessError;
use crate::controlplane::binaries::Binaries;
use crate::controlplane::process::{Daemon, Launch, log_tail};
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
/// kube-proxy runs a proxier per family the kernel has: both, here.
const FAMILIES: usize = 2;

/// A running kube-proxy; killed on drop (and by the cleanup registry).
pub struct KubeProxy {
    daemon: Daemon,
    metrics: SocketAddr,
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
}

impl Counters {
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
        // Every change synced at once.
        "--iptables-min-sync-period=0".into(),
        "--oom-score-adj=0".into(),
        "--v=2".into(),
    ];
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
    /// Start kube-proxy in `ns` as `node`; `dir` holds its log.
    pub fn start(
        binaries: &Binaries,
        dir: &Path,
        mode: Mode,
        node: &NodeSpec,
        node_ip: IpAddr,
        kubeconfig: &Path,
        ns: &Netns,
    ) -> Result<KubeProxy, HarnessError> {
        let launch = Launch {
            name: "kube-proxy",
            program: binaries.path("kube-proxy"),
            args: args(mode, node, node_ip, kubeconfig),
            cwd: dir.to_path_buf(),
            log: dir.join(format!("kube-proxy-{}.log", ns.name())),
            netns: Some(ns.open()?),
            env: Vec::new(),
        };
        Ok(KubeProxy {
            daemon: Daemon::start(launch)?,
            metrics: SocketAddr::new(node_ip, METRICS_PORT),
        })
    }

    pub fn log(&self) -> &Path {
        self.daemon.log()
    }

    /// kube-proxy's `/metrics`, fetched from inside `ns`.
    pub fn metrics(&self, ns: &Netns) -> Result<String, HarnessError> {
        http_get(ns, self.metrics, "/metrics").map_err(|e| setup("kube-proxy /metrics", e))
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
        self.poll(
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
    /// could pass for it; that needs one sync to outlast an API write and
    /// two metrics reads.
    pub fn wait_synced(
        &mut self,
        ns: &Netns,
        taken_in: &Counters,
        nudge: Changes,
    ) -> Result<(), HarnessError> {
        self.wait_taken_in(ns, taken_in, nudge)?;
        self.poll(ns, "sync after the nudge", |seen| {
            taken_in.syncs.iter().all(|(family, n)| {
                let synced = seen.syncs.get(family).is_some_and(|m| m > n);
                let queued = seen.queued.get(family).copied().unwrap_or(f64::MAX);
                let programmed = seen.programmed.get(family).copied().unwrap_or(0.0);
                synced && programmed >= queued
            })
        })?;
        Ok(())
    }

    /// Read the metrics until `done` holds, within [`SYNC_TIMEOUT`].
    fn poll(
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
            if began.elapsed() > SYNC_TIMEOUT {
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

/// The whole answer (status line, headers, body) to `GET path` of `addr`,
/// asked from inside `ns`.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    ns.run(move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })
    .map_err(std::io::Error::other)
    .and_then(|fetched| fetched)
}

/// Every series of metric `name` in Prometheus' text format, by its labels.
fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ").unwrap_or(("", "")),
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            found.insert(labels.to_string(), v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::series;

    #[test]
    fn series_are_keyed_by_labels_and_longer_names_ignored() {
        let text = "# HELP x y\nkubeproxy_a 2\nkubeproxy_a{f=\"1\"} 3\nkubeproxy_ab 7\n";
        let a = series(text, "kubeproxy_a");
        assert_eq!(a.len(), 2);
        assert_eq!(a.values().sum::<f64>(), 5.0);
        assert_eq!(a.get("f=\"1\""), Some(&3.0));
        assert!(series(text, "kubeproxy_b").is_empty());
    }
}
