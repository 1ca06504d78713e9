//! Run scenario files: build the namespaces, start the endpoint servers,
//! compile and link each stage, apply it with the mode's backend inside the
//! node namespace, send real connections for every flow, judge, report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use switchyard_api::Mode;
use switchyard_api::manifests::files_in;
use switchyard_api::policy::{self, NodeInfo};
use switchyard_api::ruleset::{Protocol, Ruleset};
use switchyard_compiler::{CompileSettings, Compiled, Snapshot};
use switchyard_dataplane::settings::{LocalDetector, NodePortAddresses, Settings};

use crate::HarnessError;
use crate::agent::NodeAgent;
use crate::hooks::ModeHooks;
use crate::netns::{self, Netns};
use crate::probe::{self, Attempt, Listen};
use crate::reference::{Reference, differences, reproducer, rules};
use crate::scenario::{Expected, Flow, NodeAddress, NodeSpec, Scenario, Stage};
use crate::topology::{Place, Topology};
use crate::traffic::role;

/// Outcome of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// Pass/fail/skip counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Totals {
    pub fn add(&mut self, status: Status) {
        match status {
            Status::Pass => self.passed += 1,
            Status::Fail => self.failed += 1,
            Status::Skip => self.skipped += 1,
        }
    }

    /// `N passed, M failed[, K skipped]`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped", self.skipped));
        }
        s
    }
}

/// Runner options.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long one connection attempt waits before it counts as dropped.
    pub timeout: Duration,
    /// With a kube-proxy reference in iptables mode: compare the rules too.
    pub compare_rules: bool,
}

/// A short tag per mode for namespace names (`syipt-<pid>-…`).
pub fn mode_tag(mode: Mode) -> &'static str {
    match mode {
        Mode::Iptables => "ipt",
        Mode::Ipvs => "ipvs",
        Mode::Nftables => "nft",
        Mode::Ebpf => "bpf",
    }
}

/// The tag of a kube-proxy reference node's namespaces (`sykpipt-<pid>-…`).
pub fn reference_tag(mode: Mode) -> String {
    format!("kp{}", mode_tag(mode))
}

/// The render settings a scenario's node asks for.
pub fn settings_for(node: &NodeSpec, mode: Mode) -> Settings {
    let mut s = Settings::defaults(mode);
    s.masquerade_all = node.masquerade_all;
    s.local_detector = if node.cluster_cidrs.is_empty() {
        LocalDetector::None
    } else {
        LocalDetector::Cidrs(node.cluster_cidrs.clone())
    };
    s.node_port_addresses = match &node.node_port_addresses {
        None => NodePortAddresses::ModeDefault,
        Some(cidrs) => NodePortAddresses::cidrs(cidrs.clone()),
    };
    if let Some(v) = node.localhost_node_ports {
        s.localhost_node_ports = v;
    }
    s.service_cidrs = node.service_cidrs.clone();
    s
}

/// Child processes killed and reaped on drop.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start this binary with `args` inside `ns`.
pub(crate) fn spawn_in(ns: &Netns, args: &[String]) -> Result<Child, HarnessError> {
    spawn(ns, args, Stdio::null())
}

/// As [`spawn_in`], with a pipe to the child's stdin.
pub(crate) fn spawn_in_with_stdin(ns: &Netns, args: &[String]) -> Result<Child, HarnessError> {
    spawn(ns, args, Stdio::piped())
}

fn spawn(ns: &Netns, args: &[String], stdin: Stdio) -> Result<Child, HarnessError> {
    let exe = std::env::current_exe().map_err(|source| HarnessError::Spawn {
        what: "current executable".into(),
        source,
    })?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(stdin).stdout(Stdio::piped());
    netns::enter_on_exec(&mut cmd, ns.open()?);
    cmd.spawn().map_err(|source| HarnessError::Spawn {
        what: format!(
            "{} in {}",
            args.first().map_or("", |a| a.as_str()),
            ns.name()
        ),
        source,
    })
}

/// One server per namespace with every endpoint and every flow destination
/// that lives there (a destination answering itself means "untranslated").
pub(crate) fn start_servers(
    topo: &Topology,
    scenario: &Scenario,
    sctp: bool,
) -> Result<Children, HarnessError> {
    let mut by_place: BTreeMap<Place, BTreeSet<Listen>> = BTreeMap::new();
    for slice in scenario.all_slices() {
        for port in slice.ports.iter().flatten() {
            let protocol = match port.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(p) => match probe::parse_protocol(p) {
                    Some(p) => p,
                    None => continue,
                },
            };
            let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for ep in &slice.endpoints {
                for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    by_place
                        .entry(topo.place_of(&ip))
                        .or_default()
                        .insert(Listen {
                            protocol,
                            addr: SocketAddr::new(ip, number),
                        });
                }
            }
        }
    }
    for flow in scenario.all_flows() {
        by_place
            .entry(topo.place_of(&flow.dest_ip))
            .or_default()
            .insert(Listen {
                protocol: flow.protocol,
                addr: flow.destination(),
            });
    }
    let mut children = Children(Vec::new());
    for (place, listens) in by_place {
        let listens: Vec<Listen> = listens
            .into_iter()
            .filter(|l| sctp || l.protocol != Protocol::Sctp)
            .collect();
        let mut child = spawn_in(topo.netns(place), &role::serve_args(&listens))?;
        let stdout = child.stdout.take();
        children.0.push(child);
        let mut line = String::new();
        if let Some(out) = stdout {
            // Blocks until the server has bound everything (or died: EOF).
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "ready" {
            return Err(HarnessError::Setup {
                what: format!("endpoint servers in {:?}", place),
                message: format!("server did not start: {}", line.trim()),
            });
        }
    }
    Ok(children)
}

/// Whether the flow's destination is a service port with ClientIP affinity.
fn has_affinity(ruleset: &Ruleset, flow: &Flow, node_ip: bool) -> bool {
    ruleset.services.iter().any(|r| {
        let vip = r
            .cluster_ips
            .iter()
            .chain(&r.external_ips)
            .chain(&r.load_balancer_ips)
            .any(|ip| *ip == flow.dest_ip)
            && r.port == flow.dest_port;
        let node_port = node_ip && r.node_port == Some(flow.dest_port);
        r.protocol == flow.protocol && (vip || node_port) && r.session_affinity.is_some()
    })
}

/// What one attempt amounted to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Endpoint(SocketAddr),
    Untranslated,
    Reject,
    Drop,
    Error(String),
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Endpoint(a) => write!(f, "{a}"),
            Seen::Untranslated => f.write_str("untranslated"),
            Seen::Reject => f.write_str("REJECT"),
            Seen::Drop => f.write_str("DROP"),
            Seen::Error(e) => write!(f, "error({e})"),
        }
    }
}

/// What a flow's attempts amounted to: each outcome with its count, and
/// whether the endpoints saw the client's own address (`false`) or another.
struct Observed {
    seen: BTreeMap<Seen, usize>,
    masq: BTreeSet<bool>,
}

impl Observed {
    fn of(flow: &Flow, attempts: &[Attempt]) -> Observed {
        let mut seen: BTreeMap<Seen, usize> = BTreeMap::new();
        let mut masq = BTreeSet::new();
        for a in attempts {
            let s = match a {
                Attempt::Reply {
                    server,
                    peer,
                    local,
                } => {
                    masq.insert(peer != local);
                    if *server == flow.destination() {
                        Seen::Untranslated
                    } else {
                        Seen::Endpoint(*server)
                    }
                }
                Attempt::Refused => Seen::Reject,
                Attempt::Timeout => Seen::Drop,
                Attempt::Error(e) => Seen::Error(e.clone()),
            };
            *seen.entry(s).or_default() += 1;
        }
        Observed { seen, masq }
    }

    fn summary(&self, affinity: bool) -> String {
        let mut summary: Vec<String> = self.seen.iter().map(|(s, n)| format!("{s} x{n}")).collect();
        if !self.masq.is_empty() {
            let m: Vec<String> = self.masq.iter().map(|m| m.to_string()).collect();
            summary.push(format!("masq={}", m.join("/")));
        }
        if affinity {
            summary.push("(pinned: one endpoint per client)".into());
        }
        summary.join(", ")
    }

    /// Whether `other` node did the same: the same outcomes (the same
    /// endpoints reached) and the same masquerade. A client pinned by
    /// affinity reaches one endpoint on each node, not necessarily the same.
    fn agrees_with(&self, other: &Observed, affinity: bool) -> bool {
        let outcomes = |o: &Observed| -> Option<BTreeSet<String>> {
            // The kernel rate-limits the ICMP errors a REJECT sends: among
            // many parallel attempts some rejected ones read as timeouts.
            let rejected = o.seen.contains_key(&Seen::Reject);
            let endpoints = o.seen.keys().filter(|s| matches!(s, Seen::Endpoint(_)));
            if o.seen.keys().any(|s| matches!(s, Seen::Error(_)))
                || (affinity && endpoints.count() > 1)
            {
                return None;
            }
            let pinned = |s: &Seen| match s {
                Seen::Endpoint(_) if affinity => "one endpoint".to_string(),
                s => s.to_string(),
            };
            let kinds = o.seen.keys().filter(|s| !(rejected && **s == Seen::Drop));
            Some(kinds.map(pinned).collect())
        };
        let mine = outcomes(self);
        mine.is_some() && mine == outcomes(other) && self.masq == other.masq
    }
}

/// Judge a flow's attempts: pass, and what was seen.
fn judge(flow: &Flow, expected: &Expected, attempts: &[Attempt], affinity: bool) -> (bool, String) {
    let observed = Observed::of(flow, attempts);
    let kinds: BTreeSet<&Seen> = observed.seen.keys().collect();
    let only = |s: Seen| kinds.len() == 1 && kinds.contains(&s);
    let outcome_ok = match expected {
        Expected::Endpoints(want) => {
            let got: BTreeSet<SocketAddr> = kinds
                .iter()
                .filter_map(|s| match s {
                    Seen::Endpoint(a) => Some(*a),
                    _ => None,
                })
                .collect();
            let all_endpoints = got.len() == kinds.len();
            let set_ok = if affinity {
                got.len() == 1 && got.is_subset(want)
            } else {
                got == *want
            };
            all_endpoints && set_ok
        }
        Expected::Reject => only(Seen::Reject),
        Expected::Drop => only(Seen::Drop),
        Expected::Accept | Expected::Untranslated => only(Seen::Untranslated),
        // Judged against kube-proxy's attempts instead (`judge_by_reference`).
        Expected::Reference => false,
    };
    let masq = &observed.masq;
    let masq_ok = match flow.masq {
        Some(want) if !masq.is_empty() => masq.len() == 1 && masq.contains(&want),
        _ => true,
    };
    (outcome_ok && masq_ok, observed.summary(affinity))
}

/// Hands out disjoint client port ranges (20000..60000, wrapping).
#[derive(Default)]
struct PortRanges(std::cell::Cell<u32>);

impl PortRanges {
    fn next(&self, count: usize) -> u16 {
        let width = u32::try_from(count).unwrap_or(64).max(1);
        let mut start = self.0.get();
        if start + width > 40000 {
            start = 0;
        }
        self.0.set(start + width);
        u16::try_from(20000 + start).unwrap_or(20000)
    }
}

struct Ctx<'a> {
    ports: PortRanges,
    file: &'a str,
    node: &'a NodeSpec,
    topo: &'a Topology,
    hooks: &'a dyn ModeHooks,
    options: &'a Options,
    sctp: bool,
}

fn report(totals: &mut Totals, status: Status, line: String) {
    let tag = match status {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Skip => "SKIP",
    };
    println!("{tag} {line}");
    totals.add(status);
}

/// A flow whose client process was started.
struct Running<'f> {
    flow: &'f Flow,
    expected: Expected,
    /// One endpoint per client is expected (session affinity, fixed port).
    affinity: bool,
    child: Result<Child, HarnessError>,
    /// The same client on the kube-proxy node, when there is one.
    reference: Option<Result<Child, HarnessError>>,
}

/// Run the flows of one stage in parallel, one client process per flow (and
/// its twin on the kube-proxy node of `reference`).
fn run_flows(
    ctx: &Ctx<'_>,
    reference: Option<&Topology>,
    stage: &Stage<'_>,
    ruleset: &Ruleset,
    linked: &policy::LinkedRuleset,
    totals: &mut Totals,
) {
    let flows: Vec<Flow> = stage
        .flows
        .iter()
        .map(|f| f.for_mode(ctx.hooks.mode()))
        .collect();
    let running: Vec<Running> = flows
        .iter()
        .filter_map(|flow| start_flow(ctx, reference, stage, flow, ruleset, linked, totals))
        .collect();
    let mut outputs = collect_outputs(running);
    // Forty parallel attempts on a loaded machine can lose an ICMP error or
    // a reply: a flow judged by kube-proxy that disagrees runs once more on
    // both nodes, alone, and only a second disagreement counts.
    let disagreeing: Vec<usize> = (0..outputs.len())
        .filter(|&i| !outputs[i].agrees_with_reference())
        .collect();
    for i in disagreeing {
        let first = outputs[i].seen();
        let again = start_flow(
            ctx,
            reference,
            stage,
            outputs[i].flow,
            ruleset,
            linked,
            totals,
        );
        if let Some(second) = collect_outputs(again.into_iter().collect()).pop() {
            println!(
                "RETRY {}: {}{}: the first run disagreed ({first})",
                ctx.file, stage.label, second.flow.name
            );
            outputs[i] = second;
        }
    }
    for o in outputs {
        let judged = Judged {
            expected: &o.expected,
            affinity: o.affinity,
            out: o.out,
            reference_out: o.reference_out,
        };
        judge_flow(ctx, stage, o.flow, judged, totals);
    }
}

/// What the clients of one flow printed on each node.
struct Outputs<'f> {
    flow: &'f Flow,
    expected: Expected,
    affinity: bool,
    out: Result<String, HarnessError>,
    reference_out: Option<Result<String, HarnessError>>,
}

impl Outputs<'_> {
    /// False only for an `output: reference` flow on which the two nodes
    /// disagree.
    fn agrees_with_reference(&self) -> bool {
        let (Expected::Reference, Some(Ok(theirs)), Ok(mine)) =
            (&self.expected, &self.reference_out, &self.out)
        else {
            return true;
        };
        let observe =
            |text: &str| attempts(Ok(text.to_string())).map(|a| Observed::of(self.flow, &a));
        match (observe(mine), observe(theirs)) {
            (Ok(m), Ok(t)) => m.agrees_with(&t, self.affinity),
            _ => false,
        }
    }

    /// Both nodes' outcomes, as the report prints them.
    fn seen(&self) -> String {
        let summary = |out: Option<&Result<String, HarnessError>>| match out {
            Some(Ok(text)) => attempts(Ok(text.clone()))
                .map(|a| Observed::of(self.flow, &a).summary(self.affinity))
                .unwrap_or_else(|e| e),
            Some(Err(e)) => e.to_string(),
            None => "nothing".into(),
        };
        format!(
            "switchyard saw {}; kube-proxy saw {}",
            summary(Some(&self.out)),
            summary(self.reference_out.as_ref())
        )
    }
}

/// Wait for every started client and collect what it printed.
fn collect_outputs(running: Vec<Running<'_>>) -> Vec<Outputs<'_>> {
    let mut children = Children(Vec::new());
    let mut output = |child: Result<Child, HarnessError>| {
        child.map(|mut c| {
            let text = client_output(&mut c);
            children.0.push(c);
            text
        })
    };
    running
        .into_iter()
        .map(|r| Outputs {
            out: output(r.child),
            reference_out: r.reference.map(&mut output),
            flow: r.flow,
            expected: r.expected,
            affinity: r.affinity,
        })
        .collect()
}

/// Start the client of one flow; None (reported) when its expectation does
/// not parse or the flow is skipped here.
fn start_flow<'f>(
    ctx: &Ctx<'_>,
    reference: Option<&Topology>,
    stage: &Stage<'_>,
    flow: &'f Flow,
    ruleset: &Ruleset,
    linked: &policy::LinkedRuleset,
    totals: &mut Totals,
) -> Option<Running<'f>> {
    let name = format!("{}: {}{}", ctx.file, stage.label, flow.name);
    let Ok(expected) = Expected::parse(&flow.output) else {
        let line = format!("{name}: bad output {:?}", flow.output);
        report(totals, Status::Fail, line);
        return None;
    };
    let skip = if flow.protocol == Protocol::Sctp && !ctx.sctp {
        Some("SCTP sockets are not supported by this kernel".to_string())
    } else if expected == Expected::Reference && reference.is_none() {
        Some("`output: reference` needs a kube-proxy node (--reference kube-proxy)".to_string())
    } else {
        ctx.hooks.unsupported_in(flow, linked)
    };
    if let Some(reason) = skip {
        report(totals, Status::Skip, format!("{name}: {reason}"));
        return None;
    }
    // Affinity and a fixed client port both pin a client to one endpoint.
    let session_affinity = has_affinity(ruleset, flow, ctx.topo.is_node_address(&flow.dest_ip));
    // Pinning is only observable, and only needs one-by-one attempts, when
    // connections are expected to get through.
    let sequential = flow.source_port.is_some()
        || (session_affinity && matches!(expected, Expected::Endpoints(_) | Expected::Reference));
    let count = match &expected {
        // Enough that random choice would spread them (3 endpoints: 1 in 243).
        _ if sequential && session_affinity => 6,
        _ if sequential => 3,
        Expected::Endpoints(e) => (10 * e.len()).max(6),
        // Endpoints unknown beforehand: enough that each of up to four is
        // reached (a miss: 1 in 5,000 per node).
        Expected::Reference => 40,
        _ => 4,
    };
    let args = client_args(ctx, flow, count, sequential);
    let source = |topo: &Topology| spawn_in(topo.netns(topo.place_of(&flow.source_ip)), &args);
    Some(Running {
        flow,
        expected,
        affinity: session_affinity || flow.source_port.is_some(),
        child: source(ctx.topo),
        reference: reference.map(source),
    })
}

/// The arguments of a flow's client process.
fn client_args(ctx: &Ctx<'_>, flow: &Flow, count: usize, sequential: bool) -> Vec<String> {
    let mut args = vec![
        "__connect".to_string(),
        format!("--proto={}", flow.protocol.as_lower()),
        format!("--src={}", flow.source_ip),
        format!("--dst={}", flow.destination()),
        format!("--count={count}"),
        format!("--timeout-ms={}", ctx.options.timeout.as_millis()),
    ];
    if sequential {
        args.push("--sequential".into());
    }
    match flow.source_port {
        Some(port) => args.extend([format!("--src-port={port}"), "--fixed-port".into()]),
        None => args.push(format!("--src-port={}", ctx.ports.next(count))),
    }
    if let Some(cg) = ctx.hooks.client_cgroup(flow) {
        args.push(format!("--cgroup={}", cg.display()));
    }
    args
}

/// Everything a client prints, one attempt a line (until it exits).
fn client_output(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

/// What the clients of one flow printed, and how to judge it.
struct Judged<'e> {
    expected: &'e Expected,
    affinity: bool,
    out: Result<String, HarnessError>,
    reference_out: Option<Result<String, HarnessError>>,
}

/// Judge one flow's attempts against what the scenario (and this mode's
/// masquerade) expects, and report it; with a kube-proxy node, kube-proxy's
/// attempts against the scenario's own expectation too: a flow passes when
/// both meet it, or kube-proxy misses it by a listed deliberate difference.
fn judge_flow(
    ctx: &Ctx<'_>,
    stage: &Stage<'_>,
    scenario_flow: &Flow,
    judged: Judged<'_>,
    totals: &mut Totals,
) {
    let Judged {
        expected,
        affinity,
        out,
        reference_out,
    } = judged;
    let flow_name = format!("{}{}", stage.label, scenario_flow.name);
    let name = format!("{}: {flow_name}", ctx.file);
    let flow = &Flow {
        masq: ctx.hooks.masquerade(scenario_flow),
        ..scenario_flow.clone()
    };
    let mut want = match flow.masq {
        Some(m) => format!("{expected} masq={m}"),
        None => expected.to_string(),
    };
    if flow.masq != scenario_flow.masq {
        want.push_str(" (this mode's masquerade; the scenario expects ");
        want.push_str(&format!("masq={:?})", scenario_flow.masq));
    }
    let verdict = |flow: &Flow, out: Result<String, HarnessError>| match attempts(out) {
        Err(e) => (false, e),
        Ok(attempts) => judge(flow, expected, &attempts, affinity),
    };
    let reference_out = match (expected, reference_out) {
        (Expected::Reference, Some(theirs)) => {
            let both = (attempts(out), attempts(theirs));
            return judge_by_reference(ctx, stage, scenario_flow, affinity, both, totals);
        }
        (_, theirs) => theirs,
    };
    let (ok, seen) = verdict(flow, out);
    let Some(reference_out) = reference_out else {
        let status = if ok { Status::Pass } else { Status::Fail };
        return report(
            totals,
            status,
            format!("{name}: expected {want}; saw {seen}"),
        );
    };
    let (reference_ok, reference_seen) = verdict(scenario_flow, reference_out);
    let mode = ctx.hooks.mode();
    let (status, note) = match (ok, reference_ok) {
        (true, true) => (Status::Pass, String::new()),
        (true, false) => match differences::find(ctx.file, &flow_name, mode) {
            Some(d) => (
                Status::Pass,
                format!(" [documented difference: {}]", d.reason),
            ),
            None => (Status::Fail, " [kube-proxy disagrees]".to_string()),
        },
        (false, _) => (Status::Fail, String::new()),
    };
    report(
        totals,
        status,
        format!(
            "{name}: expected {want}; switchyard saw {seen}; kube-proxy saw {reference_seen}{note}"
        ),
    );
}

/// A client's attempts, or why there are none.
fn attempts(out: Result<String, HarnessError>) -> Result<Vec<Attempt>, String> {
    match out {
        Err(e) => Err(format!("client: {e}")),
        Ok(text) if text.trim().is_empty() => Err("client: no attempt reported".into()),
        Ok(text) => Ok(text.lines().map(Attempt::parse).collect()),
    }
}

/// Judge an `output: reference` flow: it passes when Switchyard did what
/// kube-proxy did (or the difference is listed). A failure writes the
/// reduced state and the flow as a scenario file and prints its path.
fn judge_by_reference(
    ctx: &Ctx<'_>,
    stage: &Stage<'_>,
    flow: &Flow,
    affinity: bool,
    (mine, theirs): (Result<Vec<Attempt>, String>, Result<Vec<Attempt>, String>),
    totals: &mut Totals,
) {
    let flow_name = format!("{}{}", stage.label, flow.name);
    let name = format!("{}: {flow_name}", ctx.file);
    let observe = |a: Result<Vec<Attempt>, String>| {
        a.map(|a| Observed::of(flow, &a))
            .map(|o| (o.summary(affinity), o))
    };
    let (mine, theirs) = match (observe(mine), observe(theirs)) {
        (Ok(m), Ok(t)) => (m, t),
        (Err(e), _) | (_, Err(e)) => return report(totals, Status::Fail, format!("{name}: {e}")),
    };
    let seen = format!("switchyard saw {}; kube-proxy saw {}", mine.0, theirs.0);
    let (status, note) = if mine.1.agrees_with(&theirs.1, affinity) {
        (Status::Pass, String::new())
    } else if let Some(d) = differences::find(ctx.file, &flow_name, ctx.hooks.mode()) {
        (
            Status::Pass,
            format!(" [documented difference: {}]", d.reason),
        )
    } else {
        let note = match reproducer::write(ctx.node, stage, flow, &seen) {
            Ok(path) => format!(" [reproducer: {}]", path.display()),
            Err(e) => format!(" [no reproducer: {e}]"),
        };
        (Status::Fail, note)
    };
    report(
        totals,
        status,
        format!("{name}: as kube-proxy; {seen}{note}"),
    );
}

fn node_object(spec: &NodeSpec) -> Node {
    let labels = spec.zone.as_ref().map(|z| {
        [("topology.kubernetes.io/zone".to_string(), z.clone())]
            .into_iter()
            .collect()
    });
    Node {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            labels,
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

/// Compile one stage of a scenario.
pub fn compile_stage(node: &NodeSpec, stage: &Stage<'_>) -> Compiled {
    compile_state(
        node,
        stage.services.to_vec(),
        stage.endpoint_slices.to_vec(),
    )
}

/// Compile Services and EndpointSlices for the scenario's node.
pub fn compile_state(
    node: &NodeSpec,
    services: Vec<Service>,
    endpoint_slices: Vec<EndpointSlice>,
) -> Compiled {
    let snapshot = Snapshot {
        services,
        endpoint_slices,
        nodes: vec![node_object(node)],
    };
    switchyard_compiler::compile(&snapshot, &CompileSettings::default())
}

/// The facts about the scenario's node that link needs.
pub fn node_info(node: &NodeSpec, addresses: &[NodeAddress]) -> NodeInfo {
    NodeInfo {
        name: node.name.clone(),
        zone: node.zone.clone(),
        addresses: addresses.iter().map(|a| a.ip).collect(),
    }
}

/// Run one scenario file; flows are reported as they are judged. With a
/// `reference`, the state goes through its API server to both nodes and
/// every flow is also sent to its kube-proxy node.
pub fn run_file(
    path: &str,
    index: usize,
    hooks: &mut dyn ModeHooks,
    options: &Options,
    reference: Option<&mut Reference>,
) -> Result<Totals, HarnessError> {
    let scenario = Scenario::load(path)?;
    let file = Path::new(path)
        .file_name()
        .map_or_else(|| path.to_string(), |f| f.to_string_lossy().into_owned());
    let prefix = format!(
        "sy{}-{}-{index}-",
        mode_tag(hooks.mode()),
        std::process::id()
    );
    let topo = Topology::build(&prefix, &scenario)?;
    hooks.prepare_node(&topo, &scenario)?;
    let sctp = probe::sctp_supported();
    let servers = start_servers(&topo, &scenario, sctp)?;
    let mut reference = match reference {
        None => None,
        Some(r) => {
            let prefix = format!(
                "sy{}-{}-{index}-",
                reference_tag(hooks.mode()),
                std::process::id()
            );
            let reference_topo = Topology::build(&prefix, &scenario)?;
            let reference_servers = start_servers(&reference_topo, &scenario, sctp)?;
            Some((r.node(&scenario, reference_topo)?, reference_servers))
        }
    };
    let agent = NodeAgent::start(&topo.node, hooks.dataplane())?;
    let mut settings = settings_for(&scenario.node, hooks.mode());
    hooks.adjust_settings(&mut settings, &topo);
    let node_info = node_info(&scenario.node, &topo.node_addresses);
    let mut totals = Totals::default();
    let ctx = Ctx {
        ports: PortRanges::default(),
        file: &file,
        node: &scenario.node,
        topo: &topo,
        hooks: &*hooks,
        options,
        sctp,
    };
    for stage in scenario.stages() {
        let compiled = match &mut reference {
            None => compile_stage(&scenario.node, &stage),
            Some((node, _)) => {
                let stored = node.apply(&stage)?;
                settings.service_cidrs = stored.service_cidrs;
                compile_state(&scenario.node, stored.services, stored.endpoint_slices)
            }
        };
        for d in &compiled.diagnostics {
            eprintln!("{file}: {}{d}", stage.label);
        }
        let linked = policy::link(&compiled.ruleset, &node_info);
        if let Err(e) = agent.sync(&linked, &settings) {
            for flow in stage.flows {
                report(
                    &mut totals,
                    Status::Fail,
                    format!("{file}: {}{}: {e}", stage.label, flow.name),
                );
            }
            if std::env::var_os("SWITCHYARD_E2E_DUMP").is_some() {
                eprintln!("{}", agent.render(&linked, &settings)?);
            }
            continue;
        }
        if std::env::var_os("SWITCHYARD_E2E_DUMP").is_some() {
            eprintln!("{}", agent.render(&linked, &settings)?);
        }
        if let Some((node, _)) = &reference
            && hooks.mode() == Mode::Iptables
            && options.compare_rules
        {
            compare_rules(&file, &stage, &topo.node, &node.topology.node, &mut totals);
        }
        let reference_topo = reference.as_ref().map(|(node, _)| &node.topology);
        run_flows(
            &ctx,
            reference_topo,
            &stage,
            &compiled.ruleset,
            &linked,
            &mut totals,
        );
    }
    match agent.cleanup() {
        Ok(true) => report(
            &mut totals,
            Status::Pass,
            format!("{file}: cleanup left no trace"),
        ),
        Ok(false) => report(
            &mut totals,
            Status::Fail,
            format!("{file}: cleanup: objects of the mode are still present"),
        ),
        Err(e) => report(&mut totals, Status::Fail, format!("{file}: cleanup: {e}")),
    }
    drop(agent);
    drop(reference);
    hooks.teardown();
    drop(servers);
    drop(topo);
    Ok(totals)
}

/// Report whether the Switchyard node's iptables rules are kube-proxy's.
fn compare_rules(file: &str, stage: &Stage<'_>, mine: &Netns, theirs: &Netns, totals: &mut Totals) {
    let name = format!("{file}: {}iptables-save", stage.label);
    match (rules::Dump::of(mine), rules::Dump::of(theirs)) {
        (Ok(mut mine), Ok(mut theirs)) => {
            theirs.normalize_kube_proxy();
            theirs.sort_map_ordered();
            mine.sort_map_ordered();
            let differences = mine.differences(&theirs);
            if differences.is_empty() {
                report(totals, Status::Pass, format!("{name} equals kube-proxy's"));
            } else {
                let list = differences.join("\n    ");
                report(
                    totals,
                    Status::Fail,
                    format!("{name} differs from kube-proxy's:\n    {list}"),
                );
            }
        }
        (Err(e), _) | (_, Err(e)) => report(totals, Status::Fail, format!("{name}: {e}")),
    }
}

/// Expand directories into their `*.yaml` files, sorted.
pub fn expand_paths(paths: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in paths {
        match files_in(Path::new(p), &["yaml", "yml"]) {
            Ok(files) => out.extend(files.iter().map(|f| f.to_string_lossy().into_owned())),
            Err(_) => out.push(p.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(output: &str, masq: Option<bool>) -> Flow {
        Flow {
            name: "f".into(),
            source_ip: "10.0.0.2".parse().unwrap(),
            dest_ip: "172.30.0.41".parse().unwrap(),
            dest_port: 80,
            protocol: Protocol::Tcp,
            output: output.into(),
            masq,
            source_port: None,
            from_node: false,
            by_mode: Default::default(),
        }
    }

    #[test]
    fn a_mode_override_replaces_output_and_masq_for_that_mode_only() {
        let mut f = flow("10.180.0.1:80", Some(true));
        f.by_mode.insert(
            Mode::Nftables,
            crate::scenario::ModeExpectation {
                output: "REJECT".into(),
                masq: None,
            },
        );
        let nft = f.for_mode(Mode::Nftables);
        assert_eq!((nft.output.as_str(), nft.masq), ("REJECT", None));
        let ipt = f.for_mode(Mode::Iptables);
        assert_eq!(
            (ipt.output.as_str(), ipt.masq),
            ("10.180.0.1:80", Some(true))
        );
    }

    fn reply(server: &str, peer: &str) -> Attempt {
        Attempt::Reply {
            server: server.parse().unwrap(),
            peer: peer.parse().unwrap(),
            local: "10.0.0.2:20000".parse().unwrap(),
        }
    }

    fn check(f: &Flow, attempts: &[Attempt], affinity: bool) -> bool {
        judge(f, &Expected::parse(&f.output).unwrap(), attempts, affinity).0
    }

    #[test]
    fn every_endpoint_and_nothing_else() {
        let f = flow("10.180.0.1:80, 10.180.0.2:80", Some(false));
        let a = reply("10.180.0.1:80", "10.0.0.2:20000");
        let b = reply("10.180.0.2:80", "10.0.0.2:20000");
        assert!(check(&f, &[a.clone(), b.clone()], false));
        assert!(
            !check(&f, &[a.clone(), a.clone()], false),
            "one endpoint never reached"
        );
        let c = reply("10.180.0.3:80", "10.0.0.2:20000");
        assert!(
            !check(&f, &[a.clone(), b.clone(), c], false),
            "an endpoint outside the set"
        );
        assert!(!check(&f, &[a.clone(), b.clone(), Attempt::Timeout], false));
        assert!(
            check(&f, &[a.clone(), a.clone()], true),
            "affinity: one of them"
        );
        assert!(!check(&f, &[a, b], true), "affinity: not two");
    }

    #[test]
    fn masquerade_is_judged_from_what_the_endpoint_saw() {
        let masqueraded = reply("10.180.0.1:80", "192.168.0.2:40000");
        assert!(check(
            &flow("10.180.0.1:80", Some(true)),
            std::slice::from_ref(&masqueraded),
            false
        ));
        assert!(!check(
            &flow("10.180.0.1:80", Some(false)),
            &[masqueraded],
            false
        ));
        // Same address, other port: masqueraded with --random-fully from the node.
        let port_only = reply("10.180.0.1:80", "10.0.0.2:33333");
        assert!(check(
            &flow("10.180.0.1:80", Some(true)),
            &[port_only],
            false
        ));
    }

    #[test]
    fn reject_drop_and_untranslated_are_told_apart() {
        assert!(check(&flow("REJECT", None), &[Attempt::Refused], false));
        assert!(!check(&flow("REJECT", None), &[Attempt::Timeout], false));
        assert!(check(&flow("DROP", None), &[Attempt::Timeout], false));
        assert!(!check(&flow("DROP", None), &[Attempt::Refused], false));
        let untouched = reply("172.30.0.41:80", "10.0.0.2:20000");
        assert!(check(
            &flow("", None),
            std::slice::from_ref(&untouched),
            false
        ));
        assert!(!check(&flow("REJECT", None), &[untouched], false));
        assert!(!check(
            &flow("", None),
            &[Attempt::Error("EHOSTUNREACH".into())],
            false
        ));
    }
}
