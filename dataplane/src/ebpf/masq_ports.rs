//! The source ports the tc masquerade picks from (`CFG_MASQ_PORT_MIN/MAX`):
//! a block outside the node's `ip_local_port_range`, read in the agent's
//! network namespace when the programs are loaded. The kernel gives none of
//! them to a socket of the node, so a masqueraded flow never shares the
//! node's address and port towards a backend with a node socket. (The IPv4
//! sysctl is the range of IPv6 sockets too.)
//!
//! Of the two blocks, above the range (to 65535) and below it (from 1024),
//! the larger is taken: each backend can carry as many masqueraded flows at
//! once as the block has ports, and with the kernel's default range
//! (32768-60999) that is 1024-32767 (31,744 ports) rather than 61000-65535
//! (4,536). Ports below 1024 are left out: protocols that use a fixed source
//! port (NFS and NTP clients, IKE) live there. The ports below the range are
//! also where servers bind; the programs skip a port any socket of the node
//! holds for the backend's answers when they pick one. Equal sizes: the block
//! above, where fewer servers bind. A range that leaves neither block
//! (1024-65535) leaves every unprivileged port to the masquerade too, and
//! only that check keeps flows and sockets apart.

use std::ops::RangeInclusive;

use super::kernel::kernel_err;
use crate::BackendError;
use crate::sysctl::Sysctl;

/// The sysctl of the node's ephemeral ports.
pub const EPHEMERAL_SYSCTL: &str = "net.ipv4.ip_local_port_range";

/// The lowest port the masquerade uses (below: privileged, fixed-port protocols).
const LOWEST: u16 = 1024;

/// An inclusive block of masquerade source ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasqueradePorts {
    pub min: u16,
    pub max: u16,
}

impl MasqueradePorts {
    /// The block for a node whose sockets take ephemeral ports from `ephemeral`.
    pub fn outside(ephemeral: RangeInclusive<u16>) -> MasqueradePorts {
        let (lo, hi) = (*ephemeral.start(), *ephemeral.end());
        let above = (hi < u16::MAX).then(|| MasqueradePorts {
            min: hi + 1,
            max: u16::MAX,
        });
        let below = (lo > LOWEST).then(|| MasqueradePorts {
            min: LOWEST,
            max: lo - 1,
        });
        match (above, below) {
            (Some(a), Some(b)) if b.count() > a.count() => b,
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => MasqueradePorts {
                min: LOWEST,
                max: u16::MAX,
            },
        }
    }

    /// The block for the ephemeral range `sysctl` reads.
    pub fn read(sysctl: &dyn Sysctl) -> Result<MasqueradePorts, BackendError> {
        ephemeral_ports(sysctl).map(MasqueradePorts::outside)
    }

    /// The larger block of 1024-65535 outside this one: where another mode's
    /// masquerade picks while this one's drains beside it. Their NATs share
    /// the node's address and port towards a backend and neither sees the
    /// other's flows, so a port of this block is an answer this block's
    /// un-SNAT would take. `None` when this block leaves no other.
    pub fn beside(self) -> Option<MasqueradePorts> {
        let below = (self.min > LOWEST).then(|| MasqueradePorts {
            min: LOWEST,
            max: self.min - 1,
        });
        let above = (self.max < u16::MAX).then(|| MasqueradePorts {
            min: self.max + 1,
            max: u16::MAX,
        });
        // The last of equals: the block above, as for `outside`.
        [below, above]
            .into_iter()
            .flatten()
            .max_by_key(|b| b.count())
    }

    /// How many ports the block has.
    pub fn count(self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    pub fn contains(self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

/// The ports the node's sockets are given (`ip_local_port_range`).
pub fn ephemeral_ports(sysctl: &dyn Sysctl) -> Result<RangeInclusive<u16>, BackendError> {
    let text = sysctl.read(EPHEMERAL_SYSCTL).map_err(|e| {
        kernel_err(
            "read ip_local_port_range",
            format!("{EPHEMERAL_SYSCTL}: {e}"),
        )
    })?;
    parse_range(&text).ok_or_else(|| {
        kernel_err(
            "read ip_local_port_range",
            format!("{EPHEMERAL_SYSCTL}: {text:?}"),
        )
    })
}

/// `ip_local_port_range`'s two numbers, low first.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut words = text.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (words.next()?.ok()?, words.next()?.ok()?);
    (words.next().is_none() && 0 < lo && lo <= hi).then_some(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysctl::FakeSysctl;

    fn ports(min: u16, max: u16) -> MasqueradePorts {
        MasqueradePorts { min, max }
    }

    #[test]
    fn another_modes_masquerade_takes_the_larger_block_beside_ebpfs() {
        assert_eq!(ports(1024, 32767).beside(), Some(ports(32768, 65535)));
        assert_eq!(ports(61000, 65535).beside(), Some(ports(1024, 60999)));
        assert_eq!(ports(1024, 65535).beside(), None);
    }

    #[test]
    fn the_larger_block_outside_the_ephemeral_range_is_taken() {
        for (ephemeral, want) in [
            (32768..=60999, ports(1024, 32767)),
            (1025..=60999, ports(61000, 65535)),
            (49152..=65535, ports(1024, 49151)),
            (10000..=20000, ports(20001, 65535)),
            (1024..=64511, ports(64512, 65535)),
            (2048..=64511, ports(64512, 65535)),
            (1024..=65535, ports(1024, 65535)),
        ] {
            let got = MasqueradePorts::outside(ephemeral.clone());
            assert_eq!(got, want, "{ephemeral:?}");
            if want.count() < 64512 {
                assert!(!ephemeral.clone().any(|p| got.contains(p)), "{ephemeral:?}");
            }
        }
    }

    #[test]
    fn the_range_is_read_from_the_sysctl_and_garbage_is_an_error() {
        let sysctl = FakeSysctl::default();
        sysctl.write(EPHEMERAL_SYSCTL, "32768\t60999").unwrap();
        assert_eq!(MasqueradePorts::read(&sysctl).unwrap(), ports(1024, 32767));
        for bad in ["", "32768", "60999 32768", "0 100", "1 2 3", "a b"] {
            sysctl.write(EPHEMERAL_SYSCTL, bad).unwrap();
            assert!(MasqueradePorts::read(&sysctl).is_err(), "{bad:?}");
        }
    }
}
