//! The compiler: a pure function from cluster state (Services, EndpointSlices,
//! Nodes, settings) to the mode-neutral [`Ruleset`], with kube-proxy's service
//! semantics; plus the incremental [`Compiler`] the operator keeps running.
//!
//! The pipeline per service: `service.rs` derives the port templates (frontends,
//! policies, affinity) from the Service, `slice.rs` the endpoint facts from each
//! EndpointSlice, `join.rs` matches slice ports to service ports by name and
//! protocol and deduplicates endpoints, and `frontends.rs` resolves VIPs claimed
//! by several services. [`Sharder`] splits the result into `ProxyRuleset` specs.
//! Endpoint policy per node is decided later, by `switchyard_api::policy::link`.
//!
//! Bad input never panics and never poisons other services: the bad part is
//! skipped and reported as a [`Diagnostic`].

mod adopt;
mod compiler;
mod diagnostic;
mod frontends;
mod ids;
mod ip;
mod join;
mod keys;
pub mod labels;
mod load;
mod read;
mod service;
mod shard;
mod slice;
mod tracker;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_api::ruleset::Ruleset;

pub use adopt::{Adopted, NotAdopted, adopt};
pub use compiler::Compiler;
pub use diagnostic::{Diagnostic, ObjectKind, Reason};
pub use keys::{PortKey, ServiceKey, SliceKey};
pub use load::{LoadError, Location, Objects, parse_objects};
pub use read::{MAX_STATE_BYTES, ReadError, StateReader, parse_into};
pub use service::DEFAULT_AFFINITY_TIMEOUT_SECONDS;
pub use shard::{
    DEFAULT_SHARD_BUDGET_BYTES, MAX_SHARD_BYTES, MAX_SHARDS, ShardSettings, ShardUpdate, Sharder,
};

/// Everything the compiler reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}

impl From<Objects> for Snapshot {
    fn from(objects: Objects) -> Snapshot {
        Snapshot {
            services: objects.services,
            endpoint_slices: objects.endpoint_slices,
            nodes: objects.nodes,
        }
    }
}

/// Compiler settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompileSettings {
    /// The `service.kubernetes.io/service-proxy-name` value we answer to.
    /// Objects carrying that label with any other value are skipped, as
    /// kube-proxy skips every object carrying it.
    pub proxy_name: Option<String>,
}

/// The result of a compile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    pub ruleset: Ruleset,
    /// Sorted.
    pub diagnostics: Vec<Diagnostic>,
}

/// One-shot compile with fresh ids.
pub fn compile(snapshot: &Snapshot, settings: &CompileSettings) -> Compiled {
    let mut compiler = Compiler::new(settings.clone());
    let mut diagnostics = Vec::new();
    for service in &snapshot.services {
        diagnostics.extend(compiler.update_service(service).err());
    }
    for slice in &snapshot.endpoint_slices {
        diagnostics.extend(compiler.update_endpoint_slice(slice).err());
    }
    compiler.sync();
    diagnostics.extend(compiler.diagnostics());
    diagnostics.sort();
    Compiled {
        ruleset: compiler.ruleset(),
        diagnostics,
    }
}
