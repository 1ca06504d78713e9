//! A pod namespace behind a node namespace, serving endpoints that answer
//! with their own address: the [`super::probed`] Services' endpoints on the
//! node that measures them. The node routes the pods' addresses (and, when
//! asked, the service range, for a node that has no other link) over one
//! veth; the pods' default route is the node. Each address has a
//! [`switchyard_testkit::echo`] server greeting with the address.

use std::net::{Ipv4Addr, SocketAddr};

use switchyard_testkit::echo;

use super::probed::ProbedServices;
use super::states::TARGET_PORT;
use crate::HarnessError;
use crate::netns::Netns;

/// The node's end of the link, the pods' gateway.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 250, 255, 1);
/// What the node routes to the pods.
const PODS: &str = "10.250.0.0/16";
const LINK: &str = "probed0";

/// The pod namespace (removed on drop; its servers end with the process).
pub struct EchoPods {
    _pods: Netns,
}

impl EchoPods {
    /// Pods named `name` behind `node`, with every address of the probed
    /// Services' endpoints, each serving their port; `service_cidr` is
    /// routed to them too when given.
    pub fn attach(
        node: &Netns,
        name: &str,
        service_cidr: Option<&str>,
    ) -> Result<EchoPods, HarnessError> {
        let addresses = ProbedServices::addresses();
        let pods = Netns::create(name)?;
        let mut on_node = vec![
            format!(
                "link add {LINK} type veth peer name eth0 netns {}",
                pods.name()
            ),
            format!("addr add {GATEWAY}/32 dev {LINK}"),
            format!("link set {LINK} up"),
            format!("route add {PODS} dev {LINK}"),
        ];
        on_node.extend(service_cidr.map(|cidr| format!("route add {cidr} dev {LINK}")));
        node.batch(&on_node)?;
        let mut on_pods: Vec<String> = addresses
            .iter()
            .map(|a| format!("addr add {a}/32 dev eth0"))
            .collect();
        on_pods.extend([
            "link set eth0 up".to_string(),
            format!("route add {GATEWAY} dev eth0"),
            format!("route add default via {GATEWAY} dev eth0"),
        ]);
        pods.batch(&on_pods)?;
        for a in addresses {
            echo::serve(
                &pods,
                SocketAddr::from((a, TARGET_PORT)),
                Some(&a.to_string()),
            )?;
        }
        Ok(EchoPods { _pods: pods })
    }
}
