//! The bench's cluster state, written through the API as the admin: Nodes,
//! one ProxyConfig over all of them, and Services of one TCP port with one
//! EndpointSlice of five endpoints each. The slices are written as the
//! endpointslice controller writes them (labels, owner, trigger time, a
//! Pod reference, node and zone per endpoint), so kube-proxy's side of the
//! byte comparison is the real thing's size.

use std::net::Ipv4Addr;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use switchyard_api::ProxyConfig;

use super::ScaleError;

pub const NAMESPACE: &str = "scale";
const POOL_LABEL: &str = "switchyard.dev/pool";
const POOL: &str = "scale";
const ZONE: &str = "zone-a";
pub const ENDPOINTS_PER_SERVICE: u32 = 5;
/// Requests in flight while creating objects.
const PARALLEL_WRITES: usize = 16;

pub fn node_name(i: usize) -> String {
    format!("scale-node-{i}")
}

pub fn service_name(k: usize) -> String {
    format!("svc-{k}")
}

/// Endpoint `e` of service `k` (10.128.0.0/9: room for 8M endpoints).
fn endpoint_ip(k: usize, e: u32) -> Ipv4Addr {
    let index = u32::try_from(k).unwrap_or(u32::MAX) * ENDPOINTS_PER_SERVICE + e;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (index & 0x7f_ffff))
}

/// The address change `c` gives its endpoint (10.96.0.0/16 is the services').
pub fn changed_ip(c: usize) -> Ipv4Addr {
    let c = u32::try_from(c).unwrap_or(0) & 0xffff;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + c)
}

fn typed<K: DeserializeOwned>(value: Value) -> Result<K, ScaleError> {
    serde_json::from_value(value).map_err(|e| ScaleError::Setup(format!("an object: {e}")))
}

fn node(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name(i),
            "labels": {POOL_LABEL: POOL, "topology.kubernetes.io/zone": ZONE},
        },
    })
}

fn node_status(i: usize) -> Value {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i as u32);
    json!({"status": {"addresses": [
        {"type": "InternalIP", "address": ip.to_string()},
        {"type": "Hostname", "address": node_name(i)},
    ]}})
}

fn service(k: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(k), "namespace": NAMESPACE, "labels": {"app": service_name(k)}},
        "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]},
    })
}

/// Service `k`'s endpoints; `changed` replaces the first one's address.
fn endpoints(k: usize, nodes: usize, changed: Option<Ipv4Addr>) -> Value {
    let list: Vec<Value> = (0..ENDPOINTS_PER_SERVICE)
        .map(|e| {
            let ip = match changed {
                Some(ip) if e == 0 => ip,
                _ => endpoint_ip(k, e),
            };
            let pod = format!("{}-{e}", service_name(k));
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node_name((k + e as usize) % nodes.max(1)),
                "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": pod,
                              "uid": format!("00000000-0000-4000-8000-{:012x}", k * 8 + e as usize)},
                "zone": ZONE,
            })
        })
        .collect();
    Value::Array(list)
}

fn trigger_time() -> String {
    // RFC 3339 with nanoseconds, as the controller writes it.
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn endpoint_slice(k: usize, nodes: usize, service_uid: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-abcde", service_name(k)),
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": service_name(k),
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "app": service_name(k),
            },
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": trigger_time()},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service_name(k),
                                 "uid": service_uid, "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": endpoints(k, nodes, None),
    })
}

fn proxy_config(nodes: usize) -> Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ProxyConfig",
        "metadata": {"name": POOL},
        "spec": {
            "nodeSelector": {"matchLabels": {POOL_LABEL: POOL}},
            "mode": "nftables",
            "clusterCIDRs": ["10.128.0.0/9"],
            "rollout": {"maxUnavailable": nodes.max(1)},
        },
    })
}

fn api_err(what: String) -> impl FnOnce(kube::Error) -> ScaleError {
    move |source| ScaleError::api(what, source)
}

/// Create the namespace, `services` Services and their slices, spread over `nodes` nodes.
pub async fn create_services(
    client: &Client,
    services: usize,
    nodes: usize,
) -> Result<(), ScaleError> {
    let post = PostParams::default();
    let namespace: Namespace = typed(json!({"metadata": {"name": NAMESPACE}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&post, &namespace)
        .await
        .map_err(api_err(format!("create Namespace {NAMESPACE}")))?;
    let service_api = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    let slice_api = Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE);
    futures::stream::iter(0..services)
        .map(|k| {
            let (service_api, slice_api, post) = (&service_api, &slice_api, &post);
            async move {
                let svc: Service = typed(service(k))?;
                let made = service_api
                    .create(post, &svc)
                    .await
                    .map_err(api_err(format!("create Service {}", service_name(k))))?;
                let uid = made.metadata.uid.unwrap_or_default();
                let slice: EndpointSlice = typed(endpoint_slice(k, nodes, &uid))?;
                slice_api
                    .create(post, &slice)
                    .await
                    .map_err(api_err(format!("create the slice of {}", service_name(k))))?;
                Ok::<(), ScaleError>(())
            }
        })
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect::<()>()
        .await
}

/// Create `nodes` Nodes (with their addresses, as a kubelet reports them)
/// and the ProxyConfig over all of them.
pub async fn create_nodes(client: &Client, nodes: usize) -> Result<(), ScaleError> {
    let post = PostParams::default();
    let api = Api::<Node>::all(client.clone());
    futures::stream::iter(0..nodes)
        .map(|i| {
            let (api, post) = (&api, &post);
            async move {
                let object: Node = typed(node(i))?;
                api.create(post, &object)
                    .await
                    .map_err(api_err(format!("create Node {}", node_name(i))))?;
                api.patch_status(
                    &node_name(i),
                    &PatchParams::default(),
                    &Patch::Merge(node_status(i)),
                )
                .await
                .map_err(api_err(format!(
                    "write the status of Node {}",
                    node_name(i)
                )))?;
                Ok::<(), ScaleError>(())
            }
        })
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect::<()>()
        .await?;
    let config: ProxyConfig = typed(proxy_config(nodes))?;
    Api::<ProxyConfig>::all(client.clone())
        .create(&post, &config)
        .await
        .map_err(api_err(format!("create ProxyConfig {POOL}")))?;
    Ok(())
}

/// Change one endpoint's address of service `k` to `ip`, as the
/// endpointslice controller would (a new trigger time with it).
pub async fn change_endpoint(
    client: &Client,
    k: usize,
    nodes: usize,
    ip: Ipv4Addr,
) -> Result<(), ScaleError> {
    let patch = json!({
        "metadata": {"annotations": {"endpoints.kubernetes.io/last-change-trigger-time": trigger_time()}},
        "endpoints": endpoints(k, nodes, Some(ip)),
    });
    Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE)
        .patch(
            &format!("{}-abcde", service_name(k)),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .map(drop)
        .map_err(api_err(format!(
            "change an endpoint of {}",
            service_name(k)
        )))
}
