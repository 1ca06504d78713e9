//! The Services whose endpoints really listen, for what takes real traffic
//! (network programming latency, first-packet connect latency): [`COUNT`]
//! Services in the bench's namespace, each with one endpoint that a change
//! moves between two addresses (a Pod replaced). Every node that measures
//! serves both addresses of each ([`super::echo_pods`]), so the answer tells
//! which endpoint took the connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;

use super::states::{NAMESPACE, PORT, TARGET_PORT, apply, service, slice, slice_name};
use crate::HarnessError;
use crate::controlplane::ControlPlaneError;

/// Probed Services: the changes go round them, so consecutive changes hit
/// different Services (as the single-endpoint changes of a busy cluster do).
pub const COUNT: usize = 4;

fn name(k: usize) -> String {
    format!("probed-{k}")
}

/// Address `side` (0 or 1) of Service `k`'s endpoint: 10.250.0.1 on.
fn address(k: usize, side: usize) -> Ipv4Addr {
    let n = u8::try_from(1 + 2 * k + side).unwrap_or(u8::MAX);
    Ipv4Addr::new(10, 250, 0, n)
}

/// One endpoint change: after it, connects to `vip` reach `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    service: usize,
    pub vip: SocketAddr,
    pub to: IpAddr,
}

/// The probed Services as written.
pub struct ProbedServices {
    client: kube::Client,
    /// Each Service's address and which side its endpoint is on.
    services: Vec<(Ipv4Addr, usize)>,
    changes: usize,
}

impl ProbedServices {
    /// Every address an endpoint of theirs may have.
    pub fn addresses() -> Vec<Ipv4Addr> {
        (0..COUNT)
            .flat_map(|k| [address(k, 0), address(k, 1)])
            .collect()
    }

    /// The Service a switch of the pool verifies through (`namespace/name`):
    /// every node that measures serves its endpoints.
    pub fn verification() -> String {
        format!("{NAMESPACE}/{}", name(0))
    }

    /// Write the Services with their endpoints on side 0 (in [`NAMESPACE`],
    /// which must exist); their addresses as the API server allocated them.
    pub async fn create(client: kube::Client) -> Result<ProbedServices, HarnessError> {
        let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE);
        let mut written = Vec::new();
        for k in 0..COUNT {
            apply(&services, &name(k), &service(name(k))).await?;
            let object = slice(&name(k), std::iter::once(address(k, 0)));
            apply(&slices, &slice_name(&name(k)), &object).await?;
            let read = services
                .get(&name(k))
                .await
                .map_err(|source| ControlPlaneError::Api {
                    operation: format!("read Service {NAMESPACE}/{}", name(k)),
                    source,
                })?;
            let vip = read
                .spec
                .and_then(|s| s.cluster_ip)
                .and_then(|ip| ip.parse().ok())
                .ok_or_else(|| HarnessError::Setup {
                    what: format!("Service {NAMESPACE}/{}", name(k)),
                    message: "no IPv4 cluster IP".into(),
                })?;
            written.push((vip, 0));
        }
        Ok(ProbedServices {
            client,
            services: written,
            changes: 0,
        })
    }

    /// The first Service's address and its endpoint's now.
    pub fn first(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.services.first().map(|&(vip, side)| {
            (
                SocketAddr::from((vip, PORT)),
                SocketAddr::from((address(0, side), TARGET_PORT)),
            )
        })
    }

    /// The next change (not written yet: see [`ProbedServices::write`]).
    pub fn next_change(&mut self) -> Change {
        let k = self.changes % COUNT;
        self.changes += 1;
        let (vip, side) = self.services[k];
        let side = 1 - side;
        self.services[k].1 = side;
        Change {
            service: k,
            vip: SocketAddr::from((vip, PORT)),
            to: IpAddr::V4(address(k, side)),
        }
    }

    /// Write `change` at the API server: the Service's slice with its one
    /// endpoint at the new address.
    pub async fn write(&self, change: &Change) -> Result<(), ControlPlaneError> {
        let slices = Api::<EndpointSlice>::namespaced(self.client.clone(), NAMESPACE);
        let IpAddr::V4(to) = change.to else {
            return Ok(());
        };
        let k = change.service;
        apply(
            &slices,
            &slice_name(&name(k)),
            &slice(&name(k), std::iter::once(to)),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{COUNT, ProbedServices, address};
    use std::collections::BTreeSet;

    #[test]
    fn probed_endpoints_are_distinct_and_outside_the_state_and_the_pods() {
        let all: BTreeSet<_> = ProbedServices::addresses().into_iter().collect();
        assert_eq!(all.len(), 2 * COUNT);
        assert_eq!(address(0, 0).octets(), [10, 250, 0, 1]);
        assert!(all.iter().all(|a| a.octets()[..2] == [10, 250]));
    }
}
