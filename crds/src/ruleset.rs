//! The mode-neutral, fully resolved ruleset the compiler produces and every
//! backend consumes.
//!
//! One [`ServicePortRule`] per (Service, port). Everything a node needs is here,
//! with policy inputs resolved to plain values: the agent's link step
//! ([`crate::policy`]) decides which endpoints a given node uses, once, for all
//! backends. Ids are assigned by the compiler and stay stable while the object
//! exists, so every node's eBPF maps agree.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::addresses::{CIDR_MAX_LENGTH, IP_MAX_LENGTH, cidr_pattern, ip_pattern};
use crate::validation::limits::*;
use crate::validation::names::{
    DNS1035_LABEL_PATTERN, DNS1123_LABEL_PATTERN, DNS1123_SUBDOMAIN_PATTERN, LABEL_MAX_LENGTH,
    LABEL_VALUE_PATTERN, OPTIONAL_DNS1123_LABEL_PATTERN, SUBDOMAIN_MAX_LENGTH,
};
use crate::validation::schema::traffic_distribution_pattern;

/// Transport protocol of a service port.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The lower-case name iptables, nftables and ipset use.
    pub fn as_lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IANA protocol number (IPPROTO_*).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// `spec.internalTrafficPolicy` / `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// IP family of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

/// An address prefix such as `10.0.0.0/8` or `2001:db8::/64`, serialized as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a text is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {text:?}: {reason}")]
pub struct CidrError {
    pub text: String,
    pub reason: &'static str,
}

impl Cidr {
    /// A prefix; host bits of `addr` are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > max {
            return Err(CidrError {
                text: format!("{addr}/{prefix}"),
                reason: "prefix length too long for the address family",
            });
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// The single-address prefix (/32 or /128) of `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Cidr { addr, prefix }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self.family() && mask(*ip, self.prefix) == self.addr
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let err = |reason| CidrError {
            text: text.to_string(),
            reason,
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err("not an IP address"))?;
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| err("prefix length is not a number"))?,
            None => Cidr::host(addr).prefix,
        };
        Cidr::new(addr, prefix).map_err(|e| err(e.reason))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "An IP prefix in CIDR notation, e.g. 10.0.0.0/8 or 2001:db8::/64.",
            "pattern": cidr_pattern(),
            "maxLength": CIDR_MAX_LENGTH,
        })
    }
}

/// ClientIP session affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` (default 10800).
    #[schemars(range(min = 1, max = MAX_AFFINITY_TIMEOUT_SECONDS))]
    pub timeout_seconds: u32,
}

/// One endpoint of a service port, with the facts a node needs to decide
/// whether to use it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Stable id, unique across the ruleset while this endpoint exists.
    #[schemars(range(max = u32::MAX))]
    pub id: u32,
    /// The endpoint's first address.
    #[schemars(regex(pattern = ip_pattern()), length(max = IP_MAX_LENGTH))]
    pub ip: IpAddr,
    /// The target port (the EndpointSlice port matching the service port).
    #[schemars(range(min = 1))]
    pub port: u16,
    /// The node the endpoint runs on (`nodeName`), for Local traffic policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_SUBDOMAIN_PATTERN), length(max = SUBDOMAIN_MAX_LENGTH))]
    pub node_name: Option<String>,
    /// The endpoint's zone, for topology hints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LABEL_VALUE_PATTERN), length(max = LABEL_MAX_LENGTH))]
    pub zone: Option<String>,
    /// `conditions.ready` (nil means true).
    pub ready: bool,
    /// `conditions.serving` (nil means the value of ready).
    pub serving: bool,
    /// `conditions.terminating` (nil means false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminating: bool,
    /// `hints.forZones`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_HINTS),
        inner(regex(pattern = LABEL_VALUE_PATTERN), length(max = LABEL_MAX_LENGTH))
    )]
    pub zone_hints: Vec<String>,
    /// `hints.forNodes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_HINTS),
        inner(regex(pattern = DNS1123_SUBDOMAIN_PATTERN), length(max = SUBDOMAIN_MAX_LENGTH))
    )]
    pub node_hints: Vec<String>,
}

impl Endpoint {
    /// A ready, serving endpoint on no particular node, without hints.
    pub fn new(id: u32, ip: IpAddr, port: u16) -> Endpoint {
        Endpoint {
            id,
            ip,
            port,
            node_name: None,
            zone: None,
            ready: true,
            serving: true,
            terminating: false,
            zone_hints: Vec::new(),
            node_hints: Vec::new(),
        }
    }

    /// `ip:port`, IPv6 in brackets, as kube-proxy and the scenario files write endpoints.
    pub fn endpoint(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        }
    }
}

/// One (Service, port): every frontend that reaches it, its policies, and all
/// of its candidate backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortRule {
    /// Stable id, unique across the ruleset while this service port exists.
    #[schemars(range(max = u32::MAX))]
    pub id: u32,
    /// The Service's namespace.
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = LABEL_MAX_LENGTH))]
    pub namespace: String,
    /// The Service's name.
    #[schemars(regex(pattern = DNS1035_LABEL_PATTERN), length(max = LABEL_MAX_LENGTH))]
    pub name: String,
    /// The port's name; empty for a single unnamed port.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(
        regex(pattern = OPTIONAL_DNS1123_LABEL_PATTERN),
        length(max = LABEL_MAX_LENGTH)
    )]
    pub port_name: String,
    pub protocol: Protocol,
    /// The service port (the VIP side).
    #[schemars(range(min = 1))]
    pub port: u16,
    /// `spec.clusterIPs`, both families.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_CLUSTER_IPS),
        inner(regex(pattern = ip_pattern()), length(max = IP_MAX_LENGTH))
    )]
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_EXTERNAL_IPS),
        inner(regex(pattern = ip_pattern()), length(max = IP_MAX_LENGTH))
    )]
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`, except those with `ipMode: Proxy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_LOAD_BALANCER_IPS),
        inner(regex(pattern = ip_pattern()), length(max = IP_MAX_LENGTH))
    )]
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`: who may reach the load-balancer IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SOURCE_RANGES))]
    pub load_balancer_source_ranges: Vec<Cidr>,
    /// The port's `nodePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub node_port: Option<u16>,
    /// `spec.healthCheckNodePort` (externalTrafficPolicy Local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub health_check_node_port: Option<u16>,
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// `spec.trafficDistribution`, for display; routing follows the endpoints'
    /// hints as kube-proxy does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = traffic_distribution_pattern()))]
    pub traffic_distribution: Option<String>,
    // `backends` on the wire: the name predates the rename, and the wire format stays.
    /// Every endpoint of the port in the cluster, with the facts a node needs
    /// to pick its own (node, zone, conditions, hints).
    #[serde(rename = "backends", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ENDPOINTS_PER_PORT))]
    pub endpoints: Vec<Endpoint>,
    /// The newest `endpoints.kubernetes.io/last-change-trigger-time` of the
    /// service's EndpointSlices: when the change these endpoints reflect was
    /// made (a pod or the Service changed). Agents measure network programming
    /// latency from it, as kube-proxy does. Absent from rulesets of older
    /// operators and for slices without the annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_trigger_time: Option<MicroTime>,
}

impl ServicePortRule {
    /// A service port with no frontends, no endpoints and default policies;
    /// fill in the rest with struct update syntax.
    pub fn new(
        id: u32,
        namespace: &str,
        name: &str,
        protocol: Protocol,
        port: u16,
    ) -> ServicePortRule {
        ServicePortRule {
            id,
            namespace: namespace.to_string(),
            name: name.to_string(),
            port_name: String::new(),
            protocol,
            port,
            cluster_ips: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            node_port: None,
            health_check_node_port: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            session_affinity: None,
            traffic_distribution: None,
            endpoints: Vec::new(),
            last_change_trigger_time: None,
        }
    }

    /// `namespace/name:port` (`namespace/name` for an unnamed port), kube-proxy's `ServicePortName`.
    pub fn service_port_name(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    /// `namespace/name`.
    pub fn service_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Reachable from outside the cluster network (NodePort, external IP or load-balancer IP).
    pub fn has_external(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

/// A compiled ruleset: the service ports of one shard or of the whole cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ruleset {
    /// One entry per (Service, port).
    #[schemars(length(max = MAX_SERVICE_PORTS_PER_SHARD))]
    pub services: Vec<ServicePortRule>,
}

/// Identifies one consistent shard layout: every shard of an epoch has the same count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardLayout {
    /// Changes whenever the shard count changes; agents apply only a complete set of one epoch.
    pub epoch: u64,
    /// A power of two.
    #[schemars(range(min = 1, max = MAX_SHARDS))]
    pub shard_count: u32,
}

/// One shard of the compiled ruleset, written by the operator and read by every agent.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ProxyRuleset",
    doc = "ProxyRuleset is one shard of the cluster's compiled, mode-neutral service rules, written by the operator and read by every node agent. Not for editing: the operator rewrites it.",
    plural = "proxyrulesets",
    shortname = "prs",
    printcolumn = r#"{"name":"SHARD","type":"integer","jsonPath":".spec.shard"}"#,
    printcolumn = r#"{"name":"OF","type":"integer","jsonPath":".spec.layout.shardCount"}"#,
    printcolumn = r#"{"name":"GENERATION","type":"integer","jsonPath":".spec.generation"}"#,
    printcolumn = r#"{"name":"SERVICES","type":"integer","jsonPath":".spec.serviceCount"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.shard < self.layout.shardCount").message("shard must be below layout.shardCount"))]
#[x_kube(validation = Rule::new("self.serviceCount == size(self.services)").message("serviceCount must be the number of services"))]
#[serde(rename_all = "camelCase")]
pub struct ProxyRulesetSpec {
    /// This shard's index, `0..layout.shardCount`.
    #[schemars(range(max = MAX_SHARDS - 1))]
    pub shard: u32,
    pub layout: ShardLayout,
    /// Bumped by the operator whenever this shard's content changes.
    pub generation: u64,
    /// Number of service ports in this shard (for `kubectl get`).
    #[schemars(range(max = MAX_SERVICE_PORTS_PER_SHARD))]
    pub service_count: u32,
    #[serde(flatten)]
    pub ruleset: Ruleset,
}

/// The name of shard `index` of a layout: `switchyard-e<epoch>-<index>`.
pub fn shard_name(layout: &ShardLayout, index: u32) -> String {
    format!("switchyard-e{}-{index:04}", layout.epoch)
}

/// The shards of the newest complete layout, in shard order.
///
/// Returns `None` unless there is a layout for which every shard `0..shardCount`
/// is present exactly once; when several layouts are present (the operator is
/// re-sharding), the newest complete epoch wins.
pub fn complete_shards<'a>(
    shards: impl IntoIterator<Item = &'a ProxyRulesetSpec>,
) -> Option<Vec<&'a ProxyRulesetSpec>> {
    let mut by_epoch: BTreeMap<u64, Vec<&ProxyRulesetSpec>> = BTreeMap::new();
    for shard in shards {
        by_epoch.entry(shard.layout.epoch).or_default().push(shard);
    }
    by_epoch.into_iter().rev().find_map(|(_, mut shards)| {
        let count = shards.first()?.layout.shard_count;
        shards.sort_by_key(|s| s.shard);
        let complete = shards.len() == count as usize
            && shards
                .iter()
                .enumerate()
                .all(|(i, s)| s.shard as usize == i && s.layout.shard_count == count);
        complete.then_some(shards)
    })
}

/// Assemble shards into one ruleset when they form a complete layout
/// ([`complete_shards`]).
pub fn assemble_shards<'a>(
    shards: impl IntoIterator<Item = &'a ProxyRulesetSpec>,
) -> Option<AssembledRuleset> {
    let shards = complete_shards(shards)?;
    Some(AssembledRuleset {
        layout: shards[0].layout,
        generations: shards.iter().map(|s| s.generation).collect(),
        ruleset: Ruleset {
            services: shards
                .iter()
                .flat_map(|s| s.ruleset.services.iter().cloned())
                .collect(),
        },
    })
}

/// A complete set of shards joined into one ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssembledRuleset {
    pub layout: ShardLayout,
    /// `generations[i]` is shard i's generation.
    pub generations: Vec<u64>,
    pub ruleset: Ruleset,
}
