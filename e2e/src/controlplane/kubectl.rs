//! kubectl (the pinned release's, from `target/k8s/bin`) with a given
//! kubeconfig, for tests and the lab command: the way a person drives the
//! cluster.

use std::io::Write;
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

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl --kubeconfig … ARGS`, not yet run (to run it elsewhere, e.g. in a node).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command
    }

    /// Run with `stdin` (if any) and return what it printed, whatever its exit status.
    pub fn output(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, ControlPlaneError> {
        let spawn_err = |source| ControlPlaneError::Spawn {
            program: "kubectl",
            source,
        };
        let mut child = self
            .command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
        }
        child.wait_with_output().map_err(spawn_err)
    }

    /// Run and return stdout; an error with stderr when it fails.
    pub fn run(&self, args: &[&str]) -> Result<String, ControlPlaneError> {
        checked(args, self.output(args, None)?)
    }

    /// Run with `stdin` and return stdout; an error with stderr when it fails.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Result<String, ControlPlaneError> {
        checked(args, self.output(args, Some(stdin))?)
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
