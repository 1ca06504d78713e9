//! Frontend claims: which service port owns a (VIP, protocol, port) or a node
//! port when several claim it. The oldest service wins (creation time, then
//! `namespace/name`, then port); every other claimant's port is skipped.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use switchyard_api::ruleset::{Protocol, ServicePortRule};

use crate::keys::{PortKey, ServiceKey};

/// Something a packet is matched on to reach one service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Frontend {
    Ip {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
    },
    NodePort {
        protocol: Protocol,
        port: u16,
    },
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frontend::Ip {
                ip: IpAddr::V6(ip),
                protocol,
                port,
            } => write!(f, "[{ip}]:{port}/{protocol}"),
            Frontend::Ip { ip, protocol, port } => write!(f, "{ip}:{port}/{protocol}"),
            Frontend::NodePort { protocol, port } => write!(f, "node port {port}/{protocol}"),
        }
    }
}

/// Every frontend of a service port, sorted, each once.
pub(crate) fn frontends(rule: &ServicePortRule) -> Vec<Frontend> {
    let ip = |ip: &IpAddr| Frontend::Ip {
        ip: *ip,
        protocol: rule.protocol,
        port: rule.port,
    };
    let mut all: Vec<Frontend> = rule
        .cluster_ips
        .iter()
        .chain(&rule.external_ips)
        .chain(&rule.load_balancer_ips)
        .map(ip)
        .chain(rule.node_port.map(|port| Frontend::NodePort {
            protocol: rule.protocol,
            port,
        }))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// One service port claiming a frontend; the smallest claimant wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Claimant {
    pub created: Option<Time>,
    pub service: ServiceKey,
    pub port: PortKey,
}

impl Claimant {
    /// This claimant is `rule` (of the service `rule` names).
    pub(crate) fn is(&self, rule: &ServicePortRule) -> bool {
        self.service.name == rule.name
            && self.service.namespace == rule.namespace
            && self.port.port_name == rule.port_name
            && self.port.protocol == rule.protocol
    }
}

impl fmt::Display for Claimant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.port_name.is_empty() {
            write!(f, "{} ({})", self.service, self.port.protocol)
        } else {
            write!(
                f,
                "{}:{} ({})",
                self.service, self.port.port_name, self.port.protocol
            )
        }
    }
}

/// Claimants per frontend, sorted (nearly always one, so a Vec, not a tree).
#[derive(Debug, Default)]
pub(crate) struct Claims {
    by_frontend: HashMap<Frontend, Vec<Claimant>>,
}

impl Claims {
    pub(crate) fn claim(&mut self, frontend: Frontend, claimant: Claimant) {
        let list = self.by_frontend.entry(frontend).or_default();
        if let Err(at) = list.binary_search(&claimant) {
            list.insert(at, claimant);
        }
    }

    pub(crate) fn release(&mut self, frontend: &Frontend, claimant: &Claimant) {
        if let Some(list) = self.by_frontend.get_mut(frontend) {
            if let Ok(at) = list.binary_search(claimant) {
                list.remove(at);
            }
            if list.is_empty() {
                self.by_frontend.remove(frontend);
            }
        }
    }

    pub(crate) fn winner(&self, frontend: &Frontend) -> Option<&Claimant> {
        self.by_frontend.get(frontend).and_then(|list| list.first())
    }

    pub(crate) fn claimants(&self, frontend: &Frontend) -> impl Iterator<Item = &Claimant> {
        self.by_frontend.get(frontend).into_iter().flatten()
    }
}
