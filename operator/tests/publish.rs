//! Compile and publish: only changed shards are written, leftovers and retired
//! layouts are deleted, diagnostics become Events once; and the writes as the
//! API server sees them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::verifier::mock_client;
use http::Method;
use kube::ResourceExt;
use kube::runtime::watcher::Event;
use serde_json::json;
use switchyard_api::ProxyRuleset;
use switchyard_api::ruleset::{ProxyRulesetSpec, Ruleset, ShardLayout};
use switchyard_compiler::{CompileSettings, parse_objects};
use switchyard_operator::controller::reporter;
use switchyard_operator::events::EventPublisher;
use switchyard_operator::metrics::Metrics;
use switchyard_operator::publish::{Change, Publication, Publisher};
use switchyard_operator::shards::write_publication;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: default
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: db}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: broken}
spec:
  clusterIP: not-an-ip
  ports: [{name: http, port: 80, protocol: TCP}]
"#;

fn publisher(budget: usize, existing: &[ProxyRuleset]) -> Publisher {
    let mut p = Publisher::new(CompileSettings::default(), budget, existing);
    let objects = parse_objects(OBJECTS).expect("test YAML");
    p.apply(&Change::Service(Box::new(Event::Init)));
    for s in objects.services {
        p.apply(&Change::Service(Box::new(Event::InitApply(s))));
    }
    p.apply(&Change::Service(Box::new(Event::InitDone)));
    for s in objects.endpoint_slices {
        p.apply(&Change::EndpointSlice(Box::new(Event::InitApply(s))));
    }
    p.apply(&Change::EndpointSlice(Box::new(Event::InitDone)));
    p
}

#[test]
fn nothing_is_published_before_both_initial_lists_are_in() {
    let mut p = Publisher::new(CompileSettings::default(), 256 * 1024, &[stale_shard(1, 0)]);
    let objects = parse_objects(OBJECTS).expect("test YAML");
    p.apply(&Change::Service(Box::new(Event::Init)));
    for s in objects.services {
        p.apply(&Change::Service(Box::new(Event::InitApply(s))));
    }
    p.apply(&Change::Service(Box::new(Event::InitDone)));
    p.apply(&Change::EndpointSlice(Box::new(Event::Init)));
    // Services listed, slices not yet: publishing now would drop web's endpoints.
    assert_eq!(p.sync(), Publication::default());
    for s in objects.endpoint_slices {
        p.apply(&Change::EndpointSlice(Box::new(Event::InitApply(s))));
    }
    p.apply(&Change::EndpointSlice(Box::new(Event::InitDone)));
    let first = p.sync();
    let web = first.apply[0]
        .1
        .ruleset
        .services
        .iter()
        .find(|s| s.name == "web")
        .unwrap();
    assert_eq!(web.endpoints.len(), 1);
    assert_eq!(first.delete, vec!["switchyard-e1-0000"]);
}

fn names(p: &Publication) -> Vec<&str> {
    p.apply.iter().map(|(n, _)| n.as_str()).collect()
}

/// Shard `shard` of a two-shard layout whose other shard is missing: a
/// layout a previous run did not complete. Adopted, it is too many shards
/// for the test's state, so the first publication starts a new layout.
fn stale_shard(epoch: u64, shard: u32) -> ProxyRuleset {
    let layout = ShardLayout {
        epoch,
        shard_count: 2,
    };
    ProxyRuleset::new(
        &switchyard_api::ruleset::shard_name(&layout, shard),
        ProxyRulesetSpec {
            shard,
            layout,
            generation: 9,
            service_count: 0,
            ruleset: Ruleset::default(),
        },
    )
}

#[test]
fn the_first_sync_writes_every_shard_and_deletes_a_previous_runs_shards() {
    let mut p = publisher(256 * 1024, &[stale_shard(3, 0)]);
    let first = p.sync();
    assert_eq!(names(&first), vec!["switchyard-e4-0000"]);
    let spec = &first.apply[0].1;
    assert_eq!(
        spec.layout,
        ShardLayout {
            epoch: 4,
            shard_count: 1
        }
    );
    let services: Vec<String> = spec
        .ruleset
        .services
        .iter()
        .map(|s| s.service_port_name())
        .collect();
    assert_eq!(services, vec!["default/db:pg", "default/web:http"]);
    assert_eq!(first.delete, vec!["switchyard-e3-0000"]);
    assert_eq!(first.diagnostics.len(), 1);
    assert_eq!(first.diagnostics[0].name, "broken");
    assert_eq!(first.diagnostics[0].reason.as_str(), "InvalidClusterIP");
    // Nothing changed: nothing to write, the diagnostic is not repeated.
    assert_eq!(p.sync(), Publication::default());
}

#[test]
fn an_endpoint_change_rewrites_only_its_shard() {
    // A tiny budget forces several shards.
    let mut p = publisher(500, &[]);
    let first = p.sync();
    assert!(first.apply.len() >= 2, "{:?}", names(&first));
    let web_shard = first
        .apply
        .iter()
        .find(|(_, s)| s.ruleset.services.iter().any(|r| r.name == "web"))
        .map(|(n, s)| (n.clone(), s.generation))
        .expect("web is published");
    let mut objects = parse_objects(OBJECTS).expect("test YAML");
    let mut slice = objects.endpoint_slices.remove(0);
    slice.endpoints[0].addresses = vec!["10.0.0.2".into()];
    p.apply(&Change::EndpointSlice(Box::new(Event::Apply(slice))));
    let next = p.sync();
    assert_eq!(names(&next), vec![web_shard.0.as_str()]);
    assert_eq!(next.apply[0].1.generation, web_shard.1 + 1);
    assert_eq!(
        next.apply[0].1.ruleset.services[0].endpoints[0]
            .ip
            .to_string(),
        "10.0.0.2"
    );
    assert!(next.delete.is_empty());
}

#[test]
fn a_service_gone_from_a_relist_is_removed() {
    let mut p = publisher(256 * 1024, &[]);
    p.sync();
    let objects = parse_objects(OBJECTS).expect("test YAML");
    p.apply(&Change::Service(Box::new(Event::Init)));
    for s in objects
        .services
        .into_iter()
        .filter(|s| s.metadata.name.as_deref() != Some("db"))
    {
        p.apply(&Change::Service(Box::new(Event::InitApply(s))));
    }
    p.apply(&Change::Service(Box::new(Event::InitDone)));
    let next = p.sync();
    let services: Vec<&str> = next.apply[0]
        .1
        .ruleset
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(services, vec!["web"]);
}

#[test]
fn a_failed_publication_is_retried_with_every_shard_and_its_deletions() {
    let mut p = publisher(500, &[stale_shard(1, 0)]);
    let failed = p.sync();
    let shard_count = failed.apply.len();
    assert!(shard_count >= 2);
    let mut objects = parse_objects(OBJECTS).expect("test YAML");
    let mut slice = objects.endpoint_slices.remove(0);
    slice.endpoints[0].addresses = vec!["10.0.0.3".into()];
    p.apply(&Change::EndpointSlice(Box::new(Event::Apply(slice))));
    let next = p.sync();
    assert_eq!(next.apply.len(), 1);
    let retry = p.republish(failed.clone(), next);
    assert_eq!(
        retry.apply.len(),
        shard_count,
        "every shard of the layout again"
    );
    assert!(retry.delete.contains(&"switchyard-e1-0000".to_string()));
    assert_eq!(retry.delete, failed.delete);
    assert_eq!(retry.diagnostics, failed.diagnostics);
    let web = retry
        .apply
        .iter()
        .flat_map(|(_, s)| s.ruleset.services.iter())
        .find(|s| s.name == "web")
        .unwrap();
    assert_eq!(
        web.endpoints[0].ip.to_string(),
        "10.0.0.3",
        "the retry carries the newest content"
    );
}

/// The objects a publication leaves on the API server after `before`.
fn published(before: &[ProxyRuleset], publication: &Publication) -> Vec<ProxyRuleset> {
    let mut objects: Vec<ProxyRuleset> = before
        .iter()
        .filter(|o| {
            let name = o.metadata.name.as_ref();
            !publication.delete.iter().any(|d| Some(d) == name)
                && !publication.apply.iter().any(|(n, _)| Some(n) == name)
        })
        .cloned()
        .collect();
    objects.extend(
        publication
            .apply
            .iter()
            .map(|(name, spec)| ProxyRuleset::new(name, spec.clone())),
    );
    objects
}

#[test]
fn a_new_leader_with_the_same_state_rewrites_and_deletes_no_shard() {
    let mut leader = publisher(500, &[]);
    let objects = published(&[], &leader.sync());
    assert!(objects.len() >= 2);
    let mut next = publisher(500, &objects);
    let first = next.sync();
    assert_eq!(names(&first), Vec::<&str>::new());
    assert_eq!(first.delete, Vec::<String>::new());
    // And it carries on from the adopted layout.
    let mut objects_after = parse_objects(OBJECTS).expect("test YAML");
    let mut slice = objects_after.endpoint_slices.remove(0);
    slice.endpoints[0].addresses = vec!["10.0.0.2".into()];
    leader.apply(&Change::EndpointSlice(Box::new(Event::Apply(
        slice.clone(),
    ))));
    next.apply(&Change::EndpointSlice(Box::new(Event::Apply(slice))));
    assert_eq!(next.sync(), leader.sync());
}

#[test]
fn a_new_leader_rewrites_only_the_shard_of_a_service_changed_meanwhile() {
    let objects = published(&[], &publisher(500, &[]).sync());
    let web = objects
        .iter()
        .find(|o| o.spec.ruleset.services.iter().any(|r| r.name == "web"))
        .unwrap();
    let mut next = publisher(500, &objects);
    let mut changed = parse_objects(OBJECTS).expect("test YAML");
    let mut slice = changed.endpoint_slices.remove(0);
    slice.endpoints[0].addresses = vec!["10.0.0.2".into()];
    next.apply(&Change::EndpointSlice(Box::new(Event::Apply(slice))));
    let first = next.sync();
    assert_eq!(names(&first), vec![web.metadata.name.as_deref().unwrap()]);
    let spec = &first.apply[0].1;
    assert_eq!(spec.layout, web.spec.layout);
    assert_eq!(spec.generation, web.spec.generation + 1);
    assert!(first.delete.is_empty());
}

/// A new layout written, the old one not yet deleted (the leader stopped
/// in between): the newest is adopted, the older deleted.
#[test]
fn a_new_leader_finding_two_layouts_adopts_the_newest_and_deletes_the_older() {
    let objects = published(&[], &publisher(256 * 1024, &[]).sync());
    let mut mixed = objects.clone();
    let mut newer = objects[0].clone();
    newer.spec.layout.epoch += 1;
    newer.metadata.name = Some(switchyard_api::ruleset::shard_name(&newer.spec.layout, 0));
    mixed.push(newer);
    let first = publisher(256 * 1024, &mixed).sync();
    assert_eq!(names(&first), Vec::<&str>::new());
    assert_eq!(first.delete, vec!["switchyard-e1-0000"]);
}

/// The layout a leader was writing when it lost its Lease: the next term
/// writes only the shards missing and deletes none of it.
#[test]
fn a_new_leader_finishes_an_incomplete_layout() {
    let objects = published(&[], &publisher(500, &[]).sync());
    assert!(objects.len() >= 4, "{} shards", objects.len());
    let (kept, lost): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let kept: Vec<ProxyRuleset> = kept.into_iter().map(|(_, o)| o).collect();
    let mut lost: Vec<String> = lost.into_iter().map(|(_, o)| o.name_any()).collect();
    lost.sort();
    let first = publisher(500, &kept).sync();
    assert_eq!(names(&first), lost);
    assert!(first.apply.iter().all(|(_, s)| s.generation == 1));
    assert_eq!(first.delete, Vec::<String>::new());
}

#[test]
fn a_new_leader_whose_state_outgrew_the_layout_deletes_each_old_shard_once() {
    let objects = published(&[], &publisher(256 * 1024, &[]).sync());
    let first = publisher(500, &objects).sync();
    assert!(
        names(&first)
            .iter()
            .all(|n| n.starts_with("switchyard-e2-"))
    );
    assert!(first.apply.len() >= 2);
    assert_eq!(first.delete, vec!["switchyard-e1-0000"]);
}

#[tokio::test]
async fn shards_are_applied_with_the_field_manager_then_retired_ones_deleted() {
    let mut p = publisher(256 * 1024, &[stale_shard(1, 0)]);
    let publication = p.sync();
    let (client, mut api) = mock_client();
    let events = EventPublisher::new(client.clone(), reporter(None));
    let metrics = Metrics::default();
    let expected_spec = serde_json::to_value(&publication.apply[0].1).unwrap();
    let server = tokio::spawn(async move {
        let req = api
            .expect(
                Method::PATCH,
                "/apis/switchyard.dev/v1alpha1/proxyrulesets/switchyard-e2-0000?&force=true&fieldManager=switchyard-operator",
            )
            .await;
        assert_eq!(
            req.body,
            Some(json!({
                "apiVersion": "switchyard.dev/v1alpha1",
                "kind": "ProxyRuleset",
                "metadata": {"name": "switchyard-e2-0000"},
                "spec": expected_spec,
            }))
        );
        req.echo();
        let req = api
            .expect(
                Method::DELETE,
                "/apis/switchyard.dev/v1alpha1/proxyrulesets/switchyard-e1-0000",
            )
            .await;
        req.ok(&json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
        let req = api
            .expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/default/events",
            )
            .await;
        let body = req.body.clone().unwrap();
        assert_eq!(body["reason"], "InvalidClusterIP");
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["regarding"]["kind"], "Service");
        assert_eq!(body["regarding"]["name"], "broken");
        assert!(
            body["note"]
                .as_str()
                .unwrap()
                .starts_with("skipped by switchyard: ")
        );
        req.echo();
        api.done().await;
    });
    write_publication(&client, &publication, &events, &metrics)
        .await
        .expect("published");
    drop((client, events));
    server
        .await
        .expect("the API server saw the expected requests");
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("switchyard_operator_shard_writes_total{operation=\"apply\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_operator_shard_writes_total{operation=\"delete\"} 1"),
        "{text}"
    );
}
