//! The `switchyard` command: `plan` and `diff` for reviewing what nodes would
//! program (GitOps), `crdgen`, and `demo`, a live mode migration of a small
//! cluster built from network namespaces on this machine.

pub mod backends;
pub mod demo;
pub mod diff;
pub mod input;
pub mod plan;
