//! The Switchyard node agent's runtime: watches its ProxyNode, its pool's
//! ProxyConfig and the ProxyRuleset shards; links them and applies them with
//! the dataplane (`switchyard_dataplane`) of the node's target mode; switches
//! modes; reports status, health and metrics.

pub mod agent;
pub mod app;
pub mod changes;
pub mod cleanup;
pub mod events;
pub mod health;
pub mod heap;
pub mod http;
pub mod inputs;
pub mod leftover_drain;
pub mod metrics;
pub mod node;
pub mod standalone;
pub mod status;
pub mod switch;
pub mod sync;
pub mod watch;
