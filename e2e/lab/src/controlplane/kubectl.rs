//! kubectl (the pinned release's, from `target/k8s/bin`) with a given
//! kubeconfig, for tests and the lab command: the way a person drives the
//! cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::ControlPlaneError;

#[derive(Clone, Debug)]
pub struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(program: &Path, kubeconfig: &Path) -> Kubectl {
        Kubectl {
            program: program.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// `kubectl --kubeconfig … ARGS`, not yet run (to run it elsewhere, e.g. in a node).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command
    }

    /// Run and return what it printed, whatever its exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output, ControlPlaneError> {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ControlPlaneError::Spawn {
                program: "kubectl",
                source,
            })
    }

    /// Run and return stdout; an error with stderr when it fails.
    pub fn run(&self, args: &[&str]) -> Result<String, ControlPlaneError> {
        checked(args, self.output(args)?)
    }

    /// `kubectl apply -k dir`, then wait until every CRD is established (so
    /// its kinds can be used at once).
    pub fn install(&self, kustomization: &Path) -> Result<(), ControlPlaneError> {
        let dir = kustomization.display().to_string();
        self.run(&["apply", "-k", &dir])?;
        let timeout = format!("--timeout={}s", super::READY_TIMEOUT.as_secs());
        self.run(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            &timeout,
        ])?;
        Ok(())
    }
}

fn checked(args: &[&str], out: Output) -> Result<String, ControlPlaneError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ControlPlaneError::Kubectl {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
