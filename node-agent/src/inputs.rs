//! What a sync pass reads: the objects the watches currently hold, and the
//! key of the parts a sync depends on.

use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::FixedState;
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

/// Which shards, at which generations: their count and the sum of a hash of
/// each one's epoch, index and generation (the sum does not depend on the
/// order the store lists them in; the generation is what the linker keys
/// its cache on, so a write that leaves it alone changes nothing here
/// either). A pass computes it over every shard, with tens of thousands of
/// them: copying and sorting their names and versions, then hashing those
/// strings, was most of an agent's CPU between changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShardsDigest {
    count: usize,
    sum: u64,
}

impl ShardsDigest {
    fn of(shards: &[Arc<ProxyRuleset>]) -> ShardsDigest {
        let hasher = FixedState::with_seed(0);
        let sum = shards.iter().fold(0u64, |sum, s| {
            let spec = &s.spec;
            let hash = hasher.hash_one((spec.layout.epoch, spec.shard, spec.generation));
            sum.wrapping_add(hash)
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

    fn shard(index: u32, generation: u64) -> Arc<ProxyRuleset> {
        let spec = ProxyRulesetSpec {
            shard: index,
            layout: ShardLayout {
                epoch: 1,
                shard_count: 4,
            },
            generation,
            service_count: 0,
            ruleset: Ruleset::default(),
        };
        Arc::new(ProxyRuleset::new(&format!("s-{index}"), spec))
    }

    fn key(shards: Vec<Arc<ProxyRuleset>>) -> InputKey {
        InputKey::of(&Inputs {
            shards,
            ..Inputs::default()
        })
    }

    #[test]
    fn the_key_of_the_shards_ignores_their_order_and_sees_every_new_generation() {
        let (a, b) = (shard(0, 1), shard(1, 2));
        assert_eq!(
            key(vec![a.clone(), b.clone()]),
            key(vec![b.clone(), a.clone()])
        );
        assert_ne!(
            key(vec![a.clone(), b.clone()]),
            key(vec![a.clone(), shard(1, 3)])
        );
        assert_ne!(key(vec![a.clone(), b.clone()]), key(vec![a.clone()]));
        assert_ne!(key(vec![a.clone()]), key(vec![shard(2, 1)]));
        // Two shards swapping generations is a change.
        assert_ne!(
            key(vec![shard(0, 1), shard(1, 2)]),
            key(vec![shard(0, 2), shard(1, 1)])
        );
    }
}
