//! The one list of deliberate differences between Switchyard and kube-proxy
//! (README: "kube-proxy as the reference"). A flow where kube-proxy does not
//! meet the scenario's expectation but Switchyard does passes only when it
//! is listed here, and is printed with the reason.

use switchyard_api::Mode;

/// One deliberate difference: where, and why.
#[derive(Clone, Copy, Debug)]
pub struct Difference {
    /// The scenario file's name (`overall.yaml`).
    pub file: &'static str,
    /// The flow's name, with its step label when it is in a step (`step 1: a`).
    pub flow: &'static str,
    /// The modes it applies to.
    pub modes: &'static [Mode],
    pub reason: &'static str,
}

/// Every deliberate difference.
pub const DIFFERENCES: &[Difference] = &[
    Difference {
        file: "steps.yaml",
        flow: "step 2: no endpoints left: the same UDP flow is rejected",
        modes: &[Mode::Iptables, Mode::Nftables],
        reason: "Switchyard deletes the UDP conntrack entries of a service port that lost its \
                 last endpoint, so its REJECT applies at once; kube-proxy's CleanStaleEntries \
                 skips ports without serving endpoints, and the flow keeps reaching the removed \
                 endpoint until its conntrack entry times out",
    },
    Difference {
        file: "overall.yaml",
        flow: "hairpin through the cluster IP",
        modes: &[Mode::Nftables, Mode::Ipvs],
        reason: "kube-proxy's nftables and ipvs modes masquerade hairpin connections only for \
                 endpoints whose nodeName is this node (ipvs: its KUBE-LOOP-BACK set holds local \
                 endpoints only); this endpoint names no node but, in the lab, sits behind it \
                 (a real pod can only hairpin through its own node, where its endpoint names \
                 it). Switchyard's nftables and ipvs modes, as both iptables modes, masquerade \
                 the hairpin of every endpoint",
    },
];

/// The listed difference for this flow, if any.
pub fn find(file: &str, flow: &str, mode: Mode) -> Option<&'static Difference> {
    DIFFERENCES
        .iter()
        .find(|d| d.file == file && d.flow == flow && d.modes.contains(&mode))
}
