//! Randomized change sequences: the incremental compiler and sharder give
//! exactly what a full compile of the final objects gives, ids stay stable
//! while objects exist, and the published shards always assemble to the
//! compiler's ruleset.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_api::ruleset::{ProxyRulesetSpec, Ruleset, assemble_shards, shard_name};
use switchyard_compiler::{CompileSettings, Compiler, ShardSettings, Sharder, Snapshot, compile};

const NAMESPACES: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug)]
enum Op {
    Service(usize, Option<Box<Service>>),
    Slice(usize, Option<Box<EndpointSlice>>),
    Sync,
}

fn service_strategy(index: usize) -> impl Strategy<Value = Box<Service>> {
    (
        prop::sample::select(vec!["10.96.0.1", "10.96.0.2", "10.96.0.3", "None"]),
        prop::collection::vec(0usize..4, 0..3),
        prop::sample::select(vec![None, Some(30000), Some(30001)]),
        prop::sample::select(vec![
            None,
            Some("2024-01-01T00:00:00Z"),
            Some("2025-01-01T00:00:00Z"),
        ]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(ip, ports, node_port, created, node_type, local)| {
            let specs = [
                json!({"name": "http", "port": 80}),
                json!({"name": "dns", "port": 53, "protocol": "UDP"}),
                json!({"port": 80}),
                json!({"name": "alt", "port": 81, "protocol": "TCP"}),
            ];
            let ports: Vec<Value> = ports
                .iter()
                .map(|&p| {
                    let mut spec = specs[p].clone();
                    if let (Some(n), true) = (node_port, node_type) {
                        spec["nodePort"] = json!(n + p as u32);
                    }
                    spec
                })
                .collect();
            let mut s = common::service(
                NAMESPACES[index % 2],
                &format!("s{}", index / 2),
                json!({
                    "clusterIP": ip,
                    "type": if node_type { "NodePort" } else { "ClusterIP" },
                    "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                    "ports": ports,
                }),
            );
            s.metadata.creation_timestamp =
                created.map(|t| serde_json::from_value(json!(t)).unwrap());
            Box::new(s)
        })
}

fn slice_strategy(index: usize) -> impl Strategy<Value = Box<EndpointSlice>> {
    (
        prop::sample::select(vec![Some("s0"), Some("s1"), Some("s2"), None]),
        prop::collection::vec(0usize..3, 0..3),
        prop::collection::vec((1u32..7, prop::option::of(any::<bool>()), prop::option::of(any::<bool>()), any::<bool>()), 0..4),
    )
        .prop_map(move |(service, ports, endpoints)| {
            let specs = [
                json!({"name": "http", "port": 8080, "protocol": "TCP"}),
                json!({"name": "dns", "port": 5353, "protocol": "UDP"}),
                json!({"name": "", "port": 8081, "protocol": "TCP"}),
            ];
            let ports: Vec<Value> = ports.iter().map(|&p| specs[p].clone()).collect();
            let endpoints: Vec<Value> = endpoints
                .iter()
                .map(|(ip, ready, serving, terminating)| {
                    json!({
                        "addresses": [format!("10.0.0.{ip}")],
                        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                        "nodeName": format!("n{}", ip % 2),
                    })
                })
                .collect();
            let mut s = common::slice(
                NAMESPACES[index % 2],
                &format!("e{index}"),
                service.unwrap_or(""),
                json!(ports),
                json!(endpoints),
            );
            if service.is_none() {
                s.metadata.labels = None;
            }
            Box::new(s)
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..6).prop_flat_map(|i| prop::option::weighted(0.8, service_strategy(i)).prop_map(move |s| Op::Service(i, s))),
        4 => (0usize..8).prop_flat_map(|i| prop::option::weighted(0.8, slice_strategy(i)).prop_map(move |s| Op::Slice(i, s))),
        1 => Just(Op::Sync),
    ]
}

fn without_ids(mut ruleset: Ruleset) -> Ruleset {
    for rule in &mut ruleset.services {
        rule.id = 0;
        for b in &mut rule.endpoints {
            b.id = 0;
        }
    }
    ruleset
}

type PortId = (String, String, String);

/// Ids of every service port and backend; asserts they are unique.
fn ids_of(ruleset: &Ruleset) -> (HashMap<PortId, u32>, HashMap<(PortId, String), u32>) {
    let mut ports = HashMap::new();
    let mut backends = HashMap::new();
    let mut seen_port_ids = std::collections::HashSet::new();
    let mut seen_backend_ids = std::collections::HashSet::new();
    for rule in &ruleset.services {
        let key = (
            rule.service_name(),
            rule.port_name.clone(),
            rule.protocol.to_string(),
        );
        assert!(
            seen_port_ids.insert(rule.id),
            "duplicate service port id {}",
            rule.id
        );
        ports.insert(key.clone(), rule.id);
        for b in &rule.endpoints {
            assert!(
                seen_backend_ids.insert(b.id),
                "duplicate backend id {}",
                b.id
            );
            backends.insert((key.clone(), b.endpoint()), b.id);
        }
    }
    (ports, backends)
}

struct Harness {
    compiler: Compiler,
    sharder: Sharder,
    services: BTreeMap<usize, Service>,
    slices: BTreeMap<usize, EndpointSlice>,
    published: BTreeMap<String, ProxyRulesetSpec>,
    ids: (HashMap<PortId, u32>, HashMap<(PortId, String), u32>),
    budget: usize,
}

impl Harness {
    fn new(budget: usize) -> Harness {
        Harness {
            compiler: Compiler::new(CompileSettings::default()),
            sharder: Sharder::new(ShardSettings {
                budget_bytes: budget,
                first_epoch: 1,
            }),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            published: BTreeMap::new(),
            ids: Default::default(),
            budget,
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Service(i, Some(s)) => {
                self.compiler.update_service(&s).unwrap();
                self.services.insert(i, *s);
            }
            Op::Service(i, None) => {
                self.compiler
                    .delete_service(NAMESPACES[i % 2], &format!("s{}", i / 2));
                self.services.remove(&i);
            }
            Op::Slice(i, Some(s)) => {
                self.compiler.update_endpoint_slice(&s).unwrap();
                self.slices.insert(i, *s);
            }
            Op::Slice(i, None) => {
                self.compiler
                    .delete_endpoint_slice(NAMESPACES[i % 2], &format!("e{i}"));
                self.slices.remove(&i);
            }
            Op::Sync => self.sync(),
        }
    }

    fn sync(&mut self) {
        let changed = self.compiler.sync();
        let update = self.sharder.sync(&self.compiler, &changed);
        for spec in update.changed {
            let name = shard_name(&spec.layout, spec.shard);
            if let Some(old) = self.published.get(&name) {
                assert!(
                    spec.generation > old.generation,
                    "{name}: generation not bumped"
                );
                assert_ne!(
                    old.ruleset, spec.ruleset,
                    "{name} rewritten without a change"
                );
            }
            assert!(
                spec.ruleset
                    .services
                    .iter()
                    .map(|r| r.service_name())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    <= 1
                    || serde_json::to_vec(&spec).unwrap().len() <= self.budget,
                "{name} over budget"
            );
            self.published.insert(name, spec);
        }
        for name in update.retired {
            self.published.remove(&name);
        }
        let assembled = assemble_shards(self.published.values())
            .unwrap_or_else(|| panic!("no complete layout in {:?}", self.published.keys()));
        let mut services = assembled.ruleset.services;
        services.sort_by(|a, b| {
            (&a.namespace, &a.name, &a.port_name, a.protocol).cmp(&(
                &b.namespace,
                &b.name,
                &b.port_name,
                b.protocol,
            ))
        });
        let ruleset = self.compiler.ruleset();
        assert_eq!(
            services, ruleset.services,
            "shards do not assemble to the ruleset"
        );

        let ids = ids_of(&ruleset);
        for (key, id) in &ids.0 {
            if let Some(old) = self.ids.0.get(key) {
                assert_eq!(old, id, "service port {key:?} changed id");
            }
        }
        for (key, id) in &ids.1 {
            if let Some(old) = self.ids.1.get(key) {
                assert_eq!(old, id, "backend {key:?} changed id");
            }
        }
        self.ids = ids;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full_compile(ops in prop::collection::vec(op_strategy(), 1..60), budget in prop::sample::select(vec![1200usize, 4000, 256 * 1024])) {
        let mut h = Harness::new(budget);
        for op in ops {
            h.apply(op);
        }
        h.sync();
        let snapshot = Snapshot {
            services: h.services.values().cloned().collect(),
            endpoint_slices: h.slices.values().cloned().collect(),
            nodes: vec![],
        };
        let full = compile(&snapshot, &CompileSettings::default());
        prop_assert_eq!(without_ids(h.compiler.ruleset()), without_ids(full.ruleset));
        prop_assert_eq!(h.compiler.diagnostics(), full.diagnostics);
    }
}
