//! Ids stay the same while the object exists and are reused only after it
//! is gone, from the sync after the one that freed them.

mod common;

use std::collections::BTreeMap;

use switchyard_api::ruleset::Ruleset;
use switchyard_compiler::{CompileSettings, Compiler};

fn ids(ruleset: &Ruleset) -> BTreeMap<String, (u32, BTreeMap<String, u32>)> {
    ruleset
        .services
        .iter()
        .map(|r| {
            let backends = r.endpoints.iter().map(|b| (b.endpoint(), b.id)).collect();
            (r.service_port_name(), (r.id, backends))
        })
        .collect()
}

#[test]
fn ids_survive_unrelated_changes_and_are_reused_a_sync_after_deletion() {
    let mut c = Compiler::new(CompileSettings::default());
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        c.update_service(&common::simple_service(
            "ns",
            name,
            &format!("10.96.0.{}", i + 1),
        ))
        .unwrap();
        c.update_endpoint_slice(&common::simple_slice("ns", name, 10 * i as u32, 2))
            .unwrap();
    }
    c.sync();
    let before = ids(&c.ruleset());
    assert_eq!(before["ns/b:http"].0, 2);

    // b loses one endpoint and gains another; c is deleted; d arrives.
    c.update_endpoint_slice(&common::simple_slice("ns", "b", 11, 2))
        .unwrap();
    c.delete_service("ns", "c");
    c.update_service(&common::simple_service("ns", "d", "10.96.0.9"))
        .unwrap();
    c.sync();
    let after = ids(&c.ruleset());

    assert_eq!(after["ns/a:http"], before["ns/a:http"], "untouched service");
    let (b_id, b_backends) = &after["ns/b:http"];
    assert_eq!(*b_id, before["ns/b:http"].0);
    assert_eq!(
        b_backends["10.0.0.11:8080"],
        before["ns/b:http"].1["10.0.0.11:8080"]
    );
    // Ids freed in a sync are not reused in it: c's shard may be written
    // after d's, and an agent between the two writes would see an id twice.
    let freed_port = before["ns/c:http"].0;
    let freed: Vec<u32> = before["ns/c:http"]
        .1
        .values()
        .copied()
        .chain([before["ns/b:http"].1["10.0.0.10:8080"]])
        .collect();
    assert_ne!(after["ns/d:http"].0, freed_port);
    assert!(
        !freed.contains(&b_backends["10.0.0.12:8080"]),
        "{freed:?} {b_backends:?}"
    );

    // The next sync reuses them, lowest first.
    c.update_service(&common::simple_service("ns", "e", "10.96.0.5"))
        .unwrap();
    c.update_endpoint_slice(&common::simple_slice("ns", "e", 40, 3))
        .unwrap();
    c.sync();
    let (e_id, e_backends) = &ids(&c.ruleset())["ns/e:http"];
    assert_eq!(*e_id, freed_port, "e takes c's service-port id");
    let mut e_ids: Vec<u32> = e_backends.values().copied().collect();
    e_ids.sort_unstable();
    let mut expected = freed.clone();
    expected.sort_unstable();
    assert_eq!(
        e_ids, expected,
        "e's endpoints take the three freed backend ids"
    );
}
