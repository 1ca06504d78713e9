//! `switchyard diff`: one state in two modes — both modes' rules, the service
//! behaviour they implement, and where the modes' semantics differ.
//!
//! Both modes translate the same linked ruleset (`switchyard_api::policy::link`
//! decides every endpoint set, once), so the frontends and backend sets per
//! service port are the same by construction; they are listed from the linked
//! ruleset. What can differ is what a mode does *around* those frontends, as
//! kube-proxy's modes do. Each backend states those
//! ([`switchyard_dataplane::semantics`]); the differences are flagged for
//! every service port of the state they affect.

use std::sync::Arc;

use serde::Serialize;
use switchyard_agent::switch::DataplaneFactory;
use switchyard_api::Mode;
use switchyard_api::policy::LinkedServicePort;
use switchyard_dataplane::semantics;
use switchyard_dataplane::settings::Settings;

use crate::plan::{
    Cluster, DiagnosticView, NodeStatus, Placement, PlanError, exit, invalid_lines, pretty_json,
    render,
};
use crate::trace::{self, TraceCheck};

/// Exit code of `diff --fail-on-difference` when the modes behave differently.
pub const DIFFERENCE: u8 = 3;

/// What to compare.
#[derive(Clone, Debug)]
pub struct DiffRequest {
    pub from: Mode,
    pub to: Mode,
    pub node: Option<String>,
}

/// The behaviour both modes implement for one service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBehaviour {
    pub service_port: String,
    pub protocol: String,
    /// `ip:port` for cluster, external and load-balancer IPs; `nodePort N` for the node port.
    pub frontends: Vec<String>,
    /// Endpoints for traffic to the cluster IPs.
    pub from_pods: Vec<String>,
    /// Endpoints for traffic from outside (node port, external and load-balancer IPs).
    pub from_outside: Vec<String>,
    /// What happens to traffic that has no endpoint to use, when some has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_endpoint: Option<&'static str>,
}

/// A behaviour of one mode that the other does not share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SemanticDifference {
    /// What kind of traffic is affected.
    pub traffic: String,
    pub from: String,
    pub to: String,
    /// The service ports of this state it affects.
    pub affects: Vec<String>,
}

/// One node compared.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDiff {
    pub node: String,
    pub status: NodeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub from_rules: Vec<String>,
    pub to_rules: Vec<String>,
    pub services: Vec<ServiceBehaviour>,
    pub differences: Vec<SemanticDifference>,
    /// Each mode's plan traced against `services` (when its backend has a tracer).
    pub traces: Vec<TraceCheck>,
}

impl NodeDiff {
    /// The two modes would serve some traffic differently.
    pub fn differs(&self) -> bool {
        !self.differences.is_empty() || self.traces.iter().any(|t| !t.mismatches.is_empty())
    }
}

/// The whole `diff` result (`--format json` prints exactly this).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffReport {
    pub from: Mode,
    pub to: Mode,
    pub diagnostics: Vec<DiagnosticView>,
    pub problems: Vec<String>,
    pub nodes: Vec<NodeDiff>,
}

/// Compare `request.from` and `request.to` on the requested nodes. A node in
/// no pool is compared with default settings; a node in conflict is reported.
pub fn diff(
    cluster: &Cluster,
    request: &DiffRequest,
    factory: &dyn DataplaneFactory,
) -> Result<DiffReport, PlanError> {
    let mut nodes = Vec::new();
    for node in cluster.select(request.node.as_deref())? {
        let from = cluster.place(node, Some(request.from));
        let to = cluster.place(node, Some(request.to));
        let (Placement::Placed(from), Placement::Placed(to)) = (from, to) else {
            nodes.push(NodeDiff {
                node: kube::ResourceExt::name_any(node),
                status: NodeStatus::Conflict,
                pool: None,
                from_rules: Vec::new(),
                to_rules: Vec::new(),
                services: Vec::new(),
                differences: Vec::new(),
                traces: Vec::new(),
            });
            continue;
        };
        let services: Vec<ServiceBehaviour> =
            from.linked.services.iter().map(|s| behaviour(s)).collect();
        let differences = differences(&from.settings, &to.settings, &from.linked.services);
        nodes.push(NodeDiff {
            node: from.node.clone(),
            status: NodeStatus::Planned,
            pool: from.pool.clone(),
            from_rules: lines(&render(&from, factory)?),
            to_rules: lines(&render(&to, factory)?),
            services,
            differences,
            traces: vec![
                trace::check(&from.linked, &from.settings),
                trace::check(&to.linked, &to.settings),
            ],
        });
    }
    Ok(DiffReport {
        from: request.from,
        to: request.to,
        diagnostics: cluster.diagnostics.iter().map(Into::into).collect(),
        problems: cluster.problems(),
        nodes,
    })
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn behaviour(port: &LinkedServicePort) -> ServiceBehaviour {
    let rule = &port.rule;
    let mut frontends: Vec<String> = rule
        .cluster_ips
        .iter()
        .chain(&rule.external_ips)
        .chain(&rule.load_balancer_ips)
        .map(|ip| std::net::SocketAddr::new(*ip, rule.port).to_string())
        .collect();
    if let Some(node_port) = rule.node_port {
        frontends.push(format!("nodePort {node_port}"));
    }
    ServiceBehaviour {
        service_port: rule.service_port_name(),
        protocol: rule.protocol.to_string(),
        frontends,
        from_pods: port.internal_endpoints().map(|b| b.endpoint()).collect(),
        from_outside: if rule.has_external() {
            port.external_endpoints().map(|b| b.endpoint()).collect()
        } else {
            Vec::new()
        },
        no_endpoint: if !port.has_any_endpoints {
            Some("rejected: the service has no usable endpoint")
        } else if rule.has_external() && port.external_endpoints().next().is_none() {
            Some("dropped from outside: no endpoint on this node (externalTrafficPolicy Local)")
        } else if port.internal_endpoints().next().is_none() {
            Some("dropped from pods: no endpoint on this node (internalTrafficPolicy Local)")
        } else {
            None
        },
    }
}

fn differences(
    from: &Settings,
    to: &Settings,
    services: &[Arc<LinkedServicePort>],
) -> Vec<SemanticDifference> {
    let (a, b) = (semantics::of(from), semantics::of(to));
    let names = |keep: &dyn Fn(&LinkedServicePort) -> bool| -> Vec<String> {
        services
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.rule.service_port_name())
            .collect()
    };
    let mut out = Vec::new();
    let mut flag = |traffic: &str, from: String, to: String, affects: Vec<String>| {
        if from != to && !affects.is_empty() {
            out.push(SemanticDifference {
                traffic: traffic.to_string(),
                from,
                to,
                affects,
            });
        }
    };
    flag(
        "to a cluster IP on a port no service uses",
        a.unknown_cluster_ip_port.to_string(),
        b.unknown_cluster_ip_port.to_string(),
        names(&|s| !s.rule.cluster_ips.is_empty()),
    );
    flag(
        "to a node port",
        format!("served on {}", a.node_port_addresses),
        format!("served on {}", b.node_port_addresses),
        names(&|s| s.rule.node_port.is_some()),
    );
    let localhost = |yes: bool| if yes { "answered" } else { "not answered" }.to_string();
    flag(
        "to a node port on 127.0.0.1",
        localhost(a.localhost_node_ports),
        localhost(b.localhost_node_ports),
        names(&|s| s.rule.node_port.is_some()),
    );
    out
}

impl DiffReport {
    /// Exit code: invalid input and conflicts as `plan`; with `fail_on_difference`,
    /// [`DIFFERENCE`] when any node's modes differ.
    pub fn exit_code(&self, fail_on_difference: bool) -> u8 {
        if !self.diagnostics.is_empty() || !self.problems.is_empty() {
            exit::INVALID
        } else if self.nodes.iter().any(|n| n.status == NodeStatus::Conflict) {
            exit::CONFLICT
        } else if fail_on_difference && self.nodes.iter().any(NodeDiff::differs) {
            DIFFERENCE
        } else {
            exit::OK
        }
    }

    pub fn to_json(&self) -> String {
        pretty_json(self)
    }

    /// Both rule sets side by side, then the behaviour and the differences.
    pub fn to_text(&self) -> String {
        let mut out = invalid_lines(&self.diagnostics, &self.problems);
        for node in &self.nodes {
            if node.status == NodeStatus::Conflict {
                out.push_str(&format!(
                    "# node {}: CONFLICT: selected by several ProxyConfigs of equal priority; not compared\n",
                    node.node
                ));
                continue;
            }
            out.push_str(&format!("# node {}\n", node.node));
            out.push_str(&side_by_side(
                self.from.as_str(),
                &node.from_rules,
                self.to.as_str(),
                &node.to_rules,
            ));
            out.push_str(&format!(
                "\n## service behaviour (the same in {} and {}: both translate one linked ruleset)\n",
                self.from, self.to
            ));
            out.extend(node.services.iter().map(behaviour_line));
            out.push_str("\n## traced through each mode's plan\n");
            out.extend(node.traces.iter().map(trace_lines));
            out.push_str(&self.differences_text(node));
        }
        out
    }

    fn differences_text(&self, node: &NodeDiff) -> String {
        if node.differences.is_empty() {
            return format!(
                "\n## no semantic difference between {} and {} for this state\n",
                self.from, self.to
            );
        }
        let mut out = format!("\n## semantic differences ({} -> {})\n", self.from, self.to);
        for d in &node.differences {
            out.push_str(&format!(
                "DIFFERENT traffic {}: {} -> {} (affects {})\n",
                d.traffic,
                d.from,
                d.to,
                d.affects.join(", ")
            ));
        }
        out
    }
}

fn behaviour_line(s: &ServiceBehaviour) -> String {
    let mut out = format!(
        "{} {}: frontends {}; from pods -> [{}]",
        s.service_port,
        s.protocol,
        s.frontends.join(", "),
        s.from_pods.join(", "),
    );
    if !s.from_outside.is_empty() {
        out.push_str(&format!(
            "; from outside -> [{}]",
            s.from_outside.join(", ")
        ));
    }
    if let Some(what) = s.no_endpoint {
        out.push_str(&format!("; {what}"));
    }
    out.push('\n');
    out
}

fn trace_lines(t: &TraceCheck) -> String {
    if !t.traced {
        return format!(
            "{}: not traced (the backend exposes no packet tracer); {} probes skipped\n",
            t.mode, t.probes
        );
    }
    let mut out = format!(
        "{}: {} probes, {} not as expected\n",
        t.mode,
        t.probes,
        t.mismatches.len()
    );
    for m in &t.mismatches {
        out.push_str(&format!(
            "MISMATCH {}: expected {:?}, traced {:?}\n",
            m.probe, m.expected, m.traced
        ));
    }
    out
}

/// Two columns with headers; the left one as wide as its longest line, up to 90.
fn side_by_side(left_name: &str, left: &[String], right_name: &str, right: &[String]) -> String {
    const MAX: usize = 90;
    let width = left
        .iter()
        .map(|l| l.chars().count())
        .chain([left_name.len()])
        .max()
        .unwrap_or(0)
        .min(MAX);
    // Longer lines overflow their column rather than lose text.
    let cell = |text: &str| -> String { format!("{text:<width$}") };
    let mut out = format!("{} | {right_name}\n", cell(left_name));
    out.push_str(&format!("{}-+-{}\n", "-".repeat(width), "-".repeat(width)));
    for i in 0..left.len().max(right.len()) {
        let l = left.get(i).map_or("", String::as_str);
        let r = right.get(i).map_or("", String::as_str);
        out.push_str(format!("{} | {r}", cell(l)).trim_end());
        out.push('\n');
    }
    out
}
