//! The compiler: a pure function from cluster state (Services, EndpointSlices,
//! Nodes, settings) to the mode-neutral [`Ruleset`], plus the incremental
//! compiler and the sharder the operator uses.
//!
//! SKELETON: signatures agreed for parallel work; the compiler task fills them in.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_api::ruleset::Ruleset;

/// Everything the compiler reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}

/// Compiler settings.
#[derive(Clone, Debug, Default)]
pub struct CompileSettings {
    /// The `service.kubernetes.io/service-proxy-name` value we answer to; services
    /// carrying any other value are skipped (kube-proxy's `--service-proxy-name`... semantics).
    pub proxy_name: Option<String>,
}

/// A problem with one object: it (or part of it) was skipped, the rest compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// `Service`, `EndpointSlice`, …
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// A stable, CamelCase reason (for Events).
    pub reason: &'static str,
    pub message: String,
}

/// The result of a compile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    pub ruleset: Ruleset,
    pub diagnostics: Vec<Diagnostic>,
}

/// One-shot compile with fresh ids.
pub fn compile(_snapshot: &Snapshot, _settings: &CompileSettings) -> Compiled {
    Compiled::default()
}
