//! A node taken over from a running kube-proxy, by the README's runbook
//! "Moving a pool off kube-proxy, and back", step for step: the matrix's
//! node (its namespaces, servers and traffic) is run by the real kube-proxy
//! of the pinned release (a [`Reference`] node, the state written through
//! the API server), with a foreign iptables chain and nftables table beside
//! its rules; traffic starts; then
//!
//! 1. Switchyard is installed (`config/base`, the operator, the node's
//!    agent) with no ProxyConfig: the agent waits;
//! 2. kube-proxy is stopped, as the DaemonSet's node affinity makes its pod
//!    go: its rules stay and carry the traffic;
//! 3. the pool's ProxyConfig is applied; the node's switch is verified (the
//!    ProxyNode watched), kube-proxy's objects are gone, and the agent
//!    serves `/healthz` on kube-proxy's port.
//!
//! The traffic runs on a while and every loss is counted, as for a switch
//! between our modes; the foreign objects must still be there. Into eBPF,
//! kube-proxy's objects go once the connections they translated closed (the
//! agent's drain; checked after the traffic stopped), and the agent runs with
//! a scratch bpffs and cgroup ([`EbpfHooks`]) that it and the node's own
//! clients (the node, its pods) are in, never the host's root cgroup. From
//! kube-proxy's ipvs mode its virtual servers and `kube-ipvs0` go the same
//! way (the agent retires them as its own ipvs mode's).
//!
//! kube-proxy's ipvs mode runs in the stock-kernel VM: the control plane
//! stays on the host and everything else (kube-proxy, the operator, the
//! agent, the traffic) runs in the guest, which reaches the host's API
//! server ([`crate::reference::vm`]); these steps are the same there, on
//! the API server as [`crate::controlplane::access::ApiAccess`] gives it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams};
use switchyard_api::proxynode::SwitchStep;
use switchyard_api::{Mode, ProxyNode};

use super::{Pair, Row, Source, Timing, matrix, prefix, setup, start_traffic, stop_traffic};
use crate::HarnessError;
use crate::cluster::ClusterError;
use crate::cluster::layout::{POOL, POOL_LABEL, pool_proxy_config};
use crate::cluster::processes::{Agent, LeaseTiming, Operator, Programs};
use crate::cluster::wait::until;
use crate::controlplane::process::log_tail;
use crate::ebpf::EbpfHooks;
use crate::hooks::ModeHooks;
use crate::metrics::http_get;
use crate::netns::Netns;
use crate::reference::kube_proxy::HEALTHZ_PORT;
use crate::reference::rules::Dump;
use crate::reference::{Reference, ReferenceNode};
use crate::runner;
use crate::scenario::{NodeSpec, Scenario};
use crate::topology::Topology;
use switchyard_dataplane::ipvs::DUMMY_INTERFACE;
use switchyard_dataplane::kubeproxy::KUBE_PROXY_TABLE;

/// The ProxyConfig's verification: the matrix's Service `web` (port 80).
const VERIFY_SERVICE: &str = "mig/web";
/// How often the agent's `/healthz` is asked for while it binds the port,
/// and the node's tables listed while kube-proxy's objects drain.
const POLL: Duration = Duration::from_millis(50);
/// How long kube-proxy's objects may outlive the traffic in an adoption
/// into eBPF: they stay while a connection they translated is established
/// (`switchyard_dataplane::nat_drain`), and the agent looks every
/// `switchyard_agent::sync::DRAIN_CHECK` whether that ended. Into the other
/// modes they are gone when the switch is done.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);
/// The operator's leader election (one replica: it leads at once).
const LEASE: LeaseTiming = LeaseTiming {
    lease: 6,
    renew_deadline: 4,
    retry_period: 1,
};

/// Objects of another owner in the node namespace, which nothing may touch.
const FOREIGN_CHAIN: &str = "FOREIGN-ADOPTION";
const FOREIGN_TABLE: &str = "foreign_adoption";

/// Run the adoption of `pair` (kube-proxy in mode `from`).
pub(super) fn run(
    pair: Pair,
    from: Mode,
    index: usize,
    timing: Timing,
    programs: &Programs,
) -> Result<Row, HarnessError> {
    let scenario = matrix()?;
    let stage = scenario
        .stages()
        .into_iter()
        .next()
        .ok_or_else(|| setup("no stage"))?;
    let topo = Topology::build(&prefix(index), &scenario)?;
    // Dropped after the agent and the traffic, which run in its cgroup.
    let ebpf = ebpf_hooks(pair.to, &topo, &scenario)?;
    let mut reference = Reference::start(from)?;
    let mut node = reference.node(&scenario, topo)?;
    node.last_node();
    let _servers = runner::start_servers(&node.topology, &scenario, false)?;
    node.apply(&stage)?;
    let ns = &node.topology.node;
    add_foreign(ns)?;
    let hooks: Vec<&dyn ModeHooks> = ebpf.iter().map(|h| h as &dyn ModeHooks).collect();
    let streams = start_traffic(&node.topology, &scenario, &hooks, timing)?;
    std::thread::sleep(timing.before);
    let taken_over = take_over(
        &mut node,
        &scenario.node,
        pair,
        programs,
        ebpf.as_ref(),
        timing.rollout,
    );
    std::thread::sleep(timing.after);
    let counts = stop_traffic(streams, pair);
    let ns = &node.topology.node;
    let agent_log = taken_over
        .as_ref()
        .ok()
        .map(|done| done.agent.log().to_path_buf());
    let (switched, after) = match taken_over {
        Ok(done) => (Ok(done.switch_time), leftovers_gone(ns, from, pair.to)),
        Err(e) => (Err(e), Ok(())),
    };
    let row = Row::of(pair, switched, counts, after);
    if let Some(log) = agent_log.filter(|_| !row.passed()) {
        // Its directory goes with the control plane (or the VM).
        eprintln!("{pair}: the end of {}:\n{}", log.display(), log_tail(&log));
    }
    Ok(row)
}

/// For an adoption into eBPF, its scratch bpffs and client cgroup (never the
/// host's root cgroup): the agent pins and attaches there, and the node's
/// own clients (the node, its pods) run in the cgroup from the start, as
/// everything on a real node runs below the cgroup root.
fn ebpf_hooks(
    to: Mode,
    topo: &Topology,
    scenario: &Scenario,
) -> Result<Option<EbpfHooks>, HarnessError> {
    if to != Mode::Ebpf {
        return Ok(None);
    }
    let mut hooks = EbpfHooks::default();
    hooks.prepare_node(topo, scenario)?;
    Ok(Some(hooks))
}

/// Switchyard's processes on the node once it took over, and how long the
/// switch took (from the ProxyConfig's apply until the node settled).
struct TakenOver {
    switch_time: Duration,
    _operator: Operator,
    agent: Agent,
}

/// The runbook's three steps (see the module header).
fn take_over(
    node: &mut ReferenceNode<'_>,
    spec: &NodeSpec,
    pair: Pair,
    programs: &Programs,
    ebpf: Option<&EbpfHooks>,
    rollout: Duration,
) -> Result<TakenOver, HarnessError> {
    let (name, to) = (spec.name.as_str(), pair.to);
    // Never an agent that could attach to the host's root cgroup.
    let place = ebpf.and_then(EbpfHooks::agent_place);
    if to == Mode::Ebpf && place.is_none() {
        return Err(setup("eBPF needs a scratch bpffs and cgroup for the agent"));
    }
    let cluster_cidr = spec
        .cluster_cidrs
        .first()
        .map(ToString::to_string)
        .ok_or_else(|| setup("the matrix node has no cluster CIDR"))?;
    // 1. Switchyard installed, no ProxyConfig for the pool.
    let cp = node.api();
    cp.kubectl().install(&cp.config_base())?;
    let ns = &node.topology.node;
    let (operator, agent) = node
        .block_on(async {
            label_pool(cp.client(), name).await?;
            let operator = Operator::start(cp, ns, 0, name, &programs.operator, LEASE).await?;
            let agent = Agent::start_beside(cp, ns, name, &programs.agent, place.as_ref()).await?;
            Ok::<_, ClusterError>((operator, agent))
        })
        .map_err(cluster_err)?;
    // 2. kube-proxy off the node.
    node.stop_kube_proxy();
    // 3. The pool's ProxyConfig.
    let cp = node.api();
    let began = Instant::now();
    let config = pool_proxy_config(to, 1, &cluster_cidr, VERIFY_SERVICE);
    crate::cluster::apply_proxy_config(cp, &config).map_err(cluster_err)?;
    let verified = node
        .block_on(settled(cp.client(), name, to, rollout))
        .map_err(cluster_err)?;
    let switch_time = began.elapsed();
    // Set against the traffic children's failure lines (same clock).
    eprintln!(
        "{name}: switch to {to} finished at {} ms",
        crate::traffic::stream::unix_millis()
    );
    // kube-proxy's iptables and ipvs layouts are our modes' (the chains'
    // names, the IPVS objects): into the same mode ours writes over them,
    // no switch, nothing to verify beside them.
    let same_layout =
        pair.from == Source::KubeProxy(to) && matches!(to, Mode::Iptables | Mode::Ipvs);
    if !verified && !same_layout {
        return Err(setup(&format!(
            "{name} settled on {to} without a verified switch"
        )));
    }
    let node_ip = node
        .topology
        .node_addresses
        .first()
        .map(|a| a.ip)
        .ok_or_else(|| setup("the node has no address"))?;
    let healthz = SocketAddr::new(node_ip, HEALTHZ_PORT);
    healthz_served(&node.topology.node, healthz, rollout)?;
    Ok(TakenOver {
        switch_time,
        _operator: operator,
        agent,
    })
}

fn cluster_err(e: ClusterError) -> HarnessError {
    setup(&e.to_string())
}

/// Put Node `name` into the pool, as the runbook's label does.
async fn label_pool(client: kube::Client, name: &str) -> Result<(), ClusterError> {
    let label = serde_json::json!({"metadata": {"labels": {POOL_LABEL: POOL}}});
    Api::<k8s_openapi::api::core::v1::Node>::all(client)
        .patch(name, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .map(|_| ())
        .map_err(|source| ClusterError::Api {
            operation: format!("label Node {name} into pool {POOL}"),
            source,
        })
}

/// Wait until ProxyNode `name` has settled on `to` (targeted, applied, no
/// switch under way, Ready); whether a switch to `to` was seen verifying.
async fn settled(
    client: kube::Client,
    name: &str,
    to: Mode,
    timeout: Duration,
) -> Result<bool, ClusterError> {
    let mut verifying = false;
    until(
        Api::<ProxyNode>::all(client),
        &format!("ProxyNode {name} settled on {to}"),
        timeout,
        move |all| {
            let node = all
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(name))
                .ok_or("no ProxyNode yet")?;
            let status = node.status.clone().unwrap_or_default();
            let switch = status.switch.as_ref();
            verifying |= switch.is_some_and(|s| s.to == to && s.step == SwitchStep::Verifying);
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let done = node.spec.target_mode == Some(to)
                && status.applied_mode == Some(to)
                && switch.is_none()
                && status.observed_generation == node.metadata.generation
                && ready;
            done.then_some(verifying)
                .ok_or_else(|| format!("spec {:?}, status {status:?}", node.spec))
        },
    )
    .await
}

/// Wait until `/healthz` on `addr` answers (the agent binds kube-proxy's
/// port on a sync once it is free).
fn healthz_served(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = http_get(ns, addr, "/healthz");
        match answer {
            Ok(text) if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") => {
                return Ok(());
            }
            _ if Instant::now() < deadline => std::thread::sleep(POLL),
            other => {
                return Err(setup(&format!(
                    "the agent does not serve /healthz on {addr} after kube-proxy went: {other:?}"
                )));
            }
        }
    }
}

/// A chain in the filter table and an nftables table, each with a rule,
/// owned by neither proxy.
fn add_foreign(ns: &Netns) -> Result<(), HarnessError> {
    ns.exec("iptables", &["-t", "filter", "-N", FOREIGN_CHAIN], None)?;
    ns.exec(
        "iptables",
        &["-t", "filter", "-A", FOREIGN_CHAIN, "-j", "RETURN"],
        None,
    )?;
    let table = format!(
        "table inet {FOREIGN_TABLE} {{\n  chain c {{\n    type filter hook input priority 10;\n    accept\n  }}\n}}\n"
    );
    ns.exec("nft", &["-f", "-"], Some(table.as_bytes()))?;
    Ok(())
}

/// [`nothing_left`] once the traffic stopped, waiting for the drain of an
/// adoption into eBPF or from IPVS.
fn leftovers_gone(ns: &Netns, from: Mode, to: Mode) -> Result<(), HarnessError> {
    let wait = if to == Mode::Ebpf || (from == Mode::Ipvs && to != Mode::Ipvs) {
        DRAIN_DEADLINE
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + wait;
    loop {
        match nothing_left(ns, from, to) {
            Err(_) if Instant::now() < deadline => std::thread::sleep(POLL),
            done => return done,
        }
    }
}

/// After the take-over: kube-proxy's objects are gone (its nftables tables;
/// its canary chains; in our nftables and eBPF modes, its iptables service
/// chains; outside our ipvs mode, its IPVS objects), and the foreign chain
/// and table are intact.
fn nothing_left(ns: &Netns, from: Mode, to: Mode) -> Result<(), HarnessError> {
    let tables = ns.exec("nft", &["list", "tables"], None)?;
    let mut wrong = Vec::new();
    for family in ["ip", "ip6"] {
        if tables
            .lines()
            .any(|l| l.trim() == format!("table {family} {KUBE_PROXY_TABLE}"))
        {
            wrong.push(format!(
                "kube-proxy's table {family} {KUBE_PROXY_TABLE} is left"
            ));
        }
    }
    if !tables
        .lines()
        .any(|l| l.trim() == format!("table inet {FOREIGN_TABLE}"))
    {
        wrong.push(format!(
            "the foreign table inet {FOREIGN_TABLE} was removed"
        ));
    }
    let dump = Dump::of(ns)?;
    for (table, chain) in dump.chains() {
        let left_by_kube_proxy = chain == "KUBE-PROXY-CANARY"
            || (matches!(from, Mode::Iptables | Mode::Ipvs)
                && !matches!(to, Mode::Iptables | Mode::Ipvs)
                && chain.starts_with("KUBE-"));
        if left_by_kube_proxy {
            wrong.push(format!("kube-proxy's chain {chain} ({table}) is left"));
        }
    }
    let foreign = dump
        .rules("ip4:filter", FOREIGN_CHAIN)
        .is_some_and(|rules| rules == ["-j RETURN"]);
    if !foreign {
        wrong.push(format!("the foreign chain {FOREIGN_CHAIN} was changed"));
    }
    if from == Mode::Ipvs && to != Mode::Ipvs {
        wrong.extend(ipvs_left(ns)?);
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(setup(&wrong.join("; ")))
    }
}

/// kube-proxy's IPVS objects in `ns`: `kube-ipvs0`, its ipsets, its
/// virtual servers.
fn ipvs_left(ns: &Netns) -> Result<Vec<String>, HarnessError> {
    let mut left = Vec::new();
    let links = ns.ip(&["-o", "link", "show"])?;
    if links.contains(&format!(" {DUMMY_INTERFACE}:")) {
        left.push(format!("kube-proxy's interface {DUMMY_INTERFACE} is left"));
    }
    let sets = ns.exec("ipset", &["list", "-n"], None)?;
    left.extend(
        sets.lines()
            .filter(|set| set.starts_with("KUBE-"))
            .map(|set| format!("kube-proxy's ipset {set} is left")),
    );
    // The table of the namespace this thread is in.
    let table = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/ip_vs"))?;
    let servers = table
        .map_err(|e| setup(&format!("reading the IPVS table: {e}")))?
        .lines()
        .filter(|l| ["TCP ", "UDP ", "SCTP "].iter().any(|p| l.starts_with(p)))
        .count();
    if servers > 0 {
        left.push(format!(
            "{servers} of kube-proxy's IPVS virtual servers are left"
        ));
    }
    Ok(left)
}
