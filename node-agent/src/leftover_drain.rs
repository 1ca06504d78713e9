//! Foreign leftovers (kube-proxy's) go once our mode is in place, except
//! those that translate connections the active mode leaves to netfilter:
//! eBPF balances new connections before netfilter sees them, so a connection
//! kube-proxy's nftables tables translated keeps its conntrack entry, which
//! netfilter applies only while a NAT chain is hooked. Those tables stay
//! while such a connection is established, or for `RETIRE_GRACE` at most
//! (the drain of a retired iptables or nftables mode of ours,
//! `switchyard_dataplane::nat_drain`), then go.

use switchyard_api::Mode;
use switchyard_dataplane::BackendError;
use switchyard_dataplane::kubeproxy::Leftovers;
use switchyard_dataplane::nat_drain::{DrainState, NatDrain};

use crate::switch::{Swept, remove_leftovers};

/// The drain of the leftovers held after a switch.
#[derive(Debug, Default)]
pub struct LeftoverDrain {
    drain: NatDrain,
    held: bool,
}

/// Established connections each of `leftovers` translated.
fn open_translated(leftovers: &[Box<dyn Leftovers>]) -> Result<Vec<usize>, BackendError> {
    leftovers.iter().map(|l| l.open_translated()).collect()
}

impl LeftoverDrain {
    /// With `active` in place (after a switch, or at start): which of
    /// `leftovers` to remove now. Those that translate established
    /// connections `active` leaves to netfilter are held.
    pub fn start<'a>(
        &mut self,
        active: Mode,
        leftovers: &'a [Box<dyn Leftovers>],
    ) -> Vec<&'a dyn Leftovers> {
        self.drain = NatDrain::default();
        self.held = false;
        let all = || leftovers.iter().map(AsRef::as_ref).collect();
        if !self.drain.start_for(active) {
            return all();
        }
        let mut open = Vec::new();
        let state = self.drain.settle_counting(|| {
            open = open_translated(leftovers)?;
            Ok(open.iter().sum())
        });
        match state {
            Ok(DrainState::Draining) => {}
            Ok(DrainState::Idle | DrainState::Ended) => return all(),
            Err(e) => {
                tracing::warn!(error = %e, "counting the connections leftovers translated failed; removing them");
                return all();
            }
        }
        self.held = true;
        let (held, now): (Vec<_>, Vec<_>) = leftovers.iter().zip(open).partition(|(_, n)| *n > 0);
        for (l, n) in &held {
            tracing::info!(leftover = l.name(), connections = n, %active, "kept while connections it translated are established");
        }
        now.into_iter().map(|(l, _)| l.as_ref()).collect()
    }

    /// Whether leftovers are held.
    pub fn holding(&self) -> bool {
        self.held
    }

    /// Remove the held leftovers once no connection they translated is
    /// established, or the grace passed; what went, if they went.
    pub fn settle(&mut self, leftovers: &[Box<dyn Leftovers>]) -> Option<Swept> {
        if !self.held {
            return None;
        }
        let state = self
            .drain
            .settle_counting(|| open_translated(leftovers).map(|open| open.iter().sum()));
        match state {
            Ok(DrainState::Draining) => return None,
            Ok(DrainState::Idle | DrainState::Ended) => {}
            Err(e) => {
                tracing::warn!(error = %e, "counting the connections leftovers translated failed; removing them");
            }
        }
        self.held = false;
        let all: Vec<&dyn Leftovers> = leftovers.iter().map(AsRef::as_ref).collect();
        let mut swept = Swept::default();
        remove_leftovers(&all, &mut swept);
        Some(swept)
    }
}
