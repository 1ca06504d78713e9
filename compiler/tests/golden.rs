//! Golden table tests: one input per semantic rule in `tests/golden/*.yaml`,
//! compiled (and linked for the nodes the header names), rendered as YAML and
//! compared with `*.out.yaml`. `UPDATE_GOLDEN=1 cargo test -p switchyard-compiler
//! --test golden` rewrites the expected files; review the diff.
//!
//! Header lines of an input:
//! - `# rule: <what the case shows>` (required)
//! - `# proxy-name: <name>` (optional: `CompileSettings::proxy_name`)
//! - `# link: <node> [zone]` (optional, repeated: link the ruleset for this node)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use switchyard_api::policy::{LinkedServicePort, NodeInfo, link};
use switchyard_api::ruleset::ServicePortRule;
use switchyard_compiler::{CompileSettings, Snapshot, compile, parse_objects};
use switchyard_testkit::golden;

/// Every case; a missing or extra file fails the test, so a rule cannot
/// silently lose its case.
const CASES: &[&str] = &[
    "cluster-ip-dual-stack",
    "multi-port-protocols",
    "target-port-by-name-and-protocol",
    "endpoint-conditions",
    "endpoint-dedupe-across-slices",
    "endpoint-address-family",
    "single-stack-ignores-other-family",
    "node-port",
    "external-ips",
    "load-balancer-ingress",
    "load-balancer-source-ranges",
    "health-check-node-port",
    "external-traffic-policy",
    "internal-traffic-policy-local",
    "session-affinity",
    "traffic-distribution-and-hints",
    "skip-headless",
    "skip-external-name",
    "skip-other-proxy-name",
    "proxy-name-ours",
    "skip-fqdn-slice",
    "slice-without-service-name",
    "slice-port-without-name",
    "invalid-cluster-ip",
    "invalid-ports",
    "invalid-source-range",
    "invalid-session-affinity-timeout",
    "invalid-names",
    "duplicate-frontend",
    "ip-leading-zeros",
    "link-terminating-fallback",
    "link-local-policies",
    "link-no-endpoints",
    "link-topology-hints",
];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    rule: String,
    services: Vec<ServicePortRule>,
    diagnostics: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    linked: BTreeMap<String, Vec<LinkedPort>>,
}

/// What a node's link step decided for one service port, as endpoint strings.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkedPort {
    port: String,
    internal: Vec<String>,
    external: Vec<String>,
    cluster: Vec<String>,
    local: Vec<String>,
    has_any_endpoints: bool,
    topology: String,
}

impl LinkedPort {
    fn of(linked: &LinkedServicePort) -> LinkedPort {
        let list = |it: &mut dyn Iterator<Item = &switchyard_api::ruleset::Endpoint>| {
            it.map(|b| b.endpoint()).collect::<Vec<_>>()
        };
        LinkedPort {
            port: linked.rule.service_port_name(),
            internal: list(&mut linked.internal_endpoints()),
            external: if linked.rule.has_external() {
                list(&mut linked.external_endpoints())
            } else {
                Vec::new()
            },
            cluster: list(&mut linked.cluster_endpoints()),
            local: list(&mut linked.local_endpoints()),
            has_any_endpoints: linked.has_any_endpoints,
            topology: format!("{:?}", linked.topology),
        }
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn render(input: &str) -> String {
    let mut rule = None;
    let mut settings = CompileSettings::default();
    let mut nodes = Vec::new();
    for line in input.lines().filter_map(|l| l.strip_prefix("# ")) {
        if let Some(text) = line.strip_prefix("rule: ") {
            rule = Some(text.to_string());
        } else if let Some(name) = line.strip_prefix("proxy-name: ") {
            settings.proxy_name = Some(name.to_string());
        } else if let Some(node) = line.strip_prefix("link: ") {
            let mut words = node.split_whitespace();
            nodes.push(NodeInfo {
                name: words.next().unwrap_or_default().to_string(),
                zone: words.next().map(str::to_string),
                addresses: Vec::new(),
            });
        }
    }
    let objects = parse_objects(input).unwrap_or_else(|e| panic!("{e}"));
    let compiled = compile(&Snapshot::from(objects), &settings);
    let linked = nodes
        .iter()
        .map(|node| {
            let ports = link(&compiled.ruleset, node)
                .services
                .iter()
                .map(|s| LinkedPort::of(s))
                .collect();
            (node.name.clone(), ports)
        })
        .collect();
    let output = Output {
        rule: rule.unwrap_or_else(|| panic!("no `# rule:` header")),
        services: compiled.ruleset.services,
        diagnostics: compiled.diagnostics.iter().map(|d| d.to_string()).collect(),
        linked,
    };
    serde_norway::to_string(&output).unwrap()
}

#[test]
fn golden_cases() {
    let mut inputs: Vec<String> = fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let case = name.strip_suffix(".yaml")?;
            (!case.ends_with(".out")).then(|| case.to_string())
        })
        .collect();
    inputs.sort();
    let mut cases: Vec<String> = CASES.iter().map(|c| c.to_string()).collect();
    cases.sort();
    assert_eq!(inputs, cases, "tests/golden inputs differ from CASES");

    let mut failed = Vec::new();
    for case in CASES {
        let input = fs::read_to_string(dir().join(format!("{case}.yaml"))).unwrap();
        let actual = render(&input);
        if let Err(difference) = golden::compare(&dir().join(format!("{case}.out.yaml")), &actual) {
            eprintln!("{case}: {difference}");
            failed.push(*case);
        }
    }
    assert!(
        failed.is_empty(),
        "golden mismatch: {failed:?} (UPDATE_GOLDEN=1 to rewrite, then review)"
    );
}
