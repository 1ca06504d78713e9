//! The cluster's traffic, made by the lab's one generator
//! ([`crate::traffic`]): every server pod runs a `__serve` process answering
//! on its TCP port (the Services' `http`) and its UDP echo port; each node's client pod runs a `__traffic`
//! stream per service to its cluster IP (TCP and UDP), inside its node's
//! cgroup, where that node's eBPF socket programs act; the external client
//! runs one per node port of every node. Each stream keeps a long-lived
//! connection (or, for UDP, a connected and an unconnected socket) asking
//! every 100 ms and opens a new connection every 100 ms, counting every
//! outcome ([`Counts`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use switchyard_api::ruleset::Protocol;

use super::layout::{ECHO_PORT, HTTP_PORT, Layout, Pod, Target};
use super::processes::Program;
use super::topology::Topology;
use crate::HarnessError;
use crate::probe::Listen;
use crate::traffic::{self, Child, Client, Counts, Stopped, Stream, Streams, Tally};

/// Between two requests of one socket, and two new connections of a stream.
const PERIOD: Duration = Duration::from_millis(100);
/// How long one answer may take before it counts as lost.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Start every pod's servers (`__serve` children of `program`); returns once
/// all are listening.
pub fn start_servers(program: &Program, topology: &Topology) -> Result<Vec<Child>, HarnessError> {
    let mut servers = Vec::new();
    for n in &topology.nodes {
        for (j, pod_ns) in n.pods.iter().enumerate() {
            let index = u8::try_from(j).unwrap_or(u8::MAX);
            let ip = IpAddr::V4(
                Pod {
                    node: n.index,
                    index,
                }
                .ip(),
            );
            let listens = [
                Listen {
                    protocol: Protocol::Tcp,
                    addr: SocketAddr::new(ip, HTTP_PORT),
                },
                Listen {
                    protocol: Protocol::Udp,
                    addr: SocketAddr::new(ip, ECHO_PORT),
                },
            ];
            servers.push(traffic::serve(program, pod_ns, &listens)?);
        }
    }
    Ok(servers)
}

/// The streams of one client: TCP to every `http` target, UDP to every `udp` one.
fn streams_to(source: IpAddr, http: &[Target], udp: &[Target]) -> Vec<(String, Stream)> {
    let tcp = http.iter().map(|t| (Protocol::Tcp, t));
    let udp = udp.iter().map(|t| (Protocol::Udp, t));
    tcp.chain(udp)
        .map(|(protocol, t)| {
            let stream = Stream {
                protocol,
                source,
                dest: t.addr,
                endpoints: t.endpoints.clone(),
                period: PERIOD,
                timeout: TIMEOUT,
                long_lived: 1,
            };
            (format!("{} {}", protocol.as_lower(), t.label), stream)
        })
        .collect()
}

/// Running clients (see the module header).
pub struct Clients {
    streams: Streams,
}

impl Clients {
    /// Start every client as `__traffic` children of `program`, node `i`'s
    /// client pod in `cgroups[i]`; returns once their long-lived connections
    /// are open.
    pub fn start(
        program: &Program,
        topology: &Topology,
        layout: &Layout,
        cgroups: &[PathBuf],
    ) -> Result<Clients, HarnessError> {
        let (pod_http, pod_udp) = layout.pod_targets();
        let (ext_http, ext_udp) = layout.external_targets();
        let external = IpAddr::V4(Layout::external_client_ip());
        let mut clients: Vec<Client<'_>> = streams_to(external, &ext_http, &ext_udp)
            .into_iter()
            .map(|(name, stream)| Client {
                name: format!("external client: {name}"),
                netns: &topology.external,
                cgroup: None,
                stream,
            })
            .collect();
        for n in &topology.nodes {
            let source = IpAddr::V4(Layout::client_pod_ip(n.index));
            let cgroup = cgroups.get(usize::from(n.index)).cloned();
            let node = Layout::node_name(n.index);
            clients.extend(streams_to(source, &pod_http, &pod_udp).into_iter().map(
                |(name, stream)| Client {
                    name: format!("{node} client pod: {name}"),
                    netns: &n.client,
                    cgroup: cgroup.clone(),
                    stream,
                },
            ));
        }
        Ok(Clients {
            streams: Streams::start(program, clients)?,
        })
    }

    /// What the clients have counted so far.
    pub fn counts(&self) -> Counts {
        self.streams.tally().total()
    }

    /// A handle on their counts, for a live display.
    pub fn tally(&self) -> Tally {
        self.streams.tally()
    }

    /// Stop the clients; what they counted.
    pub fn stop(self) -> Stopped {
        self.streams.stop()
    }
}
