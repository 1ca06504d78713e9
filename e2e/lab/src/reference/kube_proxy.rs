//! The real kube-proxy of the pinned release, run inside a node namespace of
//! the lab: its flags (the scenario node's settings, nothing that reaches
//! the host: `--conntrack-max-per-core=0` and both TCP conntrack timeouts 0
//! leave every sysctl of the host alone; healthz and metrics listen on the
//! node's own address inside the namespace), and the wait until it has
//! programmed a state, read from its own metrics.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_api::Mode;

use super::state::Changes;
use crate::HarnessError;
use crate::controlplane::binaries::Binaries;
use crate::controlplane::process::{Daemon, Launch};
use crate::netns::Netns;
use crate::scenario::NodeSpec;

const METRICS_PORT: u16 = 10249;
const HEALTHZ_PORT: u16 = 10256;
/// Deadlock guard for a sync (kube-proxy syncs in milliseconds here, but a
/// two-core machine busy building stretches that).
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// kube-proxy's counters and gauges the harness reads.
const SERVICE_CHANGES: &str = "kubeproxy_sync_proxy_rules_service_changes_total";
const ENDPOINT_CHANGES: &str = "kubeproxy_sync_proxy_rules_endpoint_changes_total";
const SERVICE_PENDING: &str = "kubeproxy_sync_proxy_rules_service_changes_pending";
const ENDPOINT_PENDING: &str = "kubeproxy_sync_proxy_rules_endpoint_changes_pending";
const LAST_SYNC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";

/// A running kube-proxy; killed on drop (and by the cleanup registry).
pub struct KubeProxy {
    daemon: Daemon,
    metrics: SocketAddr,
}

/// One reading of kube-proxy's metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub changes: Changes,
    pending: f64,
    last_sync: f64,
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
        format!("--healthz-bind-address={}", SocketAddr::new(node_ip, HEALTHZ_PORT)),
        format!("--metrics-bind-address={}", SocketAddr::new(node_ip, METRICS_PORT)),
        // Every change synced at once; a periodic sync bounds the wait for a
        // sync that ends after the harness looked (see `wait_synced`).
        "--iptables-min-sync-period=0".into(),
        "--iptables-sync-period=1s".into(),
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
        let addr = self.metrics;
        let fetched = ns.run(move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: kube-proxy\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })?;
        fetched.map_err(|e| setup("kube-proxy /metrics", e))
    }

    pub fn counters(&self, ns: &Netns) -> Result<Counters, HarnessError> {
        let text = self.metrics(ns)?;
        let value = |name: &str| metric(&text, name).unwrap_or(0.0);
        // Counters are whole numbers; truncation is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = |name: &str| value(name) as u64;
        Ok(Counters {
            changes: Changes {
                services: whole(SERVICE_CHANGES),
                endpoint_slices: whole(ENDPOINT_CHANGES),
            },
            pending: value(SERVICE_PENDING) + value(ENDPOINT_PENDING),
            last_sync: value(LAST_SYNC),
        })
    }

    /// Wait until kube-proxy has received `changes` more watch events than
    /// `before` counted and a sync has ended since they were all taken in:
    /// once nothing is pending, the sync that took the last change has
    /// started; syncs run one at a time, so any sync that ends later
    /// includes it (the periodic sync ends one soon if it had ended before).
    pub fn wait_synced(
        &mut self,
        ns: &Netns,
        before: Counters,
        changes: Changes,
    ) -> Result<Duration, HarnessError> {
        let began = Instant::now();
        let mut taken_in: Option<f64> = None;
        loop {
            self.daemon.check_running("waiting for it to sync")?;
            let now = unix_now();
            // Not up yet (a first start): treated as nothing seen.
            let seen = self.counters(ns).unwrap_or_default();
            let received = seen.changes.services >= before.changes.services + changes.services
                && seen.changes.endpoint_slices
                    >= before.changes.endpoint_slices + changes.endpoint_slices;
            match taken_in {
                Some(t) if seen.last_sync >= t => return Ok(began.elapsed()),
                None if received && seen.pending == 0.0 && seen.last_sync > 0.0 => {
                    taken_in = Some(now);
                }
                _ => {}
            }
            if began.elapsed() > SYNC_TIMEOUT {
                return Err(setup(
                    "kube-proxy sync",
                    format!(
                        "not synced after {:?} (wanted {changes:?} more changes than {before:?}, \
                         saw {seen:?}); see {}",
                        began.elapsed(),
                        self.log().display()
                    ),
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The sum of every series of metric `name` in Prometheus' text format.
fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn a_metric_sums_its_series_and_ignores_longer_names() {
        let text = "# HELP x y\nkubeproxy_a 2\nkubeproxy_a{f=\"1\"} 3\nkubeproxy_ab 7\n";
        assert_eq!(metric(text, "kubeproxy_a"), Some(5.0));
        assert_eq!(metric(text, "kubeproxy_b"), None);
    }
}
