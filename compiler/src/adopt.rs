//! Adopting the published shard layout: an operator that starts (or becomes
//! leader again) and finds one complete layout keeps its epoch, so that its
//! first publication rewrites only the shards whose content changed instead
//! of a whole new layout every agent would fetch and wait for.
//!
//! Adoption keeps what makes the published shards agree with a fresh
//! compile: the layout (epoch and shard count; a service's shard is a pure
//! hash of its name, so the same count puts it in the same shard), each
//! shard's generation (a rewritten shard takes the next one, which agents
//! take as new), and the ids the published rules carry (a fresh compiler
//! numbers ids in list order, so most shards would differ, and a kept shard
//! could claim an id a rewritten one hands to another service).

use std::collections::BTreeSet;

use switchyard_api::ruleset::{ProxyRulesetSpec, ShardLayout, complete_shards, shard_name};

use crate::ids::MAX_ADOPTED_GAPS;
use crate::{CompileSettings, Compiler, ShardSettings, Sharder};

/// Why the published shards are not adopted (a new layout is started instead).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAdopted {
    #[error("no ProxyRuleset is published")]
    NothingPublished,
    #[error("ProxyRulesets of several layouts are published (epochs {epochs:?})")]
    MixedLayouts { epochs: Vec<u64> },
    #[error("layout epoch {epoch} is incomplete: {present} ProxyRulesets for {count} shards")]
    Incomplete {
        epoch: u64,
        present: usize,
        count: u32,
    },
    #[error("layout epoch {epoch} has {count} shards, not a power of two")]
    ShardCount { epoch: u64, count: u32 },
    #[error("ProxyRuleset {name} holds shard {expected}'s spec under another name")]
    Misnamed { name: String, expected: String },
    #[error("{what} id {id} is published twice")]
    DuplicateId { what: &'static str, id: u32 },
    #[error("service {service} is published with one port twice")]
    DuplicatePort { service: String },
    #[error("the published ids leave more than {MAX_ADOPTED_GAPS} ids unused")]
    SparseIds,
}

/// A compiler and a sharder that continue the published layout.
#[derive(Debug)]
pub struct Adopted {
    pub compiler: Compiler,
    pub sharder: Sharder,
    pub layout: ShardLayout,
}

/// Adopt `published` (object name and spec of every `ProxyRuleset`) when it
/// is exactly one complete layout, every shard under its own name.
pub fn adopt(
    compile: CompileSettings,
    shards: ShardSettings,
    published: &[(&str, &ProxyRulesetSpec)],
) -> Result<Adopted, NotAdopted> {
    let layout = published_layout(published)?;
    let specs: Vec<ProxyRulesetSpec> = complete_shards(published.iter().map(|(_, s)| *s))
        .ok_or(NotAdopted::Incomplete {
            epoch: layout.epoch,
            present: published.len(),
            count: layout.shard_count,
        })?
        .into_iter()
        .cloned()
        .collect();
    let compiler = Compiler::adopting(
        compile,
        specs.iter().flat_map(|s| s.ruleset.services.iter()),
    )?;
    Ok(Adopted {
        compiler,
        sharder: Sharder::adopting(shards, specs),
        layout,
    })
}

/// The one layout `published` holds, every object named after its shard.
fn published_layout(published: &[(&str, &ProxyRulesetSpec)]) -> Result<ShardLayout, NotAdopted> {
    let layout = published
        .first()
        .map(|(_, s)| s.layout)
        .ok_or(NotAdopted::NothingPublished)?;
    if published.iter().any(|(_, s)| s.layout != layout) {
        let epochs: BTreeSet<u64> = published.iter().map(|(_, s)| s.layout.epoch).collect();
        return Err(NotAdopted::MixedLayouts {
            epochs: epochs.into_iter().collect(),
        });
    }
    // The sharder assigns by a mask: only a power of two keeps assignments.
    if !layout.shard_count.is_power_of_two() {
        return Err(NotAdopted::ShardCount {
            epoch: layout.epoch,
            count: layout.shard_count,
        });
    }
    if published.len() != layout.shard_count as usize {
        return Err(NotAdopted::Incomplete {
            epoch: layout.epoch,
            present: published.len(),
            count: layout.shard_count,
        });
    }
    for (name, spec) in published {
        let expected = shard_name(&spec.layout, spec.shard);
        if *name != expected {
            return Err(NotAdopted::Misnamed {
                name: name.to_string(),
                expected,
            });
        }
    }
    Ok(layout)
}
