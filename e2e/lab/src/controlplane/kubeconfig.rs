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
    save(path, &config)
}

fn save(path: &Path, config: &Kubeconfig) -> Result<(), ControlPlaneError> {
    let yaml = serde_norway::to_string(config).map_err(|e| ControlPlaneError::Kubeconfig {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    certs::write(path, yaml.as_bytes(), true)
}

/// A file a relocated kubeconfig names: where it is, where it is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub host: PathBuf,
    pub guest: String,
}

/// Write at `to` the kubeconfig at `from` for a program that sees every file
/// it names under `root` (`root` + the file's path: a VM's payload); the
/// files to place there.
pub fn relocate(from: &Path, to: &Path, root: &str) -> Result<Vec<Moved>, ControlPlaneError> {
    let mut config = Kubeconfig::read_from(from).map_err(|e| ControlPlaneError::Kubeconfig {
        path: from.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut moved = Vec::new();
    let mut relocate = |field: &mut Option<String>| {
        if let Some(host) = field.take() {
            let guest = format!("{root}{host}");
            moved.push(Moved {
                host: PathBuf::from(host),
                guest: guest.clone(),
            });
            *field = Some(guest);
        }
    };
    for cluster in config
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
    {
        relocate(&mut cluster.certificate_authority);
    }
    for auth in config
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        relocate(&mut auth.client_certificate);
        relocate(&mut auth.client_key);
        relocate(&mut auth.token_file);
    }
    save(to, &config)?;
    Ok(moved)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relocated_kubeconfig_names_every_file_under_the_new_root() {
        let dir = std::env::temp_dir().join(format!("kubeconfig-relocate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (from, to) = (dir.join("from"), dir.join("to"));
        let files = CertFiles {
            cert: dir.join("a.crt"),
            key: dir.join("a.key"),
        };
        let ca = dir.join("ca.crt");
        write(
            &from,
            6443,
            &ca,
            "a",
            &Credential::ClientCert(files.clone()),
        )
        .unwrap();

        let moved = relocate(&from, &to, "/payload").unwrap();

        let guest = |p: &Path| format!("/payload{}", p.display());
        let hosts: Vec<&PathBuf> = moved.iter().map(|m| &m.host).collect();
        assert_eq!(hosts, [&ca, &files.cert, &files.key]);
        assert!(moved.iter().all(|m| m.guest == guest(&m.host)));
        let config = Kubeconfig::read_from(&to).unwrap();
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority, Some(guest(&ca)));
        let auth = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(auth.client_key, Some(guest(&files.key)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
