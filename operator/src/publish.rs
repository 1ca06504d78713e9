//! Compile and publish: watch events for Services and EndpointSlices feed the
//! incremental [`Compiler`]; each sync hands the changed services to the
//! [`Sharder`], and only the shards it reports changed are written (server-side
//! apply); shards of a retired layout, and shards left by an earlier run, are
//! deleted once the new layout is written. At start, the newest published
//! layout is adopted instead ([`adopt`]), complete or not, so that a new term
//! writes only the shards whose content differs and the missing ones.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::watcher;
use switchyard_api::ProxyRuleset;
use switchyard_api::ruleset::{ProxyRulesetSpec, ShardLayout, shard_name};
use switchyard_compiler::{
    CompileSettings, Compiler, Diagnostic, ServiceKey, ShardSettings, Sharder, adopt,
};
use tracing::info;

/// A change from one of the watches.
#[derive(Clone, Debug)]
pub enum Change {
    Service(Box<watcher::Event<Service>>),
    EndpointSlice(Box<watcher::Event<EndpointSlice>>),
}

/// What one sync must write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Publication {
    /// Shard name → its new content.
    pub apply: Vec<(String, ProxyRulesetSpec)>,
    /// Shards to delete after every apply succeeded.
    pub delete: Vec<String>,
    /// Diagnostics not reported before (each becomes an Event on its object).
    pub diagnostics: Vec<Diagnostic>,
}

/// The keys a watch has delivered, to find what vanished during a relist.
#[derive(Debug, Default)]
struct Known {
    keys: BTreeSet<ServiceKey>,
    relisted: Option<BTreeSet<ServiceKey>>,
    /// The first full list is in.
    listed: bool,
}

/// What a watch event means for the compiler.
enum Op<'a, K> {
    Upsert(&'a K),
    Remove(ServiceKey),
}

fn key_of<K: ResourceExt>(obj: &K) -> ServiceKey {
    ServiceKey::new(obj.namespace().unwrap_or_default(), obj.name_any())
}

impl Known {
    fn ops<'a, K: ResourceExt>(&mut self, event: &'a watcher::Event<K>) -> Vec<Op<'a, K>> {
        match event {
            watcher::Event::Apply(obj) => {
                self.keys.insert(key_of(obj));
                vec![Op::Upsert(obj)]
            }
            watcher::Event::Delete(obj) => {
                let key = key_of(obj);
                self.keys.remove(&key);
                vec![Op::Remove(key)]
            }
            watcher::Event::Init => {
                self.relisted = Some(BTreeSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                let key = key_of(obj);
                self.keys.insert(key.clone());
                self.relisted.get_or_insert_default().insert(key);
                vec![Op::Upsert(obj)]
            }
            watcher::Event::InitDone => {
                self.listed = true;
                let seen = self.relisted.take().unwrap_or_default();
                let gone: Vec<ServiceKey> = self.keys.difference(&seen).cloned().collect();
                self.keys = seen;
                gone.into_iter().map(Op::Remove).collect()
            }
        }
    }
}

/// What a publisher found at startup.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// The published layout, kept.
    Adopted(ShardLayout),
    /// None to keep: the first publication writes a new layout.
    NewLayout,
}

/// The compiler, the sharder and what has been published.
pub struct Publisher {
    compiler: Compiler,
    sharder: Sharder,
    services: Known,
    slices: Known,
    /// Diagnostics already turned into Events.
    reported: BTreeSet<Diagnostic>,
    /// Diagnostics of objects the compiler rejected outright (not tracked by it).
    rejected: Vec<Diagnostic>,
    /// Shards found at startup, deleted once the first layout is written.
    leftovers: BTreeSet<String>,
    /// How the first publication starts (taken by it, for its log line).
    start: Option<Start>,
}

impl Publisher {
    /// A publisher that adopts the newest layout in `existing`, complete or
    /// not ([`adopt`]): its first publication writes only the shards whose
    /// content differs and the missing ones, and deletes the older layouts'.
    /// When that layout cannot be adopted it starts above every epoch in
    /// `existing`, since agents take the newest complete layout.
    pub fn new(
        settings: CompileSettings,
        budget_bytes: usize,
        existing: &[ProxyRuleset],
    ) -> Publisher {
        let newest = existing
            .iter()
            .map(|s| s.spec.layout.epoch)
            .max()
            .unwrap_or(0);
        let shard_settings = ShardSettings {
            budget_bytes,
            first_epoch: newest + 1,
        };
        let names: Vec<String> = existing.iter().map(|s| s.name_any()).collect();
        let published: Vec<(&str, &ProxyRulesetSpec)> = names
            .iter()
            .zip(existing)
            .map(|(name, s)| (name.as_str(), &s.spec))
            .collect();
        let (compiler, sharder, start) = match adopt(
            settings.clone(),
            shard_settings.clone(),
            &published,
        ) {
            Ok(adopted) => {
                if adopted.missing > 0 {
                    let (epoch, count) = (adopted.layout.epoch, adopted.layout.shard_count);
                    info!(
                        epoch,
                        missing = adopted.missing,
                        "layout epoch {epoch} is incomplete ({} of {count} shards missing): writing the rest",
                        adopted.missing
                    );
                }
                let start = Start::Adopted(adopted.layout);
                (adopted.compiler, adopted.sharder, start)
            }
            Err(reason) => {
                info!(%reason, "not adopting the published shards");
                let sharder = Sharder::new(shard_settings);
                (Compiler::new(settings), sharder, Start::NewLayout)
            }
        };
        Publisher {
            compiler,
            sharder,
            services: Known::default(),
            slices: Known::default(),
            reported: BTreeSet::new(),
            rejected: Vec::new(),
            leftovers: names.into_iter().collect(),
            start: Some(start),
        }
    }

    /// Take in one watch event.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Service(event) => {
                for op in self.services.ops(event.as_ref()) {
                    match op {
                        Op::Upsert(service) => {
                            if let Err(d) = self.compiler.update_service(service) {
                                self.rejected.push(d);
                            }
                        }
                        Op::Remove(key) => self.compiler.delete_service(&key.namespace, &key.name),
                    }
                }
            }
            Change::EndpointSlice(event) => {
                for op in self.slices.ops(event.as_ref()) {
                    match op {
                        Op::Upsert(slice) => {
                            if let Err(d) = self.compiler.update_endpoint_slice(slice) {
                                self.rejected.push(d);
                            }
                        }
                        Op::Remove(key) => self
                            .compiler
                            .delete_endpoint_slice(&key.namespace, &key.name),
                    }
                }
            }
        }
    }

    /// After `failed` could not be written (in part): every shard of the
    /// current layout, and the deletions and diagnostics of both `failed` and
    /// `next` (a sync made since).
    pub fn republish(&self, failed: Publication, next: Publication) -> Publication {
        let layout = self.sharder.layout();
        let apply = self
            .sharder
            .shards(&self.compiler)
            .into_iter()
            .map(|spec| (shard_name(&layout, spec.shard), spec))
            .collect();
        let mut delete = failed.delete;
        delete.extend(
            next.delete
                .into_iter()
                .filter(|d| !delete.contains(d))
                .collect::<Vec<_>>(),
        );
        let mut diagnostics = failed.diagnostics;
        diagnostics.extend(next.diagnostics);
        Publication {
            apply,
            delete,
            diagnostics,
        }
    }

    /// Recompile what changed and say what to write. Nothing is published
    /// before both watches delivered their first full list: a ruleset with the
    /// Services but not yet their EndpointSlices would drop traffic.
    pub fn sync(&mut self) -> Publication {
        if !(self.services.listed && self.slices.listed) {
            return Publication::default();
        }
        let changed = self.compiler.sync();
        let update = self.sharder.sync(&self.compiler, &changed);
        let names = update.changed_names();
        let apply: Vec<(String, ProxyRulesetSpec)> =
            names.into_iter().zip(update.changed).collect();
        let mut delete = update.retired;
        // A previous run's shards, unless current or retired already (an
        // adopted layout that had to grow).
        let mut named: BTreeSet<String> = (0..update.layout.shard_count)
            .map(|i| shard_name(&update.layout, i))
            .collect();
        named.extend(delete.iter().cloned());
        delete.extend(
            std::mem::take(&mut self.leftovers)
                .into_iter()
                .filter(|name| !named.contains(name)),
        );
        if let Some(start) = self.start.take() {
            log_start(start, update.layout, apply.len(), delete.len());
        }
        let mut diagnostics: Vec<Diagnostic> = self.compiler.diagnostics();
        diagnostics.extend(self.sharder.diagnostics().cloned());
        diagnostics.append(&mut self.rejected);
        let current_diagnostics: BTreeSet<Diagnostic> = diagnostics.into_iter().collect();
        let new: Vec<Diagnostic> = current_diagnostics
            .difference(&self.reported)
            .cloned()
            .collect();
        // Forget diagnostics that went away, so a recurrence is reported again.
        self.reported = current_diagnostics;
        Publication {
            apply,
            delete,
            diagnostics: new,
        }
    }
}

/// What the first publication did with the layout it found.
fn log_start(start: Start, layout: ShardLayout, written: usize, deleted: usize) {
    let epoch = layout.epoch;
    if matches!(start, Start::Adopted(adopted) if adopted == layout) {
        let kept = (layout.shard_count as usize).saturating_sub(written);
        info!(
            epoch,
            kept,
            rewritten = written,
            deleted,
            "adopted layout epoch {epoch}: {kept} shards kept, {written} rewritten, {deleted} deleted"
        );
    } else {
        info!(
            epoch,
            written,
            deleted,
            "new layout epoch {epoch}: {written} shards written, {deleted} deleted"
        );
    }
}
