//! Kubeconfig files, written from kube's typed `Kubeconfig` (one place makes
//! the YAML). Credentials are referenced by path, so a file is valid for as
//! long as its control plane's directory exists.
//!
//! The server is always `https://127.0.0.1:<port>`: on the host that is the
//! API server itself, in a node's network namespace it is that node's
//! forwarder on the same port, so one file serves a program wherever it runs.

use std::path::{Path, PathBuf};

use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

use super::ControlPlaneError;
use super::certs::{self, CertFiles};

const NAME: &str = "switchyard-lab";

/// How a kubeconfig's user proves who it is.
#[derive(Clone, Debug)]
pub enum Credential {
    ClientCert(CertFiles),
    /// A file holding a bearer token.
    TokenFile(PathBuf),
}

fn text(path: &Path) -> Option<String> {
    Some(path.display().to_string())
}

/// Write a kubeconfig for `user` at `path`.
pub fn write(
    path: &Path,
    port: u16,
    ca: &Path,
    user: &str,
    credential: &Credential,
) -> Result<(), ControlPlaneError> {
    let auth = match credential {
        Credential::ClientCert(files) => AuthInfo {
            client_certificate: text(&files.cert),
            client_key: text(&files.key),
            ..AuthInfo::default()
        },
        Credential::TokenFile(file) => AuthInfo {
            token_file: text(file),
            ..AuthInfo::default()
        },
    };
    let config = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: NAME.into(),
            cluster: Some(Cluster {
                server: Some(format!("https://127.0.0.1:{port}")),
                certificate_authority: text(ca),
                ..Cluster::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.into(),
            auth_info: Some(auth),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: NAME.into(),
            context: Some(Context {
                cluster: NAME.into(),
                user: Some(user.into()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some(NAME.into()),
        ..Kubeconfig::default()
    };
    let yaml = serde_norway::to_string(&config).map_err(|e| ControlPlaneError::Kubeconfig {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    certs::write(path, yaml.as_bytes(), true)
}

/// A kube client for the kubeconfig at `path`.
pub async fn client(path: &Path) -> Result<kube::Client, ControlPlaneError> {
    let err = |message: String| ControlPlaneError::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let config = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| err(e.to_string()))
}
