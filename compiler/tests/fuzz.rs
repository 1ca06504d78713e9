//! Random, mostly invalid objects, with hostile names (quotes, newlines, `#`,
//! NUL, non-ASCII, very long): the compiler never panics, and what it emits
//! is still well formed (valid ports, unique ids, no frontend claimed twice)
//! and passes the agents' validation.

mod common;

use std::collections::HashSet;

use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_api::ruleset::{Protocol, ProxyRulesetSpec, Ruleset, ShardLayout};
use switchyard_api::validation::{check_rule, check_shard};
use switchyard_compiler::{CompileSettings, Snapshot, compile, parse_objects};

fn ip_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u8..4).prop_map(|i| format!("10.96.0.{i}")),
        4 => (0u8..4).prop_map(|i| format!("fd00::{i}")),
        1 => Just("None".to_string()),
        1 => Just(String::new()),
        1 => Just("010.1.1.1".to_string()),
        1 => Just("10.0.0.0/8".to_string()),
        1 => "[a-z0-9.:/ ]{0,12}",
    ]
}

/// A name: mostly valid, sometimes what would break a line of rules text.
fn name(valid: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => valid,
        1 => "[ -~\n\t\"#\0é]{0,12}",
        1 => Just("a\"\n-A INPUT -j ACCEPT".to_string()),
        1 => Just("a".repeat(300)),
    ]
}

fn port_number() -> impl Strategy<Value = i64> {
    prop_oneof![
        1i64..5,
        Just(0),
        Just(65535),
        Just(65536),
        Just(-1),
        any::<i32>().prop_map(i64::from)
    ]
}

fn protocol() -> impl Strategy<Value = Option<String>> {
    prop::option::of(
        prop::sample::select(vec!["TCP", "UDP", "SCTP", "tcp", "", "ICMP"]).prop_map(String::from),
    )
}

fn service() -> impl Strategy<Value = Value> {
    (
        (name("s[0-5]"), prop::collection::vec(ip_text(), 1..3), prop::collection::vec(ip_text(), 0..2)),
        prop::collection::vec(
            prop_oneof![
                3 => ("[ab]{0,1}", 1i64..5).prop_map(|(n, p)| (Some(n), p, None, None)),
                1 => (prop::option::of(name("[ab]{0,1}")), port_number(), protocol(), prop::option::weighted(0.3, port_number())),
            ],
            0..4,
        ),
        prop::sample::select(vec!["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Bogus"]),
        (prop::option::weighted(0.3, port_number()), prop::option::weighted(0.3, any::<i32>()), prop::collection::vec(prop_oneof![3 => Just("10.0.0.0/8".to_string()), 1 => "[0-9./: ]{0,12}"], 0..2)),
        (prop::collection::vec((ip_text(), prop::option::of(prop::sample::select(vec!["VIP", "Proxy", "x"]))), 0..2), any::<bool>(), any::<bool>()),
    )
        .prop_map(|((name, cluster_ips, external_ips), ports, type_, (hc, timeout, ranges), (ingress, local, affinity))| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol, node_port)| json!({"name": name, "port": port, "protocol": protocol, "nodePort": node_port}))
                .collect();
            let ingress: Vec<Value> = ingress.into_iter().map(|(ip, mode)| json!({"ip": ip, "ipMode": mode})).collect();
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"namespace": "ns", "name": name},
                "spec": {
                    "type": type_,
                    "clusterIPs": cluster_ips,
                    "externalIPs": external_ips,
                    "ports": ports,
                    "healthCheckNodePort": hc,
                    "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                    "internalTrafficPolicy": if local { "Local" } else { "Cluster" },
                    "sessionAffinity": if affinity { "ClientIP" } else { "None" },
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": timeout}},
                    "loadBalancerSourceRanges": ranges,
                },
                "status": {"loadBalancer": {"ingress": ingress}},
            })
        })
}

fn slice() -> impl Strategy<Value = Value> {
    (
        (0u8..4, prop::option::weighted(0.9, name("s[0-5]|"))),
        prop::sample::select(vec!["IPv4", "IPv4", "IPv4", "IPv4", "IPv4", "IPv6", "FQDN", "Other"]),
        prop::collection::vec(
            prop_oneof![
                3 => ("[ab]{0,1}", 1i64..5).prop_map(|(n, p)| (Some(n), Some(p), None)),
                1 => (prop::option::of("[ab]{0,1}"), prop::option::of(port_number()), protocol()),
            ],
            0..3,
        ),
        prop::collection::vec((prop::collection::vec(prop_oneof![4 => (1u8..9).prop_map(|i| format!("10.0.0.{i}")), 1 => ip_text(), 1 => Just("127.0.0.1".to_string())], 0..3), prop::option::of(any::<bool>()), prop::option::of(any::<bool>()), prop::option::of(any::<bool>()), (prop::option::of(name("[a-c]")), prop::option::of(name("node-[a-c]")))), 0..4),
    )
        .prop_map(|((name, service), address_type, ports, endpoints)| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
                .collect();
            let endpoints: Vec<Value> = endpoints
                .into_iter()
                .map(|(addresses, ready, serving, terminating, (zone, node))| {
                    json!({
                        "addresses": addresses,
                        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                        "zone": zone,
                        "nodeName": node,
                        "hints": {
                            "forZones": zone.iter().map(|z| json!({"name": z})).collect::<Vec<_>>(),
                            "forNodes": node.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
                        },
                    })
                })
                .collect();
            let labels = service.map(|s| json!({"kubernetes.io/service-name": s}));
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"namespace": "ns", "name": format!("e{name}"), "labels": labels},
                "addressType": address_type,
                "ports": ports,
                "endpoints": endpoints,
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_objects_never_panic_and_output_stays_well_formed(
        services in prop::collection::vec(service(), 0..8),
        slices in prop::collection::vec(slice(), 0..8),
    ) {
        // Out-of-range integers do not deserialize at all: those objects are
        // the loader's to reject, not the compiler's.
        let snapshot = Snapshot {
            services: services.into_iter().filter_map(|s| serde_json::from_value(s).ok()).collect(),
            endpoint_slices: slices.into_iter().filter_map(|s| serde_json::from_value(s).ok()).collect(),
            nodes: vec![],
        };
        let compiled = compile(&snapshot, &CompileSettings::default());

        let mut port_ids = HashSet::new();
        let mut backend_ids = HashSet::new();
        let mut frontends = HashSet::new();
        for rule in &compiled.ruleset.services {
            prop_assert!(rule.port != 0);
            prop_assert!(rule.node_port != Some(0));
            prop_assert!(port_ids.insert(rule.id));
            // One rule may list an address twice (cluster IP and external IP);
            // two rules never share a frontend.
            let mut own: HashSet<(Option<std::net::IpAddr>, Protocol, u16)> = rule
                .cluster_ips
                .iter()
                .chain(&rule.external_ips)
                .chain(&rule.load_balancer_ips)
                .map(|ip| (Some(*ip), rule.protocol, rule.port))
                .collect();
            own.extend(rule.node_port.map(|p| (None, rule.protocol, p)));
            for frontend in own {
                prop_assert!(frontends.insert(frontend), "frontend {frontend:?} twice");
            }
            let mut endpoints = HashSet::new();
            for b in &rule.endpoints {
                prop_assert!(b.port != 0);
                prop_assert!(backend_ids.insert(b.id));
                prop_assert!(endpoints.insert(b.endpoint()));
            }
            prop_assert_eq!(check_rule(rule), Ok(()));
        }
        // The whole output as one shard is what an agent accepts.
        let services = compiled.ruleset.services;
        let shard = ProxyRulesetSpec {
            shard: 0,
            layout: ShardLayout { epoch: 1, shard_count: 1 },
            generation: 1,
            service_count: services.len() as u32,
            ruleset: Ruleset { services },
        };
        prop_assert_eq!(check_shard(&shard), Ok(()));
    }

    #[test]
    fn random_yaml_never_panics_the_loader(text in "[-a-zA-Z0-9:{}\\[\\], \n]{0,200}") {
        let _ = parse_objects(&text);
    }

    #[test]
    fn mutated_manifests_never_panic_the_loader(cut in 0usize..400, insert in "[-a-z0-9:{}\\[\\] \n]{0,4}") {
        let manifest = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80, nodePort: 30000}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: '', port: 8080}]\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}]\n";
        let at = manifest.char_indices().map(|(i, _)| i).nth(cut % manifest.len()).unwrap_or(0);
        let text = format!("{}{}{}", &manifest[..at], insert, &manifest[at..]);
        if let Ok(objects) = parse_objects(&text) {
            let _ = compile(&Snapshot::from(objects), &CompileSettings::default());
        }
    }
}
