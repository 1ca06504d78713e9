//! The facts about a Node the link step needs.

use k8s_openapi::api::core::v1::Node;
use switchyard_api::policy::NodeInfo;

use crate::ip::parse_ip;

/// The well-known zone label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Name, zone (`topology.kubernetes.io/zone`) and addresses of a Node:
/// `InternalIP`s first, then `ExternalIP`s, each in status order (kube-proxy's
/// primary node IP is the first of its family). Unparsable addresses are left out.
pub fn node_info(node: &Node) -> NodeInfo {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|list| {
            ["InternalIP", "ExternalIP"]
                .iter()
                .flat_map(|kind| list.iter().filter(move |a| a.type_ == *kind))
                .filter_map(|a| parse_ip(&a.address))
                .fold(Vec::new(), |mut all, ip| {
                    if !all.contains(&ip) {
                        all.push(ip);
                    }
                    all
                })
        })
        .unwrap_or_default();
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned(),
        addresses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_first_then_external() {
        let node: Node = serde_yaml::from_str(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {topology.kubernetes.io/zone: z1}}\nstatus:\n  addresses:\n  - {type: Hostname, address: n1}\n  - {type: ExternalIP, address: 203.0.113.1}\n  - {type: InternalIP, address: 10.0.0.1}\n  - {type: InternalIP, address: 'fd00::1'}\n  - {type: InternalIP, address: bogus}\n",
        )
        .unwrap();
        let info = node_info(&node);
        assert_eq!(info.name, "n1");
        assert_eq!(info.zone.as_deref(), Some("z1"));
        let addresses: Vec<String> = info.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1", "fd00::1", "203.0.113.1"]);
    }
}
