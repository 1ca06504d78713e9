//! The scenario file: a node, Services and EndpointSlices, flows with expected
//! outcomes (kube-proxy's packet-flow test semantics), and optional later steps.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Deserialize, Serialize};
use switchyard_api::Mode;
use switchyard_api::ruleset::{Cidr, Protocol};

/// A whole scenario file (written back as one by the random states and
/// their reproducers).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scenario {
    pub node: NodeSpec,
    /// The initial state and its flows.
    #[serde(flatten)]
    pub initial: Step,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

/// A complete state of the cluster with its own flows.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub endpoint_slices: Vec<EndpointSlice>,
    #[serde(default)]
    pub flows: Vec<Flow>,
}

impl Step {
    fn stage(&self, label: String) -> Stage<'_> {
        Stage {
            label,
            services: &self.services,
            endpoint_slices: &self.endpoint_slices,
            flows: &self.flows,
        }
    }
}

/// The node under test.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// `ip/prefix` on the node's uplink.
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(
        default,
        rename = "clusterCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cluster_cidrs: Vec<Cidr>,
    #[serde(
        default,
        rename = "serviceCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cidrs: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port_addresses: Option<Vec<Cidr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localhost_node_ports: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub masquerade_all: bool,
}

/// One node address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub ip: IpAddr,
    pub prefix: u8,
}

/// A scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading scenario {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing scenario {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("scenario {path}: {what}")]
    Invalid { path: String, what: String },
    #[error("writing scenario {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serializing scenario {path}: {source}")]
    Serialize {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
}

impl NodeSpec {
    pub fn parsed_addresses(&self) -> Result<Vec<NodeAddress>, String> {
        self.addresses
            .iter()
            .map(|text| {
                let (ip, prefix) = text.split_once('/').unwrap_or((text, ""));
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| format!("node address {text:?} is not an IP"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let prefix = if prefix.is_empty() {
                    max
                } else {
                    prefix
                        .parse()
                        .ok()
                        .filter(|p| *p <= max)
                        .ok_or_else(|| format!("node address {text:?} has a bad prefix"))?
                };
                Ok(NodeAddress { ip, prefix })
            })
            .collect()
    }
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

/// One connection to make and what must happen to it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flow {
    pub name: String,
    #[serde(rename = "sourceIP")]
    pub source_ip: IpAddr,
    #[serde(rename = "destIP")]
    pub dest_ip: IpAddr,
    pub dest_port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masq: Option<bool>,
    /// Reuse this client port for every attempt (and across steps): the same
    /// 5-tuple, so stale conntrack entries show. Attempts then run one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    /// The connection starts on the node (its namespace and, in eBPF mode,
    /// its cgroup) with `sourceIP` as source even when that is not a node
    /// address: traffic something else on the node has SNATed, e.g. to a
    /// load-balancer IP. Such an address is added to the node's loopback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_node: bool,
    /// Where a mode differs by design (as kube-proxy's own mode does, e.g.
    /// nftables REJECTs unserved ClusterIP ports): that mode's expectation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_mode: BTreeMap<Mode, ModeExpectation>,
}

/// A flow's `output` and `masq` for one mode.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModeExpectation {
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masq: Option<bool>,
}

impl Flow {
    /// This flow as `mode` must carry it.
    pub fn for_mode(&self, mode: Mode) -> Flow {
        let mut flow = self.clone();
        if let Some(e) = self.by_mode.get(&mode) {
            flow.output = e.output.clone();
            flow.masq = e.masq;
        }
        flow
    }

    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(self.dest_ip, self.dest_port)
    }
}

/// What a flow's `output` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// New connections may reach exactly these endpoints.
    Endpoints(BTreeSet<SocketAddr>),
    Reject,
    Drop,
    /// Explicitly accepted by a filter rule: reaches its destination untranslated.
    Accept,
    /// No rule matched: reaches its destination untranslated.
    Untranslated,
    /// Whatever kube-proxy does with it (`output: reference`): the flow
    /// passes when Switchyard's outcome is kube-proxy's; it needs a
    /// kube-proxy reference node (`--reference kube-proxy`).
    Reference,
}

impl Expected {
    pub fn parse(text: &str) -> Result<Expected, String> {
        Ok(match text.trim() {
            "" => Expected::Untranslated,
            "REJECT" => Expected::Reject,
            "DROP" => Expected::Drop,
            "ACCEPT" => Expected::Accept,
            "reference" => Expected::Reference,
            list => Expected::Endpoints(
                list.split(',')
                    .map(|e| {
                        e.trim()
                            .parse::<SocketAddr>()
                            .map_err(|_| format!("output endpoint {e:?} is not ip:port"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Endpoints(set) => {
                let list: Vec<String> = set.iter().map(ToString::to_string).collect();
                f.write_str(&list.join(", "))
            }
            Expected::Reject => f.write_str("REJECT"),
            Expected::Drop => f.write_str("DROP"),
            Expected::Accept => f.write_str("ACCEPT"),
            Expected::Untranslated => f.write_str("\"\" (untranslated)"),
            Expected::Reference => f.write_str("kube-proxy's outcome"),
        }
    }
}

/// A state of the cluster to apply and the flows to check in it.
#[derive(Clone, Debug)]
pub struct Stage<'a> {
    pub label: String,
    pub services: &'a [Service],
    pub endpoint_slices: &'a [EndpointSlice],
    pub flows: &'a [Flow],
}

impl Scenario {
    pub fn load(path: &str) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_string(),
            source,
        })?;
        Scenario::parse(path, &text)
    }

    /// A scenario from its text; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let parse_err = |source| ScenarioError::Parse {
            path: path.to_string(),
            source,
        };
        let value: serde_norway::Value = serde_norway::from_str(text).map_err(parse_err)?;
        // `flatten` cannot deny unknown fields itself.
        if let Some(map) = value.as_mapping() {
            let known = ["node", "services", "endpointSlices", "flows", "steps"];
            if let Some(key) = map
                .keys()
                .find(|k| !known.contains(&k.as_str().unwrap_or("")))
            {
                return Err(ScenarioError::Invalid {
                    path: path.to_string(),
                    what: format!("unknown top-level field {key:?}"),
                });
            }
        }
        let scenario: Scenario = serde_norway::from_value(value).map_err(parse_err)?;
        let invalid = |what: String| ScenarioError::Invalid {
            path: path.to_string(),
            what,
        };
        scenario.node.parsed_addresses().map_err(invalid)?;
        scenario.check_node_sources().map_err(invalid)?;
        for flow in scenario.all_flows() {
            for output in
                std::iter::once(&flow.output).chain(flow.by_mode.values().map(|e| &e.output))
            {
                Expected::parse(output)
                    .map_err(|e| invalid(format!("flow {:?}: {e}", flow.name)))?;
            }
        }
        Ok(scenario)
    }

    /// Write this scenario to `path`, after `header` (comment lines).
    pub fn save(&self, path: &Path, header: &str) -> Result<(), ScenarioError> {
        let name = path.display().to_string();
        let yaml = serde_norway::to_string(self).map_err(|source| ScenarioError::Serialize {
            path: name.clone(),
            source,
        })?;
        let comment: String = header.lines().map(|l| format!("# {l}\n")).collect();
        std::fs::write(path, comment + &yaml)
            .map_err(|source| ScenarioError::Write { path: name, source })
    }

    /// The initial state, then each step.
    pub fn stages(&self) -> Vec<Stage<'_>> {
        let mut out = vec![self.initial.stage(String::new())];
        out.extend(
            self.steps
                .iter()
                .enumerate()
                .map(|(i, s)| s.stage(format!("step {}: ", i + 1))),
        );
        out
    }

    pub fn all_flows(&self) -> impl Iterator<Item = &Flow> {
        self.initial
            .flows
            .iter()
            .chain(self.steps.iter().flat_map(|s| &s.flows))
    }

    /// The sources of `fromNode` flows that are not node addresses: the lab
    /// puts them on the node's loopback.
    pub fn node_extra_addresses(&self) -> BTreeSet<IpAddr> {
        let node: BTreeSet<IpAddr> = self
            .node
            .parsed_addresses()
            .unwrap_or_default()
            .iter()
            .map(|a| a.ip)
            .collect();
        self.all_flows()
            .filter(|f| f.from_node && !f.source_ip.is_loopback())
            .map(|f| f.source_ip)
            .filter(|ip| !node.contains(ip))
            .collect()
    }

    /// An address on the node's loopback cannot also be a pod's or an outside
    /// client's: every address lives in one place.
    fn check_node_sources(&self) -> Result<(), String> {
        let extra = self.node_extra_addresses();
        let endpoints = self
            .all_slices()
            .flat_map(|s| &s.endpoints)
            .flat_map(|ep| &ep.addresses)
            .filter_map(|a| a.parse::<IpAddr>().ok());
        let elsewhere = self
            .all_flows()
            .filter(|f| !f.from_node)
            .map(|f| f.source_ip)
            .chain(endpoints);
        for ip in elsewhere {
            if extra.contains(&ip) {
                return Err(format!(
                    "{ip} is the source of a fromNode flow and also a pod's or an outside \
                     client's address"
                ));
            }
        }
        Ok(())
    }

    pub fn all_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.initial
            .endpoint_slices
            .iter()
            .chain(self.steps.iter().flat_map(|s| &s.endpoint_slices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node: {name: n, addresses: [192.168.0.2/24]}\n";

    #[test]
    fn a_from_node_source_that_is_not_a_node_address_goes_on_the_node() {
        let text = format!(
            "{NODE}flows:\n\
             - {{name: a, fromNode: true, sourceIP: 5.6.7.8, destIP: 5.6.7.8, destPort: 80, output: DROP}}\n\
             - {{name: b, fromNode: true, sourceIP: 192.168.0.2, destIP: 5.6.7.8, destPort: 80, output: DROP}}\n"
        );
        let s = Scenario::parse("t", &text).unwrap();
        let extra: Vec<IpAddr> = s.node_extra_addresses().into_iter().collect();
        assert_eq!(extra, ["5.6.7.8".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_from_node_source_cannot_also_be_an_outside_client() {
        let text = format!(
            "{NODE}flows:\n\
             - {{name: a, fromNode: true, sourceIP: 5.6.7.8, destIP: 1.2.3.4, destPort: 80, output: DROP}}\n\
             - {{name: b, sourceIP: 5.6.7.8, destIP: 1.2.3.4, destPort: 80, output: DROP}}\n"
        );
        let err = Scenario::parse("t", &text).unwrap_err().to_string();
        assert!(
            err.contains("5.6.7.8 is the source of a fromNode flow"),
            "{err}"
        );
    }
}
