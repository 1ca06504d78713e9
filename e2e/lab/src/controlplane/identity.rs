//! Who a kubeconfig speaks as: a client-certificate user (and group), or a
//! ServiceAccount with a token from the TokenRequest API, optionally bound to
//! a Pod. A token bound to a Pod that is bound to a Node carries the node's
//! name (ServiceAccountTokenPodNodeInfo, GA in 1.32), which the API server
//! puts in `userInfo.extra["authentication.kubernetes.io/node-name"]` — what
//! the agent's admission policy checks. The Pod and Node are created when
//! missing (the Pod never runs: there is no kubelet; binding needs only the
//! object).

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use super::kubeconfig::{self, Credential};
use super::{ControlPlaneError, certs};

/// The namespace and the ServiceAccounts of the agent and the operator in `config/rbac`.
pub const NAMESPACE: &str = "switchyard-system";
pub const AGENT_SA: &str = "switchyard-agent";
pub const OPERATOR_SA: &str = "switchyard-operator";

/// A Pod scheduled on a Node, for a bound token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodOnNode {
    pub pod: String,
    pub node: String,
}

/// An identity to mint a kubeconfig for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A client certificate: `name` is the user (CN), `group` the one group (O).
    User { name: String, group: Option<String> },
    /// A ServiceAccount token, bound to `pod` when given.
    ServiceAccount {
        namespace: String,
        name: String,
        pod: Option<PodOnNode>,
    },
}

impl Identity {
    /// The node agent of `node`: its ServiceAccount, with a token bound to a
    /// Pod on that node, as the kubelet would give the DaemonSet's pod.
    pub fn agent_on(node: &str) -> Identity {
        Identity::ServiceAccount {
            namespace: NAMESPACE.into(),
            name: AGENT_SA.into(),
            pod: Some(PodOnNode {
                pod: format!("{AGENT_SA}-{node}"),
                node: node.into(),
            }),
        }
    }

    /// Replica `pod` of the operator: its ServiceAccount, with a token bound
    /// to that Pod (on `node`), so the API server's audit log tells the
    /// replicas apart.
    pub fn operator_replica(pod: &str, node: &str) -> Identity {
        Identity::ServiceAccount {
            namespace: NAMESPACE.into(),
            name: OPERATOR_SA.into(),
            pod: Some(PodOnNode {
                pod: pod.into(),
                node: node.into(),
            }),
        }
    }

    /// ServiceAccount `name` of Switchyard's namespace with a token bound to
    /// no Pod (the operator as a Deployment's pod has one; the agent's
    /// writes are refused without one).
    pub fn unbound(name: &str) -> Identity {
        Identity::ServiceAccount {
            namespace: NAMESPACE.into(),
            name: name.into(),
            pod: None,
        }
    }

    /// A file-name-safe name for this identity's files.
    pub fn slug(&self) -> String {
        let raw = match self {
            Identity::User { name, group } => {
                format!("user-{name}-{}", group.as_deref().unwrap_or(""))
            }
            Identity::ServiceAccount {
                namespace,
                name,
                pod,
            } => format!(
                "sa-{namespace}-{name}-{}",
                pod.as_ref().map_or("", |p| p.pod.as_str())
            ),
        };
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_end_matches('-')
            .to_string()
    }
}

/// A token for ServiceAccount identity `who`, written into `dir`, as a
/// kubeconfig's credential (a user's client certificate is the PKI's to issue).
pub async fn token_credential(
    admin: &kube::Client,
    dir: &Path,
    who: &Identity,
) -> Result<Credential, ControlPlaneError> {
    let Identity::ServiceAccount {
        namespace,
        name,
        pod,
    } = who
    else {
        return Err(ControlPlaneError::NotServiceAccount {
            identity: who.slug(),
        });
    };
    let token = token(admin, namespace, name, pod.as_ref()).await?;
    let file = dir.join(format!("{}.token", who.slug()));
    certs::write(&file, token.as_bytes(), true)?;
    Ok(Credential::TokenFile(file))
}

/// Write `who`'s kubeconfig into `dir` (the API server at 127.0.0.1:`port`,
/// its CA certificate `ca`); returns its path.
pub fn write_kubeconfig(
    who: &Identity,
    dir: &Path,
    port: u16,
    ca: &Path,
    credential: &Credential,
) -> Result<PathBuf, ControlPlaneError> {
    let user = match who {
        Identity::User { name, .. } => name.clone(),
        Identity::ServiceAccount {
            namespace, name, ..
        } => {
            format!("system:serviceaccount:{namespace}:{name}")
        }
    };
    let path = dir.join(format!("{}.kubeconfig", who.slug()));
    kubeconfig::write(&path, port, ca, &user, credential)?;
    Ok(path)
}

fn api_err(operation: String) -> impl FnOnce(kube::Error) -> ControlPlaneError {
    move |source| ControlPlaneError::Api { operation, source }
}

fn already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// A token for ServiceAccount `namespace/name`, bound to `pod` if given.
pub async fn token(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
    pod: Option<&PodOnNode>,
) -> Result<String, ControlPlaneError> {
    let bound = match pod {
        Some(p) => Some(bind_target(admin, namespace, name, p).await?),
        None => None,
    };
    let request = TokenRequest {
        spec: TokenRequestSpec {
            bound_object_ref: bound,
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .map_err(api_err(format!(
            "request a token for ServiceAccount {namespace}/{name}"
        )))?;
    answer
        .status
        .map(|s| s.token)
        .ok_or_else(|| ControlPlaneError::NoToken {
            service_account: format!("{namespace}/{name}"),
        })
}

/// The Node (created if missing) and the Pod on it running as the
/// ServiceAccount (created if missing), as a TokenRequest's bound object.
async fn bind_target(
    admin: &kube::Client,
    namespace: &str,
    service_account: &str,
    target: &PodOnNode,
) -> Result<BoundObjectReference, ControlPlaneError> {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(target.node.clone()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    match Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &node)
        .await
    {
        Err(e) if !already_exists(&e) => {
            return Err(api_err(format!("create Node {}", target.node))(e));
        }
        _ => {}
    }
    let pods = Api::<Pod>::namespaced(admin.clone(), namespace);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(target.pod.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(target.node.clone()),
            service_account_name: Some(service_account.into()),
            containers: vec![Container {
                name: service_account.into(),
                image: Some(format!("switchyard/{service_account}:lab")),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let pod = match pods.create(&PostParams::default(), &pod).await {
        Ok(pod) => pod,
        Err(e) if already_exists(&e) => pods
            .get(&target.pod)
            .await
            .map_err(api_err(format!("get Pod {namespace}/{}", target.pod)))?,
        Err(e) => return Err(api_err(format!("create Pod {namespace}/{}", target.pod))(e)),
    };
    Ok(BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(target.pod.clone()),
        uid: pod.metadata.uid,
    })
}
