//! The Switchyard node agent: watches its ProxyNode, its pool's ProxyConfig and
//! the ProxyRuleset shards; links, renders and applies them with the backend of
//! the node's target mode; reports status.

pub mod agent;
pub mod backend;
pub mod conntrack;
pub mod exec;
pub mod fake;
pub mod health;
pub mod http;
pub mod kubeproxy;
pub mod metrics;
pub mod ratelimit;
pub mod settings;
pub mod standalone;
pub mod status;
pub mod switch;
pub mod sync;
pub mod watch;
