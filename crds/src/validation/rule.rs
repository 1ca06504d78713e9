//! One service port of the ruleset, checked field by field: the names as the
//! API server checks them, addresses and ports in range, lists within their
//! limits, endpoints unique.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use crate::ruleset::{Endpoint, ServicePortRule};
use crate::validation::addresses::{AddressError, check_endpoint_ip, check_specified};
use crate::validation::limits::*;
use crate::validation::names::{NameError, NameFormat};

/// What is wrong with one field; `field` is its path in the wire format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: FieldProblem,
}

/// What is wrong with a field's value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{ip}: {error}")]
    Address { ip: IpAddr, error: AddressError },
    #[error("{value} is outside {min}..={max}")]
    OutOfRange { value: u64, min: u64, max: u64 },
    #[error("{count} items, more than {max}")]
    TooMany { count: usize, max: usize },
    #[error("{0} is not one of {TRAFFIC_DISTRIBUTIONS:?}")]
    NotSupported(String),
    #[error("{0} is listed twice")]
    Duplicate(String),
}

impl FieldError {
    fn new(field: impl fmt::Display, problem: impl Into<FieldProblem>) -> FieldError {
        FieldError {
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    /// This error inside the list `list` at `index`.
    pub fn within(self, list: &str, index: usize) -> FieldError {
        FieldError {
            field: format!("{list}[{index}].{}", self.field),
            problem: self.problem,
        }
    }
}

fn name(format: NameFormat, field: &str, value: &str) -> Result<(), FieldError> {
    format.check(value).map_err(|e| FieldError::new(field, e))
}

fn range(field: &str, value: u64, min: u64, max: u64) -> Result<(), FieldError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        FieldProblem::OutOfRange { value, min, max },
    ))
}

fn port(field: &str, value: u16) -> Result<(), FieldError> {
    range(field, value.into(), 1, u16::MAX.into())
}

fn count(field: &str, count: usize, max: usize) -> Result<(), FieldError> {
    if count <= max {
        return Ok(());
    }
    Err(FieldError::new(field, FieldProblem::TooMany { count, max }))
}

fn addresses(
    field: &str,
    ips: &[IpAddr],
    max: usize,
    check: fn(&IpAddr) -> Result<(), AddressError>,
) -> Result<(), FieldError> {
    count(field, ips.len(), max)?;
    for (i, ip) in ips.iter().enumerate() {
        check(ip).map_err(|error| {
            FieldError::new(
                format!("{field}[{i}]"),
                FieldProblem::Address { ip: *ip, error },
            )
        })?;
    }
    Ok(())
}

/// `Ok` when every field of `rule` holds what the compiler can produce from
/// objects the API server accepts; the first problem otherwise.
pub fn check_rule(rule: &ServicePortRule) -> Result<(), FieldError> {
    name(NameFormat::Dns1123Label, "namespace", &rule.namespace)?;
    name(NameFormat::Dns1035Label, "name", &rule.name)?;
    if !rule.port_name.is_empty() {
        name(NameFormat::Dns1123Label, "portName", &rule.port_name)?;
    }
    port("port", rule.port)?;
    if let Some(p) = rule.node_port {
        port("nodePort", p)?;
    }
    if let Some(p) = rule.health_check_node_port {
        port("healthCheckNodePort", p)?;
    }
    addresses(
        "clusterIps",
        &rule.cluster_ips,
        MAX_CLUSTER_IPS,
        check_specified,
    )?;
    addresses(
        "externalIps",
        &rule.external_ips,
        MAX_EXTERNAL_IPS,
        check_endpoint_ip,
    )?;
    addresses(
        "loadBalancerIps",
        &rule.load_balancer_ips,
        MAX_LOAD_BALANCER_IPS,
        check_specified,
    )?;
    count(
        "loadBalancerSourceRanges",
        rule.load_balancer_source_ranges.len(),
        MAX_SOURCE_RANGES,
    )?;
    if let Some(a) = rule.session_affinity {
        range(
            "sessionAffinity.timeoutSeconds",
            a.timeout_seconds.into(),
            1,
            MAX_AFFINITY_TIMEOUT_SECONDS.into(),
        )?;
    }
    if let Some(t) = &rule.traffic_distribution {
        check_traffic_distribution(t).map_err(|p| FieldError::new("trafficDistribution", p))?;
    }
    count("backends", rule.endpoints.len(), MAX_ENDPOINTS_PER_PORT)?;
    let mut seen = HashSet::with_capacity(rule.endpoints.len());
    for (i, endpoint) in rule.endpoints.iter().enumerate() {
        check_endpoint(endpoint).map_err(|e| e.within("backends", i))?;
        if !seen.insert((endpoint.ip, endpoint.port)) {
            return Err(FieldError::new(
                format!("backends[{i}]"),
                FieldProblem::Duplicate(endpoint.endpoint()),
            ));
        }
    }
    Ok(())
}

/// `spec.trafficDistribution` is one of the values the API server accepts.
pub fn check_traffic_distribution(value: &str) -> Result<(), FieldProblem> {
    if TRAFFIC_DISTRIBUTIONS.contains(&value) {
        return Ok(());
    }
    Err(FieldProblem::NotSupported(
        crate::validation::names::quoted(value),
    ))
}

/// One endpoint: address, port, node and zone names, hints.
pub fn check_endpoint(endpoint: &Endpoint) -> Result<(), FieldError> {
    check_endpoint_ip(&endpoint.ip).map_err(|error| {
        FieldError::new(
            "ip",
            FieldProblem::Address {
                ip: endpoint.ip,
                error,
            },
        )
    })?;
    port("port", endpoint.port)?;
    if let Some(node) = &endpoint.node_name {
        name(NameFormat::Dns1123Subdomain, "nodeName", node)?;
    }
    if let Some(zone) = &endpoint.zone {
        name(NameFormat::LabelValue, "zone", zone)?;
    }
    check_hints(&endpoint.zone_hints, NameFormat::LabelValue)
        .map_err(|e| prefixed("zoneHints", e))?;
    check_hints(&endpoint.node_hints, NameFormat::Dns1123Subdomain)
        .map_err(|e| prefixed("nodeHints", e))
}

fn prefixed(list: &str, e: FieldError) -> FieldError {
    FieldError {
        field: format!("{list}{}", e.field),
        problem: e.problem,
    }
}

/// `hints.forZones` or `hints.forNodes`: at most [`MAX_HINTS`], each a valid
/// name, none twice. Errors name the entry (`[i]`) or nothing (the count).
pub fn check_hints(hints: &[String], format: NameFormat) -> Result<(), FieldError> {
    count("", hints.len(), MAX_HINTS)?;
    for (i, hint) in hints.iter().enumerate() {
        let field = format!("[{i}]");
        format.check(hint).map_err(|e| FieldError::new(&field, e))?;
        if hints[..i].contains(hint) {
            return Err(FieldError::new(
                field,
                FieldProblem::Duplicate(hint.clone()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Protocol, SessionAffinity};

    fn rule() -> ServicePortRule {
        ServicePortRule {
            port_name: "http".into(),
            cluster_ips: vec!["10.96.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            external_ips: vec!["192.0.2.1".parse().unwrap()],
            node_port: Some(30080),
            traffic_distribution: Some("PreferClose".into()),
            session_affinity: Some(SessionAffinity {
                timeout_seconds: 10800,
            }),
            endpoints: vec![Endpoint {
                node_name: Some("node-a.example".into()),
                zone: Some("zone-a".into()),
                zone_hints: vec!["zone-a".into()],
                node_hints: vec!["node-a.example".into()],
                ..Endpoint::new(1, "10.0.0.5".parse().unwrap(), 8080)
            }],
            ..ServicePortRule::new(1, "default", "web", Protocol::Tcp, 80)
        }
    }

    fn error(edit: impl FnOnce(&mut ServicePortRule)) -> String {
        let mut r = rule();
        edit(&mut r);
        check_rule(&r).unwrap_err().to_string()
    }

    #[test]
    fn a_rule_the_compiler_writes_is_valid() {
        assert_eq!(check_rule(&rule()), Ok(()));
        let mut unnamed = rule();
        unnamed.port_name.clear();
        assert_eq!(check_rule(&unnamed), Ok(()));
    }

    #[test]
    fn each_field_is_checked_and_named() {
        for (edit, expect) in [
            (
                Box::new(|r: &mut ServicePortRule| r.name = "web\"\n-A INPUT -j ACCEPT".into())
                    as Box<dyn FnOnce(&mut ServicePortRule)>,
                r#"name: "web\"\n-A INPUT -j ACCEPT": a DNS-1035 label"#,
            ),
            (
                Box::new(|r: &mut ServicePortRule| r.namespace = "Default".into()),
                "namespace: \"Default\": a lowercase RFC 1123 label",
            ),
            (
                Box::new(|r: &mut ServicePortRule| r.port_name = "h#".into()),
                "portName: \"h#\"",
            ),
            (
                Box::new(|r: &mut ServicePortRule| r.port = 0),
                "port: 0 is outside 1..=65535",
            ),
            (
                Box::new(|r: &mut ServicePortRule| r.node_port = Some(0)),
                "nodePort: 0 is outside",
            ),
            (
                Box::new(|r: &mut ServicePortRule| {
                    r.cluster_ips.push("10.96.0.2".parse().unwrap())
                }),
                "clusterIps: 3 items, more than 2",
            ),
            (
                Box::new(|r: &mut ServicePortRule| r.cluster_ips[0] = "0.0.0.0".parse().unwrap()),
                "clusterIps[0]: 0.0.0.0: may not be unspecified",
            ),
            (
                Box::new(|r: &mut ServicePortRule| {
                    r.external_ips[0] = "127.0.0.1".parse().unwrap()
                }),
                "externalIps[0]: 127.0.0.1: may not be in the loopback range",
            ),
            (
                Box::new(|r: &mut ServicePortRule| {
                    r.session_affinity = Some(SessionAffinity { timeout_seconds: 0 })
                }),
                "sessionAffinity.timeoutSeconds: 0 is outside 1..=86400",
            ),
            (
                Box::new(|r: &mut ServicePortRule| r.traffic_distribution = Some("a\nb".into())),
                "trafficDistribution: \"a\\nb\" is not one of",
            ),
            (
                Box::new(|r: &mut ServicePortRule| {
                    r.endpoints[0].node_name = Some("node a".into())
                }),
                "backends[0].nodeName: \"node a\"",
            ),
            (
                Box::new(|r: &mut ServicePortRule| r.endpoints[0].zone = Some("zone/a".into())),
                "backends[0].zone: \"zone/a\"",
            ),
            (
                Box::new(|r: &mut ServicePortRule| {
                    r.endpoints[0].ip = "169.254.1.1".parse().unwrap()
                }),
                "backends[0].ip: 169.254.1.1: may not be in the link-local range",
            ),
            (
                Box::new(|r: &mut ServicePortRule| r.endpoints[0].port = 0),
                "backends[0].port: 0 is outside",
            ),
            (
                Box::new(|r: &mut ServicePortRule| r.endpoints[0].zone_hints = vec!["z".into(); 9]),
                "backends[0].zoneHints: 9 items, more than 8",
            ),
            (
                Box::new(|r: &mut ServicePortRule| {
                    r.endpoints[0].node_hints = vec!["a".into(), "a".into()]
                }),
                "backends[0].nodeHints[1]: a is listed twice",
            ),
            (
                Box::new(|r: &mut ServicePortRule| {
                    let again = r.endpoints[0].clone();
                    r.endpoints.push(Endpoint { id: 2, ..again });
                }),
                "backends[1]: 10.0.0.5:8080 is listed twice",
            ),
        ] {
            let e = error(edit);
            assert!(
                e.starts_with(expect),
                "{e:?} does not start with {expect:?}"
            );
            assert!(!e.contains('\n'), "{e:?}");
        }
    }
}
