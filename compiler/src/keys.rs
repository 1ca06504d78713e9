//! Object keys.

use std::fmt;

use switchyard_api::ruleset::{Protocol, ServicePortRule};

/// `namespace/name` of a Service (and of the EndpointSlices that belong to it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(rule: &ServicePortRule) -> ServiceKey {
        ServiceKey::new(rule.namespace.clone(), rule.name.clone())
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `namespace/name` of an EndpointSlice.
pub type SliceKey = ServiceKey;

/// A service port within its service: kube-proxy's `ServicePortName` minus the service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub port_name: String,
    pub protocol: Protocol,
}

impl PortKey {
    pub fn of(rule: &ServicePortRule) -> PortKey {
        PortKey {
            port_name: rule.port_name.clone(),
            protocol: rule.protocol,
        }
    }
}
