//! Switchyard's API: the CRDs (`ProxyConfig`, `ProxyRuleset`, `ProxyNode`) in
//! group `switchyard.dev`, version `v1alpha1`, and the mode-neutral ruleset
//! model the operator compiles and every node agent applies.

pub mod duration;
pub mod manifests;
pub mod mode;
pub mod policy;
pub mod proxyconfig;
pub mod proxynode;
pub mod ruleset;
pub mod validation;

pub use mode::Mode;
pub use proxyconfig::{ProxyConfig, ProxyConfigSpec, ProxyConfigStatus};
pub use proxynode::{ProxyNode, ProxyNodeSpec, ProxyNodeStatus};
pub use ruleset::{ProxyRuleset, ProxyRulesetSpec};

/// The API group of every Switchyard resource.
pub const GROUP: &str = "switchyard.dev";

/// Drop an object's `metadata.managedFields` before a daemon's store keeps
/// it (`.modify()` before `.reflect()`). Neither daemon reads them: the
/// agent's only writes are server-side applies of its own status, built
/// from nothing; the operator reads Nodes' labels and addresses. Parsed
/// into JSON maps they are most of a stored object: half of an agent's
/// memory in a store of tens of thousands of small shards (`control-scale`,
/// 10 agents, 10,000 Services in 32,768 shards: the bench process at
/// 1,490 MiB resident with them, 710 MiB without), and the kubelet's
/// heartbeats in a stored Node.
pub fn forget_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// The CRDs, in the order `crdgen` prints them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![ProxyConfig::crd(), ProxyNode::crd(), ProxyRuleset::crd()]
}

/// The CRDs as one multi-document YAML stream (what `crds/yaml/` holds).
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}
