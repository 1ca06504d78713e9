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
/// `ip:port` the same way).
pub(crate) fn join_service(
    templates: &[ServicePortRule],
    slices: &[&SliceInfo],
    held: &mut ServiceIds,
    ids: &mut Allocators,
) -> Vec<ServicePortRule> {
    let mut previous = std::mem::take(&mut held.ports);
    let mut rules = Vec::with_capacity(templates.len());
    for template in templates {
        let key = PortKey::of(template);
        let mut port_ids = previous.remove(&key).unwrap_or_else(|| PortIds {
            id: ids.service_ports.allocate(),
            backends: HashMap::new(),
        });
        let endpoints = endpoints_of(&key, slices);
        let mut backend_ids = HashMap::with_capacity(endpoints.len());
        let backends = endpoints
            .into_iter()
            .map(|((ip, port), facts)| {
                let id = port_ids
                    .backends
                    .remove(&(ip, port))
                    .unwrap_or_else(|| ids.backends.allocate());
                backend_ids.insert((ip, port), id);
                backend(id, port, facts)
            })
            .collect();
        for id in port_ids.backends.into_values() {
            ids.backends.release(id);
        }
        port_ids.backends = backend_ids;
        rules.push(ServicePortRule {
            id: port_ids.id,
            backends,
            ..template.clone()
        });
        held.ports.insert(key, port_ids);
    }
    ServiceIds { ports: previous }.release_all(ids);
    rules
}

/// The endpoints of one service port: slice ports matched by name and protocol
/// (the slice port gives the target port), sorted by address and port.
fn endpoints_of<'s>(
    key: &PortKey,
    slices: &[&'s SliceInfo],
) -> BTreeMap<(IpAddr, u16), &'s EndpointFacts> {
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
