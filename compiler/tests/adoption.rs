//! Adopting a published layout: an operator that starts with the same state
//! as the one that published writes nothing, a change rewrites only its
//! shard at a newer generation, an incomplete layout gets its missing shards,
//! and a layout that is inconsistent or too small for the state is replaced
//! by a new epoch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeMap;

use switchyard_api::policy::{NodeInfo, ShardLinker};
use switchyard_api::ruleset::{ProxyRulesetSpec, ServicePortRule, ShardLayout, shard_name};
use switchyard_compiler::{
    CompileSettings, Compiler, NotAdopted, ServiceKey, ShardSettings, ShardUpdate, Sharder, adopt,
};

/// The ProxyRulesets as the API server holds them, by name.
#[derive(Clone, Default)]
struct Published(BTreeMap<String, ProxyRulesetSpec>);

impl Published {
    fn write(&mut self, update: &ShardUpdate) {
        for (name, spec) in update.changed_names().into_iter().zip(&update.changed) {
            self.0.insert(name, spec.clone());
        }
        for name in &update.retired {
            self.0.remove(name);
        }
    }

    fn objects(&self) -> Vec<(&str, &ProxyRulesetSpec)> {
        self.0.iter().map(|(n, s)| (n.as_str(), s)).collect()
    }

    /// What an agent applies from these objects (its validation included).
    fn on_a_node(&self) -> Vec<ServicePortRule> {
        let linked = ShardLinker::default().link(self.0.values(), &NodeInfo::default());
        assert_eq!(linked.refused, None, "an agent refuses the shards");
        let mut rules: Vec<ServicePortRule> = linked
            .shards
            .expect("a complete layout")
            .linked
            .services
            .iter()
            .map(|s| s.rule.clone())
            .collect();
        rules.sort_by_key(|r| (r.namespace.clone(), r.name.clone(), r.port_name.clone()));
        rules
    }
}

fn sync(compiler: &mut Compiler, sharder: &mut Sharder) -> ShardUpdate {
    let changed = compiler.sync();
    sharder.sync(compiler, &changed)
}

fn add(compiler: &mut Compiler, i: u32, endpoints: u32) {
    common::add_simple_service(compiler, i, i * 10, endpoints);
}

const SERVICES: u32 = 300;

/// The layout an operator published after a history that makes its ids
/// differ from a fresh compile's: services created newest first, some
/// deleted, some recreated. Returns the running operator's parts too.
fn published_after_a_history() -> (Published, Compiler, Sharder) {
    let mut compiler = Compiler::new(CompileSettings::default());
    let mut sharder = Sharder::new(ShardSettings::default());
    let mut published = Published::default();
    for i in (0..SERVICES).rev() {
        add(&mut compiler, i, 3);
    }
    published.write(&sync(&mut compiler, &mut sharder));
    for i in (0..SERVICES).step_by(7) {
        compiler.delete_service("ns", &format!("svc-{i}"));
        compiler.delete_endpoint_slice("ns", &format!("svc-{i}-abcde"));
    }
    published.write(&sync(&mut compiler, &mut sharder));
    for i in (0..SERVICES).step_by(14) {
        add(&mut compiler, i, 2);
    }
    published.write(&sync(&mut compiler, &mut sharder));
    (published, compiler, sharder)
}

/// The state `published_after_a_history` ends in, fed in list order (as a
/// new operator's watches deliver it).
fn listed(compiler: &mut Compiler) {
    for i in 0..SERVICES {
        if i % 7 != 0 {
            add(compiler, i, 3);
        } else if i % 14 == 0 {
            add(compiler, i, 2);
        }
    }
}

fn adopted(published: &Published, settings: ShardSettings) -> (Compiler, Sharder, ShardLayout) {
    let adopted = adopt(CompileSettings::default(), settings, &published.objects())
        .expect("the published layout is adopted");
    (adopted.compiler, adopted.sharder, adopted.layout)
}

#[test]
fn a_restarted_operator_with_the_same_state_rewrites_no_shard() {
    let (published, running, _) = published_after_a_history();
    let (mut compiler, mut sharder, layout) = adopted(&published, ShardSettings::default());
    assert!(layout.shard_count > 1, "{layout:?}");
    listed(&mut compiler);
    let first = sync(&mut compiler, &mut sharder);
    assert_eq!(first.layout, layout, "the epoch is kept");
    assert_eq!(first.changed_names(), Vec::<String>::new());
    assert!(first.retired.is_empty());
    assert_eq!(compiler.ruleset(), running.ruleset());

    // Without the published ids a fresh compile numbers services in list
    // order: nearly every shard would differ.
    let mut fresh = Compiler::new(CompileSettings::default());
    listed(&mut fresh);
    fresh.sync();
    assert_ne!(fresh.ruleset(), running.ruleset());
}

#[test]
fn a_change_after_adoption_rewrites_only_its_shard_at_the_next_generation() {
    let (published, mut running, mut running_sharder) = published_after_a_history();
    let (mut compiler, mut sharder, layout) = adopted(&published, ShardSettings::default());
    listed(&mut compiler);
    // svc-1 got an endpoint more while no operator ran; svc-3 went away.
    compiler
        .update_endpoint_slice(&common::simple_slice("ns", "svc-1", 10, 4))
        .unwrap();
    compiler.delete_service("ns", "svc-3");
    compiler.delete_endpoint_slice("ns", "svc-3-abcde");
    let first = sync(&mut compiler, &mut sharder);
    assert_eq!(first.layout, layout);
    let mut expected: Vec<String> = ["svc-1", "svc-3"]
        .iter()
        .map(|n| {
            shard_name(
                &layout,
                Sharder::shard_of(&ServiceKey::new("ns", *n), layout.shard_count),
            )
        })
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(first.changed_names(), expected);
    for spec in &first.changed {
        let before = &published.0[&shard_name(&layout, spec.shard)];
        assert_eq!(spec.generation, before.generation + 1);
    }
    assert!(first.retired.is_empty());

    // Nodes end up with what the operator that never stopped publishes for
    // the same changes.
    let mut after = published.clone();
    after.write(&first);
    running
        .update_endpoint_slice(&common::simple_slice("ns", "svc-1", 10, 4))
        .unwrap();
    running.delete_service("ns", "svc-3");
    running.delete_endpoint_slice("ns", "svc-3-abcde");
    let mut reference = published.clone();
    reference.write(&sync(&mut running, &mut running_sharder));
    assert_eq!(after.on_a_node(), reference.on_a_node());
}

#[test]
fn a_service_created_while_no_operator_ran_takes_no_id_a_kept_shard_holds() {
    let (published, _, _) = published_after_a_history();
    let (mut compiler, mut sharder, _) = adopted(&published, ShardSettings::default());
    listed(&mut compiler);
    add(&mut compiler, SERVICES + 1, 3);
    let first = sync(&mut compiler, &mut sharder);
    assert!(!first.changed.is_empty());
    let mut after = published.clone();
    after.write(&first);
    // The agents' validation refuses an id claimed twice.
    let on_a_node = after.on_a_node();
    assert!(
        on_a_node
            .iter()
            .any(|r| r.name == format!("svc-{}", SERVICES + 1))
    );
}

#[test]
fn a_state_that_outgrew_the_layout_gets_a_new_epoch() {
    let (published, _, _) = published_after_a_history();
    let layout = adopted(&published, ShardSettings::default()).2;
    let smaller = ShardSettings {
        budget_bytes: 1024,
        ..ShardSettings::default()
    };
    let (mut compiler, mut sharder, _) = adopted(&published, smaller);
    listed(&mut compiler);
    let first = sync(&mut compiler, &mut sharder);
    assert_eq!(first.layout.epoch, layout.epoch + 1);
    assert!(first.layout.shard_count > layout.shard_count);
    assert_eq!(first.changed.len(), first.layout.shard_count as usize);
    assert_eq!(first.retired.len(), layout.shard_count as usize);
}

fn shard(epoch: u64, shard: u32, count: u32) -> (String, ProxyRulesetSpec) {
    let layout = ShardLayout {
        epoch,
        shard_count: count,
    };
    let spec = ProxyRulesetSpec {
        shard,
        layout,
        generation: 1,
        service_count: 0,
        ruleset: Default::default(),
    };
    (shard_name(&layout, shard), spec)
}

fn not_adopted(objects: &[(String, ProxyRulesetSpec)]) -> NotAdopted {
    let objects: Vec<(&str, &ProxyRulesetSpec)> =
        objects.iter().map(|(n, s)| (n.as_str(), s)).collect();
    adopt(
        CompileSettings::default(),
        ShardSettings::default(),
        &objects,
    )
    .expect_err("not adopted")
}

/// `rules` without the ids the compiler numbered them with.
fn without_ids(mut rules: Vec<ServicePortRule>) -> Vec<ServicePortRule> {
    for rule in &mut rules {
        rule.id = 0;
        rule.endpoints.iter_mut().for_each(|e| e.id = 0);
    }
    rules
}

/// A leader lost its Lease partway through writing a new layout (the API
/// server too loaded to answer its renewals): the next term wrote a whole
/// new layout again, 32,768 shards at 10,000 Services, which took as long
/// and could be cut short the same way.
#[test]
fn an_incomplete_layout_is_finished_its_missing_shards_written_the_rest_kept() {
    let (published, _, _) = published_after_a_history();
    let layout = adopted(&published, ShardSettings::default()).2;
    assert!(layout.epoch > 1 && layout.shard_count > 2, "{layout:?}");
    let mut partial = published.clone();
    let missing: Vec<String> = partial.0.keys().skip(1).step_by(3).cloned().collect();
    for name in &missing {
        partial.0.remove(name);
    }
    // The complete layout before it, still what the agents run.
    let (older, spec) = shard(layout.epoch - 1, 0, 1);
    partial.0.insert(older, spec);

    let adopted = adopt(
        CompileSettings::default(),
        ShardSettings::default(),
        &partial.objects(),
    )
    .expect("the newest layout is adopted though incomplete");
    assert_eq!(adopted.layout, layout);
    assert_eq!(adopted.missing, missing.len());
    let (mut compiler, mut sharder) = (adopted.compiler, adopted.sharder);
    listed(&mut compiler);
    let first = sync(&mut compiler, &mut sharder);
    assert_eq!(first.layout, layout, "the epoch is kept");
    assert_eq!(
        first.changed_names(),
        missing,
        "only the missing shards are written"
    );
    assert!(first.changed.iter().all(|s| s.generation == 1));
    // The older layout is the publisher's to delete once this one is written.
    assert!(first.retired.is_empty());

    // Nodes get the rules of the layout as it was meant to be (the ids of
    // the services in the missing shards are new, and claim none the kept
    // shards hold: the agents' validation would refuse that).
    let mut after = partial.clone();
    after.0.retain(|_, s| s.layout == layout);
    after.write(&first);
    assert_eq!(
        without_ids(after.on_a_node()),
        without_ids(published.on_a_node())
    );
}

#[test]
fn an_inconsistent_layout_is_not_adopted() {
    assert_eq!(not_adopted(&[]), NotAdopted::NothingPublished);
    assert_eq!(
        not_adopted(&[shard(4, 0, 2), shard(4, 1, 4)]),
        NotAdopted::MixedCounts {
            epoch: 4,
            counts: vec![2, 4]
        }
    );
    assert_eq!(
        not_adopted(&[shard(4, 0, 2), shard(4, 0, 2)]),
        NotAdopted::DuplicateShard { epoch: 4, shard: 0 }
    );
    assert!(matches!(
        not_adopted(&[shard(4, 2, 2)]),
        NotAdopted::OutOfLayout { shard: 2, .. }
    ));
    assert!(matches!(
        not_adopted(&[shard(4, 0, 3)]),
        NotAdopted::ShardCount { epoch: 4, count: 3 }
    ));
    let (_, spec) = shard(4, 0, 1);
    assert!(matches!(
        not_adopted(&[("by-hand".into(), spec)]),
        NotAdopted::Misnamed { .. }
    ));
}

#[test]
fn a_layout_whose_ids_collide_is_not_adopted() {
    let (published, _, _) = published_after_a_history();
    let mut objects = published.0.clone();
    let mut specs = objects.values_mut();
    let first_id = specs
        .next()
        .and_then(|s| s.ruleset.services.first().map(|r| r.id))
        .unwrap();
    let other = specs.find_map(|s| s.ruleset.services.first_mut()).unwrap();
    other.id = first_id;
    let objects: Vec<(String, ProxyRulesetSpec)> = objects.into_iter().collect();
    assert_eq!(
        not_adopted(&objects),
        NotAdopted::DuplicateId {
            what: "service port",
            id: first_id
        }
    );
}
