//! Which connections a node's switch between two modes cuts, as the
//! migration matrix measured it (README.md, "Mode migration under traffic:
//! the matrix"): the rollout announces it before it starts (an Event and the
//! `ConnectionsCut` condition). A pair not listed loses nothing.

use switchyard_api::Mode;

/// What a switch from `from` to `to` cuts on each node, or `None`.
pub fn connections_cut(from: Mode, to: Mode) -> Option<&'static str> {
    use Mode::{Ebpf, Iptables, Ipvs, Nftables};
    match (from, to) {
        (Iptables | Nftables | Ipvs, Ebpf) => Some(
            "answers to UDP sockets connected to a service before the switch once the old mode's drain ends (after its last TCP connection, at most 120 s), until they reconnect",
        ),
        (Ebpf, Iptables | Nftables | Ipvs) => Some(
            "once eBPF's drain ends (after the last TCP connection it balanced from outside the node, at most 120 s), UDP sockets it balanced get answers from the endpoint's address, and an external client's UDP answer in flight is lost",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pairs_the_matrix_measured_at_zero_cut_nothing() {
        use Mode::{Iptables, Ipvs, Nftables};
        for (from, to) in [
            (Iptables, Nftables),
            (Nftables, Iptables),
            (Iptables, Ipvs),
            (Ipvs, Iptables),
            (Nftables, Ipvs),
            (Ipvs, Nftables),
        ] {
            assert_eq!(connections_cut(from, to), None, "{from} -> {to}");
        }
        for mode in [Iptables, Nftables, Ipvs] {
            assert!(connections_cut(mode, Mode::Ebpf).is_some());
            assert!(connections_cut(Mode::Ebpf, mode).is_some());
        }
    }
}
