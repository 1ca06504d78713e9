//! `switchyard plan`: what each node would program, from cluster state alone.
//!
//! The real pipeline, in order: the compiler (Services + EndpointSlices →
//! ruleset, with its diagnostics), the operator's pool assignment (which
//! ProxyConfig wins the node, and so its mode and settings), the agent's
//! settings resolution and node facts, `link` for the node, and the mode's
//! backend `render`. Nothing here decides policy or routing itself.

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use serde::Serialize;
use switchyard_agent::node::{node_info, pod_cidrs};
use switchyard_agent::switch::DataplaneFactory;
use switchyard_api::policy::{LinkedRuleset, link};
use switchyard_api::ruleset::Ruleset;
use switchyard_api::validation::check_node;
use switchyard_api::{Mode, ProxyConfig};
use switchyard_compiler::{CompileSettings, Diagnostic, Objects, Snapshot, compile};
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{BackendError, ipvs};
use switchyard_operator::pools::{Assignment, assign_pools};

/// Process exit codes of `plan` and `diff`.
pub mod exit {
    pub const OK: u8 = 0;
    /// Input that cannot be used as is (loader errors, compiler diagnostics, bad settings).
    pub const INVALID: u8 = 1;
    /// A node selected by several pools of the same, highest priority.
    pub const CONFLICT: u8 = 2;
}

/// Which nodes to plan, and an optional mode override.
#[derive(Clone, Debug, Default)]
pub struct PlanRequest {
    /// Plan only this node; every Node of the input when `None`.
    pub node: Option<String>,
    /// Render this mode instead of the pool's (the pool's settings still apply).
    pub mode: Option<Mode>,
}

/// Why nothing could be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the input has no Node: add the Nodes to plan for (e.g. `kubectl get nodes -o yaml`)")]
    NoNodes,
    #[error("Node {name:?} is not in the input (it has: {known})")]
    UnknownNode { name: String, known: String },
    #[error("building the {mode} backend: {source}")]
    Backend {
        mode: Mode,
        #[source]
        source: BackendError,
    },
}

/// The state, compiled once for every node planned.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub configs: Vec<ProxyConfig>,
    pub ruleset: Ruleset,
    pub diagnostics: Vec<Diagnostic>,
    pub assignment: Assignment,
    /// Nodes left out: their name or zone is not what the API server accepts.
    pub skipped_nodes: Vec<String>,
}

impl Cluster {
    /// Compile the services and assign the nodes to pools. A Node whose name
    /// or zone the API server would refuse is left out (and reported).
    pub fn new(objects: Objects) -> Cluster {
        let configs = objects.proxy_configs.clone();
        let (nodes, skipped): (Vec<Node>, Vec<Node>) = objects
            .nodes
            .iter()
            .cloned()
            .partition(|n| check_node(&node_info(n)).is_ok());
        let skipped_nodes = skipped
            .iter()
            .filter_map(|n| check_node(&node_info(n)).err())
            .map(|e| format!("Node: {e}; node skipped"))
            .collect();
        let compiled = compile(&Snapshot::from(objects), &CompileSettings::default());
        let assignment = assign_pools(&nodes, &configs);
        Cluster {
            nodes,
            configs,
            ruleset: compiled.ruleset,
            diagnostics: compiled.diagnostics,
            assignment,
            skipped_nodes,
        }
    }

    /// The nodes a request names, in input order.
    pub fn select(&self, node: Option<&str>) -> Result<Vec<&Node>, PlanError> {
        if self.nodes.is_empty() {
            return Err(PlanError::NoNodes);
        }
        let Some(name) = node else {
            return Ok(self.nodes.iter().collect());
        };
        match self.nodes.iter().find(|n| n.name_any() == name) {
            Some(n) => Ok(vec![n]),
            None => Err(PlanError::UnknownNode {
                name: name.to_string(),
                known: self
                    .nodes
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Problems with the ProxyConfigs themselves (unusable selectors) and
    /// the Nodes left out.
    pub fn problems(&self) -> Vec<String> {
        self.assignment
            .invalid_selectors
            .iter()
            .map(|(pool, why)| format!("ProxyConfig {pool}: field `spec.nodeSelector`: {why}"))
            .chain(self.skipped_nodes.iter().cloned())
            .collect()
    }

    /// Where `node` lands: its pool, the mode and settings it runs, linked ruleset.
    pub fn place(&self, node: &Node, mode_override: Option<Mode>) -> Placement {
        let name = node.name_any();
        let conflict = self
            .assignment
            .conflicts
            .values()
            .flatten()
            .find(|c| c.node == name);
        if let Some(c) = conflict {
            return Placement::Conflict {
                node: name,
                pools: c.pools.clone(),
                priority: c.priority,
            };
        }
        let pool = self.assignment.assigned.get(&name).and_then(|pool| {
            self.configs
                .iter()
                .find(|c| c.name_any() == *pool)
                .map(|c| (pool.clone(), c))
        });
        let (mode, source) = match (mode_override, &pool) {
            (Some(m), _) => (m, ModeSource::Override),
            (None, Some((_, config))) => (config.spec.mode, ModeSource::Pool),
            (None, None) => return Placement::Unassigned { node: name },
        };
        let spec = pool.map(|(_, c)| c.spec.clone()).unwrap_or_default();
        let (settings, problems) = Settings::from_spec(&spec, mode, &pod_cidrs(node));
        let pool_name = self.assignment.assigned.get(&name).cloned();
        let settings_problems = problems
            .iter()
            .map(|p| match &pool_name {
                Some(pool) => format!("{pool}: {p}"),
                None => p.to_string(),
            })
            .collect();
        Placement::Placed(Box::new(Placed {
            node: name,
            pool: pool_name,
            mode,
            mode_source: source,
            settings,
            settings_problems,
            linked: link(&self.ruleset, &node_info(node)),
        }))
    }
}

/// Where the mode of a planned node comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ModeSource {
    Pool,
    Override,
}

/// A node with its pool, mode, settings and linked ruleset.
#[derive(Debug)]
pub struct Placed {
    pub node: String,
    pub pool: Option<String>,
    pub mode: Mode,
    pub mode_source: ModeSource,
    pub settings: Settings,
    /// Settings of the pool that could not be used (each names the field).
    pub settings_problems: Vec<String>,
    pub linked: LinkedRuleset,
}

/// The outcome of placing one node.
#[derive(Debug)]
pub enum Placement {
    Placed(Box<Placed>),
    /// Several pools of equal, highest priority select the node.
    Conflict {
        node: String,
        pools: Vec<String>,
        priority: i32,
    },
    /// No pool selects the node and no mode was given: it is left alone.
    Unassigned {
        node: String,
    },
}

/// What `plan` could say about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeStatus {
    Planned,
    Conflict,
    Unassigned,
}

/// One node's plan, as printed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    pub node: String,
    pub status: NodeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_source: Option<ModeSource>,
    /// The pools in conflict over the node, and their priority.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicting_pools: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub settings_problems: Vec<String>,
    pub service_ports: usize,
    /// The rules in the mode's native form, one line each.
    pub rules: Vec<String>,
}

/// A compile diagnostic, as printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiagnosticView {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub reason: &'static str,
    pub message: String,
    /// As the text report prints it: the object's name escaped (an invalid
    /// one may hold a line break).
    #[serde(skip)]
    pub line: String,
}

impl From<&Diagnostic> for DiagnosticView {
    fn from(d: &Diagnostic) -> DiagnosticView {
        DiagnosticView {
            kind: d.kind.as_str(),
            namespace: d.namespace.clone(),
            name: d.name.clone(),
            reason: d.reason.as_str(),
            message: d.message.clone(),
            line: d.to_string(),
        }
    }
}

/// The whole `plan` result (`--format json` prints exactly this).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanReport {
    pub diagnostics: Vec<DiagnosticView>,
    /// Problems with ProxyConfigs (selectors that cannot be used) and Nodes left out.
    pub problems: Vec<String>,
    pub nodes: Vec<NodePlan>,
    pub exit_code: u8,
}

/// Plan the requested nodes.
pub fn plan(
    cluster: &Cluster,
    request: &PlanRequest,
    factory: &dyn DataplaneFactory,
) -> Result<PlanReport, PlanError> {
    let mut nodes = Vec::new();
    for node in cluster.select(request.node.as_deref())? {
        nodes.push(node_plan(cluster.place(node, request.mode), factory)?);
    }
    let diagnostics: Vec<DiagnosticView> = cluster.diagnostics.iter().map(Into::into).collect();
    let problems = cluster.problems();
    let invalid = !diagnostics.is_empty()
        || !problems.is_empty()
        || nodes.iter().any(|n| !n.settings_problems.is_empty());
    let exit_code = if invalid {
        exit::INVALID
    } else if nodes.iter().any(|n| n.status == NodeStatus::Conflict) {
        exit::CONFLICT
    } else {
        exit::OK
    };
    Ok(PlanReport {
        diagnostics,
        problems,
        nodes,
        exit_code,
    })
}

/// Render a placed node with its mode's backend.
///
/// The IPVS backend opens its netlink family when it is built, which fails on
/// a machine without `ip_vs` (a CI runner reviewing a pull request); its
/// render is pure, so then it is called directly.
pub fn render(placed: &Placed, factory: &dyn DataplaneFactory) -> Result<String, PlanError> {
    match factory.build(placed.mode) {
        Ok(backend) => Ok(backend.render_text(&placed.linked, &placed.settings)),
        Err(BackendError::Unavailable {
            mode: Mode::Ipvs, ..
        }) => Ok(ipvs::render::render(&placed.linked, &placed.settings).to_string()),
        Err(source) => Err(PlanError::Backend {
            mode: placed.mode,
            source,
        }),
    }
}

fn node_plan(placement: Placement, factory: &dyn DataplaneFactory) -> Result<NodePlan, PlanError> {
    let empty = |node: String, status| NodePlan {
        node,
        status,
        pool: None,
        mode: None,
        mode_source: None,
        conflicting_pools: Vec::new(),
        priority: None,
        settings_problems: Vec::new(),
        service_ports: 0,
        rules: Vec::new(),
    };
    Ok(match placement {
        Placement::Conflict {
            node,
            pools,
            priority,
        } => NodePlan {
            conflicting_pools: pools,
            priority: Some(priority),
            ..empty(node, NodeStatus::Conflict)
        },
        Placement::Unassigned { node } => empty(node, NodeStatus::Unassigned),
        Placement::Placed(placed) => {
            let text = render(&placed, factory)?;
            NodePlan {
                pool: placed.pool.clone(),
                mode: Some(placed.mode),
                mode_source: Some(placed.mode_source),
                settings_problems: placed.settings_problems.clone(),
                service_ports: placed.linked.services.len(),
                rules: text.lines().map(str::to_string).collect(),
                ..empty(placed.node.clone(), NodeStatus::Planned)
            }
        }
    })
}

/// The `invalid: …` lines for compile diagnostics and ProxyConfig problems.
pub(crate) fn invalid_lines(diagnostics: &[DiagnosticView], problems: &[String]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&format!("invalid: {}\n", d.line));
    }
    for p in problems {
        out.push_str(&format!("invalid: {p}\n"));
    }
    out
}

/// A report as pretty JSON with a final newline.
pub(crate) fn pretty_json<T: Serialize>(report: &T) -> String {
    // Reports are plain data (strings, numbers, lists): serializing cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_default() + "\n"
}

impl PlanReport {
    /// The human form: diagnostics first, then per node a header and its rules.
    pub fn to_text(&self) -> String {
        let mut out = invalid_lines(&self.diagnostics, &self.problems);
        for node in &self.nodes {
            out.push_str(&node.header());
            for p in &node.settings_problems {
                out.push_str(&format!("# invalid: ProxyConfig {p}\n"));
            }
            for line in &node.rules {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub fn to_json(&self) -> String {
        pretty_json(self)
    }
}

impl NodePlan {
    fn header(&self) -> String {
        match self.status {
            NodeStatus::Conflict => format!(
                "# node {}: CONFLICT: selected by ProxyConfigs {} with equal priority {}; the node stays where it is\n",
                self.node,
                self.conflicting_pools.join(", "),
                self.priority.unwrap_or_default()
            ),
            NodeStatus::Unassigned => format!(
                "# node {}: no ProxyConfig selects it; it is left alone (pass --mode to render one)\n",
                self.node
            ),
            NodeStatus::Planned => {
                let pool = match (&self.pool, self.mode_source) {
                    (Some(p), Some(ModeSource::Override)) => {
                        format!("pool {p}, mode overridden by --mode")
                    }
                    (Some(p), _) => format!("pool {p}"),
                    (None, _) => "no pool (mode from --mode, default settings)".to_string(),
                };
                let mode = self.mode.map(Mode::as_str).unwrap_or_default();
                format!(
                    "# node {}: {pool}; mode {mode}; {} service ports\n",
                    self.node, self.service_ports
                )
            }
        }
    }
}
