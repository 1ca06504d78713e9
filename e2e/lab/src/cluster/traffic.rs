//! The workload running in the cluster's namespaces: every server pod's
//! servers (for the cluster's lifetime), and clients — each node's client pod
//! to every cluster IP, the external client to every node port — that count
//! every outcome until they are stopped.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use super::layout::Layout;
use super::topology::Topology;
use super::workload::runtime;
use super::workload::{self, ClientPlan, Counters};
use crate::HarnessError;
use crate::netns::NetnsError;

/// Deadlock guard for servers to bind and clients to open their long-lived connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn thread_err(what: &str, message: impl Into<String>) -> HarnessError {
    HarnessError::Setup {
        what: what.to_string(),
        message: message.into(),
    }
}

/// A thread in a namespace: its work's result, unless it never entered the namespace.
type NsThread = std::thread::JoinHandle<Result<Result<(), String>, NetnsError>>;

/// Threads that run until told to stop.
pub struct Group {
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

    /// Stop every thread and wait for it; what failed.
    pub fn halt(&mut self) -> Vec<String> {
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

impl Drop for Group {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Start every pod's servers; returns once all are listening.
pub fn start_servers(topology: &Topology) -> Result<Group, HarnessError> {
    let mut servers = Group::new();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut expected = 0;
    for n in &topology.nodes {
        for (j, pod_ns) in n.pods.iter().enumerate() {
            let pod = format!("web-{}-{j}", n.index);
            let stop = servers.stop.subscribe();
            let ready = ready_tx.clone();
            servers.threads.push(pod_ns.spawn(&pod.clone(), move || {
                runtime()?.block_on(workload::serve(pod, stop, ready));
                Ok(())
            })?);
            expected += 1;
        }
    }
    for _ in 0..expected {
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(thread_err("a server", e)),
            Err(_) => return Err(thread_err("a server", "did not start")),
        }
    }
    Ok(servers)
}

/// Running clients and what they counted. Stopping lets the requests in
/// flight finish, so stopping is never counted as a failure.
pub struct Clients {
    group: Group,
    counters: Arc<Counters>,
}

impl Clients {
    /// Start every client; returns once their long-lived connections are open.
    pub fn start(topology: &Topology, layout: &Layout) -> Result<Clients, HarnessError> {
        let counters = Arc::new(Counters::default());
        let mut group = Group::new();
        let (pod_http, pod_udp) = layout.pod_targets();
        let (ext_http, ext_udp) = layout.external_targets();
        let mut plans = vec![(
            &topology.external,
            ClientPlan {
                name: "external client".to_string(),
                http: ext_http,
                udp: ext_udp,
            },
        )];
        for n in &topology.nodes {
            plans.push((
                &n.client,
                ClientPlan {
                    name: format!("{} client pod", Layout::node_name(n.index)),
                    http: pod_http.clone(),
                    udp: pod_udp.clone(),
                },
            ));
        }
        let (open_tx, open_rx) = mpsc::channel();
        let expected = plans.len();
        for (ns, plan) in plans {
            let stop = group.stop.subscribe();
            let counters = counters.clone();
            let opened = open_tx.clone();
            group.threads.push(ns.spawn("client", move || {
                runtime()?.block_on(async move {
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
                .recv_timeout(START_TIMEOUT)
                .map_err(|_| thread_err("a client", "did not start"))?;
        }
        Ok(Clients { group, counters })
    }

    /// What the clients have counted so far.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Stop the clients; what they counted and the threads that failed.
    pub fn stop(mut self) -> (Arc<Counters>, Vec<String>) {
        let errors = self.group.halt();
        (self.counters.clone(), errors)
    }
}
