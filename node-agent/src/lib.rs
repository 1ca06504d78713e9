//! The Switchyard node agent: watches its ProxyNode, its pool's ProxyConfig and
//! the ProxyRuleset shards; links, renders and applies them with the backend of
//! the node's target mode; reports status.

pub mod backend;
pub mod conntrack;
pub mod exec;
pub mod settings;
