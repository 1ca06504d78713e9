//! What the lab's programs need of an API server, wherever it runs: a
//! directory for their kubeconfigs and logs, an admin client and kubectl,
//! `config/base` to install, and a kubeconfig per identity. The control
//! plane the lab started ([`ControlPlane`]) has all of it; in the
//! stock-kernel VM the host's is reached through
//! [`crate::reference::vm::GuestApi`], so a run there (an adoption from
//! kube-proxy's ipvs mode) takes the same steps as one on the host.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::identity::Identity;
use super::kubectl::Kubectl;
use super::{ControlPlane, ControlPlaneError};

/// An API server the lab's programs can be pointed at.
pub trait ApiAccess: Sync {
    /// Where kubeconfigs are written and programs run and log.
    fn dir(&self) -> &Path;

    /// A client with the admin's rights.
    fn client(&self) -> kube::Client;

    /// kubectl as the admin.
    fn kubectl(&self) -> Kubectl;

    /// `config/base` (the CRDs, RBAC and the agent's admission policy) as
    /// this side sees it.
    fn config_base(&self) -> PathBuf;

    /// Write a kubeconfig speaking as `who`; returns its path.
    fn kubeconfig_for<'a>(
        &'a self,
        who: &'a Identity,
    ) -> BoxFuture<'a, Result<PathBuf, ControlPlaneError>>;
}

impl ApiAccess for ControlPlane {
    fn dir(&self) -> &Path {
        ControlPlane::dir(self)
    }

    fn client(&self) -> kube::Client {
        ControlPlane::client(self)
    }

    fn kubectl(&self) -> Kubectl {
        ControlPlane::kubectl(self)
    }

    fn config_base(&self) -> PathBuf {
        super::config_base()
    }

    fn kubeconfig_for<'a>(
        &'a self,
        who: &'a Identity,
    ) -> BoxFuture<'a, Result<PathBuf, ControlPlaneError>> {
        Box::pin(ControlPlane::kubeconfig_for(self, who))
    }
}
