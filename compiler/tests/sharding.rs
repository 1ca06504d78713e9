//! Sharding at size: shards stay under the budget, a change to one service
//! rewrites only its shard, the layout grows and shrinks with the ruleset.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeSet;

use switchyard_api::ruleset::assemble_shards;
use switchyard_compiler::{
    CompileSettings, Compiler, DEFAULT_SHARD_BUDGET_BYTES, ServiceKey, ShardSettings, Sharder,
};

fn cluster(services: u32, endpoints: u32) -> Compiler {
    let mut compiler = Compiler::new(CompileSettings::default());
    for i in 0..services {
        let name = format!("svc-{i}");
        let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i).to_string();
        compiler
            .update_service(&common::simple_service("ns", &name, &ip))
            .unwrap();
        compiler
            .update_endpoint_slice(&common::simple_slice("ns", &name, i * endpoints, endpoints))
            .unwrap();
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

    // Most services gone: the layout shrinks to a new epoch.
    for i in 10..3000 {
        compiler.delete_service("ns", &format!("svc-{i}"));
    }
    let changed = compiler.sync();
    let shrunk = sharder.sync(&compiler, &changed);
    assert_eq!(shrunk.layout.shard_count, 1);
    assert_eq!(shrunk.layout.epoch, first.layout.epoch + 1);
    assert_eq!(shrunk.retired.len(), first.layout.shard_count as usize);
    assert_eq!(shrunk.changed[0].ruleset, compiler.ruleset());
}
