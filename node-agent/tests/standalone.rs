//! Standalone mode: a directory of YAML compiled, linked for the node and
//! applied once, and re-applied when a file changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::time::Duration;

mod common;

use common::TempDir;
use common::fake::FakeKernel;
use switchyard_agent::standalone::{StandaloneOptions, apply_once, prepare, watch};
use switchyard_agent::switch::DataplaneFactory;
use switchyard_api::Mode;
use switchyard_dataplane::settings::LocalDetector;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"#;

fn slice(ips: &[&str]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!("  - {{addresses: [{ip}], nodeName: node-a, conditions: {{ready: true}}}}")
        })
        .collect();
    format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{}
"#,
        endpoints.join("\n")
    )
}

fn options(dir: &TempDir) -> StandaloneOptions {
    StandaloneOptions {
        mode: Mode::Nftables,
        state: dir.0.clone(),
        node_name: "node-a".into(),
        node_ips: vec!["192.168.0.10".parse().unwrap()],
    }
}

#[test]
fn directory_is_compiled_linked_and_applied() {
    let dir = TempDir::new("once");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    std::fs::write(dir.0.join("slice.yml"), slice(&["10.0.1.5"])).unwrap();
    std::fs::write(dir.0.join("README.md"), "not yaml, ignored").unwrap();
    let kernel = FakeKernel::default();
    let mut dp = kernel.factory().build(Mode::Nftables).unwrap();
    let stats = apply_once(dp.as_mut(), &options(&dir)).unwrap();
    assert_eq!(stats.objects, 1);
    assert_eq!(
        kernel.rules(Mode::Nftables),
        Some(vec!["10.96.0.10:80 -> 10.0.1.5:8080".to_string()])
    );
    let prepared = prepare(&options(&dir)).unwrap();
    assert_eq!(
        prepared.ruleset.node.addresses,
        vec!["192.168.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(
        prepared.diagnostics.is_empty(),
        "{:?}",
        prepared.diagnostics
    );
}

/// `node-agent apply` read only `spec.podCIDRs`; a single-stack Node with
/// only `spec.podCIDR` got no NodeCIDR local detector (the agent's sync read both).
#[test]
fn node_with_only_pod_cidr_gets_the_node_cidr_local_detector() {
    let dir = TempDir::new("podcidr");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    std::fs::write(
        dir.0.join("node.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nspec: {podCIDR: 10.244.1.0/24}\n",
    )
    .unwrap();
    std::fs::write(
        dir.0.join("config.yaml"),
        "apiVersion: switchyard.dev/v1alpha1\nkind: ProxyConfig\nmetadata: {name: pool}\n\
         spec: {mode: nftables, detectLocalMode: NodeCIDR}\n",
    )
    .unwrap();
    let prepared = prepare(&options(&dir)).unwrap();
    assert_eq!(
        prepared.settings.local_detector,
        LocalDetector::Cidrs(vec!["10.244.1.0/24".parse().unwrap()])
    );
}

#[test]
fn bad_yaml_names_the_file_and_applies_nothing() {
    let dir = TempDir::new("bad");
    std::fs::write(dir.0.join("broken.yaml"), "kind: Service\nspec: [").unwrap();
    let kernel = FakeKernel::default();
    let mut dp = kernel.factory().build(Mode::Nftables).unwrap();
    let err = apply_once(dp.as_mut(), &options(&dir)).unwrap_err();
    assert!(err.to_string().contains("broken.yaml"), "{err}");
    assert!(kernel.installed().is_empty());
}

#[tokio::test(start_paused = true)]
async fn watch_dir_reapplies_on_change_and_keeps_rules_on_bad_input() {
    let dir = TempDir::new("watch");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    std::fs::write(dir.0.join("slice.yaml"), slice(&["10.0.1.5"])).unwrap();
    let kernel = FakeKernel::default();
    let opts = options(&dir);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let k = kernel.clone();
    let task = tokio::spawn(async move {
        let mut dp = k.factory().build(Mode::Nftables).unwrap();
        watch(dp.as_mut(), &opts, Duration::from_secs(1), async {
            let _ = stopped.await;
        })
        .await;
    });
    let settle = || async {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    };
    settle().await;
    assert_eq!(kernel.syncs().len(), 1);
    tokio::time::advance(Duration::from_secs(3)).await;
    settle().await;
    assert_eq!(kernel.syncs().len(), 1, "unchanged directory, no apply");

    std::fs::write(dir.0.join("slice.yaml"), slice(&["10.0.1.5", "10.0.1.6"])).unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(
        kernel.rules(Mode::Nftables),
        Some(vec![
            "10.96.0.10:80 -> 10.0.1.5:8080,10.0.1.6:8080".to_string()
        ])
    );

    std::fs::write(dir.0.join("slice.yaml"), "kind: [").unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(kernel.syncs().len(), 2, "bad input is not applied");
    assert_eq!(
        kernel.rules(Mode::Nftables).unwrap()[0]
            .matches(',')
            .count(),
        1
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}
