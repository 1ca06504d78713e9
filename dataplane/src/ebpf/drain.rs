//! A retired eBPF mode hands over without cutting what it balanced (pure
//! decisions; the backend's `retire`/`settle` carry them out). Retiring
//! empties `sy_frontends`: the programs stop balancing new flows, so they
//! reach the successor's rules (already in place: the switch builds the new
//! mode first), while the flows eBPF translated go on through `sy_conntrack`
//! at tc and `sy_sock_revnat` at recvmsg. The drain ends when every TCP
//! connection tc balanced has passed a FIN or RST (the programs mark its
//! entries [`CT_CLOSING`]), or after the grace period; then `sy_conntrack`
//! is emptied, inbound entries first, so no packet is translated on its way
//! in whose answer would no longer be translated back, and only then are the
//! programs detached.

use super::layout::{CT_CLOSING, CT_INGRESS, PROTO_TCP, Tuple};

/// TCP connections balanced at tc that no FIN or RST has passed yet: their
/// inbound entries (every connection has at least one, the client's DNAT).
pub fn open_connections(entries: &[(Tuple, Tuple)]) -> usize {
    entries
        .iter()
        .filter(|(key, to)| {
            key.proto == PROTO_TCP && key.pad == CT_INGRESS && to.pad & CT_CLOSING == 0
        })
        .count()
}

/// The order in which to delete `entries`: inbound ones first.
pub fn removal_order(entries: &[(Tuple, Tuple)]) -> Vec<Tuple> {
    let (inbound, outbound): (Vec<Tuple>, Vec<Tuple>) = entries
        .iter()
        .map(|(key, _)| *key)
        .partition(|key| key.pad == CT_INGRESS);
    inbound.into_iter().chain(outbound).collect()
}

#[cfg(test)]
mod tests {
    use super::super::layout::{Addr, CT_EGRESS};
    use super::*;

    fn tuple(proto: u8, sport: u16, pad: u16) -> Tuple {
        Tuple {
            src: Addr([1, 0, 0, 0]),
            dst: Addr([2, 0, 0, 0]),
            sport,
            dport: 80,
            proto,
            family: 2,
            pad,
        }
    }

    #[test]
    fn a_connection_is_open_until_a_fin_or_rst_marked_its_inbound_entry() {
        const UDP: u8 = 17;
        let entries = [
            (tuple(PROTO_TCP, 1, CT_INGRESS), tuple(PROTO_TCP, 1, 0)),
            (tuple(PROTO_TCP, 1, CT_EGRESS), tuple(PROTO_TCP, 1, 0)),
            (
                tuple(PROTO_TCP, 2, CT_INGRESS),
                tuple(PROTO_TCP, 2, CT_CLOSING),
            ),
            (tuple(UDP, 3, CT_INGRESS), tuple(UDP, 3, 0)),
        ];
        assert_eq!(open_connections(&entries), 1);
        let order: Vec<_> = removal_order(&entries)
            .iter()
            .map(|k| (k.sport, k.pad))
            .collect();
        assert_eq!(
            order,
            [
                (1, CT_INGRESS),
                (2, CT_INGRESS),
                (3, CT_INGRESS),
                (1, CT_EGRESS)
            ]
        );
    }
}
