//! The README's uninstall order against the real API server of the pinned
//! release, with the real operator binary under its own ServiceAccount
//! (`config/rbac`'s rights): a ProxyConfig deleted while the operator runs
//! has its finalizer released (its node's ProxyNode leaves the pool and
//! keeps its mode),
//! and deleting `config/` afterwards leaves nothing stuck: the CRDs and the
//! namespace are gone. Without the operator the first step would hang on the
//! finalizer, which is why the order matters.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_lab::controlplane::ControlPlane;
use switchyard_lab::controlplane::identity::{Identity, NAMESPACE, OPERATOR_SA};
use switchyard_lab::controlplane::kubectl::Kubectl;
use switchyard_lab::controlplane::workdir::Purpose;
use switchyard_testkit::cleanup::child_setup;

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {switchyard.dev/pool: nft}
";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The operator process, killed on drop.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_operator(kubeconfig: &Path) -> Operator {
    let mut cmd = Command::new(common::switchyard_programs().operator.path);
    cmd.args(["--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("POD_NAME", "switchyard-operator-0")
        .stdin(Stdio::null());
    // SAFETY: pthread_sigmask and prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            child_setup();
            Ok(())
        });
    }
    Operator(cmd.spawn().unwrap())
}

/// `kubectl get` of one field, as text.
fn field(kubectl: &Kubectl, object: &str, path: &str) -> String {
    let jsonpath = format!("jsonpath={{{path}}}");
    kubectl
        .run(&["get", object, "-o", &jsonpath])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Poll until `cond` holds; panic after 60 s (a deadlock guard).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_in_the_readme_order_leaves_nothing_stuck() {
    let cp = ControlPlane::start(Purpose::Test)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let base = repo().join("config/base");
    cp.install(&base).unwrap_or_else(|e| panic!("{e}"));
    let kubectl = cp.kubectl();
    let node = cp.dir().join("node-a.yaml");
    std::fs::write(&node, NODE).unwrap();
    kubectl
        .run(&["apply", "-f", node.to_str().unwrap()])
        .unwrap();
    let kubeconfig = cp
        .kubeconfig_for(&Identity::unbound(OPERATOR_SA))
        .await
        .unwrap();
    let operator = start_operator(&kubeconfig);

    let sample = repo().join("config/samples/nftables.yaml");
    kubectl
        .run(&["apply", "-f", sample.to_str().unwrap()])
        .unwrap();
    wait_for("the operator to assign node-a", || {
        kubectl
            .output(&[
                "get",
                "proxynode",
                "node-a",
                "-o",
                "jsonpath={.spec.targetMode}",
            ])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == "nftables")
    });
    assert_eq!(field(&kubectl, "proxynode/node-a", ".spec.pool"), "nft");
    assert_eq!(
        field(&kubectl, "proxyconfig/nft", ".metadata.finalizers[0]"),
        "switchyard.dev/release-nodes"
    );

    // 1. ProxyConfigs first, while the operator runs: the finalizer is released.
    kubectl
        .run(&["delete", "proxyconfigs", "--all", "--timeout=60s"])
        .unwrap_or_else(|e| panic!("the finalizer was not released: {e}"));
    // Released: out of the pool, its mode kept (the node is left as it is).
    assert_eq!(field(&kubectl, "proxynode/node-a", ".spec.pool"), "");
    assert_eq!(
        field(&kubectl, "proxynode/node-a", ".spec.targetMode"),
        "nftables"
    );
    drop(operator);

    // 2. Then the deployment: nothing is left waiting on a finalizer.
    kubectl
        .run(&["delete", "-k", base.to_str().unwrap(), "--timeout=60s"])
        .unwrap_or_else(|e| panic!("{e}"));
    let crds = kubectl.run(&["get", "crds", "-o", "name"]).unwrap();
    assert!(!crds.contains("switchyard.dev"), "{crds}");
    wait_for("the namespace to be gone", || {
        kubectl
            .output(&["get", "namespace", NAMESPACE])
            .is_ok_and(|o| !o.status.success())
    });
}
