//! kube-controller-manager for one control plane, with only the controllers
//! the lab's tests rely on: EndpointSlices from Services and Pods, garbage
//! collection through owner references, namespace deletion, ServiceAccounts
//! and their tokens, ServiceCIDR deletion. Each controller acts under its own ServiceAccount, as in
//! a kubeadm cluster, so RBAC is the real bootstrap policy. It serves no port
//! (nothing probes it), so parallel control planes do not collide.

use std::path::Path;

use super::certs::Pki;
use super::process::Launch;

const CONTROLLERS: [&str; 8] = [
    "endpointslice-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "validatingadmissionpolicy-status-controller",
    // Lets a deleted ServiceCIDR go once no cluster IP is allocated from it.
    "service-cidr-controller",
];

pub fn launch(program: &Path, dir: &Path, kubeconfig: &Path, pki: &Pki) -> Launch {
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        format!("--kubeconfig={}", path(kubeconfig)),
        format!("--controllers={}", CONTROLLERS.join(",")),
        "--use-service-account-credentials=true".to_string(),
        format!("--service-account-private-key-file={}", path(&pki.sa_key())),
        format!("--root-ca-file={}", path(&pki.ca_cert())),
        "--leader-elect=false".to_string(),
        "--secure-port=0".to_string(),
    ];
    Launch {
        name: "kube-controller-manager",
        program: program.to_path_buf(),
        args,
        cwd: dir.to_path_buf(),
        log: dir.join("kube-controller-manager.log"),
        netns: None,
        cgroup: None,
        env: Vec::new(),
    }
}
