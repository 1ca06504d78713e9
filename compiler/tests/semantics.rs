//! Table tests of the compiler's kube-proxy semantics, on YAML input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::net::IpAddr;

use switchyard_api::ruleset::{Protocol, ServicePortRule, SessionAffinity, TrafficPolicy};
use switchyard_compiler::{
    CompileSettings, Compiled, LoadError, Reason, Snapshot, compile, parse_objects,
};

fn compile_yaml(yaml: &str) -> Compiled {
    compile_with(yaml, &CompileSettings::default())
}

fn compile_with(yaml: &str, settings: &CompileSettings) -> Compiled {
    let objects = parse_objects(yaml).unwrap_or_else(|e| panic!("test YAML: {e}"));
    compile(&Snapshot::from(objects), settings)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn port<'a>(compiled: &'a Compiled, name: &str, port_name: &str) -> &'a ServicePortRule {
    compiled
        .ruleset
        .services
        .iter()
        .find(|r| r.name == name && r.port_name == port_name)
        .unwrap_or_else(|| panic!("no rule {name}:{port_name} in {:#?}", compiled.ruleset))
}

fn endpoints(rule: &ServicePortRule) -> Vec<String> {
    rule.endpoints.iter().map(|b| b.endpoint()).collect()
}

const DUAL_STACK: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
  - {name: sig, port: 3868, protocol: SCTP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
- {name: http, port: 9999, protocol: UDP}
endpoints:
- addresses: [10.0.1.1]
  nodeName: n1
  zone: z1
- addresses: [10.0.1.2]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: n2
  hints: {forZones: [{name: z2}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-b
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080}
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: false}
- addresses: [10.0.1.3]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: ["fd00:1::1"]
"#;

#[test]
fn dual_stack_multi_port_service_with_endpoints_resolved_per_port() {
    let c = compile_yaml(DUAL_STACK);
    assert_eq!(c.diagnostics, vec![]);
    assert_eq!(c.ruleset.services.len(), 3);

    let http = port(&c, "web", "http");
    assert_eq!(http.protocol, Protocol::Tcp);
    assert_eq!(http.port, 80);
    assert_eq!(http.cluster_ips, vec![ip("10.96.0.10"), ip("fd00::10")]);
    // Target port from the slice port of the same name and protocol (not UDP 9999),
    // 10.0.1.1 deduplicated across slices (web-a first), both families.
    assert_eq!(
        endpoints(http),
        [
            "10.0.1.1:8080",
            "10.0.1.2:8080",
            "10.0.1.3:8080",
            "[fd00:1::1]:8080"
        ]
    );
    let first = &http.endpoints[0];
    assert!(
        first.ready && first.serving && !first.terminating,
        "nil conditions default"
    );
    assert_eq!(first.node_name.as_deref(), Some("n1"));
    assert_eq!(first.zone.as_deref(), Some("z1"));
    let terminating = &http.endpoints[1];
    assert!(!terminating.ready && terminating.serving && terminating.terminating);
    assert_eq!(terminating.zone_hints, ["z2"]);
    let not_ready = &http.endpoints[2];
    assert!(
        !not_ready.ready && !not_ready.serving,
        "nil serving follows ready"
    );

    let dns = port(&c, "web", "dns");
    assert_eq!((dns.protocol, dns.port), (Protocol::Udp, 53));
    assert_eq!(endpoints(dns), ["10.0.1.1:5353", "10.0.1.2:5353"]);

    let sig = port(&c, "web", "sig");
    assert_eq!(sig.protocol, Protocol::Sctp);
    assert!(sig.endpoints.is_empty(), "no slice port named sig");

    // Ids: unique and compact.
    let mut port_ids: Vec<u32> = c.ruleset.services.iter().map(|r| r.id).collect();
    port_ids.sort();
    assert_eq!(port_ids, [1, 2, 3]);
    let mut backend_ids: Vec<u32> = c
        .ruleset
        .services
        .iter()
        .flat_map(|r| r.endpoints.iter().map(|b| b.id))
        .collect();
    backend_ids.sort();
    assert_eq!(backend_ids, (1..=6).collect::<Vec<u32>>());
}

#[test]
fn external_frontends_and_policies() {
    let c = compile_yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  externalIPs: [192.0.2.7]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [" 203.0.113.0/24 ", "2001:db8::/64"]
  sessionAffinity: ClientIP
  trafficDistribution: PreferClose
  ports:
  - {port: 443, nodePort: 30443}
status:
  loadBalancer:
    ingress:
    - {ip: 198.51.100.1}
    - {ip: 198.51.100.2, ipMode: Proxy}
    - {ip: 198.51.100.3, ipMode: VIP}
    - {hostname: lb.example.com}
"#,
    );
    assert_eq!(c.diagnostics, vec![]);
    let r = port(&c, "lb", "");
    assert_eq!(r.external_ips, vec![ip("192.0.2.7")]);
    assert_eq!(
        r.load_balancer_ips,
        vec![ip("198.51.100.1"), ip("198.51.100.3")]
    );
    let ranges: Vec<String> = r
        .load_balancer_source_ranges
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(ranges, ["203.0.113.0/24", "2001:db8::/64"]);
    assert_eq!(r.node_port, Some(30443));
    assert_eq!(r.health_check_node_port, Some(32000));
    assert_eq!(r.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(r.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(
        r.session_affinity,
        Some(SessionAffinity {
            timeout_seconds: 10800
        })
    );
    assert_eq!(r.traffic_distribution.as_deref(), Some("PreferClose"));
}

#[test]
fn external_policy_local_only_applies_to_externally_accessible_services() {
    let c = compile_yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: internal}
spec:
  clusterIP: 10.96.0.30
  externalTrafficPolicy: Local
  healthCheckNodePort: 32001
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80}]
"#,
    );
    let r = port(&c, "internal", "");
    assert_eq!(r.namespace, "default");
    assert_eq!(r.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(r.health_check_node_port, None);
    assert_eq!(
        r.session_affinity,
        Some(SessionAffinity {
            timeout_seconds: 60
        })
    );
}

const SKIPPED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: external-name}
spec: {type: ExternalName, externalName: example.com, clusterIP: 10.96.0.40, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: other-proxy
  labels: {service.kubernetes.io/service-proxy-name: other}
spec: {clusterIP: 10.96.0.41, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: ours
  labels: {service.kubernetes.io/service-proxy-name: switchyard}
spec: {clusterIP: 10.96.0.42, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain}
spec: {clusterIP: 10.96.0.43, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: plain-fqdn, labels: {kubernetes.io/service-name: plain}}
addressType: FQDN
ports: [{name: "", port: 80}]
endpoints: [{addresses: [db.example.com]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: orphan}
addressType: IPv4
ports: [{name: "", port: 80}]
endpoints: [{addresses: [10.0.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: plain-1, labels: {kubernetes.io/service-name: plain}}
addressType: IPv4
ports: [{name: "", port: 8080}]
endpoints: [{addresses: [10.0.0.2]}]
"#;

#[test]
fn skipped_services_and_slices() {
    let c = compile_yaml(SKIPPED);
    let names: Vec<&str> = c.ruleset.services.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["plain"]);
    assert_eq!(endpoints(port(&c, "plain", "")), ["10.0.0.2:8080"]);
    let reasons: Vec<(Reason, &str)> = c
        .diagnostics
        .iter()
        .map(|d| (d.reason, d.name.as_str()))
        .collect();
    assert_eq!(reasons, [(Reason::MissingServiceName, "orphan")]);

    let ours = CompileSettings {
        proxy_name: Some("switchyard".into()),
    };
    let c = compile_with(SKIPPED, &ours);
    let names: Vec<&str> = c.ruleset.services.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ours", "plain"]);
}

#[test]
fn bad_input_is_skipped_and_reported_without_poisoning_others() {
    let c = compile_yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: bad-ip}
spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: bad-port}
spec:
  clusterIP: 10.96.0.51
  externalIPs: [not-an-ip, 192.0.2.9]
  ports: [{name: a, port: 70000}, {name: b, port: 81}, {name: c, port: 82, nodePort: -1}, {name: b, port: 83}]
---
apiVersion: v1
kind: Service
metadata: {name: old, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {clusterIP: 10.96.0.60, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: new, creationTimestamp: "2025-01-01T00:00:00Z"}
spec: {clusterIP: 10.96.0.60, ports: [{name: same, port: 80}, {name: other, port: 81}]}
"#,
    );
    let rules: Vec<String> = c
        .ruleset
        .services
        .iter()
        .map(|r| r.service_port_name())
        .collect();
    assert_eq!(
        rules,
        ["default/bad-port:b", "default/new:other", "default/old"]
    );
    assert_eq!(
        port(&c, "bad-port", "b").external_ips,
        vec![ip("192.0.2.9")]
    );
    let reasons: Vec<(&str, Reason)> = c
        .diagnostics
        .iter()
        .map(|d| (d.name.as_str(), d.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("bad-ip", Reason::InvalidClusterIp),
            ("bad-port", Reason::InvalidExternalIp),
            ("bad-port", Reason::InvalidPort),
            ("bad-port", Reason::InvalidNodePort),
            ("bad-port", Reason::DuplicatePort),
            ("new", Reason::DuplicateFrontend),
        ]
    );
    let conflict = &c.diagnostics[5];
    assert!(
        conflict
            .message
            .contains("10.96.0.60:80/TCP is used by default/old"),
        "{conflict}"
    );
}

#[test]
fn loader_reads_lists_and_names_the_bad_field() {
    let objects = parse_objects(
        "---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: n1}}\n- {apiVersion: v1, kind: Service, metadata: {name: s}}\n---\n",
    )
    .unwrap();
    assert_eq!((objects.nodes.len(), objects.services.len()), (1, 1));
    let objects = parse_objects(
        "apiVersion: v1\nkind: ServiceList\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: s}}\n",
    )
    .unwrap();
    assert_eq!(objects.services.len(), 1);

    let err = parse_objects(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports:\n  - {port: eighty}\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::InvalidObject { .. }));
    assert!(
        text.starts_with("document 2: Service \"web\": field `spec.ports[0].port`"),
        "{text}"
    );

    let err = parse_objects("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "document 1: kind \"Pod\" is not supported (Service, EndpointSlice, Node, ProxyConfig or a List)"
    );
}

const TRIGGER_TIMES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-03-01T10:00:05Z"}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.0.1.1], conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-b
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-03-01T10:00:09.250Z"}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.0.1.2], conditions: {ready: true}}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: plain-a
  namespace: shop
  labels: {kubernetes.io/service-name: plain}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "not a time"}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.0.1.3], conditions: {ready: true}}]
"#;

#[test]
fn newest_last_change_trigger_time_of_the_slices_reaches_the_rule() {
    let compiled = compile_yaml(TRIGGER_TIMES);
    let web = port(&compiled, "web", "http");
    let time = web.last_change_trigger_time.as_ref().unwrap();
    assert_eq!(
        time.0.to_string(),
        "2026-03-01T10:00:09.25Z",
        "the newer slice's"
    );
    let plain = port(&compiled, "plain", "http");
    assert_eq!(plain.last_change_trigger_time, None, "unparsable: ignored");
    let wire = serde_json::to_value(web).unwrap();
    assert_eq!(wire["lastChangeTriggerTime"], "2026-03-01T10:00:09.250000Z");
    assert!(
        serde_json::to_value(plain)
            .unwrap()
            .get("lastChangeTriggerTime")
            .is_none()
    );
}
