//! What a sync pass reads: the objects the watches currently hold, and the
//! key of the parts a sync depends on.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use switchyard_api::policy::NodeInfo;
use switchyard_api::ruleset::Cidr;
use switchyard_api::{Mode, ProxyConfig, ProxyConfigSpec, ProxyNode, ProxyRuleset};

use crate::node::{being_deleted, node_info, pod_cidrs};

/// What the watches currently hold.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Every watch has completed its initial list (until then nothing syncs).
    pub listed: bool,
    pub node: Option<Arc<Node>>,
    pub proxy_node: Option<Arc<ProxyNode>>,
    /// The ProxyConfig named by the ProxyNode's `spec.pool`.
    pub config: Option<Arc<ProxyConfig>>,
    pub shards: Vec<Arc<ProxyRuleset>>,
}

/// The parts of the inputs a sync depends on; an event that changes none of
/// them (a status write coming back, a Node heartbeat) does not sync.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct InputKey {
    pub target: Option<Mode>,
    node: Option<(NodeInfo, Vec<Cidr>, bool)>,
    config: Option<ProxyConfigSpec>,
    shards: ShardsDigest,
}

/// Which shard objects, at which versions: their count and the sum of a hash
/// of each one's name and resourceVersion (the sum does not depend on the
/// order the store lists them in). A pass computes it over every shard, so it
/// neither copies nor sorts them: with tens of thousands of shards, copying
/// and sorting their names was most of an agent's CPU between changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShardsDigest {
    count: usize,
    sum: u64,
}

impl ShardsDigest {
    fn of(shards: &[Arc<ProxyRuleset>]) -> ShardsDigest {
        let sum = shards.iter().fold(0u64, |sum, s| {
            let mut hasher = DefaultHasher::new();
            (&s.metadata.name, &s.metadata.resource_version).hash(&mut hasher);
            sum.wrapping_add(hasher.finish())
        });
        ShardsDigest {
            count: shards.len(),
            sum,
        }
    }
}

impl InputKey {
    pub fn of(inputs: &Inputs) -> InputKey {
        InputKey {
            target: inputs.proxy_node.as_ref().and_then(|p| p.spec.target_mode),
            node: inputs
                .node
                .as_deref()
                .map(|n| (node_info(n), pod_cidrs(n), being_deleted(n))),
            config: inputs.config.as_ref().map(|c| c.spec.clone()),
            shards: ShardsDigest::of(&inputs.shards),
        }
    }
}

#[cfg(test)]
mod tests {
    use switchyard_api::ProxyRulesetSpec;
    use switchyard_api::ruleset::{Ruleset, ShardLayout};

    use super::*;

    fn shard(name: &str, version: &str) -> Arc<ProxyRuleset> {
        let spec = ProxyRulesetSpec {
            shard: 0,
            layout: ShardLayout {
                epoch: 1,
                shard_count: 1,
            },
            generation: 1,
            service_count: 0,
            ruleset: Ruleset::default(),
        };
        let mut shard = ProxyRuleset::new(name, spec);
        shard.metadata.resource_version = Some(version.to_string());
        Arc::new(shard)
    }

    fn key(shards: Vec<Arc<ProxyRuleset>>) -> InputKey {
        InputKey::of(&Inputs {
            shards,
            ..Inputs::default()
        })
    }

    #[test]
    fn the_key_of_the_shards_ignores_their_order_and_sees_every_new_version() {
        let (a, b) = (shard("s-0", "1"), shard("s-1", "2"));
        assert_eq!(key(vec![a.clone(), b.clone()]), key(vec![b.clone(), a.clone()]));
        assert_ne!(key(vec![a.clone(), b.clone()]), key(vec![a.clone(), shard("s-1", "3")]));
        assert_ne!(key(vec![a.clone(), b.clone()]), key(vec![a.clone()]));
        assert_ne!(key(vec![a.clone()]), key(vec![shard("s-2", "1")]));
    }
}
