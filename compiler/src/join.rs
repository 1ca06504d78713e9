//! A service's port templates joined with its EndpointSlices: the backends of
//! every port, deduplicated across slices, with stable ids.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use switchyard_api::ruleset::{Backend, ServicePortRule};

use crate::ids::IdAllocator;
use crate::keys::PortKey;
use crate::slice::{EndpointFacts, SliceInfo};

/// The id allocators of one compiler.
#[derive(Debug, Default)]
pub(crate) struct Allocators {
    pub service_ports: IdAllocator,
    pub backends: IdAllocator,
}

/// The ids held by one service: per port its id and its backends' ids.
#[derive(Debug, Default)]
pub(crate) struct ServiceIds {
    ports: HashMap<PortKey, PortIds>,
}

#[derive(Debug)]
struct PortIds {
    id: u32,
    backends: HashMap<(IpAddr, u16), u32>,
}

impl ServiceIds {
    pub(crate) fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Give back every id (the service is gone).
    pub(crate) fn release_all(self, ids: &mut Allocators) {
        for port in self.ports.into_values() {
            ids.service_ports.release(port.id);
            for id in port.backends.into_values() {
                ids.backends.release(id);
            }
        }
    }
}

/// The complete rules of one service. `slices` in slice-name order: an endpoint
/// listed by several slices is taken from the first (kube-proxy deduplicates by
/// `ip:port` the same way). Ids of vanished ports and backends are released
/// before new ones are allocated, so ids stay compact.
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
            let endpoints = endpoints_of(&key, slices);
            (key, endpoints)
        })
        .collect();
    let mut previous = std::mem::take(&mut held.ports);
    let mut kept: Vec<Option<PortIds>> = ports
        .iter()
        .map(|(key, endpoints)| {
            let mut port_ids = previous.remove(key)?;
            port_ids.backends.retain(|endpoint, id| {
                let live = endpoints.contains_key(endpoint);
                if !live {
                    ids.backends.release(*id);
                }
                live
            });
            Some(port_ids)
        })
        .collect();
    ServiceIds { ports: previous }.release_all(ids);

    let mut rules = Vec::with_capacity(templates.len());
    for ((template, (key, endpoints)), port_ids) in templates.iter().zip(ports).zip(&mut kept) {
        let mut port_ids = port_ids.take().unwrap_or_else(|| PortIds {
            id: ids.service_ports.allocate(),
            backends: HashMap::new(),
        });
        let backends = endpoints
            .into_iter()
            .map(|((ip, port), facts)| {
                let id = *port_ids
                    .backends
                    .entry((ip, port))
                    .or_insert_with(|| ids.backends.allocate());
                backend(id, port, facts)
            })
            .collect();
        rules.push(ServicePortRule {
            id: port_ids.id,
            backends,
            ..template.clone()
        });
        held.ports.insert(key, port_ids);
    }
    rules
}

/// A service port's endpoints by `(ip, port)`.
type Endpoints<'s> = BTreeMap<(IpAddr, u16), &'s EndpointFacts>;

/// The endpoints of one service port: slice ports matched by name and protocol
/// (the slice port gives the target port), sorted by address and port.
fn endpoints_of<'s>(key: &PortKey, slices: &[&'s SliceInfo]) -> Endpoints<'s> {
    let mut endpoints = BTreeMap::new();
    for slice in slices {
        for port in &slice.ports {
            if port.name != key.port_name || port.protocol != key.protocol {
                continue;
            }
            for facts in &slice.endpoints {
                endpoints.entry((facts.ip, port.port)).or_insert(facts);
            }
        }
    }
    endpoints
}

fn backend(id: u32, port: u16, facts: &EndpointFacts) -> Backend {
    Backend {
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
