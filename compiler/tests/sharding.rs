//! Sharding at size: shards stay under the budget, a change to one service
//! rewrites only its shard, the layout grows and shrinks with the ruleset,
//! and no shard is larger than an object may be.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeSet;

use switchyard_api::ruleset::assemble_shards;
use switchyard_api::validation::check_shard;
use switchyard_compiler::{
    CompileSettings, Compiler, DEFAULT_SHARD_BUDGET_BYTES, MAX_SHARD_BYTES, ServiceKey,
    ShardSettings, ShardUpdate, Sharder,
};

fn cluster(services: u32, endpoints: u32) -> Compiler {
    let mut compiler = Compiler::new(CompileSettings::default());
    for i in 0..services {
        common::add_simple_service(&mut compiler, i, i * endpoints, endpoints);
    }
    compiler
}

#[test]
fn shards_stay_under_budget_and_one_change_rewrites_one_shard() {
    let mut compiler = cluster(3000, 5);
    let mut sharder = Sharder::new(ShardSettings::default());
    let changed = compiler.sync();
    assert_eq!(changed.len(), 3000);
    let first = sharder.sync(&compiler, &changed);
    assert!(first.layout.shard_count > 1, "{:?}", first.layout);
    assert_eq!(first.changed.len(), first.layout.shard_count as usize);
    for spec in &first.changed {
        let bytes = serde_json::to_vec(spec).unwrap().len();
        assert!(
            bytes <= DEFAULT_SHARD_BUDGET_BYTES,
            "shard {} has {bytes} bytes",
            spec.shard
        );
        assert_eq!(spec.service_count as usize, spec.ruleset.services.len());
    }
    let assembled = assemble_shards(&first.changed).unwrap();
    let mut all = assembled.ruleset.services;
    all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    assert_eq!(all, compiler.ruleset().services);

    // One endpoint more for one service: exactly its shard, generation 2.
    compiler
        .update_endpoint_slice(&common::simple_slice("ns", "svc-7", 35, 6))
        .unwrap();
    let changed = compiler.sync();
    assert_eq!(
        compiler.recompiled_last_sync(),
        1,
        "only svc-7 is recompiled"
    );
    let key = ServiceKey::new("ns", "svc-7");
    assert_eq!(changed, BTreeSet::from([key.clone()]));
    let update = sharder.sync(&compiler, &changed);
    assert_eq!(update.layout, first.layout);
    assert!(update.retired.is_empty());
    assert_eq!(update.changed.len(), 1);
    let shard = &update.changed[0];
    assert_eq!(
        shard.shard,
        Sharder::shard_of(&key, first.layout.shard_count)
    );
    assert_eq!(shard.generation, 2);
    assert!(
        shard
            .ruleset
            .services
            .iter()
            .any(|r| r.name == "svc-7" && r.endpoints.len() == 6)
    );

    // A no-op update changes nothing anywhere.
    compiler
        .update_endpoint_slice(&common::simple_slice("ns", "svc-7", 35, 6))
        .unwrap();
    let changed = compiler.sync();
    assert!(changed.is_empty());
    assert_eq!(
        compiler.recompiled_last_sync(),
        0,
        "a no-op update recompiles nothing"
    );
    assert!(sharder.sync(&compiler, &changed).changed.is_empty());

    // All services but one gone: the layout shrinks to one shard, a new epoch.
    for i in 1..3000 {
        compiler.delete_service("ns", &format!("svc-{i}"));
    }
    let changed = compiler.sync();
    let shrunk = sharder.sync(&compiler, &changed);
    assert_eq!(shrunk.layout.shard_count, 1);
    assert_eq!(shrunk.layout.epoch, first.layout.epoch + 1);
    assert_eq!(shrunk.retired.len(), first.layout.shard_count as usize);
    assert_eq!(shrunk.changed[0].ruleset, compiler.ruleset());
}

/// A service with `ports` TCP ports and one EndpointSlice of `endpoints`
/// endpoints serving all of them.
fn wide_service(compiler: &mut Compiler, name: &str, cluster_ip: &str, ports: u32, endpoints: u32) {
    let service_ports: Vec<serde_json::Value> = (0..ports)
        .map(|p| serde_json::json!({"name": format!("p{p}"), "port": 1000 + p}))
        .collect();
    compiler
        .update_service(&common::service(
            "ns",
            name,
            serde_json::json!({"clusterIP": cluster_ip, "ports": service_ports}),
        ))
        .unwrap();
    let slice_ports: Vec<serde_json::Value> = (0..ports)
        .map(|p| serde_json::json!({"name": format!("p{p}"), "port": 8000 + p, "protocol": "TCP"}))
        .collect();
    let addresses: Vec<serde_json::Value> = (0..endpoints)
        .map(|i| {
            serde_json::json!({
                "addresses": [std::net::Ipv4Addr::from(0x0b00_0000 + i).to_string()],
                "nodeName": format!("node-{}", i % 100),
            })
        })
        .collect();
    compiler
        .update_endpoint_slice(&common::slice(
            "ns",
            &format!("{name}-abcde"),
            name,
            serde_json::json!(slice_ports),
            serde_json::json!(addresses),
        ))
        .unwrap();
}

fn assert_within_object_limit(specs: &[switchyard_api::ruleset::ProxyRulesetSpec]) {
    for spec in specs {
        let bytes = serde_json::to_vec(spec).unwrap().len();
        assert!(
            bytes <= MAX_SHARD_BYTES,
            "shard {} has {bytes} bytes",
            spec.shard
        );
        assert_eq!(check_shard(spec), Ok(()), "shard {}", spec.shard);
    }
}

#[test]
fn a_service_no_object_can_hold_is_refused_with_a_diagnostic_and_no_shard_is_oversized() {
    let mut compiler = cluster(300, 5);
    // An EndpointSlice at the API's maximum of 1,000 endpoints behind 100
    // ports: about 10 MB of rules, more than any object holds.
    wide_service(&mut compiler, "huge", "10.97.0.1", 100, 1000);
    // Hundreds of ports: more than the budget, less than an object.
    wide_service(&mut compiler, "many-ports", "10.97.0.2", 300, 8);
    let mut sharder = Sharder::new(ShardSettings::default());
    let changed = compiler.sync();
    let update = sharder.sync(&compiler, &changed);
    assert_within_object_limit(&update.changed);
    let published = |update: &ShardUpdate, name: &str| {
        update
            .changed
            .iter()
            .flat_map(|s| &s.ruleset.services)
            .filter(|r| r.name == name)
            .count()
    };
    assert_eq!(published(&update, "huge"), 0);
    assert_eq!(published(&update, "many-ports"), 300);
    let too_large: Vec<String> = sharder.diagnostics().map(ToString::to_string).collect();
    assert_eq!(too_large.len(), 1, "{too_large:?}");
    assert!(
        too_large[0].starts_with("Service ns/huge: TooLarge: its 100 service ports take "),
        "{}",
        too_large[0]
    );

    // It shrinks to 5 ports: published, and no longer reported.
    wide_service(&mut compiler, "huge", "10.97.0.1", 5, 1000);
    let changed = compiler.sync();
    let update = sharder.sync(&compiler, &changed);
    assert_within_object_limit(&update.changed);
    assert_eq!(published(&update, "huge"), 5);
    assert_eq!(sharder.diagnostics().count(), 0);
}

#[test]
fn a_budget_above_the_object_limit_is_taken_as_the_limit() {
    let mut compiler = cluster(3000, 5);
    let mut sharder = Sharder::new(ShardSettings {
        budget_bytes: usize::MAX,
        first_epoch: 1,
    });
    let changed = compiler.sync();
    let update = sharder.sync(&compiler, &changed);
    assert!(update.layout.shard_count > 1, "{:?}", update.layout);
    assert_within_object_limit(&update.changed);
}

/// `versus --sizes 5000x50` never saw its state published: a service of 50
/// endpoints takes most of the 4 KiB budget, so any two of them sharing a
/// shard are over it, and hash sharding cannot keep thousands of services
/// apart. The layout doubled up to `MAX_SHARDS` (65,536 objects, mostly
/// empty), each doubling a new layout written in full, and the operator was
/// still writing them when the bench gave up. Written as the bench writes
/// it: the Services first, then their slices in bursts (one sync each).
#[test]
fn services_of_fifty_endpoints_do_not_drive_the_layout_to_the_most_shards() {
    const SERVICES: u32 = 2000;
    const ENDPOINTS: u32 = 50;
    const BURST: u32 = 100;
    let mut compiler = Compiler::new(CompileSettings::default());
    for i in 0..SERVICES {
        let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i).to_string();
        compiler
            .update_service(&common::simple_service("ns", &format!("svc-{i}"), &ip))
            .unwrap();
    }
    let mut sharder = Sharder::new(ShardSettings::default());
    let changed = compiler.sync();
    let mut update = sharder.sync(&compiler, &changed);
    let mut written = update.changed.len();
    let mut shards = update.changed.clone();
    for burst in 0..SERVICES / BURST {
        for i in burst * BURST..(burst + 1) * BURST {
            let slice = common::simple_slice("ns", &format!("svc-{i}"), i * ENDPOINTS, ENDPOINTS);
            compiler.update_endpoint_slice(&slice).unwrap();
        }
        let changed = compiler.sync();
        update = sharder.sync(&compiler, &changed);
        written += update.changed.len();
        if !update.retired.is_empty() {
            shards.clear();
        }
        for spec in &update.changed {
            shards.retain(|s| s.shard != spec.shard);
            shards.push(spec.clone());
        }
    }
    let layout = sharder.layout();
    // About two shards per service at most: beyond that a doubling splits
    // almost nothing and adds only empty objects for every agent to list.
    let most = (2 * SERVICES).next_power_of_two();
    assert!(
        layout.shard_count <= most,
        "{layout:?}: more than {most} shards for {SERVICES} services"
    );
    assert!(
        written <= 4 * most as usize,
        "{written} shard writes to publish {SERVICES} services ({layout:?})"
    );
    assert_within_object_limit(&shards);
    let assembled = assemble_shards(&shards).unwrap();
    let mut all = assembled.ruleset.services;
    all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    assert_eq!(all, compiler.ruleset().services);

    // Most of them gone: the layout shrinks with them, though every pair of
    // the services left is still over the budget.
    for i in 100..SERVICES {
        compiler.delete_service("ns", &format!("svc-{i}"));
    }
    let changed = compiler.sync();
    let shrunk = sharder.sync(&compiler, &changed);
    assert!(
        shrunk.layout.shard_count <= 2 * (2 * 100u32).next_power_of_two(),
        "{:?} for 100 services",
        shrunk.layout
    );
    assert_within_object_limit(&shrunk.changed);
}
