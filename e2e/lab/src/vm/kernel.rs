//! Debian's stock kernel, fetched with `apt-get download`, unpacked with
//! `dpkg -x` (never installed) and indexed with `depmod -b`, cached under the
//! cargo target directory so only the first run pays for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::VmError;

/// The metapackage that names the current stock kernel.
const METAPACKAGE: &str = "linux-image-amd64";

/// An unpacked kernel: the image and its module tree.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the unpacked package.
    pub modules: PathBuf,
}

impl Kernel {
    /// The kernel in `cache`, fetching and unpacking it first when missing.
    ///
    /// `SWITCHYARD_VM_KERNEL_PACKAGE` overrides the package
    /// (`linux-image-<version>`); otherwise the metapackage's dependency is used.
    pub fn fetch(cache: &Path) -> Result<Kernel, VmError> {
        let package = match std::env::var("SWITCHYARD_VM_KERNEL_PACKAGE") {
            Ok(p) => p,
            Err(_) => resolve_package()?,
        };
        let version = package
            .strip_prefix("linux-image-")
            .ok_or_else(|| VmError::Kernel {
                operation: "parse the kernel package name",
                detail: package.clone(),
            })?
            .to_string();
        let dir = cache.join(&version);
        let kernel = Kernel {
            vmlinuz: dir.join("root/boot").join(format!("vmlinuz-{version}")),
            modules: dir.join("root/lib/modules").join(&version),
            version: version.clone(),
        };
        let done = dir.join("unpacked");
        if done.exists() {
            return Ok(kernel);
        }
        fs::create_dir_all(&dir).map_err(|e| VmError::io("create the kernel cache", &dir, e))?;
        run(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&dir),
            "apt-get download the kernel package",
        )?;
        let deb = fs::read_dir(&dir)
            .map_err(|e| VmError::io("list the kernel cache", &dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| VmError::Kernel {
                operation: "find the downloaded package",
                detail: dir.display().to_string(),
            })?;
        let root = dir.join("root");
        run(
            Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
            "dpkg -x the kernel package",
        )?;
        run(
            Command::new("depmod").arg("-b").arg(&root).arg(&version),
            "depmod the unpacked modules",
        )?;
        fs::remove_file(&deb).map_err(|e| VmError::io("remove the package", &deb, e))?;
        fs::write(&done, &package).map_err(|e| VmError::io("mark the cache", &done, e))?;
        Ok(kernel)
    }

    /// `modules.dep` as a map from a module's relative path to its dependencies.
    pub fn module_deps(&self) -> Result<BTreeMap<String, Vec<String>>, VmError> {
        let path = self.modules.join("modules.dep");
        let text =
            fs::read_to_string(&path).map_err(|e| VmError::io("read modules.dep", &path, e))?;
        Ok(parse_modules_dep(&text))
    }
}

fn resolve_package() -> Result<String, VmError> {
    let out = run(
        Command::new("apt-cache").args(["depends", METAPACKAGE]),
        "apt-cache depends linux-image-amd64",
    )?;
    let found = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string);
    match found {
        Some(package) => Ok(package),
        None => Err(VmError::Kernel {
            operation: "resolve linux-image-amd64",
            detail: out,
        }),
    }
}

fn run(cmd: &mut Command, operation: &'static str) -> Result<String, VmError> {
    let out = cmd.output().map_err(|e| VmError::Kernel {
        operation,
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(VmError::Kernel {
            operation,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parse `modules.dep`: `path: dep dep ...` per line.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                m.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// The modules matching `wanted` (a path prefix such as `kernel/net/netfilter/`
/// or a full module path) and everything they depend on.
pub fn module_closure(deps: &BTreeMap<String, Vec<String>>, wanted: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<&String> = deps
        .keys()
        .filter(|m| wanted.iter().any(|w| m.starts_with(w)))
        .collect();
    while let Some(m) = todo.pop() {
        if out.insert(m.clone()) {
            todo.extend(deps.get(m).into_iter().flatten());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_follows_dependencies_transitively() {
        let deps = parse_modules_dep(
            "kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko\n\
             kernel/net/netfilter/nf_conntrack.ko: kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko\n\
             kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko:\n\
             kernel/lib/libcrc32c.ko:\n\
             kernel/drivers/net/veth.ko:\n",
        );
        let got = module_closure(&deps, &["kernel/net/netfilter/ipvs/"]);
        let want: BTreeSet<String> = [
            "kernel/net/netfilter/ipvs/ip_vs.ko",
            "kernel/net/netfilter/nf_conntrack.ko",
            "kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko",
            "kernel/lib/libcrc32c.ko",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        assert_eq!(got, want);
    }
}
