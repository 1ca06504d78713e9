//! Adopting the published shard layout: an operator that starts (or becomes
//! leader again) keeps the epoch of the newest published layout, so that its
//! first publication writes only the shards whose content changed, and the
//! ones missing, instead of a whole new layout every agent would fetch and
//! wait for.
//!
//! Adoption keeps what makes the published shards agree with a fresh
//! compile: the layout (epoch and shard count; a service's shard is a pure
//! hash of its name, so the same count puts it in the same shard), each
//! shard's generation (a rewritten shard takes the next one, which agents
//! take as new), and the ids the published rules carry (a fresh compiler
//! numbers ids in list order, so most shards would differ, and a kept shard
//! could claim an id a rewritten one hands to another service).
//!
//! The newest layout is adopted also when it is incomplete: a leader that
//! lost its Lease while writing a new layout of thousands of shards (the
//! API server too loaded to answer its renewals) left part of it written,
//! and its next term started yet another layout from nothing, which took
//! as long again and could be cut short the same way. Agents apply only a
//! complete layout, so the shards of an incomplete one are read by none:
//! the next term writes the missing ones and keeps the rest. Shards of
//! older epochs are not adopted; the publisher deletes them once the newest
//! is written, as after any new layout.

use std::collections::BTreeSet;

use switchyard_api::ruleset::{ProxyRulesetSpec, ShardLayout, shard_name};

use crate::ids::MAX_ADOPTED_GAPS;
use crate::{CompileSettings, Compiler, ShardSettings, Sharder};

/// Why the published shards are not adopted (a new layout is started instead).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAdopted {
    #[error("no ProxyRuleset is published")]
    NothingPublished,
    #[error("layout epoch {epoch} is published with several shard counts ({counts:?})")]
    MixedCounts { epoch: u64, counts: Vec<u32> },
    #[error("layout epoch {epoch} has {count} shards, not a power of two")]
    ShardCount { epoch: u64, count: u32 },
    #[error("ProxyRuleset {name} holds shard {expected}'s spec under another name")]
    Misnamed { name: String, expected: String },
    #[error("ProxyRuleset {name} is shard {shard} of a layout of {count} shards")]
    OutOfLayout {
        name: String,
        shard: u32,
        count: u32,
    },
    #[error("shard {shard} of layout epoch {epoch} is published twice")]
    DuplicateShard { epoch: u64, shard: u32 },
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
    /// Shards of the layout not published (its first publication writes them).
    pub missing: usize,
}

/// Adopt the newest layout among `published` (object name and spec of every
/// `ProxyRuleset`), complete or not, every shard of it under its own name.
pub fn adopt(
    compile: CompileSettings,
    shards: ShardSettings,
    published: &[(&str, &ProxyRulesetSpec)],
) -> Result<Adopted, NotAdopted> {
    let (layout, specs) = newest_layout(published)?;
    let missing = specs.iter().filter(|s| s.is_none()).count();
    let compiler = Compiler::adopting(
        compile,
        specs
            .iter()
            .flatten()
            .flat_map(|s| s.ruleset.services.iter()),
    )?;
    Ok(Adopted {
        compiler,
        sharder: Sharder::adopting(shards, layout, specs),
        layout,
        missing,
    })
}

/// The newest layout in `published` and its shards by index (`None` where
/// one is missing), every object of it named after its shard.
fn newest_layout(
    published: &[(&str, &ProxyRulesetSpec)],
) -> Result<(ShardLayout, Vec<Option<ProxyRulesetSpec>>), NotAdopted> {
    let epoch = published
        .iter()
        .map(|(_, s)| s.layout.epoch)
        .max()
        .ok_or(NotAdopted::NothingPublished)?;
    let newest: Vec<(&str, &ProxyRulesetSpec)> = published
        .iter()
        .filter(|(_, s)| s.layout.epoch == epoch)
        .copied()
        .collect();
    let counts: BTreeSet<u32> = newest.iter().map(|(_, s)| s.layout.shard_count).collect();
    let counts: Vec<u32> = counts.into_iter().collect();
    let [shard_count] = counts[..] else {
        return Err(NotAdopted::MixedCounts { epoch, counts });
    };
    let layout = ShardLayout { epoch, shard_count };
    // The sharder assigns by a mask: only a power of two keeps assignments.
    if !layout.shard_count.is_power_of_two() {
        return Err(NotAdopted::ShardCount {
            epoch,
            count: layout.shard_count,
        });
    }
    let mut specs: Vec<Option<ProxyRulesetSpec>> = vec![None; layout.shard_count as usize];
    for (name, spec) in newest {
        let expected = shard_name(&spec.layout, spec.shard);
        if name != expected {
            return Err(NotAdopted::Misnamed {
                name: name.to_string(),
                expected,
            });
        }
        let slot = specs
            .get_mut(spec.shard as usize)
            .ok_or_else(|| NotAdopted::OutOfLayout {
                name: name.to_string(),
                shard: spec.shard,
                count: layout.shard_count,
            })?;
        if slot.replace(spec.clone()).is_some() {
            return Err(NotAdopted::DuplicateShard {
                epoch,
                shard: spec.shard,
            });
        }
    }
    Ok((layout, specs))
}
