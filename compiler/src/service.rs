//! One Service to its service-port templates: kube-proxy's `newBaseServiceInfo`
//! and `ShouldSkipService`, with every field validated. A template is a
//! [`ServicePortRule`] without id and endpoints; those are joined later.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use switchyard_api::ruleset::{
    Cidr, IpFamily, Protocol, ServicePortRule, SessionAffinity, TrafficPolicy,
};
use switchyard_api::validation::limits::{
    MAX_AFFINITY_TIMEOUT_SECONDS, MAX_CLUSTER_IPS, MAX_EXTERNAL_IPS, MAX_LOAD_BALANCER_IPS,
    MAX_SOURCE_RANGES,
};
use switchyard_api::validation::rule::check_traffic_distribution;
use switchyard_api::validation::{
    AddressError, NameError, NameFormat, check_endpoint_ip, check_specified, quoted,
};

use crate::CompileSettings;
use crate::diagnostic::{ObjectKind, Reason, Reporter};
use crate::ip::{parse_cidr, parse_ip};
use crate::keys::{PortKey, ServiceKey};
use crate::{Diagnostic, labels};

/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;

/// What the compiler keeps of a Service.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ServiceInfo {
    /// Orders services when two claim the same frontend: the older one wins.
    pub created: Option<Time>,
    /// Templates sorted by [`PortKey`], unique.
    pub ports: Vec<ServicePortRule>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Derive the service-port templates of `service`. A service that is not
/// proxied (headless, ExternalName, another proxy's, no cluster IP) has none.
pub(crate) fn service_info(
    key: &ServiceKey,
    service: &Service,
    settings: &CompileSettings,
) -> ServiceInfo {
    let mut reporter = Reporter::new(ObjectKind::Service, &key.namespace, &key.name);
    let ports = match service.spec.as_ref() {
        Some(spec) if is_proxied(service, spec, settings) => {
            service_ports(key, service, spec, &mut reporter).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    ServiceInfo {
        created: service.metadata.creation_timestamp.clone(),
        ports,
        diagnostics: reporter.out,
    }
}

/// kube-proxy's informer label selector plus `ShouldSkipService`.
fn is_proxied(service: &Service, spec: &ServiceSpec, settings: &CompileSettings) -> bool {
    labels::proxied_by_us(service.metadata.labels.as_ref(), settings)
        && spec.type_.as_deref() != Some("ExternalName")
        && !matches!(first_cluster_ip(spec), None | Some("None") | Some(""))
}

fn first_cluster_ip(spec: &ServiceSpec) -> Option<&str> {
    match spec.cluster_ips.as_deref() {
        Some([first, ..]) => Some(first.as_str()),
        _ => spec.cluster_ip.as_deref(),
    }
}

/// `None` when the whole service is skipped (reported).
fn service_ports(
    key: &ServiceKey,
    service: &Service,
    spec: &ServiceSpec,
    reporter: &mut Reporter<'_>,
) -> Option<Vec<ServicePortRule>> {
    let cluster_ips = cluster_ips(spec, reporter)?;
    // kube-proxy runs one proxier per family and a service exists for a family
    // only with a cluster IP of it: addresses of other families are unused.
    let families: Vec<IpFamily> = cluster_ips.iter().map(IpFamily::of).collect();
    let external_ips = parse_ips(
        spec.external_ips.iter().flatten().map(String::as_str),
        &families,
        Addresses {
            field: "spec.externalIPs",
            reason: Reason::InvalidExternalIp,
            check: check_endpoint_ip,
            max: MAX_EXTERNAL_IPS,
        },
        reporter,
    )?;
    let load_balancer_ips = parse_ips(
        service
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|ing| ing.ip.as_deref())
            .filter(|ip| !ip.is_empty()),
        &families,
        Addresses {
            field: "status.loadBalancer.ingress[].ip",
            reason: Reason::InvalidLoadBalancerIp,
            check: check_specified,
            max: MAX_LOAD_BALANCER_IPS,
        },
        reporter,
    )?;
    let load_balancer_source_ranges = source_ranges(spec, reporter)?;
    let session_affinity = session_affinity(spec, reporter)?;
    let traffic_distribution = traffic_distribution(spec, reporter);

    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    // apiservice.ExternallyAccessible / ExternalPolicyLocal / NeedsHealthCheck.
    let externally_accessible = matches!(type_, "NodePort" | "LoadBalancer")
        || (type_ == "ClusterIP"
            && spec
                .external_ips
                .as_ref()
                .is_some_and(|ips| !ips.is_empty()));
    let external_traffic_policy =
        if externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local") {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        };
    let internal_traffic_policy = match spec.internal_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let health_check_node_port =
        if type_ == "LoadBalancer" && external_traffic_policy == TrafficPolicy::Local {
            health_check_node_port(spec, reporter)
        } else {
            None
        };

    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for (index, port) in spec.ports.iter().flatten().enumerate() {
        let Some((port_key, number, node_port)) = port_fields(index, port, reporter) else {
            continue;
        };
        if !seen.insert(port_key.clone()) {
            reporter.report(
                Reason::DuplicatePort,
                format!(
                    "spec.ports[{index}]: a port named {:?} with protocol {} already exists; skipped",
                    port_key.port_name, port_key.protocol
                ),
            );
            continue;
        }
        ports.push(ServicePortRule {
            id: 0,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            port_name: port_key.port_name,
            protocol: port_key.protocol,
            port: number,
            cluster_ips: cluster_ips.clone(),
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            node_port,
            health_check_node_port,
            internal_traffic_policy,
            external_traffic_policy,
            session_affinity,
            traffic_distribution: traffic_distribution.clone(),
            endpoints: Vec::new(),
            last_change_trigger_time: None,
        });
    }
    ports.sort_by(|a, b| PortKey::of(a).cmp(&PortKey::of(b)));
    Some(ports)
}

fn cluster_ips(spec: &ServiceSpec, reporter: &mut Reporter<'_>) -> Option<Vec<IpAddr>> {
    let (texts, field): (Vec<&str>, &str) = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            (list.iter().map(String::as_str).collect(), "spec.clusterIPs")
        }
        _ => (
            spec.cluster_ip.iter().map(String::as_str).collect(),
            "spec.clusterIP",
        ),
    };
    if texts.len() > MAX_CLUSTER_IPS {
        reporter.report(
            Reason::InvalidClusterIp,
            format!(
                "{field}: {} addresses, at most {MAX_CLUSTER_IPS} (one per family); service skipped",
                texts.len()
            ),
        );
        return None;
    }
    let mut ips = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let field = if field == "spec.clusterIPs" {
            format!("{field}[{i}]")
        } else {
            field.to_string()
        };
        let problem = match parse_ip(text) {
            Some(ip) => match check_specified(&ip) {
                Ok(()) if !ips.contains(&ip) => {
                    ips.push(ip);
                    continue;
                }
                Ok(()) => continue,
                Err(e) => format!("{ip}: {e}"),
            },
            None => format!("{} is not an IP address", quoted(text)),
        };
        reporter.report(
            Reason::InvalidClusterIp,
            format!("{field}: {problem}; service skipped"),
        );
        return None;
    }
    Some(ips)
}

/// A list of frontend addresses of a Service, and what holds for each.
struct Addresses {
    field: &'static str,
    reason: Reason,
    check: fn(&IpAddr) -> Result<(), AddressError>,
    max: usize,
}

/// The addresses of `families`, each once; unparsable or refused ones
/// reported and dropped. `None` (reported) when more than `max` remain.
fn parse_ips<'t>(
    texts: impl Iterator<Item = &'t str>,
    families: &[IpFamily],
    list: Addresses,
    reporter: &mut Reporter<'_>,
) -> Option<Vec<IpAddr>> {
    let field = list.field;
    let mut ips = Vec::new();
    for text in texts {
        match parse_ip(text.trim()).map(|ip| ((list.check)(&ip), ip)) {
            Some((Ok(()), ip)) if !ips.contains(&ip) && families.contains(&IpFamily::of(&ip)) => {
                ips.push(ip)
            }
            Some((Ok(()), _)) => {}
            Some((Err(e), ip)) => {
                reporter.report(list.reason, format!("{field}: {ip}: {e}; address dropped"))
            }
            None => reporter.report(
                list.reason,
                format!(
                    "{field}: {} is not an IP address; address dropped",
                    quoted(text)
                ),
            ),
        }
    }
    too_many(field, ips.len(), list.max, reporter)?;
    Some(ips)
}

/// `None` (reported) when a list holds more than a shard carries.
fn too_many(field: &str, count: usize, max: usize, reporter: &mut Reporter<'_>) -> Option<()> {
    if count <= max {
        return Some(());
    }
    reporter.report(
        Reason::TooManyItems,
        format!("{field}: {count} entries, at most {max}; service skipped"),
    );
    None
}

fn source_ranges(spec: &ServiceSpec, reporter: &mut Reporter<'_>) -> Option<Vec<Cidr>> {
    let texts = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    too_many(
        "spec.loadBalancerSourceRanges",
        texts.len(),
        MAX_SOURCE_RANGES,
        reporter,
    )?;
    let mut ranges = Vec::new();
    for (i, text) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        // The API server's validation allows whitespace padding; kube-proxy trims it.
        match parse_cidr(text.trim()) {
            Ok(cidr) if !ranges.contains(&cidr) => ranges.push(cidr),
            Ok(_) => {}
            Err(e) => {
                reporter.report(
                    Reason::InvalidSourceRange,
                    format!("spec.loadBalancerSourceRanges[{i}]: {e}; service skipped"),
                );
                return None;
            }
        }
    }
    Some(ranges)
}

/// `Some(None)`: no affinity; `None`: invalid, service skipped.
fn session_affinity(
    spec: &ServiceSpec,
    reporter: &mut Reporter<'_>,
) -> Option<Option<SessionAffinity>> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return Some(None);
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match timeout {
        None => Some(Some(SessionAffinity {
            timeout_seconds: DEFAULT_AFFINITY_TIMEOUT_SECONDS,
        })),
        Some(t) if t > 0 && t.unsigned_abs() <= MAX_AFFINITY_TIMEOUT_SECONDS => {
            Some(Some(SessionAffinity {
                timeout_seconds: t.unsigned_abs(),
            }))
        }
        Some(t) => {
            reporter.report(
                Reason::InvalidSessionAffinityTimeout,
                format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is outside 1..={MAX_AFFINITY_TIMEOUT_SECONDS}; service skipped"
                ),
            );
            None
        }
    }
}

/// `spec.trafficDistribution` when the API server accepts it; otherwise
/// dropped (reported): it is for display only.
fn traffic_distribution(spec: &ServiceSpec, reporter: &mut Reporter<'_>) -> Option<String> {
    let value = spec.traffic_distribution.as_deref()?;
    match check_traffic_distribution(value) {
        Ok(()) => Some(value.to_string()),
        Err(e) => {
            reporter.report(
                Reason::InvalidTrafficDistribution,
                format!("spec.trafficDistribution: {e}; dropped"),
            );
            None
        }
    }
}

fn health_check_node_port(spec: &ServiceSpec, reporter: &mut Reporter<'_>) -> Option<u16> {
    match spec.health_check_node_port {
        None | Some(0) => None,
        Some(p) => port_number(p).or_else(|| {
            reporter.report(
                Reason::InvalidHealthCheckNodePort,
                format!("spec.healthCheckNodePort: {p} is outside 1..=65535; health check dropped"),
            );
            None
        }),
    }
}

/// The key, port and node port of one `spec.ports` entry; `None` when skipped (reported).
fn port_fields(
    index: usize,
    port: &ServicePort,
    reporter: &mut Reporter<'_>,
) -> Option<(PortKey, u16, Option<u16>)> {
    let protocol = match parse_protocol(port.protocol.as_deref()) {
        Some(p) => p,
        None => {
            reporter.report(
                Reason::UnsupportedProtocol,
                format!(
                    "spec.ports[{index}].protocol: {:?} is not TCP, UDP or SCTP; port skipped",
                    port.protocol.as_deref().unwrap_or_default()
                ),
            );
            return None;
        }
    };
    let Some(number) = port_number(port.port) else {
        reporter.report(
            Reason::InvalidPort,
            format!(
                "spec.ports[{index}].port: {} is outside 1..=65535; port skipped",
                port.port
            ),
        );
        return None;
    };
    let node_port = match port.node_port {
        None | Some(0) => None,
        Some(p) => match port_number(p) {
            Some(p) => Some(p),
            None => {
                reporter.report(
                    Reason::InvalidNodePort,
                    format!("spec.ports[{index}].nodePort: {p} is outside 1..=65535; port skipped"),
                );
                return None;
            }
        },
    };
    let port_name = port.name.clone().unwrap_or_default();
    if let Err(e) = check_port_name(&port_name) {
        reporter.report(
            Reason::InvalidPortName,
            format!("spec.ports[{index}].name: {e}; port skipped"),
        );
        return None;
    }
    let key = PortKey {
        port_name,
        protocol,
    };
    Some((key, number, node_port))
}

/// A port name is a DNS-1123 label, or empty for an unnamed port (Service
/// and EndpointSlice ports alike).
pub(crate) fn check_port_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Ok(());
    }
    NameFormat::Dns1123Label.check(name)
}

/// `TCP`, `UDP`, `SCTP`; unset means TCP (the API server's default).
pub(crate) fn parse_protocol(text: Option<&str>) -> Option<Protocol> {
    match text {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        Some(_) => None,
    }
}

/// A port number in 1..=65535.
pub(crate) fn port_number(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}
