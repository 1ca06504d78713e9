//! Sharding the compiled ruleset into `ProxyRuleset` objects.
//!
//! A service goes to shard `fnv1a64("namespace/name") mod N`, N a power of two,
//! so doubling N splits every shard in two and a service never moves otherwise.
//! Every shard's serialized size stays under the budget: when one grows past
//! it, N doubles (a new layout epoch); when every pair of shards would fit in
//! half the budget, N halves. The budget doubles N only up to about two
//! shards per service: services each near the budget would otherwise drive N
//! to [`MAX_SHARDS`], since hashing never keeps all of them apart. Within a
//! layout, a change to one service rewrites only its shard, whose generation
//! is bumped.
//!
//! The budget is at most [`MAX_SHARD_BYTES`], what one object may hold. A
//! service larger than the budget gets a shard of its own; one whose rules
//! alone would not fit in an object is not published at all, and reported
//! (a [`Diagnostic`] with [`Reason::TooLarge`]) until it shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use switchyard_api::ruleset::{
    ProxyRulesetSpec, Ruleset, ServicePortRule, ShardLayout, shard_name,
};
pub use switchyard_api::validation::limits::{MAX_SHARD_BYTES, MAX_SHARDS};

use crate::compiler::Compiler;
use crate::diagnostic::{Diagnostic, ObjectKind, Reason};
use crate::keys::ServiceKey;

/// The default size budget of one shard's serialized JSON spec.
///
/// Every agent receives every rewritten shard, so a one-endpoint change costs
/// each node one shard: at 4 KiB (a few service ports per shard; shards stay
/// between a quarter of the budget and the budget) that is about what
/// kube-proxy's EndpointSlice watch receives for the same change, where the
/// former 256 KiB was over a hundred times as much. The price is more objects
/// (about one per service at 10k services): a longer first publication and
/// initial list. README.md, "Control path at scale", has the measurement.
pub const DEFAULT_SHARD_BUDGET_BYTES: usize = 4 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSettings {
    /// Upper bound for the serialized JSON of one shard's spec (at most
    /// [`MAX_SHARD_BYTES`]: a larger value is taken as that).
    pub budget_bytes: usize,
    /// The epoch of the first layout. An operator restarting that does not
    /// adopt the published layout ([`crate::adopt`]) must start above every
    /// epoch it finds published, because agents take the newest complete one.
    pub first_epoch: u64,
}

impl Default for ShardSettings {
    fn default() -> ShardSettings {
        ShardSettings {
            budget_bytes: DEFAULT_SHARD_BUDGET_BYTES,
            first_epoch: 1,
        }
    }
}

/// What a sync changed.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardUpdate {
    pub layout: ShardLayout,
    /// Every shard whose content changed, with its bumped generation (every
    /// shard of the layout when it is new).
    pub changed: Vec<ProxyRulesetSpec>,
    /// Names of the previous layout's shards, to delete once the new layout is
    /// published; empty unless the layout changed.
    pub retired: Vec<String>,
}

impl ShardUpdate {
    /// The `ProxyRuleset` object name of every changed shard.
    pub fn changed_names(&self) -> Vec<String> {
        self.changed
            .iter()
            .map(|s| shard_name(&s.layout, s.shard))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// Serialized size of each service's rules (JSON array elements, no separators).
    services: BTreeMap<ServiceKey, usize>,
    /// Sum of `services`, plus a separator per rule.
    content_bytes: usize,
    generation: u64,
}

/// Keeps the shard layout and every shard's services, sizes and generation.
#[derive(Debug)]
pub struct Sharder {
    settings: ShardSettings,
    layout: ShardLayout,
    shards: Vec<Shard>,
    /// Bytes of the largest possible spec without services.
    envelope_bytes: usize,
    started: bool,
    /// The published shards of an adopted layout, in shard order (`None`
    /// where one is missing), until the first sync compares them with what
    /// it would write.
    published: Option<Vec<Option<ProxyRulesetSpec>>>,
    /// Services too large for any object, not published.
    too_large: BTreeMap<ServiceKey, Diagnostic>,
}

impl Sharder {
    pub fn new(settings: ShardSettings) -> Sharder {
        Sharder {
            layout: ShardLayout {
                epoch: settings.first_epoch,
                shard_count: 1,
            },
            settings: ShardSettings {
                budget_bytes: settings.budget_bytes.min(MAX_SHARD_BYTES),
                ..settings
            },
            shards: vec![Shard::default()],
            envelope_bytes: envelope_bytes(),
            started: false,
            published: None,
            too_large: BTreeMap::new(),
        }
    }

    /// A sharder that keeps the published `layout`: `published` holds its
    /// shards in shard order, `None` where one is missing. Its first sync
    /// writes only the shards whose content differs from the published one,
    /// each at the next generation, and the missing ones; when the services
    /// no longer fit the layout's shard count, it starts a new layout (the
    /// epoch after) as [`Sharder::new`] would.
    pub(crate) fn adopting(
        settings: ShardSettings,
        layout: ShardLayout,
        published: Vec<Option<ProxyRulesetSpec>>,
    ) -> Sharder {
        let mut sharder = Sharder::new(settings);
        sharder.layout = layout;
        sharder.shards = published
            .iter()
            .map(|spec| Shard {
                generation: spec.as_ref().map_or(0, |s| s.generation),
                ..Shard::default()
            })
            .collect();
        sharder.published = Some(published);
        sharder
    }

    /// The services not published because no object could hold them.
    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.too_large.values()
    }

    pub fn layout(&self) -> ShardLayout {
        self.layout
    }

    /// The shard index of a service under a layout of `shard_count` shards.
    pub fn shard_of(key: &ServiceKey, shard_count: u32) -> u32 {
        let hash = fnv1a64(
            key.namespace.as_bytes(),
            fnv1a64(b"/", fnv1a64(key.name.as_bytes(), FNV_OFFSET)),
        );
        // shard_count is a power of two.
        (hash & u64::from(shard_count - 1)) as u32
    }

    /// Take in the services the compiler reported as changed; returns the
    /// shards to write.
    pub fn sync(&mut self, compiler: &Compiler, changed: &BTreeSet<ServiceKey>) -> ShardUpdate {
        let mut touched = BTreeSet::new();
        for key in changed {
            let index = Sharder::shard_of(key, self.layout.shard_count) as usize;
            let rules = compiler.service_rules(key);
            let shard = &mut self.shards[index];
            if let Some(old) = shard.services.remove(key) {
                shard.content_bytes -= old;
            }
            self.too_large.remove(key);
            if !rules.is_empty() {
                let bytes = rules_bytes(rules);
                if self.envelope_bytes + bytes > MAX_SHARD_BYTES {
                    self.too_large
                        .insert(key.clone(), too_large(key, rules.len(), bytes));
                } else {
                    shard.services.insert(key.clone(), bytes);
                    shard.content_bytes += bytes;
                }
            }
            touched.insert(index as u32);
        }
        let first = !std::mem::replace(&mut self.started, true);
        let published = std::mem::take(&mut self.published);
        let wanted = self.wanted_shard_count();
        if wanted != self.layout.shard_count {
            return self.relayout(compiler, wanted, published.as_deref());
        }
        match published {
            Some(published) => touched = self.differing(compiler, &published),
            None if first => touched.extend(0..self.layout.shard_count),
            None => {}
        }
        let changed = touched
            .into_iter()
            .map(|index| {
                self.shards[index as usize].generation += 1;
                self.spec(compiler, index)
            })
            .collect();
        ShardUpdate {
            layout: self.layout,
            changed,
            retired: Vec::new(),
        }
    }

    /// Every shard of the current layout (for a full republish).
    pub fn shards(&self, compiler: &Compiler) -> Vec<ProxyRulesetSpec> {
        (0..self.layout.shard_count)
            .map(|index| self.spec(compiler, index))
            .collect()
    }

    /// The shards whose content, at their published generation, is not what
    /// `published` holds, and the ones it lacks. Compared as JSON, as the
    /// API server holds them: a field the wire format rounds (a trigger
    /// time's nanoseconds) is no difference.
    fn differing(
        &self,
        compiler: &Compiler,
        published: &[Option<ProxyRulesetSpec>],
    ) -> BTreeSet<u32> {
        (0..self.layout.shard_count)
            .filter(|index| {
                let ours = serde_json::to_value(self.spec(compiler, *index));
                let theirs = published
                    .get(*index as usize)
                    .and_then(Option::as_ref)
                    .map(serde_json::to_value);
                !matches!((ours, theirs), (Ok(a), Some(Ok(b))) if a == b)
            })
            .collect()
    }

    fn spec(&self, compiler: &Compiler, index: u32) -> ProxyRulesetSpec {
        let shard = &self.shards[index as usize];
        let services: Vec<ServicePortRule> = shard
            .services
            .keys()
            .flat_map(|key| compiler.service_rules(key).iter().cloned())
            .collect();
        ProxyRulesetSpec {
            shard: index,
            layout: self.layout,
            generation: shard.generation,
            service_count: u32::try_from(services.len()).unwrap_or(u32::MAX),
            ruleset: Ruleset { services },
        }
    }

    fn shard_bytes(&self, shard: &Shard) -> usize {
        self.envelope_bytes + shard.content_bytes
    }

    /// Double while a shard that holds more than one service is over the
    /// object limit, or over the budget while there are fewer than
    /// [`Sharder::most_shards`]; halve while every pair of shards would fit
    /// in half the budget, or in one object while there are more than twice
    /// that many shards (most services went: the margin keeps a count near a
    /// power of two from flapping).
    fn wanted_shard_count(&self) -> u32 {
        let budget = self.settings.budget_bytes;
        let most = self.most_shards();
        let over = |limit: usize| {
            self.shards
                .iter()
                .any(|s| s.services.len() > 1 && self.shard_bytes(s) > limit)
        };
        let mut count = self.layout.shard_count;
        if over(MAX_SHARD_BYTES) || (count < most && over(budget)) {
            let all: Vec<(&ServiceKey, usize)> = self
                .shards
                .iter()
                .flat_map(|s| s.services.iter().map(|(k, b)| (k, *b)))
                .collect();
            while count < MAX_SHARDS {
                count *= 2;
                if self.fits(&all, count, MAX_SHARD_BYTES)
                    && (count >= most || self.fits(&all, count, budget))
                {
                    break;
                }
            }
            return count;
        }
        let mut bytes: Vec<usize> = self.shards.iter().map(|s| s.content_bytes).collect();
        while count > 1 {
            let limit = if count > 2 * most {
                MAX_SHARD_BYTES
            } else {
                budget / 2
            };
            let half = count as usize / 2;
            let merged: Vec<usize> = (0..half).map(|i| bytes[i] + bytes[i + half]).collect();
            if merged.iter().any(|b| self.envelope_bytes + b > limit) {
                break;
            }
            bytes = merged;
            count /= 2;
        }
        count
    }

    /// The most shards the budget may ask for: about two per service. Hash
    /// sharding keeps no two services apart for certain, so when one service
    /// takes more than half the budget (50 endpoints take most of 4 KiB) some
    /// pair shares a shard at any count; beyond two shards per service a
    /// doubling would split few of them and add mostly empty objects, each a
    /// write per new layout and an object every agent lists.
    fn most_shards(&self) -> u32 {
        let services: usize = self.shards.iter().map(|s| s.services.len()).sum();
        u32::try_from(services.saturating_mul(2))
            .unwrap_or(u32::MAX)
            .checked_next_power_of_two()
            .unwrap_or(MAX_SHARDS)
            .min(MAX_SHARDS)
    }

    /// Every shard of a `count`-shard layout that holds more than one service
    /// is within `limit` bytes.
    fn fits(&self, services: &[(&ServiceKey, usize)], count: u32, limit: usize) -> bool {
        let mut bytes = vec![0usize; count as usize];
        let mut members = vec![0usize; count as usize];
        for (key, b) in services {
            let i = Sharder::shard_of(key, count) as usize;
            bytes[i] += b;
            members[i] += 1;
        }
        bytes
            .iter()
            .zip(&members)
            .all(|(b, m)| *m <= 1 || self.envelope_bytes + b <= limit)
    }

    /// A new layout of `count` shards; the old one's shards are retired,
    /// of an adopted layout (`published`) only those it holds.
    fn relayout(
        &mut self,
        compiler: &Compiler,
        count: u32,
        published: Option<&[Option<ProxyRulesetSpec>]>,
    ) -> ShardUpdate {
        let retired = (0..self.layout.shard_count)
            .filter(|i| published.is_none_or(|p| p.get(*i as usize).is_some_and(Option::is_some)))
            .map(|i| shard_name(&self.layout, i))
            .collect();
        let mut shards: Vec<Shard> = (0..count).map(|_| Shard::default()).collect();
        for old in std::mem::take(&mut self.shards) {
            for (key, bytes) in old.services {
                let shard = &mut shards[Sharder::shard_of(&key, count) as usize];
                shard.content_bytes += bytes;
                shard.services.insert(key, bytes);
            }
        }
        for shard in &mut shards {
            shard.generation = 1;
        }
        self.shards = shards;
        self.layout = ShardLayout {
            epoch: self.layout.epoch + 1,
            shard_count: count,
        };
        ShardUpdate {
            layout: self.layout,
            changed: self.shards(compiler),
            retired,
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, continuing from `hash`: stable across processes and versions.
fn fnv1a64(bytes: &[u8], mut hash: u64) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Counts the bytes written to it.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn too_large(key: &ServiceKey, ports: usize, bytes: usize) -> Diagnostic {
    Diagnostic {
        kind: ObjectKind::Service,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        reason: Reason::TooLarge,
        message: format!(
            "its {ports} service ports take {bytes} bytes, more than one ProxyRuleset object holds ({MAX_SHARD_BYTES}); not published"
        ),
    }
}

fn json_bytes<T: serde::Serialize>(value: &T) -> usize {
    let mut counter = ByteCounter(0);
    // Serializing these plain types into a counter cannot fail; a failure would
    // only make the estimate smaller, never unsafe for the agents.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// The serialized size of a service's rules inside a shard's `services` array,
/// with one separating comma per rule.
fn rules_bytes(rules: &[ServicePortRule]) -> usize {
    rules.iter().map(|r| json_bytes(r) + 1).sum()
}

/// The largest spec without services: every number at its widest.
fn envelope_bytes() -> usize {
    json_bytes(&ProxyRulesetSpec {
        shard: u32::MAX,
        layout: ShardLayout {
            epoch: u64::MAX,
            shard_count: u32::MAX,
        },
        generation: u64::MAX,
        service_count: u32::MAX,
        ruleset: Ruleset::default(),
    })
}
