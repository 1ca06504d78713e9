//! Object builders shared by the property tests and the benchmark-sized tests.

#![allow(dead_code)]

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use switchyard_compiler::Compiler;

pub fn service(namespace: &str, name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("test Service {namespace}/{name}: {e}"))
}

/// A ClusterIP service with one TCP port named `http`.
pub fn simple_service(namespace: &str, name: &str, cluster_ip: &str) -> Service {
    service(
        namespace,
        name,
        json!({"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80}]}),
    )
}

pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    ports: Value,
    endpoints: Value,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": namespace,
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap_or_else(|e| panic!("test EndpointSlice {namespace}/{name}: {e}"))
}

/// A slice for `simple_service` with `count` ready endpoints from `first` on.
pub fn simple_slice(namespace: &str, service: &str, first: u32, count: u32) -> EndpointSlice {
    let endpoints: Vec<Value> = (first..first + count)
        .map(|i| {
            json!({
                "addresses": [std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string()],
                "nodeName": format!("node-{}", i % 100),
                "zone": format!("zone-{}", i % 3),
            })
        })
        .collect();
    slice(
        namespace,
        &format!("{service}-abcde"),
        service,
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        json!(endpoints),
    )
}

/// Give `compiler` service `ns/svc-i` (`simple_service`, cluster IP
/// 10.96.x.y from `i`) with `count` endpoints from `first` on (`simple_slice`).
pub fn add_simple_service(compiler: &mut Compiler, i: u32, first: u32, count: u32) {
    let name = format!("svc-{i}");
    let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i).to_string();
    compiler
        .update_service(&simple_service("ns", &name, &ip))
        .unwrap_or_else(|e| panic!("{e}"));
    compiler
        .update_endpoint_slice(&simple_slice("ns", &name, first, count))
        .unwrap_or_else(|e| panic!("{e}"));
}
