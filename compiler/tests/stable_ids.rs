//! Ids stay the same while the object exists and are reused only after it is gone.

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
fn ids_survive_unrelated_changes_and_are_reused_after_deletion() {
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
    // d takes c's freed service-port id; b's new endpoint a freed backend id.
    assert_eq!(after["ns/d:http"].0, before["ns/c:http"].0);
    let freed: Vec<u32> = before["ns/c:http"]
        .1
        .values()
        .copied()
        .chain([before["ns/b:http"].1["10.0.0.10:8080"]])
        .collect();
    assert!(
        freed.contains(&b_backends["10.0.0.12:8080"]),
        "{freed:?} {b_backends:?}"
    );
    let max_backend = after.values().flat_map(|(_, b)| b.values()).max().copied();
    assert_eq!(max_backend, Some(4), "four live backends hold ids 1..=4");
}
