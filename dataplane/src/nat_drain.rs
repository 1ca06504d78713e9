//! The drain of a retired mode whose translations outlive its switch: the
//! deadline ([`RETIRE_GRACE`]) and the end when no connection is open
//! ([`NatDrain`]; the eBPF mode counts its own, `ebpf::drain`). A netfilter
//! mode (iptables, nftables) retired for eBPF keeps its rules
//! while TCP connections it translated are open. Their translation lives in
//! the kernel's conntrack entries, which netfilter applies only while a NAT
//! chain is hooked in the namespace; eBPF's tc programs pass the mid-stream
//! packets they did not balance, so the kernel goes on translating them.
//! eBPF sits in front of netfilter (socket hooks at connect, tc ingress), so
//! a new connection never meets the old rules. The drain ends when no
//! translated TCP connection is established any more, or after
//! [`RETIRE_GRACE`].

use std::time::Instant;

use switchyard_api::Mode;
use switchyard_api::ruleset::IpFamily;

use crate::BackendError;
use crate::conntrack::ConntrackError;
use crate::exec::Runner;
use crate::ipvs::RETIRE_GRACE;

/// Where a retired netfilter mode stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainState {
    /// Not retired: nothing to do.
    Idle,
    /// Connections it translated are still open: keep the rules.
    Draining,
    /// The drain is over: remove the rules now.
    Ended,
}

/// The drain of a netfilter mode retired for eBPF.
#[derive(Debug, Default)]
pub struct NatDrain {
    until: Option<Instant>,
}

impl NatDrain {
    /// Whether `successor` leaves the old rules' packets alone (eBPF: it
    /// translates before netfilter sees a packet); then the drain starts.
    pub fn start_for(&mut self, successor: Mode) -> bool {
        if successor != Mode::Ebpf {
            return false;
        }
        self.start();
        true
    }

    /// Drain from now on, for [`RETIRE_GRACE`] at most.
    pub fn start(&mut self) {
        self.until = Some(Instant::now() + RETIRE_GRACE);
    }

    /// A netfilter mode's drain: its DNATed TCP connections in the kernel's conntrack.
    pub fn settle(&mut self, runner: &dyn Runner, mode: Mode) -> Result<DrainState, BackendError> {
        self.settle_counting(|| {
            open_translated_tcp(runner).map_err(|e| BackendError::Kernel {
                mode,
                operation: "count connections the retired rules translated",
                message: e.to_string(),
            })
        })
    }

    /// Where the drain stands with `open()` connections still open (asked
    /// only while the drain runs and its grace period lasts).
    pub fn settle_counting(
        &mut self,
        open: impl FnOnce() -> Result<usize, BackendError>,
    ) -> Result<DrainState, BackendError> {
        let Some(until) = self.until else {
            return Ok(DrainState::Idle);
        };
        if Instant::now() < until && open()? > 0 {
            return Ok(DrainState::Draining);
        }
        self.until = None;
        Ok(DrainState::Ended)
    }
}

/// Established TCP connections whose destination the kernel's conntrack
/// translated (DNAT), IPv4 and IPv6: one dump of each family's TCP entries.
pub fn open_translated_tcp(runner: &dyn Runner) -> Result<usize, ConntrackError> {
    let table = runner.conntrack();
    let mut open = 0;
    for family in [IpFamily::V4, IpFamily::V6] {
        open += table.translated_tcp_open(family)?;
    }
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::FakeRunner;

    #[test]
    fn only_a_switch_to_ebpf_drains_and_it_ends_with_no_open_connection() {
        let runner = FakeRunner::default();
        let mut drain = NatDrain::default();
        assert!(!drain.start_for(Mode::Nftables));
        assert_eq!(
            drain.settle(&runner, Mode::Iptables).unwrap(),
            DrainState::Idle
        );
        assert!(drain.start_for(Mode::Ebpf));
        runner.conntrack_table().set_translated_tcp(IpFamily::V6, 1);
        assert_eq!(
            drain.settle(&runner, Mode::Iptables).unwrap(),
            DrainState::Draining
        );
        runner.conntrack_table().set_translated_tcp(IpFamily::V6, 0);
        assert_eq!(
            drain.settle(&runner, Mode::Iptables).unwrap(),
            DrainState::Ended
        );
        assert_eq!(
            drain.settle(&runner, Mode::Iptables).unwrap(),
            DrainState::Idle
        );
    }
}
