//! Cluster states at scale, written through the API server as a cluster
//! would hold them: `services` selectorless ClusterIP Services (one TCP port)
//! in namespace [`NAMESPACE`], each with one EndpointSlice of `endpoints`
//! ready endpoints (the endpointslice controller leaves selectorless
//! Services alone, so the slices are the bench's own). Every write is a
//! server-side apply, so growing a state rewrites only what changed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::str::FromStr;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::controlplane::ControlPlaneError;

pub const NAMESPACE: &str = "bench";
const MANAGER: &str = "switchyard-bench";
/// Writes in flight at once: enough to keep the API server busy.
const IN_FLIGHT: usize = 32;
/// Every Service's port, and its endpoints' port.
pub const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;

/// A state's size: `SERVICESxENDPOINTS` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size {
    pub services: usize,
    pub endpoints: usize,
}

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Size, String> {
        let bad = || format!("bad size {text:?} (want SERVICESxENDPOINTS)");
        let (s, e) = text.split_once('x').ok_or_else(bad)?;
        Ok(Size {
            services: s.parse().map_err(|_| bad())?,
            endpoints: e.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}", self.services, self.endpoints)
    }
}

pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn meta(name: String, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(NAMESPACE.into()),
        labels,
        ..ObjectMeta::default()
    }
}

/// Service `name` in [`NAMESPACE`]: a ClusterIP whose address the API
/// server allocates, one TCP port.
pub(super) fn service(name: String) -> Service {
    let port = ServicePort {
        name: Some("http".into()),
        port: i32::from(PORT),
        protocol: Some("TCP".into()),
        target_port: Some(IntOrString::Int(i32::from(TARGET_PORT))),
        ..ServicePort::default()
    };
    Service {
        metadata: meta(name, None),
        spec: Some(ServiceSpec {
            ports: Some(vec![port]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Endpoint `k` of service `i` when services have `per` endpoints each.
fn endpoint_ip(i: usize, per: usize, k: usize) -> Ipv4Addr {
    let n = u32::try_from(i * per + k + 1).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)).saturating_add(n))
}

/// The one EndpointSlice of Service `service`, its ready endpoints at `ips`.
pub(super) fn slice(service: &str, ips: impl Iterator<Item = Ipv4Addr>) -> EndpointSlice {
    let labels = [
        ("kubernetes.io/service-name", service.to_string()),
        ("endpointslice.kubernetes.io/managed-by", MANAGER.into()),
    ];
    let endpoint = |ip: Ipv4Addr| Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Endpoint::default()
    };
    EndpointSlice {
        metadata: meta(
            slice_name(service),
            Some(labels.map(|(k, v)| (k.to_string(), v)).into()),
        ),
        address_type: "IPv4".into(),
        endpoints: ips.map(endpoint).collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(TARGET_PORT)),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

pub(super) fn slice_name(service: &str) -> String {
    format!("{service}-bench")
}

/// Server-side apply of `object` named `name` in [`NAMESPACE`].
pub(super) async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<(), ControlPlaneError>
where
    K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map(drop)
    .map_err(|source| ControlPlaneError::Api {
        operation: format!("apply {name} in namespace {NAMESPACE}"),
        source,
    })
}

/// What the bench has written.
pub struct BenchState {
    client: kube::Client,
    /// Endpoints per Service written so far, by Service index.
    endpoints: Vec<usize>,
}

impl BenchState {
    /// Make [`NAMESPACE`]; no Services yet.
    pub async fn new(client: kube::Client) -> Result<BenchState, ControlPlaneError> {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        apply(&Api::<Namespace>::all(client.clone()), NAMESPACE, &ns).await?;
        Ok(BenchState {
            client,
            endpoints: Vec::new(),
        })
    }

    /// Services written so far.
    pub fn services(&self) -> usize {
        self.endpoints.len()
    }

    /// Grow to `size`: the missing Services and every slice whose endpoint
    /// count differs (Services are never removed: give sizes in order).
    pub async fn grow(&mut self, size: Size) -> Result<(), ControlPlaneError> {
        let services = Api::<Service>::namespaced(self.client.clone(), NAMESPACE);
        let slices = Api::<EndpointSlice>::namespaced(self.client.clone(), NAMESPACE);
        let have = self.endpoints.len();
        futures::stream::iter(have..size.services)
            .map(|i| {
                let services = &services;
                async move { apply(services, &service_name(i), &service(service_name(i))).await }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        self.endpoints.resize(size.services.max(have), 0);
        let per = size.endpoints;
        let stale: Vec<usize> = (0..size.services)
            .filter(|&i| self.endpoints[i] != per)
            .collect();
        futures::stream::iter(stale.iter().copied())
            .map(|i| {
                let name = service_name(i);
                let object = slice(&name, (0..per).map(|k| endpoint_ip(i, per, k)));
                let slices = &slices;
                async move { apply(slices, &slice_name(&name), &object).await }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        for i in stale {
            self.endpoints[i] = per;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Size, endpoint_ip, slice};
    use std::net::Ipv4Addr;

    #[test]
    fn sizes_parse_and_order_by_services_first() {
        let a: Size = "5000x50".parse().unwrap();
        let b: Size = "10000x5".parse().unwrap();
        assert_eq!((a.services, a.endpoints), (5000, 50));
        assert!(a < b);
        assert_eq!(a.to_string(), "5000×50");
        assert!("5000".parse::<Size>().is_err());
    }

    #[test]
    fn endpoints_of_one_size_never_repeat_and_slices_name_their_service() {
        assert_eq!(endpoint_ip(0, 5, 0), Ipv4Addr::new(10, 64, 0, 1));
        assert_eq!(endpoint_ip(1, 5, 0), Ipv4Addr::new(10, 64, 0, 6));
        assert_eq!(endpoint_ip(43_999, 5, 4), Ipv4Addr::new(10, 67, 91, 96));
        let s = slice("svc-7", [Ipv4Addr::new(10, 0, 0, 1)].into_iter());
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/service-name"], "svc-7");
        assert_eq!(s.endpoints.len(), 1);
    }
}
