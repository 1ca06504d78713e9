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
pub const DIFFERENCES: &[Difference] = &[];

/// The listed difference for this flow, if any.
pub fn find(file: &str, flow: &str, mode: Mode) -> Option<&'static Difference> {
    DIFFERENCES
        .iter()
        .find(|d| d.file == file && d.flow == flow && d.modes.contains(&mode))
}
