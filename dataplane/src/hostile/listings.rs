//! The listings of the modes no kernel tool reads back here (IPVS's
//! `ipvsadm`/`ipset save` form, eBPF's map tables), which carry service
//! names in `#` lines: a hostile case has exactly as many lines as its twin
//! with harmless names, so no name added or ended a line. (The iptables and
//! nftables listings are restored into the kernel by their tests.)

use switchyard_api::Mode;

use switchyard_api::policy::LinkedRuleset;

use super::{benign_twin, for_cases, linked, settings};
use crate::{ebpf, ipvs};

fn listings(linked: &LinkedRuleset) -> [String; 2] {
    [
        ipvs::render::render(linked, &settings(Mode::Ipvs)).to_string(),
        ebpf::plan::render(linked, &settings(Mode::Ebpf)).to_string(),
    ]
}

#[test]
fn hostile_names_never_add_a_listing_line() {
    for_cases(64, |input| {
        let twin = listings(&benign_twin(&input));
        for (hostile, twin) in listings(&linked(&input)).iter().zip(&twin) {
            proptest::prop_assert_eq!(hostile.lines().count(), twin.lines().count());
            proptest::prop_assert!(hostile.lines().count() > 10);
        }
        Ok(())
    });
}
