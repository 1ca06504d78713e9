//! kube-apiserver for one control plane: TLS on 127.0.0.1 with the lab's PKI,
//! client-certificate and service-account-token authentication, Node and RBAC
//! authorization, ValidatingAdmissionPolicy (and NodeRestriction) admission,
//! etcd over its unix socket, an audit log ([`super::audit`]).

use std::path::Path;

use super::certs::Pki;
use super::process::Launch;
use super::{audit, etcd};

/// Who issues service-account tokens (the in-cluster name, as on a real cluster).
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub fn launch(program: &Path, dir: &Path, port: u16, pki: &Pki, service_cidr: &str) -> Launch {
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        format!("--etcd-servers={}", etcd::CLIENT_URL),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", path(&pki.serving_cert())),
        format!("--tls-private-key-file={}", path(&pki.serving_key())),
        format!("--client-ca-file={}", path(&pki.ca_cert())),
        format!("--service-account-issuer={SA_ISSUER}"),
        format!("--service-account-key-file={}", path(&pki.sa_pub())),
        format!("--service-account-signing-key-file={}", path(&pki.sa_key())),
        format!("--service-cluster-ip-range={service_cidr}"),
        // Scenario files use kube-proxy's test node ports (3001, …).
        "--service-node-port-range=1-32767".to_string(),
        "--authorization-mode=Node,RBAC".to_string(),
        // On by default since 1.30; named so that a change of defaults cannot
        // silently turn off the policy the agent's rights depend on.
        "--enable-admission-plugins=NodeRestriction,ValidatingAdmissionPolicy".to_string(),
        "--allow-privileged=true".to_string(),
        // The `kubernetes` Service would list 127.0.0.1, which Endpoints may
        // not hold; programs in node namespaces reach the API server through
        // their forwarder instead.
        "--endpoint-reconciler-type=none".to_string(),
        "--profiling=false".to_string(),
        format!(
            "--audit-policy-file={}",
            path(&dir.join(audit::POLICY_FILE))
        ),
        format!("--audit-log-path={}", path(&dir.join(audit::LOG_FILE))),
        "--audit-log-format=json".to_string(),
    ];
    Launch {
        name: "kube-apiserver",
        program: program.to_path_buf(),
        args,
        cwd: dir.to_path_buf(),
        log: dir.join("kube-apiserver.log"),
        netns: None,
        cgroup: None,
        env: Vec::new(),
    }
}

/// `Ok` when `/readyz` answers 200; the error says which checks still fail.
pub async fn readyz(client: &kube::Client) -> Result<(), String> {
    let request = http::Request::get("/readyz?verbose")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client
        .request_text(request)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
