//! Leftovers of another proxy that no Switchyard mode owns ([`Leftovers`], which
//! the agent's sweep removes), and kube-proxy's: the nftables tables
//! `ip kube-proxy` and `ip6 kube-proxy` of its nftables mode. (Its iptables
//! chains and IPVS virtual servers on `kube-ipvs0` have the layout of our
//! iptables and ipvs modes and are removed by those backends' cleanup.)
//! Only these two tables are deleted; every other table stays.

use std::io::ErrorKind;
use std::sync::Arc;

use switchyard_api::Mode;

use crate::BackendError;
use crate::exec::{ExecError, Runner};

/// Objects left behind by another proxy (kube-proxy) that our modes do not own.
pub trait Leftovers: Send + Sync {
    /// What this is, for logs and status (`kube-proxy nftables tables`).
    fn name(&self) -> &'static str;
    /// Remove them if present; returns whether anything was removed.
    fn remove(&self) -> Result<bool, BackendError>;
}

/// The table kube-proxy's nftables mode creates, in both families.
pub const KUBE_PROXY_TABLE: &str = "kube-proxy";

/// Removes kube-proxy's nftables tables.
pub struct KubeProxyNftables {
    runner: Arc<dyn Runner>,
}

impl KubeProxyNftables {
    pub fn new(runner: Arc<dyn Runner>) -> KubeProxyNftables {
        KubeProxyNftables { runner }
    }
}

fn exec_error(operation: &'static str) -> impl Fn(ExecError) -> BackendError {
    move |source| BackendError::Exec {
        mode: Mode::Nftables,
        operation,
        source,
    }
}

impl Leftovers for KubeProxyNftables {
    fn name(&self) -> &'static str {
        "kube-proxy nftables tables"
    }

    fn remove(&self) -> Result<bool, BackendError> {
        let tables = match self.runner.run("nft", &["list", "tables"], None) {
            Ok(out) => out,
            // No nft on the node: kube-proxy cannot have left nftables tables.
            Err(ExecError::Spawn { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Ok(false);
            }
            Err(e) => return Err(exec_error("listing nftables tables")(e)),
        };
        let mut removed = false;
        for family in ["ip", "ip6"] {
            let line = format!("table {family} {KUBE_PROXY_TABLE}");
            if tables.lines().any(|l| l.trim() == line) {
                self.runner
                    .run("nft", &["delete", "table", family, KUBE_PROXY_TABLE], None)
                    .map_err(exec_error("deleting kube-proxy's nftables table"))?;
                removed = true;
            }
        }
        Ok(removed)
    }
}
