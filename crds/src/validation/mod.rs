//! What Switchyard accepts from outside, in one place: Kubernetes' own name
//! rules, address and port ranges, and the limits of lists and objects.
//!
//! The compiler checks the Services and EndpointSlices it reads with these
//! ([`names`], [`addresses`], [`limits`]) and never writes a service port
//! that [`check_rule`] refuses; the agent checks every `ProxyRuleset` shard
//! ([`check_shard`], [`GenerationIndex`]) before linking it; and the CRD
//! schemas carry the same patterns and limits ([`schema`]), so the API server
//! refuses a bad shard when it is written.

pub mod addresses;
pub mod limits;
pub mod names;
pub mod node;
pub mod rule;
pub mod schema;
pub mod shard;

pub use addresses::{AddressError, check_endpoint_ip, check_specified};
pub use names::{NameError, NameFormat, quoted};
pub use node::check_node;
pub use rule::{FieldError, FieldProblem, check_endpoint, check_hints, check_rule};
pub use shard::{Claim, GenerationIndex, ShardError, check_shard};
