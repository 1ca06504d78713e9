//! Helpers of the tests on a lab cluster (`switchyard_lab::cluster`): one
//! started with Switchyard's own binaries, waits on the pool's status and on
//! the ProxyNodes, kubectl's tables read as rows, and the checks every such
//! test ends with (no refused request, nothing left behind).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{Api, ResourceExt};
use switchyard_api::proxyconfig::ProxyConfigStatus;
use switchyard_api::{Mode, ProxyConfig, ProxyNode};
use switchyard_lab::cluster::layout::{Layout, PROXY_CONFIG};
use switchyard_lab::cluster::traffic::Clients;
use switchyard_lab::cluster::wait::until;
use switchyard_lab::cluster::{Cluster, ClusterOptions};
use switchyard_lab::controlplane::workdir::Purpose;
use switchyard_operator::plan::node_state;

/// Deadlock guard of every wait (a mode switch takes well under a second;
/// a loaded two-core machine can stretch that a lot).
pub const CONVERGE: Duration = Duration::from_secs(120);

/// A cluster of `nodes` nodes and `services` services with `operators`
/// replicas of the `switchyard-operator` binary and the `node-agent` binary.
pub async fn start(nodes: u8, services: u8, operators: u8) -> Cluster {
    let began = Instant::now();
    let mut options = ClusterOptions::new(
        Layout { nodes, services },
        super::switchyard_programs(),
        Purpose::Test,
    );
    options.operators = operators;
    let cluster = Cluster::start(options)
        .await
        .unwrap_or_else(|e| panic!("starting the cluster: {e}"));
    println!(
        "cluster up in {:.1?} ({:.1?} with the build check)",
        cluster.started_in(),
        began.elapsed()
    );
    cluster
}

/// `kubectl wait --for=condition=CONDITION proxyconfig/…` started now and run
/// beside the test: the pool's ProxyConfig as kubectl saw it when the
/// condition held for the current generation (`-o json`). The process is
/// killed when the handle or the test's runtime goes.
pub fn kubectl_wait(cluster: &Cluster, condition: &str) -> tokio::task::JoinHandle<ProxyConfig> {
    let mut command = tokio::process::Command::from(cluster.kubectl().command(&[
        "wait",
        &format!("--for=condition={condition}"),
        &format!("proxyconfig/{PROXY_CONFIG}"),
        "--timeout=600s",
        "-o",
        "json",
    ]));
    command
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let condition = condition.to_string();
    tokio::spawn(async move {
        let out = command.output().await.unwrap();
        assert!(
            out.status.success(),
            "kubectl wait --for=condition={condition}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

/// Wait until `check` passes on the pool's ProxyConfig status.
pub async fn pool_until<T>(
    cluster: &Cluster,
    what: &str,
    mut check: impl FnMut(&ProxyConfigStatus) -> Result<T, String>,
) -> T {
    until(
        Api::<ProxyConfig>::all(cluster.client()),
        what,
        CONVERGE,
        |configs| {
            let config = configs
                .iter()
                .find(|c| c.name_any() == PROXY_CONFIG)
                .ok_or("no ProxyConfig")?;
            check(&config.status.clone().unwrap_or_default())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Wait until `check` passes on the ProxyNodes (sorted by name).
pub async fn nodes_until<T>(
    cluster: &Cluster,
    what: &str,
    mut check: impl FnMut(&[Arc<ProxyNode>]) -> Result<T, String>,
) -> T {
    until(
        Api::<ProxyNode>::all(cluster.client()),
        what,
        CONVERGE,
        |nodes| {
            let mut sorted = nodes.to_vec();
            sorted.sort_by_key(|n| n.name_any());
            check(&sorted)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The agent reports `mode` applied, verified and Ready: what the operator's
/// rollout waits for.
pub fn settled_on(node: &ProxyNode, mode: Mode) -> bool {
    node_state(&node.name_any(), Some(node)).settled_on(mode)
}

/// Every node of the pool settled on `mode`, and the pool's status says so.
pub async fn all_on(cluster: &Cluster, mode: Mode) {
    let nodes = usize::from(cluster.layout().nodes);
    nodes_until(cluster, &format!("every node settled on {mode}"), |all| {
        let settled = all.iter().filter(|n| settled_on(n, mode)).count();
        (settled == nodes)
            .then_some(())
            .ok_or_else(|| format!("{settled} of {nodes} settled: {}", summary(all)))
    })
    .await;
}

/// The replica holding the Lease, once one other than `not` does.
pub async fn leader_other_than(cluster: &Cluster, not: Option<&str>) -> String {
    let deadline = Instant::now() + CONVERGE;
    loop {
        if let Some(holder) = cluster.leader().await.unwrap()
            && Some(holder.as_str()) != not
        {
            return holder;
        }
        assert!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGKILL the replica `leader` (no chance to release the Lease); the replica
/// that takes the Lease over, and how long that took.
pub async fn kill_the_leader(cluster: &mut Cluster, leader: &str) -> (String, Duration) {
    let killed = Instant::now();
    cluster
        .operators_mut()
        .iter_mut()
        .find(|o| o.pod() == leader)
        .expect("the leader is a replica")
        .kill();
    let next = leader_other_than(cluster, Some(leader)).await;
    (next, killed.elapsed())
}

/// `node target/applied` of each ProxyNode, for messages.
pub fn summary(nodes: &[Arc<ProxyNode>]) -> String {
    nodes
        .iter()
        .map(|n| {
            let applied = n.status.as_ref().and_then(|s| s.applied_mode);
            format!("{} {:?}/{:?}", n.name_any(), n.spec.target_mode, applied)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `kubectl patch proxyconfig <pool> --type=merge -p <patch>`.
pub fn patch_pool(cluster: &Cluster, patch: &str) {
    let out = cluster
        .patch_proxy_config(patch)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("patched"), "{out}");
}

/// The clients saw every request answered, by an endpoint of its service,
/// and every client process ended well.
pub fn nothing_lost(clients: Clients, during: &str) {
    let stopped = clients.stop();
    assert_eq!(stopped.errors, Vec::<String>::new());
    let c = stopped.total;
    println!(
        "traffic {during}: {} long-lived connections, {} requests on them, {} new connections, {} UDP",
        c.established, c.exchanges, c.new, c.udp_sent
    );
    assert!(c.exchanges > 0 && c.udp_sent > 0);
    let lost = [
        ("failed", c.new_failed),
        ("dropped", c.dropped),
        ("wrong address", c.wrong_address),
        ("UDP lost", c.udp_lost),
    ];
    assert!(
        lost.iter().all(|(_, n)| *n == 0),
        "{lost:?} {during}: {:#?}",
        stopped.failures
    );
}

/// A kubectl table as rows of cells (the header first).
pub fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The end of every cluster test: Switchyard's identities were never refused
/// (their logs and the API server's audit log), and stopping the cluster
/// leaves nothing behind.
pub fn finish(cluster: Cluster) {
    for log in cluster.logs() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let name = log
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for line in text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        {
            println!("{name}: {line}");
        }
    }
    assert_eq!(
        cluster.refusals_logged(),
        Vec::<String>::new(),
        "an operator or agent was refused a request (its log)"
    );
    let audited = cluster.refusals_audited().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        audited,
        Vec::<String>::new(),
        "an operator or agent was refused a request (the audit log)"
    );
    let stopping = Instant::now();
    let left = cluster.shutdown();
    println!("cluster stopped in {:.1?}", stopping.elapsed());
    assert_eq!(left, Vec::<String>::new(), "left behind");
}
