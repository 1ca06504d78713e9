//! The `switchyard` command: `plan` and `diff` for reviewing what nodes would
//! program (GitOps), `crdgen`, `demo`, a live mode migration of a small
//! cluster built from network namespaces on this machine, and `lab`, a real
//! control plane on loopback; `completion` and `man` for shells and manuals.

pub mod demo;
pub mod diff;
pub mod input;
pub mod lab;
pub mod manuals;
pub mod plan;
pub mod trace;

use std::sync::Arc;

use switchyard_agent::switch::BackendFactory;
use switchyard_dataplane::exec::RealRunner;

/// The real backends, running kernel tools in the calling thread's network
/// namespace. Building one touches nothing; `plan` and `diff` only render.
pub fn real_backends() -> BackendFactory {
    BackendFactory::new(Arc::new(RealRunner))
}
