//! Removing Switchyard from a node: every object of every mode (iptables
//! chains and jumps, the nftables tables, IPVS virtual servers, `kube-ipvs0`
//! and the ipsets, the eBPF programs, links and pins), each through its
//! backend's own `cleanup`, which removes what is ours and nothing else.
//! `node-agent cleanup` runs it once; `--cleanup-on-exit` runs it when the
//! agent is told to stop. kube-proxy's own nftables tables are not ours and
//! stay (its iptables chains have our layout: `iptables-save` cannot tell them
//! apart, as kube-proxy's `--cleanup` cannot).

use std::fmt;

use switchyard_api::Mode;
use switchyard_dataplane::BackendError;

use crate::switch::DataplaneFactory;

/// What the cleanup found for one mode.
#[derive(Debug)]
pub enum ModeCleanup {
    /// Its objects were there and are gone.
    Removed,
    /// Nothing of it was there.
    Absent,
    /// The kernel lacks the mode (no IPVS, no BPF): nothing of it can exist.
    Unavailable(String),
    /// Removing failed; what is left is named in the error.
    Failed(BackendError),
}

impl fmt::Display for ModeCleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModeCleanup::Removed => f.write_str("removed"),
            ModeCleanup::Absent => f.write_str("nothing to remove"),
            ModeCleanup::Unavailable(reason) => write!(f, "not available here ({reason})"),
            ModeCleanup::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Remove every mode's objects; one outcome per mode, in [`Mode::ALL`] order.
/// A failure in one mode does not stop the others.
pub fn clean_node(factory: &dyn DataplaneFactory) -> Vec<(Mode, ModeCleanup)> {
    Mode::ALL
        .iter()
        .map(|&mode| (mode, clean_mode(factory, mode)))
        .collect()
}

fn clean_mode(factory: &dyn DataplaneFactory, mode: Mode) -> ModeCleanup {
    let mut dataplane = match factory.build(mode) {
        Ok(d) => d,
        Err(BackendError::Unavailable { reason, .. }) => return ModeCleanup::Unavailable(reason),
        Err(e) => return ModeCleanup::Failed(e),
    };
    // `present` is the cheap probe of the mode's marker objects; cleanup runs
    // either way, so a half-built mode without its marker goes too.
    let present = dataplane.present().unwrap_or(true);
    match dataplane.cleanup() {
        Ok(()) if present => ModeCleanup::Removed,
        Ok(()) => ModeCleanup::Absent,
        Err(e) => ModeCleanup::Failed(e),
    }
}

/// Whether every mode was cleaned (or had nothing to clean).
pub fn all_clean(outcomes: &[(Mode, ModeCleanup)]) -> bool {
    !outcomes
        .iter()
        .any(|(_, o)| matches!(o, ModeCleanup::Failed(_)))
}

/// Clean the node and log each mode's outcome; whether all went well.
pub fn clean_and_log(factory: &dyn DataplaneFactory) -> bool {
    let outcomes = clean_node(factory);
    for (mode, outcome) in &outcomes {
        match outcome {
            ModeCleanup::Failed(e) => tracing::error!(%mode, error = %e, "cleanup failed"),
            o => tracing::info!(%mode, outcome = %o, "cleanup"),
        }
    }
    all_clean(&outcomes)
}
