//! Where Kubernetes' programs are: `target/k8s/bin/`, built by
//! `e2e/k8s/build.sh` from the pinned release. Found beside the running
//! program's target directory (tests run from `target/debug/deps/`, the CLI
//! from `target/<profile>/`), or at `$SWITCHYARD_K8S_BIN`.

use std::path::{Path, PathBuf};

use super::ControlPlaneError;

/// Overrides the search.
pub const ENV: &str = "SWITCHYARD_K8S_BIN";
/// What a control plane needs (kube-proxy is there too, for the tests that run it).
const NEEDED: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];

/// The directory holding the programs.
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    pub fn locate() -> Result<Binaries, ControlPlaneError> {
        let dir = match std::env::var_os(ENV) {
            Some(dir) => PathBuf::from(dir),
            None => search()?,
        };
        for program in NEEDED {
            let path = dir.join(program);
            if !path.is_file() {
                return Err(ControlPlaneError::BinariesMissing { missing: path });
            }
        }
        Ok(Binaries { dir })
    }

    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

/// The first `<ancestor>/k8s/bin` of the running program's directories, or,
/// when there is none, the `target/k8s/bin` it would be in.
fn search() -> Result<PathBuf, ControlPlaneError> {
    let exe = std::env::current_exe().map_err(|source| ControlPlaneError::Io {
        what: "find the running program",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let ancestors = || exe.ancestors().skip(1);
    let found = ancestors()
        .map(|a| a.join("k8s/bin"))
        .find(|dir| dir.is_dir());
    let expected = || {
        ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "target"))
            .unwrap_or(Path::new("target"))
            .join("k8s/bin/kube-apiserver")
    };
    found.ok_or_else(|| ControlPlaneError::BinariesMissing {
        missing: expected(),
    })
}
