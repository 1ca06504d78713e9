//! Tier 7: a real cluster, when `KUBECONFIG` names one.
//!
//! Without `KUBECONFIG` (and `SWITCHYARD_E2E_DEPLOY=1`, with the images pushed)
//! this test prints a loud SKIPPED line and passes. With them it deploys
//! `config/` and waits for the operator to report status on a sample pool.
//! What an API server itself enforces (schema, CEL rules, RBAC, the admission
//! policy) is proven every run against the lab's own control plane:
//! `controlplane_config.rs`.

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
