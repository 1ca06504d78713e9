//! `kubectl kustomize config/` builds, and what it builds is the whole deployment
//! with the committed CRDs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn kustomize(dir: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .expect("kubectl must be installed to build config/ (it ships kustomize)");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kinds(yaml: &str) -> Vec<String> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| {
            let v: serde_json::Value = serde::Deserialize::deserialize(d).unwrap();
            format!(
                "{}/{}",
                v["kind"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn config_builds_into_the_full_deployment() {
    let built = kustomize("config");
    let kinds = kinds(&built);
    for expected in [
        "Namespace/switchyard-system",
        "CustomResourceDefinition/proxyconfigs.switchyard.dev",
        "CustomResourceDefinition/proxynodes.switchyard.dev",
        "CustomResourceDefinition/proxyrulesets.switchyard.dev",
        "ClusterRole/switchyard-operator",
        "ClusterRole/switchyard-agent",
        "ValidatingAdmissionPolicy/switchyard-agent-own-node-only",
        "FlowSchema/switchyard-operator-leader-election",
        "Deployment/switchyard-operator",
        "DaemonSet/switchyard-agent",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} missing from {kinds:?}"
        );
    }
    // Namespaced objects land in switchyard-system.
    assert!(built.contains("namespace: switchyard-system"));
}

#[test]
fn samples_build() {
    let kinds = kinds(&kustomize("config/samples"));
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.starts_with("ProxyConfig/"))
            .count(),
        4
    );
}

#[test]
fn base_is_the_deployment_without_its_workloads() {
    let base = kinds(&kustomize("config/base"));
    let full = kinds(&kustomize("config"));
    let workloads: Vec<&String> = full.iter().filter(|k| !base.contains(k)).collect();
    assert_eq!(
        workloads,
        [
            "Service/switchyard-agent-metrics",
            "Service/switchyard-operator-metrics",
            "Deployment/switchyard-operator",
            "DaemonSet/switchyard-agent"
        ]
    );
    assert!(
        base.contains(
            &"ValidatingAdmissionPolicyBinding/switchyard-agent-own-node-only".to_string()
        )
    );
}

/// `path` relative to `from` (kustomize takes no absolute resource paths).
fn relative(from: &Path, path: &Path) -> PathBuf {
    let (from, path) = (from.canonicalize().unwrap(), path.canonicalize().unwrap());
    let common = from
        .components()
        .zip(path.components())
        .take_while(|(a, b)| a == b)
        .count();
    let ups = from.components().count() - common;
    std::iter::repeat_n(Component::ParentDir.as_os_str(), ups)
        .chain(path.components().skip(common).map(|c| c.as_os_str()))
        .collect()
}

#[test]
fn monitoring_component_adds_service_monitors_and_the_dashboard() {
    let overlay = Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitoring-overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let config = relative(&overlay, &config);
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "resources: [{}]\ncomponents: [{}]\n",
            config.display(),
            config.join("components/monitoring").display()
        ),
    )
    .unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = String::from_utf8(out.stdout).unwrap();
    let kinds = kinds(&built);
    for expected in [
        "ServiceMonitor/switchyard-agent",
        "ServiceMonitor/switchyard-operator",
        "ConfigMap/switchyard-dashboard",
        "DaemonSet/switchyard-agent",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} missing from {kinds:?}"
        );
    }
    assert!(built.contains("grafana_dashboard: \"1\""), "{built}");
    assert!(built.contains("kubeproxy_network_programming_duration_seconds"));
}
