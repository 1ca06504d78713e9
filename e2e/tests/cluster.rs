//! Tier 5: a real cluster, when `KUBECONFIG` names one.
//!
//! Without `KUBECONFIG` these tests print a loud SKIPPED line and pass: there is
//! no API server on the CI machine. With one, they install the CRDs, check that
//! the API server (not just our client-side validators) accepts every sample and
//! rejects every invalid manifest with its message, using server-side dry runs so
//! nothing is left behind but the CRDs. With `SWITCHYARD_E2E_DEPLOY=1` (and the
//! images pushed), they also deploy `config/` and wait for the operator to report
//! status on a sample pool.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cluster() -> bool {
    match std::env::var_os("KUBECONFIG") {
        Some(k) if !k.is_empty() => true,
        _ => {
            eprintln!(
                "\n=== SKIPPED: real-cluster e2e tests (no KUBECONFIG set; set it to run them) ===\n"
            );
            false
        }
    }
}

fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running kubectl {args:?}: {e}"))
}

/// Run kubectl and fail the test with its stderr unless it succeeds.
fn kubectl_ok(args: &[&str]) {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manifests of a kustomize directory, without its `kustomization.yaml`.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = switchyard_api::manifests::files_in(dir, &["yaml"]).unwrap();
    files.retain(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"));
    files
}

#[test]
fn api_server_enforces_the_schema() {
    if !cluster() {
        return;
    }
    let crds = repo().join("crds/yaml/crds.yaml");
    kubectl_ok(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
    kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/proxyconfigs.switchyard.dev",
    ]);

    for sample in yaml_files(&repo().join("config/samples")) {
        let out = kubectl(&["apply", "--dry-run=server", "-f", sample.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} rejected: {}",
            sample.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for bad in yaml_files(&repo().join("crds/tests/invalid")) {
        let text = std::fs::read_to_string(&bad).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap();
        let out = kubectl(&["apply", "--dry-run=server", "-f", bad.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} accepted", bad.display());
        assert!(stderr.contains(expect), "{}: {stderr}", bad.display());
    }
}

#[test]
fn operator_reports_pool_status() {
    if !cluster() {
        return;
    }
    if std::env::var_os("SWITCHYARD_E2E_DEPLOY").is_none() {
        eprintln!(
            "\n=== SKIPPED: deploy test (set SWITCHYARD_E2E_DEPLOY=1 with the images available) ===\n"
        );
        return;
    }
    let config = repo().join("config");
    kubectl_ok(&["apply", "-k", config.to_str().unwrap()]);
    let sample = repo().join("config/samples/nftables.yaml");
    kubectl_ok(&["apply", "-f", sample.to_str().unwrap()]);
    kubectl_ok(&[
        "wait",
        "--for=jsonpath={.status.observedGeneration}=1",
        "--timeout=120s",
        "proxyconfig/nft",
    ]);
}
