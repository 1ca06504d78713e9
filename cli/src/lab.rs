//! `switchyard lab up` / `lab down`: the tests' control plane, by hand. `up`
//! starts etcd, kube-apiserver and kube-controller-manager on loopback,
//! installs `config/base` (CRDs, RBAC, the admission policy), prints how to
//! reach it and runs until interrupted, when it removes everything. `down`
//! stops a running `up` (SIGTERM) and removes what a killed one left.

use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_lab::controlplane::ControlPlane;
use switchyard_lab::controlplane::workdir::{self, Purpose};

/// How long `down` waits for a running `up` to clean up after itself.
const DOWN_PATIENCE: Duration = Duration::from_secs(30);

/// `config/base` of the checkout this binary was built from.
pub fn default_config() -> PathBuf {
    switchyard_lab::controlplane::config_base()
}

/// Start, install `config`, print where it is, and never return (the signal
/// handler installed by `main` removes everything and exits on Ctrl-C).
/// Returns only on failure to start.
pub fn up(config: &Path, out: &mut dyn Write) -> Result<Infallible, String> {
    let config = std::fs::canonicalize(config)
        .map_err(|e| format!("the kustomization to install, {}: {e}", config.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let cp = runtime
        .block_on(ControlPlane::start(Purpose::Lab))
        .map_err(|e| e.to_string())?;
    cp.install(&config).map_err(|e| e.to_string())?;
    let kubeconfig = cp.admin_kubeconfig().display().to_string();
    let kubectl = cp.binaries().path("kubectl").display().to_string();
    let lines = [
        format!(
            "control plane ready in {:.1?}: etcd, kube-apiserver on {}, kube-controller-manager; {} installed",
            cp.started_in(),
            cp.api_addr(),
            config.display()
        ),
        format!("kubeconfig: {kubeconfig}"),
        format!("watch:      {kubectl} --kubeconfig {kubeconfig} get proxynodes -w"),
        format!("logs:       {}/*.log", cp.dir().display()),
        "Ctrl-C (or `switchyard lab down`) stops it and removes everything.".to_string(),
    ];
    for line in lines {
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::park();
    }
}

/// Stop every `lab up` on this machine and remove what killed ones left.
pub fn down(out: &mut dyn Write) -> Result<(), String> {
    let removed = workdir::sweep(Purpose::Lab, DOWN_PATIENCE);
    if removed.is_empty() {
        writeln!(out, "no lab control plane to remove").map_err(|e| e.to_string())?;
    }
    for dir in removed {
        let left = workdir::left_behind(&dir);
        if !left.is_empty() {
            return Err(format!("could not remove: {}", left.join(", ")));
        }
        writeln!(out, "removed {}", dir.display()).map_err(|e| e.to_string())?;
    }
    Ok(())
}
