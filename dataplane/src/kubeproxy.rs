//! Leftovers of another proxy that no Switchyard mode owns ([`Leftovers`], which
//! the agent's sweep removes), and kube-proxy's: the nftables tables
//! `ip kube-proxy` and `ip6 kube-proxy` of its nftables mode, and the empty
//! `KUBE-PROXY-CANARY` chains its iptables and ipvs modes watch to notice a
//! flush (in mangle, nat and filter, both families). (Its other iptables
//! chains and IPVS virtual servers on `kube-ipvs0` have the layout of our
//! iptables and ipvs modes and are removed by those backends' cleanup.)
//! Only these tables and chains are deleted; everything else stays.
//!
//! kube-proxy's nftables tables translate (NAT) the connections made through
//! them. Netfilter's conntrack goes on translating those only while some NAT
//! chain is hooked in the namespace, and eBPF leaves them to it
//! ([`crate::nat_drain::NatDrain::start_for`]): under eBPF the agent keeps the tables while a
//! connection they translated is established ([`Leftovers::open_translated`]),
//! as a retired iptables or nftables mode of ours drains.

use std::io::ErrorKind;
use std::sync::Arc;

use switchyard_api::Mode;

use crate::BackendError;
use crate::exec::{ExecError, Runner};
use crate::nat_drain::open_translated_tcp;

/// Objects left behind by another proxy (kube-proxy) that our modes do not own.
pub trait Leftovers: Send + Sync {
    /// What this is, for logs and status (`kube-proxy nftables tables`).
    fn name(&self) -> &'static str;
    /// Remove them if present; returns whether anything was removed.
    fn remove(&self) -> Result<bool, BackendError>;
    /// Established TCP connections whose translation may be theirs: 0 when
    /// they are absent or translate nothing.
    fn open_translated(&self) -> Result<usize, BackendError> {
        Ok(0)
    }
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

fn exec_error(mode: Mode, operation: &'static str) -> impl Fn(ExecError) -> BackendError {
    move |source| BackendError::Exec {
        mode,
        operation,
        source,
    }
}

/// Whether `error` says that `program` is not installed.
fn not_installed(error: &ExecError) -> bool {
    matches!(error, ExecError::Spawn { source, .. } if source.kind() == ErrorKind::NotFound)
}

/// Whether `program args` (a listing of one named object) succeeds, `None`
/// when `program` is not installed. A listing that fails finds nothing, as
/// kube-proxy's `ChainExists` reads it: the tools' messages for a missing
/// object differ between versions (iptables 1.8.9 calls a missing chain
/// "incompatible").
fn lists(
    runner: &dyn Runner,
    mode: Mode,
    program: &str,
    args: &[&str],
) -> Result<Option<bool>, BackendError> {
    match runner.run(program, args, None) {
        Ok(_) => Ok(Some(true)),
        Err(e) if not_installed(&e) => Ok(None),
        Err(ExecError::Failed { .. }) => Ok(Some(false)),
        Err(e) => Err(exec_error(mode, "listing another proxy's objects")(e)),
    }
}

impl KubeProxyNftables {
    /// The families (`ip`, `ip6`) that have kube-proxy's table, each asked
    /// for by name: `nft list tables` fetches every chain and rule of every
    /// table, iptables' too (a third of a second beside the iptables mode's
    /// rules for 1000 Services, in every sweep).
    fn present(&self) -> Result<Vec<&'static str>, BackendError> {
        let mut present = Vec::new();
        for family in ["ip", "ip6"] {
            let args = ["-t", "list", "table", family, KUBE_PROXY_TABLE];
            match lists(self.runner.as_ref(), Mode::Nftables, "nft", &args)? {
                Some(true) => present.push(family),
                Some(false) => {}
                // No nft on the node: kube-proxy cannot have left nftables tables.
                None => break,
            }
        }
        Ok(present)
    }
}

impl Leftovers for KubeProxyNftables {
    fn name(&self) -> &'static str {
        "kube-proxy nftables tables"
    }

    fn remove(&self) -> Result<bool, BackendError> {
        let present = self.present()?;
        for family in &present {
            self.runner
                .run("nft", &["delete", "table", family, KUBE_PROXY_TABLE], None)
                .map_err(exec_error(
                    Mode::Nftables,
                    "deleting kube-proxy's nftables table",
                ))?;
        }
        Ok(!present.is_empty())
    }

    /// The kernel's translated established TCP connections, while the
    /// tables exist (the conntrack entry does not say whose rule translated).
    fn open_translated(&self) -> Result<usize, BackendError> {
        if self.present()?.is_empty() {
            return Ok(0);
        }
        open_translated_tcp(self.runner.as_ref()).map_err(|e| BackendError::Kernel {
            mode: Mode::Nftables,
            operation: "count connections kube-proxy's nftables tables translated",
            message: e.to_string(),
        })
    }
}

/// The chain kube-proxy's iptables and ipvs modes create, empty, in every
/// table below, and recreate when it is gone (a flush of their tables).
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";
const CANARY_TABLES: [&str; 3] = ["mangle", "nat", "filter"];

/// Removes kube-proxy's canary chains.
pub struct KubeProxyCanaries {
    runner: Arc<dyn Runner>,
}

impl KubeProxyCanaries {
    pub fn new(runner: Arc<dyn Runner>) -> KubeProxyCanaries {
        KubeProxyCanaries { runner }
    }
}

impl Leftovers for KubeProxyCanaries {
    fn name(&self) -> &'static str {
        "kube-proxy canary chains"
    }

    /// Each chain is asked for by name: `iptables-save` of a table prints
    /// every rule (a quarter of a second per table beside the iptables
    /// mode's rules for 1000 Services, in every sweep).
    fn remove(&self) -> Result<bool, BackendError> {
        let mut removed = false;
        for iptables in ["iptables", "ip6tables"] {
            for table in CANARY_TABLES {
                let args = ["-w", "-t", table, "-S", KUBE_PROXY_CANARY];
                match lists(self.runner.as_ref(), Mode::Iptables, iptables, &args)? {
                    Some(true) => {}
                    Some(false) => continue,
                    // No such tool: no chains of that family.
                    None => break,
                }
                self.runner
                    .run(
                        iptables,
                        &["-w", "-t", table, "-X", KUBE_PROXY_CANARY],
                        None,
                    )
                    .map_err(exec_error(
                        Mode::Iptables,
                        "deleting kube-proxy's canary chain",
                    ))?;
                removed = true;
            }
        }
        Ok(removed)
    }
}
