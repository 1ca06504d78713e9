//! A service's port templates joined with its EndpointSlices: the endpoints of
//! every port, deduplicated across slices, with stable ids.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use switchyard_api::ruleset::{Endpoint, IpFamily, ServicePortRule};

use crate::ids::IdAllocator;
use crate::keys::PortKey;
use crate::slice::{EndpointFacts, SliceInfo};

/// The id allocators of one compiler.
#[derive(Debug, Default)]
pub(crate) struct Allocators {
    pub service_ports: IdAllocator,
    pub endpoints: IdAllocator,
}

impl Allocators {
    /// Allocators with the given service port and endpoint ids taken
    /// ([`IdAllocator::holding`]).
    pub(crate) fn holding(
        service_ports: &BTreeSet<u32>,
        endpoints: &BTreeSet<u32>,
    ) -> Option<Allocators> {
        Some(Allocators {
            service_ports: IdAllocator::holding(service_ports)?,
            endpoints: IdAllocator::holding(endpoints)?,
        })
    }

    /// The end of a sync: ids released during it may be reused.
    pub(crate) fn recycle(&mut self) {
        self.service_ports.recycle();
        self.endpoints.recycle();
    }
}

/// The ids held by one service: per port its id and its endpoints' ids. A
/// service has few ports, so these are small Vecs, not maps.
#[derive(Debug, Default)]
pub(crate) struct ServiceIds {
    ports: Vec<(PortKey, PortIds)>,
}

#[derive(Debug)]
struct PortIds {
    id: u32,
    /// Sorted by endpoint.
    endpoints: Vec<((IpAddr, u16), u32)>,
}

impl ServiceIds {
    pub(crate) fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The ids a published service's rules carry, to be kept while its
    /// ports and endpoints exist. `None` when two of its rules are the same
    /// port (no ruleset this compiler wrote has that).
    pub(crate) fn published<'a>(
        rules: impl IntoIterator<Item = &'a ServicePortRule>,
    ) -> Option<ServiceIds> {
        let mut ports: Vec<(PortKey, PortIds)> = Vec::new();
        for rule in rules {
            let key = PortKey::of(rule);
            if ports.iter().any(|(k, _)| *k == key) {
                return None;
            }
            let mut endpoints: Vec<((IpAddr, u16), u32)> = rule
                .endpoints
                .iter()
                .map(|e| ((e.ip, e.port), e.id))
                .collect();
            endpoints.sort_unstable();
            ports.push((
                key,
                PortIds {
                    id: rule.id,
                    endpoints,
                },
            ));
        }
        Some(ServiceIds { ports })
    }

    /// Give back every id (the service is gone).
    pub(crate) fn release_all(self, ids: &mut Allocators) {
        for (_, port) in self.ports {
            ids.service_ports.release(port.id);
            for (_, id) in port.endpoints {
                ids.endpoints.release(id);
            }
        }
    }
}

/// The complete rules of one service. `slices` in slice-name order: an endpoint
/// listed by several slices is taken from the first (kube-proxy deduplicates by
/// `ip:port` the same way). Ids of vanished ports and endpoints are released,
/// for reuse from the next sync on ([`crate::ids`]).
pub(crate) fn join_service(
    templates: &[ServicePortRule],
    slices: &[&SliceInfo],
    held: &mut ServiceIds,
    ids: &mut Allocators,
) -> Vec<ServicePortRule> {
    let ports: Vec<(PortKey, Endpoints<'_>)> = templates
        .iter()
        .map(|t| {
            let key = PortKey::of(t);
            let families: Vec<IpFamily> = t.cluster_ips.iter().map(IpFamily::of).collect();
            let endpoints = endpoints_of(&key, &families, slices);
            (key, endpoints)
        })
        .collect();
    let mut previous = std::mem::take(&mut held.ports);
    let mut kept: Vec<Option<PortIds>> = ports
        .iter()
        .map(|(key, endpoints)| {
            let at = previous.iter().position(|(k, _)| k == key)?;
            let (_, mut port_ids) = previous.swap_remove(at);
            port_ids.endpoints.retain(|(endpoint, id)| {
                let live = endpoints.contains_key(endpoint);
                if !live {
                    ids.endpoints.release(*id);
                }
                live
            });
            Some(port_ids)
        })
        .collect();
    ServiceIds { ports: previous }.release_all(ids);

    let trigger_time = slices.iter().filter_map(|s| s.trigger_time.clone()).max();
    let mut rules = Vec::with_capacity(templates.len());
    for ((template, (key, endpoints)), port_ids) in templates.iter().zip(ports).zip(&mut kept) {
        let port_ids = port_ids.take().unwrap_or_else(|| PortIds {
            id: ids.service_ports.allocate(),
            endpoints: Vec::new(),
        });
        // Both in endpoint order: the kept ids are a subset of `endpoints`.
        let mut old_ids = port_ids.endpoints.into_iter().peekable();
        let mut endpoint_ids = Vec::with_capacity(endpoints.len());
        let endpoints = endpoints
            .into_iter()
            .map(|(endpoint, facts)| {
                let id = match old_ids.next_if(|(e, _)| *e == endpoint) {
                    Some((_, id)) => id,
                    None => ids.endpoints.allocate(),
                };
                endpoint_ids.push((endpoint, id));
                rule_endpoint(id, endpoint.1, facts)
            })
            .collect();
        rules.push(ServicePortRule {
            id: port_ids.id,
            endpoints,
            last_change_trigger_time: trigger_time.clone(),
            ..template.clone()
        });
        held.ports.push((
            key,
            PortIds {
                id: port_ids.id,
                endpoints: endpoint_ids,
            },
        ));
    }
    rules
}

/// A service port's endpoints by `(ip, port)`.
type Endpoints<'s> = BTreeMap<(IpAddr, u16), &'s EndpointFacts>;

/// The endpoints of one service port: slice ports matched by name and protocol
/// (the slice port gives the target port), of the families the service has a
/// cluster IP of (kube-proxy's per-family proxiers), sorted by address and port.
fn endpoints_of<'s>(
    key: &PortKey,
    families: &[IpFamily],
    slices: &[&'s SliceInfo],
) -> Endpoints<'s> {
    let mut endpoints = BTreeMap::new();
    for slice in slices {
        for port in &slice.ports {
            if port.name != key.port_name || port.protocol != key.protocol {
                continue;
            }
            for facts in slice
                .endpoints
                .iter()
                .filter(|f| families.contains(&IpFamily::of(&f.ip)))
            {
                endpoints.entry((facts.ip, port.port)).or_insert(facts);
            }
        }
    }
    endpoints
}

fn rule_endpoint(id: u32, port: u16, facts: &EndpointFacts) -> Endpoint {
    Endpoint {
        id,
        ip: facts.ip,
        port,
        node_name: facts.node_name.clone(),
        zone: facts.zone.clone(),
        ready: facts.ready,
        serving: facts.serving,
        terminating: facts.terminating,
        zone_hints: facts.zone_hints.clone(),
        node_hints: facts.node_hints.clone(),
    }
}
