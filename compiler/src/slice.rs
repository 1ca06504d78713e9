//! One EndpointSlice to the facts kube-proxy's `EndpointSliceCache` keeps:
//! its ports and, per endpoint, the first address, conditions, topology and hints.

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use switchyard_api::ruleset::{IpFamily, Protocol};
use switchyard_api::validation::{NameFormat, check_endpoint_ip, check_hints, quoted};

use crate::diagnostic::{ObjectKind, Reason, Reporter};
use crate::ip::parse_ip;
use crate::keys::SliceKey;
use crate::service::{check_port_name, parse_protocol, port_number};
use crate::{CompileSettings, Diagnostic, labels};

/// What the compiler keeps of an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SliceInfo {
    /// The name of the Service (same namespace) this slice belongs to; `None`
    /// when the slice is ignored (no endpoints contributed).
    pub service: Option<String>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<EndpointFacts>,
    /// Its `endpoints.kubernetes.io/last-change-trigger-time`.
    pub trigger_time: Option<MicroTime>,
    pub diagnostics: Vec<Diagnostic>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint with its conditions resolved to plain values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EndpointFacts {
    pub ip: IpAddr,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

pub(crate) fn slice_info(
    key: &SliceKey,
    slice: &EndpointSlice,
    settings: &CompileSettings,
) -> SliceInfo {
    let mut reporter = Reporter::new(ObjectKind::EndpointSlice, &key.namespace, &key.name);
    let labels_map = slice.metadata.labels.as_ref();
    let service = labels_map
        .and_then(|l| l.get(labels::SERVICE_NAME))
        .filter(|s| !s.is_empty());
    let family = match slice.address_type.as_str() {
        "IPv4" => Some(IpFamily::V4),
        "IPv6" => Some(IpFamily::V6),
        "FQDN" => None,
        other => {
            reporter.report(
                Reason::UnsupportedAddressType,
                format!("addressType: {other:?} is not IPv4, IPv6 or FQDN; slice skipped"),
            );
            None
        }
    };
    let ignored = SliceInfo {
        service: None,
        ports: Vec::new(),
        endpoints: Vec::new(),
        trigger_time: None,
        diagnostics: Vec::new(),
    };
    let (Some(family), true) = (family, labels::proxied_by_us(labels_map, settings)) else {
        return SliceInfo {
            diagnostics: reporter.out,
            ..ignored
        };
    };
    let Some(service) = service else {
        reporter.report(
            Reason::MissingServiceName,
            format!(
                "metadata.labels: no {} label; slice skipped",
                labels::SERVICE_NAME
            ),
        );
        return SliceInfo {
            diagnostics: reporter.out,
            ..ignored
        };
    };
    if let Err(e) = NameFormat::Dns1035Label.check(service) {
        reporter.report(
            Reason::InvalidServiceName,
            format!(
                "metadata.labels[{}]: {e} (not a Service name); slice skipped",
                labels::SERVICE_NAME
            ),
        );
        return SliceInfo {
            diagnostics: reporter.out,
            ..ignored
        };
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| slice_port(i, p, &mut reporter))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| endpoint_facts(i, e, family, &mut reporter))
        .collect();
    SliceInfo {
        service: Some(service.clone()),
        ports,
        endpoints,
        trigger_time: trigger_time(slice),
        diagnostics: reporter.out,
    }
}

/// The slice's last-change trigger time; one that does not parse is ignored,
/// as kube-proxy ignores it (it only feeds a latency metric).
fn trigger_time(slice: &EndpointSlice) -> Option<MicroTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(labels::LAST_CHANGE_TRIGGER_TIME)?;
    text.parse().ok().map(MicroTime)
}

fn slice_port(index: usize, port: &EndpointPort, reporter: &mut Reporter<'_>) -> Option<SlicePort> {
    let Some(name) = port.name.clone() else {
        reporter.report(
            Reason::UnnamedEndpointPort,
            format!(
                "ports[{index}].name: unset (an unnamed service port matches name \"\"); port skipped"
            ),
        );
        return None;
    };
    if let Err(e) = check_port_name(&name) {
        reporter.report(
            Reason::InvalidPortName,
            format!("ports[{index}].name: {e}; port skipped"),
        );
        return None;
    }
    let Some(protocol) = parse_protocol(port.protocol.as_deref()) else {
        reporter.report(
            Reason::UnsupportedProtocol,
            format!(
                "ports[{index}].protocol: {:?} is not TCP, UDP or SCTP; port skipped",
                port.protocol.as_deref().unwrap_or_default()
            ),
        );
        return None;
    };
    let Some(number) = port.port.and_then(port_number) else {
        reporter.report(
            Reason::InvalidEndpointPort,
            format!(
                "ports[{index}].port: {} is not in 1..=65535; port skipped",
                port.port
                    .map_or_else(|| "unset".to_string(), |p| p.to_string())
            ),
        );
        return None;
    };
    Some(SlicePort {
        name,
        protocol,
        port: number,
    })
}

fn endpoint_facts(
    index: usize,
    endpoint: &Endpoint,
    family: IpFamily,
    reporter: &mut Reporter<'_>,
) -> Option<EndpointFacts> {
    // kube-proxy uses the first address only.
    let Some(text) = endpoint.addresses.first() else {
        reporter.report(
            Reason::InvalidEndpointAddress,
            format!("endpoints[{index}].addresses: empty; endpoint skipped"),
        );
        return None;
    };
    let problem = match parse_ip(text) {
        Some(ip) if IpFamily::of(&ip) != family => {
            format!("{ip} is not of the slice's address type")
        }
        Some(ip) => match check_endpoint_ip(&ip) {
            Ok(()) => return endpoint_details(index, ip, endpoint, reporter),
            Err(e) => format!("{ip}: {e}"),
        },
        None => format!("{} is not an IP address", quoted(text)),
    };
    reporter.report(
        Reason::InvalidEndpointAddress,
        format!("endpoints[{index}].addresses[0]: {problem}; endpoint skipped"),
    );
    None
}

/// The endpoint at `ip`: its node (an invalid node name skips it, since it
/// decides which node's traffic is local), zone and hints (invalid ones are
/// dropped: neither decides routing on its own).
fn endpoint_details(
    index: usize,
    ip: IpAddr,
    endpoint: &Endpoint,
    reporter: &mut Reporter<'_>,
) -> Option<EndpointFacts> {
    if let Some(Err(e)) = endpoint
        .node_name
        .as_deref()
        .map(|n| NameFormat::Dns1123Subdomain.check(n))
    {
        reporter.report(
            Reason::InvalidNodeName,
            format!("endpoints[{index}].nodeName: {e}; endpoint skipped"),
        );
        return None;
    }
    let zone = endpoint.zone.clone().filter(|zone| {
        let valid = NameFormat::LabelValue.check(zone);
        if let Err(e) = &valid {
            reporter.report(
                Reason::InvalidZone,
                format!("endpoints[{index}].zone: {e}; zone dropped"),
            );
        }
        valid.is_ok()
    });
    let hints = endpoint.hints.as_ref();
    let zone_hints: Vec<String> = hints
        .and_then(|h| h.for_zones.as_ref())
        .map(|z| z.iter().map(|z| z.name.clone()).collect())
        .unwrap_or_default();
    let node_hints: Vec<String> = hints
        .and_then(|h| h.for_nodes.as_ref())
        .map(|n| n.iter().map(|n| n.name.clone()).collect())
        .unwrap_or_default();
    let checked = check_hints(&zone_hints, NameFormat::LabelValue)
        .map_err(|e| ("forZones", e))
        .and_then(|()| {
            check_hints(&node_hints, NameFormat::Dns1123Subdomain).map_err(|e| ("forNodes", e))
        });
    let (zone_hints, node_hints) = match checked {
        Ok(()) => (zone_hints, node_hints),
        Err((list, e)) => {
            reporter.report(
                Reason::InvalidHints,
                format!(
                    "endpoints[{index}].hints.{list}{}: {}; hints dropped",
                    e.field, e.problem
                ),
            );
            (Vec::new(), Vec::new())
        }
    };
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    Some(EndpointFacts {
        ip,
        node_name: endpoint.node_name.clone(),
        zone,
        ready,
        serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        zone_hints,
        node_hints,
    })
}
