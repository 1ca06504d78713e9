//! Which connections a node's switch between two modes cuts, as the
//! migration matrix measured it (README.md, "Mode migration under traffic:
//! the matrix"): the rollout announces it before it starts (an Event and the
//! `ConnectionsCut` condition). A pair not listed loses nothing.

use switchyard_api::Mode;

/// What a switch from `from` to `to` cuts on each node, or `None`.
pub fn connections_cut(from: Mode, to: Mode) -> Option<&'static str> {
    use Mode::{Ebpf, Iptables, Ipvs, Nftables};
    match (from, to) {
        (Iptables | Nftables, Ebpf) => Some(
            "a new connection from the node in the instant the programs attach, and answers to UDP sockets connected to a service before the switch once the old rules' drain ends (after their last TCP connection, at most 120 s), until they reconnect",
        ),
        (Ipvs, Ebpf) => Some(
            "the node's established TCP connections to a service and masqueraded NodePort connections (IPVS's rules, and the NAT of their conntrack entries, go at once)",
        ),
        (Ebpf, Iptables | Nftables | Ipvs) => Some(
            "NodePort connections from outside the node (tracked only in eBPF's own conntrack map), and a few new connections and UDP answers while the programs detach",
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
