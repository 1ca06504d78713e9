//! `ProxyConfig`: the user's contract. One per node pool: which nodes, which
//! dataplane, its settings, and how to roll a change out.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::mode::Mode;
use crate::validation::schema::conditions;

/// A duration in Go syntax as kube-proxy's flags take it: `500ms`, `30s`, `1m30s`, `2h`.
pub type DurationString = String;

const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Selects a pool of nodes and the service dataplane they run.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ProxyConfig",
    doc = "ProxyConfig picks the service dataplane (iptables, ipvs, nftables or ebpf) for one pool of nodes and how a change of mode rolls out: nodes switch in verified batches and failures roll back. Written by you; status by the operator.",
    plural = "proxyconfigs",
    shortname = "pxc",
    status = "ProxyConfigStatus",
    printcolumn = r#"{"name":"MODE","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"NODES","type":"integer","jsonPath":".status.nodes"}"#,
    printcolumn = r#"{"name":"READY","type":"integer","jsonPath":".status.readyNodes"}"#,
    printcolumn = r#"{"name":"UPDATED","type":"integer","jsonPath":".status.updatedNodes"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.iptables) || self.mode == 'iptables'").message("spec.iptables is set but spec.mode is not iptables: remove the block or set mode: iptables"))]
#[x_kube(validation = Rule::new("!has(self.ipvs) || self.mode == 'ipvs'").message("spec.ipvs is set but spec.mode is not ipvs: remove the block or set mode: ipvs"))]
#[x_kube(validation = Rule::new("!has(self.nftables) || self.mode == 'nftables'").message("spec.nftables is set but spec.mode is not nftables: remove the block or set mode: nftables"))]
#[x_kube(validation = Rule::new("!has(self.ebpf) || self.mode == 'ebpf'").message("spec.ebpf is set but spec.mode is not ebpf: remove the block or set mode: ebpf"))]
#[x_kube(validation = Rule::new("!has(self.detectLocalMode) || self.detectLocalMode != 'ClusterCIDR' || (has(self.clusterCIDRs) && size(self.clusterCIDRs) > 0)").message("detectLocalMode ClusterCIDR needs at least one entry in clusterCIDRs"))]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigSpec {
    /// The nodes of this pool. An empty selector selects every node.
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// When several ProxyConfigs select a node, the highest priority wins; a tie
    /// is reported as a Conflict and the node is left where it is.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// The service dataplane of this pool.
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables: Option<IptablesSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<IpvsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables: Option<NftablesSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebpf: Option<EbpfSettings>,
    /// Pod network ranges, for telling cluster-local traffic from external traffic.
    #[serde(
        default,
        rename = "clusterCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    // Bounds keep the CEL rule's estimated cost within the API server's budget.
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("every clusterCIDRs entry must be a CIDR such as 10.0.0.0/8"))]
    pub cluster_cidrs: Vec<String>,
    /// How local traffic is detected (kube-proxy's `--detect-local-mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_local_mode: Option<DetectLocalMode>,
    /// Addresses NodePorts are served on: CIDRs, or `primary` for the node's primary
    /// IPs (the default, as kube-proxy's nftables mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, c == 'primary' || isCIDR(c))").message("every nodePortAddresses entry must be a CIDR or 'primary'"))]
    pub node_port_addresses: Vec<String>,
    /// Masquerade all traffic sent to service IPs.
    #[serde(default)]
    pub masquerade_all: bool,
    /// Where the agent serves `/healthz` (host:port). Default `0.0.0.0:10256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(\[[0-9a-fA-F:.]+\]|[0-9.]+|):[0-9]{1,5}$"))]
    pub healthz_bind_address: Option<String>,
    /// Where the agent serves `/metrics` (host:port). Default `127.0.0.1:10249`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(\[[0-9a-fA-F:.]+\]|[0-9.]+|):[0-9]{1,5}$"))]
    pub metrics_bind_address: Option<String>,
    #[serde(default)]
    pub rollout: RolloutSpec,
}

/// kube-proxy's `--detect-local-mode` values that apply here.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DetectLocalMode {
    /// Local when the source is in `clusterCIDRs`.
    #[serde(rename = "ClusterCIDR")]
    ClusterCidr,
    /// Local when the source is in the node's `spec.podCIDRs`.
    #[serde(rename = "NodeCIDR")]
    NodeCidr,
    /// No local-traffic detector.
    None,
}

/// Settings of the `iptables` mode.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IptablesSettings {
    /// The fwmark bit (0–31) that marks packets for masquerade. Default 14.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31))]
    pub masquerade_bit: Option<u8>,
    /// Serve NodePorts on 127.0.0.1 (sets route_localnet). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localhost_node_ports: Option<bool>,
    #[serde(flatten)]
    pub sync: SyncSettings,
}

/// Settings of the `nftables` mode.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NftablesSettings {
    /// The fwmark bit (0–31) that marks packets for masquerade. Default 14.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31))]
    pub masquerade_bit: Option<u8>,
    #[serde(flatten)]
    pub sync: SyncSettings,
}

/// How often rules are synced.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncSettings {
    /// Minimum time between syncs; bursts of changes are coalesced. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub min_sync_period: Option<DurationString>,
    /// Period of the full resync. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub sync_period: Option<DurationString>,
}

/// IPVS schedulers (`ipvsadm -s`).
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum IpvsScheduler {
    /// Round robin.
    #[default]
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connection.
    Lc,
    /// Weighted least connection.
    Wlc,
    /// Locality-based least connection.
    Lblc,
    /// Locality-based least connection with replication.
    Lblcr,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Maglev hashing.
    Mh,
}

impl IpvsScheduler {
    /// The kernel's scheduler name.
    pub fn name(self) -> &'static str {
        match self {
            IpvsScheduler::Rr => "rr",
            IpvsScheduler::Wrr => "wrr",
            IpvsScheduler::Lc => "lc",
            IpvsScheduler::Wlc => "wlc",
            IpvsScheduler::Lblc => "lblc",
            IpvsScheduler::Lblcr => "lblcr",
            IpvsScheduler::Dh => "dh",
            IpvsScheduler::Sh => "sh",
            IpvsScheduler::Sed => "sed",
            IpvsScheduler::Nq => "nq",
            IpvsScheduler::Mh => "mh",
        }
    }
}

/// Flags of the hashing schedulers (`sh`, `mh`).
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpvsSchedulerFlag {
    /// Pick another real server when the hashed one is unavailable.
    Fallback,
    /// Include the source port in the hash.
    Port,
}

/// Settings of the `ipvs` mode.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!has(self.schedulerFlags) || size(self.schedulerFlags) == 0 || (has(self.scheduler) && self.scheduler in ['sh', 'mh'])").message("schedulerFlags apply only to the hashing schedulers sh and mh"))]
#[serde(rename_all = "camelCase")]
pub struct IpvsSettings {
    /// The IPVS scheduler. Default rr. Every real server gets weight 1, as in
    /// kube-proxy, so the weighted schedulers behave like their plain forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<IpvsScheduler>,
    /// IPVS scheduler flags (kube-proxy's `ipvs.schedulerFlags`, e.g. the
    /// `mh` scheduler's `flag-1` fallback); none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scheduler_flags: Vec<IpvsSchedulerFlag>,
    /// Reply to ARP only for addresses on the receiving interface
    /// (arp_ignore=1, arp_announce=2), needed with L2 load balancers.
    #[serde(default)]
    #[serde(rename = "strictARP")]
    pub strict_arp: bool,
    /// IPVS TCP session timeout (0 keeps the kernel's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub tcp_timeout: Option<DurationString>,
    /// IPVS timeout for TCP sessions after FIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub tcp_fin_timeout: Option<DurationString>,
    /// IPVS UDP timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub udp_timeout: Option<DurationString>,
    #[serde(flatten)]
    pub sync: SyncSettings,
}

/// Settings of the `ebpf` mode.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EbpfSettings {
    /// Socket-level load balancing on cgroup hooks for traffic from the node and its pods. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "socketLB")]
    pub socket_lb: Option<bool>,
    /// Maglev lookup-table size per service (a prime); unset selects backends at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071]").message("maglevTableSize must be one of the primes 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071"))]
    pub maglev_table_size: Option<u32>,
    /// Interfaces the tc programs attach to (traffic from outside). Default: the
    /// interfaces holding the node's addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_devices: Vec<String>,
}

/// How a mode change rolls out over the pool.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Nodes switching at once: a count (≥ 1) or a percentage of the pool (1%–100%). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("string(self).matches('^[1-9][0-9]*$') || string(self).matches('^([1-9][0-9]?|100)%$')").message("maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"))]
    pub max_unavailable: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// Reverse the whole rollout when more nodes fail than `failureBudget`. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
    /// Failed nodes tolerated before an automatic rollback. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failure_budget: Option<u32>,
    /// Freeze the rollout where it is.
    #[serde(default)]
    pub paused: bool,
}

/// The probe a node runs through its new dataplane before giving up the old one.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// A TCP connect to this Service (`namespace/name`) through its cluster IP.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub service: String,
    /// The service port to probe.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// How long the probe may take. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<DurationString>,
}

/// What the operator reports about a pool.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `Conflict`, `ConnectionsCut`, and kstatus' `Reconciling`
    /// (the current generation is still being rolled out) and `Stalled` (it will
    /// not be without a change to the spec), each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = conditions)]
    pub conditions: Vec<Condition>,
    /// Nodes in the pool.
    #[serde(default)]
    pub nodes: u32,
    /// Nodes whose agent reports the pool's mode applied and healthy.
    #[serde(default)]
    pub ready_nodes: u32,
    /// Nodes targeted at the pool's mode.
    #[serde(default)]
    pub updated_nodes: u32,
    /// Node counts by state (`ready`, `switching`, `failed`, `unknown`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes_by_state: BTreeMap<String, u32>,
    /// Node counts by applied mode.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes_by_mode: BTreeMap<String, u32>,
    /// Nodes selected by this pool and another of equal priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicting_nodes: Vec<String>,
    /// Nodes of the cluster that no ProxyConfig selects (left as they are).
    #[serde(default)]
    pub unassigned_nodes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// Phase of a pool's rollout.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutPhase {
    Progressing,
    Paused,
    /// More nodes failed than `failureBudget` and `autoRollback` is off: no new batches.
    Halted,
    RollingBack,
    Complete,
    RolledBack,
}

/// Progress of a mode change over a pool.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub from: Mode,
    pub to: Mode,
    pub phase: RolloutPhase,
    /// Nodes that report `to` applied and verified.
    pub updated: u32,
    /// Nodes of the pool.
    pub total: u32,
    /// Nodes whose switch to `to` failed (they count against the failure budget).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
    /// The spec generation this rollout is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// When the batch in flight was started; its nodes time out relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_started: Option<Time>,
}
