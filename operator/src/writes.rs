//! The operator's writes, as server-side applies with field manager
//! [`FIELD_MANAGER`]: ProxyNode specs (owned by their Node) and ProxyConfig status.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde_json::{Value, json};
use switchyard_api::{ProxyConfig, ProxyConfigStatus, ProxyNode};

use crate::FIELD_MANAGER;
use crate::error::Error;
use crate::plan::ProxyNodeApply;

/// The apply body of a ProxyNode: its spec and an owner reference to its Node,
/// so it is garbage-collected with the Node.
pub fn proxy_node_body(apply: &ProxyNodeApply) -> Value {
    json!({
        "apiVersion": ProxyNode::api_version(&()),
        "kind": ProxyNode::kind(&()),
        "metadata": {
            "name": apply.name,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Node",
                "name": apply.name,
                "uid": apply.node_uid,
            }],
        },
        "spec": apply.spec,
    })
}

/// The apply body of a ProxyConfig's status.
pub fn status_body(status: &ProxyConfigStatus) -> Value {
    json!({
        "apiVersion": ProxyConfig::api_version(&()),
        "kind": ProxyConfig::kind(&()),
        "status": status,
    })
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

pub async fn apply_proxy_node(api: &Api<ProxyNode>, apply: &ProxyNodeApply) -> Result<(), Error> {
    api.patch(
        &apply.name,
        &apply_params(),
        &Patch::Apply(proxy_node_body(apply)),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: "ProxyNode",
        name: apply.name.clone(),
        source,
    })?;
    Ok(())
}

pub async fn apply_status(
    api: &Api<ProxyConfig>,
    name: &str,
    status: &ProxyConfigStatus,
) -> Result<(), Error> {
    api.patch_status(name, &apply_params(), &Patch::Apply(status_body(status)))
        .await
        .map_err(|source| Error::Apply {
            kind: "ProxyConfig status",
            name: name.to_string(),
            source,
        })?;
    Ok(())
}
