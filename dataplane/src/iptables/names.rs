//! kube-proxy's chain names, so `iptables -t nat -L` reads the same: fixed
//! chains plus per service port / endpoint chains named
//! `PREFIX-` + base32(sha256(servicePortName + protocol [+ endpoint]))[:16].

use data_encoding::BASE32;
use sha2::{Digest, Sha256};
use switchyard_api::ruleset::{Endpoint, ServicePortRule};

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// kubelet's localnet guard, which kube-proxy also writes when it enables route_localnet.
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
/// The IPVS mode's own chains (it shares the others above with the iptables mode).
pub const KUBE_NODE_PORT: &str = "KUBE-NODE-PORT";
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
pub const KUBE_SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
pub const KUBE_IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
pub const KUBE_IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";

/// Prefixes of the per service port and per endpoint chains.
pub const PER_SERVICE_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// Whether `chain` is one of kube-proxy's layouts, the iptables mode's
/// (fixed or per service) or the IPVS mode's. The two modes share names
/// (`KUBE-SERVICES`, `KUBE-PROXY-FIREWALL`, …), so they claim each other's
/// chains: either mode's full write takes over what the other left in the
/// same `iptables-restore`, which is how a node switches between them.
pub fn is_ours(chain: &str) -> bool {
    [
        KUBE_NODE_PORT,
        KUBE_LOAD_BALANCER,
        KUBE_SOURCE_RANGES_FIREWALL,
        KUBE_IPVS_FILTER,
        KUBE_IPVS_OUT_FILTER,
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_NODEPORTS,
        KUBE_POSTROUTING,
        KUBE_MARK_MASQ,
        KUBE_FORWARD,
        KUBE_PROXY_FIREWALL,
        KUBE_FIREWALL,
    ]
    .contains(&chain)
        || PER_SERVICE_PREFIXES.iter().any(|p| chain.starts_with(p))
}

fn hash16(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

/// kube-proxy's `portProtoHash`: servicePortName + lower-case protocol.
fn port_proto_hash(rule: &ServicePortRule) -> String {
    hash16(&format!(
        "{}{}",
        rule.service_port_name(),
        rule.protocol.as_lower()
    ))
}

/// The per service port chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceChains {
    /// `KUBE-SVC-`: the Cluster policy chain.
    pub cluster: String,
    /// `KUBE-SVL-`: the Local policy chain.
    pub local: String,
    /// `KUBE-EXT-`: external destinations.
    pub external: String,
    /// `KUBE-FW-`: load-balancer source ranges.
    pub firewall: String,
}

impl ServiceChains {
    pub fn of(rule: &ServicePortRule) -> ServiceChains {
        let hash = port_proto_hash(rule);
        ServiceChains {
            cluster: format!("KUBE-SVC-{hash}"),
            local: format!("KUBE-SVL-{hash}"),
            external: format!("KUBE-EXT-{hash}"),
            firewall: format!("KUBE-FW-{hash}"),
        }
    }
}

/// kube-proxy's `servicePortEndpointChainName`: `KUBE-SEP-` + hash of
/// servicePortName + protocol + `ip:port`.
pub fn endpoint_chain(rule: &ServicePortRule, backend: &Endpoint) -> String {
    let text = format!(
        "{}{}{}",
        rule.service_port_name(),
        rule.protocol.as_lower(),
        backend.endpoint()
    );
    format!("KUBE-SEP-{}", hash16(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_api::ruleset::Protocol;

    fn rule(ns: &str, name: &str, port: &str) -> ServicePortRule {
        ServicePortRule {
            port_name: port.into(),
            ..ServicePortRule::new(1, ns, name, Protocol::Tcp, 80)
        }
    }

    /// Names from kube-proxy's own proxier_test.go expectations.
    #[test]
    fn chain_names_match_kube_proxy() {
        let r = rule("ns1", "svc1", "p80");
        let chains = ServiceChains::of(&r);
        assert_eq!(chains.cluster, "KUBE-SVC-XPGD46QRK7WJZT7O");
        let ep = Endpoint::new(1, "10.180.0.1".parse().unwrap(), 80);
        assert_eq!(endpoint_chain(&r, &ep), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert_eq!(
            ServiceChains::of(&rule("ns2", "svc2", "p80")).external,
            "KUBE-EXT-GNZBNJ2PO5MGZ6GT"
        );
    }

    #[test]
    fn ownership_is_by_name() {
        assert!(is_ours("KUBE-SVC-XPGD46QRK7WJZT7O"));
        assert!(is_ours("KUBE-MARK-MASQ"));
        assert!(is_ours("KUBE-IPVS-FILTER"));
        assert!(!is_ours("KUBE-KUBELET-CANARY"));
        assert!(!is_ours("DOCKER"));
    }
}
