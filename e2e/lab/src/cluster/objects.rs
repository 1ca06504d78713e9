//! The cluster's objects, made through the API as the admin: the workload
//! namespace, the Nodes, the Services, and the server Pods. There is no
//! kubelet: what a kubelet would report (a Node's addresses, a Pod's IP and
//! readiness) is written to their status. The EndpointSlices are left to the
//! real endpointslice controller, which makes them from the Services and the
//! Pods; [`endpoints_listed`] waits until it has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::ClusterError;
use super::layout::{Layout, NAMESPACE};
use super::wait::until;

/// Deadlock guard for the controllers (ServiceAccount, EndpointSlices).
const CONTROLLERS: Duration = Duration::from_secs(60);

fn api_err(operation: String) -> impl FnOnce(kube::Error) -> ClusterError {
    move |source| ClusterError::Api { operation, source }
}

/// A typed object from the layout's JSON, without its status.
fn typed<K: DeserializeOwned>(mut value: Value) -> Result<(K, Value), ClusterError> {
    let status = value
        .as_object_mut()
        .and_then(|o| o.remove("status"))
        .unwrap_or(Value::Null);
    let text = value.to_string();
    let object = serde_json::from_value(value).map_err(|e| ClusterError::Layout {
        object: text,
        message: e.to_string(),
    })?;
    Ok((object, status))
}

/// Write `status` as a kubelet would (a merge patch of the status subresource).
async fn report<K>(api: &Api<K>, name: &str, status: Value) -> Result<(), ClusterError>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(drop)
    .map_err(api_err(format!("write the status of {name}")))
}

/// Create Node `i` of the layout ([`Layout::node`]), with the addresses a
/// kubelet would report: a node of the pool.
pub async fn create_node(client: &Client, i: u8) -> Result<(), ClusterError> {
    let nodes = Api::<Node>::all(client.clone());
    let (node, status) = typed::<Node>(Layout::node(i))?;
    let name = node.name_any();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .map_err(api_err(format!("create Node {name}")))?;
    report(&nodes, &name, status).await
}

/// Delete Node `i` of the layout (its ProxyNode goes with it, by owner).
pub async fn delete_node(client: &Client, i: u8) -> Result<(), ClusterError> {
    let name = Layout::node_name(i);
    Api::<Node>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .map(drop)
        .map_err(api_err(format!("delete Node {name}")))
}

/// Create every object of `layout`.
pub async fn create(client: &Client, layout: &Layout) -> Result<(), ClusterError> {
    let post = PostParams::default();
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&post, &namespace)
        .await
        .map_err(api_err(format!("create Namespace {NAMESPACE}")))?;
    for i in 0..layout.nodes {
        create_node(client, i).await?;
    }
    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    for k in 0..layout.services {
        let (service, _) = typed::<Service>(layout.service(k))?;
        services
            .create(&post, &service)
            .await
            .map_err(api_err(format!("create Service {}", service.name_any())))?;
    }
    // Pods are admitted only once their ServiceAccount exists.
    until(
        Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE),
        "the default ServiceAccount of the workload namespace",
        CONTROLLERS,
        |accounts| {
            accounts
                .iter()
                .any(|a| a.name_any() == "default")
                .then_some(())
                .ok_or_else(|| "not made yet".to_string())
        },
    )
    .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    for p in layout.pods() {
        let (pod, status) = typed::<Pod>(Layout::pod(p))?;
        pods.create(&post, &pod)
            .await
            .map_err(api_err(format!("create Pod {}", p.name())))?;
        report(&pods, &p.name(), status).await?;
    }
    Ok(())
}

/// Ready endpoint addresses of each Service, from its EndpointSlices.
pub fn ready_endpoints(slices: &[Arc<EndpointSlice>]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice.labels().get("kubernetes.io/service-name") else {
            continue;
        };
        let entry = out.entry(service.clone()).or_default();
        for endpoint in &slice.endpoints {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                entry.extend(endpoint.addresses.iter().cloned());
            }
        }
        entry.sort();
    }
    out
}

/// Wait until the endpointslice controller lists every Service's pods, ready.
pub async fn endpoints_listed(client: &Client, layout: &Layout) -> Result<(), ClusterError> {
    let expected: BTreeMap<String, Vec<String>> = (0..layout.services)
        .map(|k| {
            let mut ips: Vec<String> = layout
                .endpoints(k)
                .iter()
                .map(|p| p.ip().to_string())
                .collect();
            ips.sort();
            (Layout::service_name(k), ips)
        })
        .collect();
    until(
        Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE),
        "the EndpointSlices of every Service (endpointslice controller)",
        CONTROLLERS,
        |slices| {
            let listed = ready_endpoints(slices);
            let missing: Vec<&String> = expected
                .iter()
                .filter(|(service, ips)| listed.get(*service) != Some(ips))
                .map(|(service, _)| service)
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not yet listed with their pods: {missing:?}"))
            }
        },
    )
    .await
}
