//! The Switchyard operator: assigns nodes to pools, rolls mode changes out in
//! verified batches, aggregates node status onto each ProxyConfig, and compiles
//! and publishes the cluster's ruleset shards.
//!
//! Pure logic ([`pools`], [`rollout`], [`status`], [`plan`]) is separate from
//! the code that talks to the API ([`controller`], [`writes`]).

pub mod app;
pub mod clock;
pub mod controller;
pub mod error;
pub mod events;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod migration;
pub mod plan;
pub mod policy;
pub mod pools;
pub mod publish;
pub mod rollout;
pub mod shards;
pub mod status;
pub mod writes;

pub use error::Error;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "switchyard-operator";
