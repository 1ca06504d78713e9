//! What the benches share.
//!
//! - [`states`]: N selectorless Services × E endpoints written through the
//!   API server, grown in place.
//! - [`probed`]: Services whose endpoints really listen, and their
//!   single-endpoint changes.
//! - [`echo_pods`]: those endpoints, behind a node namespace.
//! - [`prober`]: a client process inside a node (and its eBPF cgroup).
//! - [`connect`]: first-packet connect latency, Service address against direct.
//! - [`versus`]: Switchyard against the real kube-proxy (`versus`).
//! - [`table`]: the one table format they print, and its figures.

pub mod connect;
pub mod echo_pods;
pub mod probed;
pub mod prober;
pub mod states;
pub mod table;
pub mod versus;
