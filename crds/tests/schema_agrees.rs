//! The CRD schemas say what the validation module says: for every case of
//! one table (Kubernetes' name formats with their edge cases, numbers and
//! lists at their bounds, address texts), a `ProxyRuleset` the schema
//! (structure and CEL, as `samples.rs` checks them) accepts is one the agent
//! accepts, and the other way round. A few rules no schema can state
//! (address ranges, uniqueness) are listed as the agent's alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use serde_json::{Value, json};
use switchyard_api::validation::{NameFormat, check_shard};
use switchyard_api::{ProxyNode, ProxyRuleset};

use NameFormat::*;

/// (format, value, valid), with the edge cases of apimachinery's own tables.
const NAMES: &[(NameFormat, &str, bool)] = &[
    (Dns1123Label, "a", true),
    (Dns1123Label, "0", true),
    (Dns1123Label, "ab-0", true),
    (Dns1123Label, "1-2-3", true),
    (Dns1123Label, "a--b", true),
    (Dns1123Label, "", false),
    (Dns1123Label, "-a", false),
    (Dns1123Label, "a-", false),
    (Dns1123Label, "A", false),
    (Dns1123Label, "a_b", false),
    (Dns1123Label, "a.b", false),
    (Dns1123Label, "a b", false),
    (Dns1123Label, "a\n", false),
    (Dns1123Label, "\na", false),
    (Dns1123Label, "a\"b", false),
    (Dns1123Label, "é", false),
    (Dns1123Subdomain, "a", true),
    (Dns1123Subdomain, "a.b", true),
    (Dns1123Subdomain, "node-1.zone-a.example.com", true),
    (Dns1123Subdomain, "1.2.3.4", true),
    (Dns1123Subdomain, "a..b", false),
    (Dns1123Subdomain, ".a", false),
    (Dns1123Subdomain, "a.", false),
    (Dns1123Subdomain, "a.-b", false),
    (Dns1123Subdomain, "A.b", false),
    (Dns1123Subdomain, "a_b", false),
    (Dns1123Subdomain, "a\n.b", false),
    (Dns1123Subdomain, "a\0", false),
    (Dns1035Label, "a", true),
    (Dns1035Label, "a0", true),
    (Dns1035Label, "my-svc", true),
    (Dns1035Label, "0a", false),
    (Dns1035Label, "", false),
    (Dns1035Label, "a-", false),
    (Dns1035Label, "a.b", false),
    (Dns1035Label, "web\"\n-A INPUT -j ACCEPT", false),
    (LabelValue, "", true),
    (LabelValue, "a", true),
    (LabelValue, "Zone_A.1-b", true),
    (LabelValue, "1", true),
    (LabelValue, "-a", false),
    (LabelValue, "a_", false),
    (LabelValue, "a/b", false),
    (LabelValue, "a b", false),
    (LabelValue, "a\n", false),
    (LabelValue, "#", false),
    (LabelValue, "a\0", false),
];

/// Where each format is used: JSON pointers into a ProxyRuleset.
fn fields(format: NameFormat) -> &'static [&'static str] {
    match format {
        Dns1123Label => &["/spec/services/0/namespace"],
        Dns1035Label => &["/spec/services/0/name"],
        Dns1123Subdomain => &[
            "/spec/services/0/backends/0/nodeName",
            "/spec/services/0/backends/0/nodeHints/0",
        ],
        LabelValue => &[
            "/spec/services/0/backends/0/zone",
            "/spec/services/0/backends/0/zoneHints/0",
        ],
    }
}

/// The schema of a CRD, compiled once.
struct Schema {
    raw: Value,
    structure: jsonschema::Validator,
}

fn schema(kind: &str) -> Schema {
    let crd = switchyard_api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    let raw = serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap();
    let structure = jsonschema::validator_for(&raw).unwrap();
    Schema { raw, structure }
}

/// The API server's two layers at `kubectl apply`: structure, then CEL.
fn schema_accepts(schema: &Schema, object: &Value) -> bool {
    schema.structure.is_valid(object)
        && kube::core::cel::Validator::new()
            .validate(&schema.raw, object, None)
            .is_ok()
}

fn agent_accepts(object: &Value) -> bool {
    serde_json::from_value::<ProxyRuleset>(object.clone())
        .is_ok_and(|r| check_shard(&r.spec).is_ok())
}

/// A shard with every field of a service port set, as the operator writes it
/// (one file, shared with the real API server's test in e2e).
fn shard() -> Value {
    serde_json::from_str(include_str!("data/shard.json"))
        .expect("crds/tests/data/shard.json parses")
}

fn with(pointer: &str, value: Value) -> Value {
    let mut object = shard();
    *object
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = value;
    object
}

#[test]
fn the_base_shard_is_valid_for_both() {
    let schema = schema("ProxyRuleset");
    assert!(schema_accepts(&schema, &shard()));
    assert!(agent_accepts(&shard()));
}

#[test]
fn names_are_accepted_alike_by_the_schema_the_agent_and_the_api_server_rules() {
    let schema = schema("ProxyRuleset");
    let long = |n| "a".repeat(n);
    let mut cases: Vec<(NameFormat, String, bool)> = NAMES
        .iter()
        .map(|(f, v, ok)| (*f, v.to_string(), *ok))
        .collect();
    for format in [Dns1123Label, Dns1035Label, LabelValue] {
        cases.push((format, long(63), true));
        cases.push((format, long(64), false));
    }
    let subdomain = format!("{}.{}.{}.{}", long(63), long(63), long(63), long(61));
    cases.push((Dns1123Subdomain, subdomain.clone(), true));
    cases.push((Dns1123Subdomain, format!("{subdomain}a"), false));

    for (format, value, valid) in &cases {
        assert_eq!(format.check(value).is_ok(), *valid, "{format:?} {value:?}");
        for field in fields(*format) {
            let object = with(field, json!(value));
            assert_eq!(
                schema_accepts(&schema, &object),
                *valid,
                "schema, {field} = {value:?}"
            );
            assert_eq!(agent_accepts(&object), *valid, "agent, {field} = {value:?}");
        }
    }
    // An unnamed port is an empty port name.
    for (value, valid) in [("", true), ("http", true), ("HTTP", false), ("a\n", false)] {
        let object = with("/spec/services/0/portName", json!(value));
        assert_eq!(
            schema_accepts(&schema, &object),
            valid,
            "portName {value:?}"
        );
        assert_eq!(agent_accepts(&object), valid, "portName {value:?}");
    }
}

#[test]
fn numbers_lists_and_addresses_are_accepted_alike() {
    let schema = schema("ProxyRuleset");
    let svc = "/spec/services/0";
    let cases: Vec<(String, Value, bool)> = vec![
        (format!("{svc}/port"), json!(0), false),
        (format!("{svc}/port"), json!(65535), true),
        (format!("{svc}/port"), json!(65536), false),
        (format!("{svc}/nodePort"), json!(0), false),
        (format!("{svc}/id"), json!(4294967295u64), true),
        (format!("{svc}/id"), json!(4294967296u64), false),
        (
            format!("{svc}/sessionAffinity/timeoutSeconds"),
            json!(0),
            false,
        ),
        (
            format!("{svc}/sessionAffinity/timeoutSeconds"),
            json!(86400),
            true,
        ),
        (
            format!("{svc}/sessionAffinity/timeoutSeconds"),
            json!(86401),
            false,
        ),
        (
            format!("{svc}/trafficDistribution"),
            json!("PreferSameNode"),
            true,
        ),
        (
            format!("{svc}/trafficDistribution"),
            json!("PreferClose\n"),
            false,
        ),
        (
            format!("{svc}/trafficDistribution"),
            json!("Anywhere"),
            false,
        ),
        (
            format!("{svc}/clusterIps"),
            json!(["10.96.0.1", "fd00::1", "10.96.0.2"]),
            false,
        ),
        (format!("{svc}/clusterIps/0"), json!("10.96.0.256"), false),
        (format!("{svc}/clusterIps/0"), json!("010.96.0.1"), false),
        (format!("{svc}/clusterIps/0"), json!("10.96.0.1\n"), false),
        (
            format!("{svc}/clusterIps/0"),
            json!("::ffff:10.96.0.1"),
            true,
        ),
        (format!("{svc}/clusterIps/0"), json!("fe80::1%eth0"), false),
        (
            format!("{svc}/clusterIps/0"),
            json!("1:2:3:4:5:6:7:8:9"),
            false,
        ),
        (
            format!("{svc}/loadBalancerSourceRanges/0"),
            json!("10.0.0.0/33"),
            false,
        ),
        (
            format!("{svc}/loadBalancerSourceRanges/0"),
            json!("::/0"),
            true,
        ),
        (format!("{svc}/backends/0/port"), json!(0), false),
        (
            format!("{svc}/backends/0/ip"),
            json!("10.0.1.5 -j ACCEPT"),
            false,
        ),
        (
            format!("{svc}/backends/0/zoneHints"),
            json!(["a", "b", "c", "d", "e", "f", "g", "h"]),
            true,
        ),
        (
            format!("{svc}/backends/0/zoneHints"),
            json!(["a", "b", "c", "d", "e", "f", "g", "h", "i"]),
            false,
        ),
        (
            format!("{svc}/backends/0/nodeHints"),
            json!(["a", "b", "c", "d", "e", "f", "g", "h", "i"]),
            false,
        ),
        ("/spec/shard".to_string(), json!(1), false),
        ("/spec/serviceCount".to_string(), json!(2), false),
        ("/spec/layout/shardCount".to_string(), json!(0), false),
        ("/spec/layout/shardCount".to_string(), json!(65537), false),
    ];
    for (field, value, valid) in cases {
        let object = with(&field, value.clone());
        assert_eq!(
            schema_accepts(&schema, &object),
            valid,
            "schema, {field} = {value}"
        );
        assert_eq!(agent_accepts(&object), valid, "agent, {field} = {value}");
    }
}

#[test]
fn what_only_the_agent_checks() {
    // Address ranges, uniqueness and powers of two are beyond a schema.
    let schema = schema("ProxyRuleset");
    let svc = "/spec/services/0";
    for (field, value) in [
        (format!("{svc}/backends/0/ip"), json!("127.0.0.1")),
        (format!("{svc}/backends/0/ip"), json!("169.254.169.254")),
        (format!("{svc}/externalIps/0"), json!("::1")),
        (format!("{svc}/clusterIps/0"), json!("0.0.0.0")),
        (format!("{svc}/backends/0/zoneHints"), json!(["a", "a"])),
        ("/spec/layout/shardCount".to_string(), json!(3)),
    ] {
        let object = with(&field, value.clone());
        assert!(
            schema_accepts(&schema, &object),
            "schema, {field} = {value}"
        );
        assert!(!agent_accepts(&object), "agent, {field} = {value}");
    }
}

#[test]
fn the_schema_refuses_prefix_forms_the_operator_never_writes() {
    // The model reads a bare address as a host prefix and trims spaces; it
    // writes neither, so the schema holds writers to `address/length`.
    let schema = schema("ProxyRuleset");
    for value in ["10.0.0.1", " 10.0.0.0/8", "10.0.0.0/08"] {
        let object = with("/spec/services/0/loadBalancerSourceRanges/0", json!(value));
        assert!(!schema_accepts(&schema, &object), "{value:?}");
        assert!(agent_accepts(&object), "{value:?}");
    }
}

#[test]
fn proxynode_pool_is_a_proxyconfig_name() {
    let schema = schema("ProxyNode");
    for (pool, valid) in [
        ("pool-a", true),
        ("pools.example", true),
        ("Pool A", false),
        ("a\n", false),
    ] {
        let node = json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "ProxyNode",
            "metadata": {"name": "node-a"},
            "spec": {"pool": pool},
        });
        assert_eq!(schema_accepts(&schema, &node), valid, "{pool:?}");
        assert!(serde_json::from_value::<ProxyNode>(node).is_ok());
        assert_eq!(Dns1123Subdomain.check(pool).is_ok(), valid);
    }
}
