//! Typed diagnostics: what was wrong with one object and what the compiler
//! skipped because of it. The operator turns them into Events.

use std::fmt;

/// Why (part of) an object was skipped. `as_str` is the stable CamelCase
/// reason an Event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The object has no `metadata.name`; skipped.
    MissingName,
    /// `metadata.name` or `metadata.namespace` is not a valid Kubernetes name
    /// for its kind; the object is skipped.
    InvalidName,
    /// A port name that is not a DNS-1123 label; that port is skipped.
    InvalidPortName,
    /// More `spec.externalIPs`, load-balancer IPs or source ranges than a
    /// shard carries; the service is skipped.
    TooManyItems,
    /// `spec.trafficDistribution` is not a value the API server accepts; it is dropped.
    InvalidTrafficDistribution,
    /// A `spec.clusterIPs` entry is not an IP address; the service is skipped.
    InvalidClusterIp,
    /// A `spec.externalIPs` entry is not an IP address; that address is dropped.
    InvalidExternalIp,
    /// A `status.loadBalancer.ingress[].ip` is not an IP address; that address is dropped.
    InvalidLoadBalancerIp,
    /// A `spec.loadBalancerSourceRanges` entry is not a CIDR; the service is
    /// skipped (dropping one range would widen the allow-list).
    InvalidSourceRange,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` outside 1..=86400; the service is skipped.
    InvalidSessionAffinityTimeout,
    /// A service port outside 1..=65535; that port is skipped.
    InvalidPort,
    /// A node port outside 1..=65535; that service port is skipped.
    InvalidNodePort,
    /// `spec.healthCheckNodePort` outside 1..=65535; the health check port is dropped.
    InvalidHealthCheckNodePort,
    /// A protocol other than TCP, UDP or SCTP; that port is skipped.
    UnsupportedProtocol,
    /// Two ports of one service with the same name and protocol; the later one is skipped.
    DuplicatePort,
    /// A frontend (IP, protocol, port) or node port already used by an older
    /// service (or an earlier port of the same service); this port is skipped.
    DuplicateFrontend,
    /// An EndpointSlice without the `kubernetes.io/service-name` label; skipped.
    MissingServiceName,
    /// A `kubernetes.io/service-name` label that cannot name a Service; the slice is skipped.
    InvalidServiceName,
    /// An EndpointSlice `addressType` other than IPv4, IPv6 or FQDN; skipped.
    UnsupportedAddressType,
    /// An EndpointSlice port without a name (kube-proxy ignores it); skipped.
    UnnamedEndpointPort,
    /// An EndpointSlice port that is missing or outside 1..=65535; skipped.
    InvalidEndpointPort,
    /// An endpoint without addresses, with an address that is not an IP, of
    /// the wrong family for the slice, or one the API server refuses
    /// (unspecified, loopback, link-local); that endpoint is skipped.
    InvalidEndpointAddress,
    /// An endpoint's `nodeName` is not a valid node name; that endpoint is skipped.
    InvalidNodeName,
    /// An endpoint's `zone` is not a valid label value; the zone is dropped.
    InvalidZone,
    /// An endpoint's hints are too many or not valid names; its hints are
    /// dropped (its service then routes without topology, as with no hints).
    InvalidHints,
    /// A compiled service port that the agents' validation would refuse
    /// (e.g. more endpoints than a shard carries); that port is skipped.
    InvalidRule,
    /// A service whose rules no `ProxyRuleset` object can hold; not published.
    TooLarge,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingName => "MissingName",
            Reason::InvalidName => "InvalidName",
            Reason::InvalidPortName => "InvalidPortName",
            Reason::TooManyItems => "TooManyItems",
            Reason::InvalidTrafficDistribution => "InvalidTrafficDistribution",
            Reason::InvalidClusterIp => "InvalidClusterIP",
            Reason::InvalidExternalIp => "InvalidExternalIP",
            Reason::InvalidLoadBalancerIp => "InvalidLoadBalancerIP",
            Reason::InvalidSourceRange => "InvalidSourceRange",
            Reason::InvalidSessionAffinityTimeout => "InvalidSessionAffinityTimeout",
            Reason::InvalidPort => "InvalidPort",
            Reason::InvalidNodePort => "InvalidNodePort",
            Reason::InvalidHealthCheckNodePort => "InvalidHealthCheckNodePort",
            Reason::UnsupportedProtocol => "UnsupportedProtocol",
            Reason::DuplicatePort => "DuplicatePort",
            Reason::DuplicateFrontend => "DuplicateFrontend",
            Reason::MissingServiceName => "MissingServiceName",
            Reason::InvalidServiceName => "InvalidServiceName",
            Reason::UnsupportedAddressType => "UnsupportedAddressType",
            Reason::UnnamedEndpointPort => "UnnamedEndpointPort",
            Reason::InvalidEndpointPort => "InvalidEndpointPort",
            Reason::InvalidEndpointAddress => "InvalidEndpointAddress",
            Reason::InvalidNodeName => "InvalidNodeName",
            Reason::InvalidZone => "InvalidZone",
            Reason::InvalidHints => "InvalidHints",
            Reason::InvalidRule => "InvalidRule",
            Reason::TooLarge => "TooLarge",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of object a diagnostic is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem with one object: it (or part of it) was skipped, the rest compiled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    pub reason: Reason,
    /// What was wrong and what was skipped, naming the field.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    // The object's name is escaped: an invalid one may hold a line break.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}: {}: {}",
            self.kind,
            shown(&self.namespace),
            shown(&self.name),
            self.reason,
            self.message
        )
    }
}

/// The longest name a diagnostic shows (a DNS subdomain's limit).
const SHOWN_NAME_CHARS: usize = 253;

/// `name` with control characters escaped, shortened past the longest valid name.
fn shown(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(SHOWN_NAME_CHARS)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if name.chars().nth(SHOWN_NAME_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Collects the diagnostics of one object.
#[derive(Debug)]
pub(crate) struct Reporter<'a> {
    kind: ObjectKind,
    namespace: &'a str,
    name: &'a str,
    pub(crate) out: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(kind: ObjectKind, namespace: &'a str, name: &'a str) -> Reporter<'a> {
        Reporter {
            kind,
            namespace,
            name,
            out: Vec::new(),
        }
    }

    pub(crate) fn report(&mut self, reason: Reason, message: String) {
        self.out.push(Diagnostic {
            kind: self.kind,
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            reason,
            message,
        });
    }
}
