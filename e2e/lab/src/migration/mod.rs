//! The migration matrix: for an ordered pair of modes, a node (the namespaces
//! of `matrix.yaml`) runs the first mode, traffic starts from every flow's
//! source ([`crate::traffic`]: long-lived and new TCP connections from a pod, the
//! node and external clients through NodePorts with externalTrafficPolicy
//! Cluster and Local; UDP on connected and unconnected sockets), the node
//! switches to the second mode by the agent's own procedure
//! (`switchyard_agent::switch::switch_to`: build beside, retire the old), the
//! traffic runs on a while, and every loss is counted ([`Row`]). An old mode
//! that drains (IPVS) must settle by itself once the traffic stopped, or the
//! pair fails.

pub mod adoption;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_agent::switch::{
    DataplaneFactory, SwitchInput, TcpProbe, masquerade_beside, switch_to,
};
use switchyard_api::Mode;
use switchyard_api::policy::{self, LinkedRuleset};
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{BackendError, Dataplane, Retirement};

use crate::HarnessError;
use crate::agent::{Active, NodeAgent};
use crate::cluster::processes::{Program, Programs};
use crate::hooks::{self, ModeHooks};
use crate::runner::{self, Children};
use crate::scenario::{Expected, Scenario};
use crate::topology::Topology;
use crate::traffic::{Client, Streams};
use switchyard_dataplane::ebpf::tc::TcAttachMode;

pub use crate::traffic::Counts;

/// Long-lived TCP connections per stream.
const LONG_LIVED: usize = 2;

/// The node, its services and the traffic's flows.
const MATRIX: &str = include_str!("matrix.yaml");

/// What carries the node's traffic before the switch: one of our modes, or
/// the real kube-proxy in one of its modes (an adoption, [`adoption`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Mode(Mode),
    KubeProxy(Mode),
}

/// How a kube-proxy source is written (`kube-proxy-iptables`).
const KUBE_PROXY_PREFIX: &str = "kube-proxy-";

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Mode(mode) => write!(f, "{mode}"),
            Source::KubeProxy(mode) => write!(f, "{KUBE_PROXY_PREFIX}{mode}"),
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(text: &str) -> Result<Source, String> {
        let (kube_proxy, mode) = match text.strip_prefix(KUBE_PROXY_PREFIX) {
            Some(mode) => (true, mode),
            None => (false, text),
        };
        let mode = mode.parse::<Mode>().map_err(|e| format!("{text:?}: {e}"))?;
        Ok(if kube_proxy {
            Source::KubeProxy(mode)
        } else {
            Source::Mode(mode)
        })
    }
}

/// An ordered pair: the node runs `from`, then switches to our mode `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub from: Source,
    pub to: Mode,
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.from, self.to)
    }
}

impl std::str::FromStr for Pair {
    type Err = String;

    fn from_str(text: &str) -> Result<Pair, String> {
        let (from, to) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: expected FROM:TO"))?;
        let pair = Pair {
            from: from.parse()?,
            to: to.parse::<Mode>().map_err(|e| format!("{text:?}: {e}"))?,
        };
        if pair.from == Source::Mode(pair.to) {
            return Err(format!("{text:?}: a switch needs two modes"));
        }
        Ok(pair)
    }
}

impl Pair {
    /// Every ordered pair of distinct `modes`.
    pub fn all_of(modes: &[Mode]) -> Vec<Pair> {
        modes
            .iter()
            .flat_map(|&from| {
                modes
                    .iter()
                    .filter(move |&&to| to != from)
                    .map(move |&to| Pair {
                        from: Source::Mode(from),
                        to,
                    })
            })
            .collect()
    }

    pub fn involves(&self, mode: Mode) -> bool {
        let from = match self.from {
            Source::Mode(m) | Source::KubeProxy(m) => m,
        };
        from == mode || self.to == mode
    }
}

/// How long traffic runs and how long an answer may take.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Between two requests of one socket, and two new connections.
    pub period: Duration,
    /// After which an answer counts as lost.
    pub timeout: Duration,
    /// Traffic before the switch and after it.
    pub before: Duration,
    pub after: Duration,
    /// Deadlock guard of an adoption's rollout (a switch takes seconds; the
    /// cores are shared with a control plane and kube-proxy).
    pub rollout: Duration,
}

impl Timing {
    /// On this machine's kernel.
    pub const HOST: Timing = Timing {
        period: Duration::from_millis(10),
        timeout: Duration::from_millis(1000),
        before: Duration::from_millis(300),
        after: Duration::from_millis(1500),
        rollout: Duration::from_secs(60),
    };
    /// In the VM, whose software emulation is slow: more traffic than this
    /// stretches a switch from a second to a minute.
    pub const VM: Timing = Timing {
        period: Duration::from_millis(200),
        timeout: Duration::from_millis(3000),
        before: Duration::from_millis(1000),
        after: Duration::from_millis(4000),
        rollout: Duration::from_secs(300),
    };
}

/// One pair's result: the table's row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub pair: Pair,
    pub counts: Counts,
    /// From asking the agent to switch until it answered.
    pub switch_time: Duration,
    /// The pair could not be run, or its switch failed.
    pub error: Option<String>,
}

/// A [`Row`] as its line carries it.
#[derive(serde::Serialize, serde::Deserialize)]
struct RowLine {
    pair: String,
    switch_micros: u64,
    counts: Counts,
    error: Option<String>,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.counts.clean() && self.counts.exchanges > 0
    }

    /// The machine-readable line a run in the VM prints for its host:
    /// `row ` and the JSON of [`RowLine`].
    pub fn line(&self) -> String {
        let wire = RowLine {
            pair: self.pair.to_string(),
            switch_micros: u64::try_from(self.switch_time.as_micros()).unwrap_or(u64::MAX),
            counts: self.counts,
            error: self.error.clone(),
        };
        let json = serde_json::to_string(&wire).unwrap_or_default();
        format!("row {json}")
    }

    /// Parse [`Row::line`].
    pub fn parse_line(line: &str) -> Result<Row, String> {
        let json = line.strip_prefix("row ").ok_or("not a row")?;
        let wire: RowLine = serde_json::from_str(json).map_err(|e| format!("{line:?}: {e}"))?;
        Ok(Row {
            pair: wire.pair.parse()?,
            counts: wire.counts,
            switch_time: Duration::from_micros(wire.switch_micros),
            error: wire.error,
        })
    }

    /// A pair that could not be run.
    pub fn failed(pair: Pair, error: String) -> Row {
        Row {
            pair,
            counts: Counts::default(),
            switch_time: Duration::ZERO,
            error: Some(error),
        }
    }
}

/// The table of `rows` and the `N passed, M failed` line.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<32} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>10}  {}\n",
        "pair", "new", "failed", "dropped", "udp", "lost", "wrong", "switch", "verdict"
    );
    for r in rows {
        let c = &r.counts;
        let verdict = match (&r.error, r.passed()) {
            (Some(e), _) => format!("FAIL: {e}"),
            (None, true) => "PASS".to_string(),
            (None, false) => "FAIL".to_string(),
        };
        out.push_str(&format!(
            "{:<32} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8.1}ms  {verdict}\n",
            r.pair.to_string().replace(':', " -> "),
            c.new,
            c.new_failed,
            c.dropped,
            c.udp_sent,
            c.udp_lost,
            c.wrong_address,
            r.switch_time.as_secs_f64() * 1000.0,
        ));
    }
    let passed = rows.iter().filter(|r| r.passed()).count();
    out.push_str(&format!("{passed} passed, {} failed", rows.len() - passed));
    out
}

/// Run one pair (index `index` of this run, for namespace names); an
/// adoption from kube-proxy runs `programs` (the operator and the agent).
pub fn run_pair(
    pair: Pair,
    index: usize,
    timing: Timing,
    tc_attach: TcAttachMode,
    programs: Option<&Programs>,
) -> Row {
    let ran = match pair.from {
        Source::Mode(from) => {
            Migration::set_up(pair, from, index, tc_attach).and_then(|m| m.run(timing))
        }
        Source::KubeProxy(from) => match programs {
            Some(programs) => adoption::run(pair, from, index, timing, programs),
            None => Err(setup(
                "an adoption needs the operator's and the agent's binaries (--operator, --agent)",
            )),
        },
    };
    ran.unwrap_or_else(|e| Row::failed(pair, e.to_string()))
}

/// The matrix's node and its one stage.
fn matrix() -> Result<Scenario, HarnessError> {
    Ok(Scenario::parse("matrix.yaml", MATRIX)?)
}

/// The namespace prefix of pair `index` of this run.
fn prefix(index: usize) -> String {
    format!("{TAG}-{}-{index}-", std::process::id())
}

/// The modes' hooks, the namespaces, servers and the agent of one pair.
struct Migration {
    pair: Pair,
    scenario: Scenario,
    from: Box<dyn ModeHooks>,
    to: Box<dyn ModeHooks>,
    linked: LinkedRuleset,
    agent: Option<NodeAgent>,
    _servers: Children,
    // Dropped last: the namespaces everything above lives in.
    topo: Topology,
}

/// Namespace prefix tag of the matrix.
pub const TAG: &str = "symig";

impl Migration {
    fn set_up(
        pair: Pair,
        from: Mode,
        index: usize,
        tc_attach: TcAttachMode,
    ) -> Result<Migration, HarnessError> {
        let scenario = matrix()?;
        let topo = Topology::build(&prefix(index), &scenario)?;
        let mut from = hooks::hooks_for(from, tc_attach);
        let mut to = hooks::hooks_for(pair.to, tc_attach);
        from.prepare_node(&topo, &scenario)?;
        to.prepare_node(&topo, &scenario)?;
        let servers = runner::start_servers(&topo, &scenario, false)?;
        let stage = scenario
            .stages()
            .into_iter()
            .next()
            .ok_or_else(|| setup("no stage"))?;
        let compiled = runner::compile_stage(&scenario.node, &stage);
        let node = runner::node_info(&scenario.node, &topo.node_addresses);
        let linked = policy::link(&compiled.ruleset, &node);
        let agent = Some(NodeAgent::without_dataplane(&topo.node)?);
        Ok(Migration {
            pair,
            scenario,
            from,
            to,
            linked,
            agent,
            _servers: servers,
            topo,
        })
    }

    fn settings(&self, hooks: &dyn ModeHooks) -> Settings {
        let mut s = runner::settings_for(&self.scenario.node, hooks.mode());
        hooks.adjust_settings(&mut s, &self.topo);
        s
    }

    fn agent(&self) -> Result<&NodeAgent, HarnessError> {
        self.agent.as_ref().ok_or_else(|| setup("agent stopped"))
    }

    /// Switch the node to `hooks`' mode by the agent's procedure; how long it
    /// took, and the old mode if it is still draining.
    fn switch(&self, hooks: &dyn ModeHooks) -> Result<(Duration, Retiring), HarnessError> {
        let factory = OneDataplane(Mutex::new(Some(hooks.dataplane())));
        let (linked, settings, to) = (self.linked.clone(), self.settings(hooks), hooks.mode());
        let started = Instant::now();
        let retiring = self
            .agent()?
            .submit("switch modes", move |active: &mut Active| {
                switch_on_agent(active, to, &linked, &settings, &factory)
            })?
            .wait()?
            .map_err(|e| setup(&e))?;
        Ok((started.elapsed(), retiring))
    }

    /// Once the traffic stopped, the old mode's drain must end by itself
    /// (`Dataplane::settle`) within [`DRAIN_DEADLINE`]; it is removed in any case.
    fn finish_retiring(&self, retiring: Retiring) -> Result<(), HarnessError> {
        let Some(mut old) = retiring else {
            return Ok(());
        };
        let drained = self
            .agent()?
            .submit("settle the old mode", move |_: &mut Active| {
                let deadline = Instant::now() + DRAIN_DEADLINE;
                loop {
                    match old.settle().map_err(|e| e.to_string())? {
                        Retirement::Done => return Ok(true),
                        Retirement::Draining if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Retirement::Draining => {
                            return old.cleanup().map(|()| false).map_err(|e| e.to_string());
                        }
                    }
                }
            })?
            .wait()?
            .map_err(|e| setup(&e))?;
        if !drained {
            eprintln!(
                "{}: the old mode still counted connections {DRAIN_DEADLINE:?} after the traffic stopped",
                self.pair
            );
        }
        Ok(())
    }

    fn run(mut self, timing: Timing) -> Result<Row, HarnessError> {
        self.switch(self.from.as_ref())?;
        let hooks = [self.from.as_ref(), self.to.as_ref()];
        let streams = start_traffic(&self.topo, &self.scenario, &hooks, timing)?;
        std::thread::sleep(timing.before);
        let switched = self.switch(self.to.as_ref());
        // Set against the traffic children's failure lines (same clock).
        eprintln!(
            "{}: switch finished at {} ms",
            self.pair,
            crate::traffic::stream::unix_millis()
        );
        std::thread::sleep(timing.after);
        let counts = stop_traffic(streams, self.pair);
        let (switched, retired) = match switched {
            Ok((time, retiring)) => (Ok(time), self.finish_retiring(retiring)),
            Err(e) => (Err(e), Ok(())),
        };
        let removed = self.agent.take().map(NodeAgent::remove).transpose();
        self.from.teardown();
        self.to.teardown();
        Ok(Row::of(
            self.pair,
            switched,
            counts,
            retired.and(removed.map(drop)),
        ))
    }
}

impl Row {
    /// The row of a pair that ran: its switch (how long it took), the
    /// traffic's counts, and what else went wrong; the first error is kept.
    fn of(
        pair: Pair,
        switched: Result<Duration, HarnessError>,
        counts: Result<Counts, HarnessError>,
        after: Result<(), HarnessError>,
    ) -> Row {
        let (switch_time, mut error) = match switched {
            Ok(t) => (t, None),
            Err(e) => (Duration::ZERO, Some(e.to_string())),
        };
        if let Err(e) = after {
            error.get_or_insert(e.to_string());
        }
        let counts = counts.unwrap_or_else(|e| {
            error.get_or_insert(e.to_string());
            Counts::default()
        });
        Row {
            pair,
            counts,
            switch_time,
            error,
        }
    }
}

/// One `__traffic` child of this executable per flow of `scenario`, in
/// the flow's source namespace of `topo` (and the client cgroup one of
/// `hooks` gives where its socket is the node's); returns once every
/// stream's long-lived sockets have had their first answer.
fn start_traffic(
    topo: &Topology,
    scenario: &Scenario,
    hooks: &[&dyn ModeHooks],
    timing: Timing,
) -> Result<Streams, HarnessError> {
    let mut clients = Vec::new();
    for flow in scenario.all_flows() {
        let Ok(Expected::Endpoints(endpoints)) = Expected::parse(&flow.output) else {
            return Err(setup(&format!("{}: output must name endpoints", flow.name)));
        };
        let place = if flow.from_node {
            crate::topology::Place::Node
        } else {
            topo.place_of(&flow.source_ip)
        };
        clients.push(Client {
            name: flow.name.clone(),
            netns: topo.netns(place),
            cgroup: hooks.iter().find_map(|h| h.client_cgroup(flow)),
            stream: crate::traffic::Stream {
                protocol: flow.protocol,
                source: flow.source_ip,
                dest: flow.destination(),
                endpoints: endpoints.into_iter().collect(),
                period: timing.period,
                timeout: timing.timeout,
                long_lived: LONG_LIVED,
            },
        });
    }
    Streams::start(&Program::this_executable()?, clients)
}

/// Stop the traffic and add up its counts; a flow that lost anything is
/// named on stderr with its counts and the first failures.
fn stop_traffic(streams: Streams, pair: Pair) -> Result<Counts, HarnessError> {
    let stopped = streams.stop();
    for (name, counts) in &stopped.streams {
        if !counts.clean() {
            eprintln!("{pair}: {name}: lost something: {counts}");
        }
    }
    for failure in &stopped.failures {
        eprintln!("{pair}: {failure}");
    }
    match stopped.errors.first() {
        Some(e) => Err(setup(&format!("a traffic child: {e}"))),
        None => Ok(stopped.total),
    }
}

fn setup(message: &str) -> HarnessError {
    HarnessError::Setup {
        what: "migration".to_string(),
        message: message.to_string(),
    }
}

/// Hands the switch the one dataplane the mode's hooks made.
struct OneDataplane(Mutex<Option<hooks::DataplaneFactory>>);

impl DataplaneFactory for OneDataplane {
    fn build(&self, mode: Mode) -> Result<Box<dyn Dataplane>, BackendError> {
        let made = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match made {
            Some(make) => make(),
            None => Err(BackendError::Unavailable {
                mode,
                reason: "the migration builds one dataplane per switch".to_string(),
            }),
        }
    }
}

/// The old mode of a switch while it drains (`Switched::retiring`).
type Retiring = Option<Box<dyn Dataplane>>;

/// How long the old mode may take to notice that the traffic stopped.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// On the agent thread: the agent's switch procedure, without a probe (the
/// traffic itself is the verification).
fn switch_on_agent(
    active: &mut Active,
    to: Mode,
    linked: &LinkedRuleset,
    settings: &Settings,
    factory: &OneDataplane,
) -> Result<Retiring, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // As the agent does: beside a draining eBPF, outside its masquerade ports.
    let mut settings = settings.clone();
    settings.masquerade_ports = masquerade_beside(to, active.as_deref());
    let input = SwitchInput {
        to,
        ruleset: linked,
        settings: &settings,
        probe: None,
    };
    let done = rt
        .block_on(switch_to(
            active,
            input,
            factory,
            &TcpProbe,
            &mut NoCheckpoints,
        ))
        .map_err(|e| e.to_string())?;
    match done.old_cleanup {
        Some(e) => Err(format!("removing the old mode: {e}")),
        None => Ok(done.retiring),
    }
}

/// The matrix records no checkpoints (it has no status to write).
struct NoCheckpoints;

impl switchyard_agent::switch::Checkpoints for NoCheckpoints {
    fn reached<'a>(
        &'a mut self,
        _checkpoint: &'a switchyard_agent::switch::Checkpoint,
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_every_ordered_pair_of_distinct_modes() {
        let pairs = Pair::all_of(&[Mode::Iptables, Mode::Nftables, Mode::Ebpf]);
        assert_eq!(pairs.len(), 6);
        assert!(pairs.iter().all(|p| p.from != Source::Mode(p.to)));
        assert_eq!(
            "ipvs:nftables".parse::<Pair>().map(|p| p.to),
            Ok(Mode::Nftables)
        );
        assert!("ipvs:ipvs".parse::<Pair>().is_err());
        assert_eq!(
            "kube-proxy-iptables:iptables".parse::<Pair>(),
            Ok(Pair {
                from: Source::KubeProxy(Mode::Iptables),
                to: Mode::Iptables
            })
        );
    }

    #[test]
    fn a_row_round_trips_through_its_line() {
        let row = Row {
            pair: "ipvs:iptables".parse().unwrap(),
            counts: Counts {
                new: 10,
                udp_lost: 1,
                exchanges: 5,
                ..Counts::default()
            },
            switch_time: Duration::from_micros(12345),
            error: Some("switch failed: no".to_string()),
        };
        assert_eq!(Row::parse_line(&row.line()), Ok(row.clone()));
        let clean = Row { error: None, ..row };
        assert_eq!(Row::parse_line(&clean.line()), Ok(clean));
    }
}
