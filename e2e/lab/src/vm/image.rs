//! The initramfs: a cached base archive (busybox, the kernel modules with their
//! dependencies, the host's networking tools and the libraries they link) and a
//! per-run payload archive (the binary to run, its libraries, extra files and
//! the command line), concatenated.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::VmError;
use super::cpio::Archive;
use super::kernel::{Kernel, module_closure};

/// Module trees and modules the VM carries: all of netfilter (IPVS, conntrack,
/// NAT, x_tables, nf_tables, ipset — the kernel autoloads them through
/// `/sbin/modprobe`), SCTP, the dummy and veth drivers, the clsact qdisc
/// and cls_bpf classifier (the eBPF mode's classic tc attach), and the
/// e1000 network card of a VM given a link to the host.
const MODULES: &[&str] = &[
    "kernel/net/netfilter/",
    "kernel/net/ipv4/netfilter/",
    "kernel/net/ipv6/netfilter/",
    "kernel/net/sctp/",
    "kernel/net/bridge/br_netfilter",
    "kernel/drivers/net/dummy.",
    "kernel/drivers/net/veth.",
    "kernel/drivers/net/ethernet/intel/e1000/e1000.",
    "kernel/crypto/crc32c_generic.",
    "kernel/net/sched/sch_ingress.",
    "kernel/net/sched/cls_bpf.",
];

/// Loaded at boot, in order. `crc32c_generic` first: `libcrc32c` only soft-depends on it.
const PRELOAD: &[&str] = &[
    "crc32c_generic",
    "nf_conntrack",
    "nf_nat",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_sh",
    "ip_vs_mh",
    "dummy",
    "veth",
    "sctp",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "ip_tables",
    "iptable_nat",
    "iptable_filter",
    "ip_set",
    "sch_ingress",
    "cls_bpf",
];

/// Host tools copied into the VM when present (with their libraries).
const TOOLS: &[&str] = &[
    "ip",
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "ipset",
    "nft",
    "socat",
    "ncat",
];

/// Shared objects loaded with `dlopen` (iptables extensions).
const PLUGIN_DIRS: &[&str] = &["/usr/lib/x86_64-linux-gnu/xtables"];

/// Extra data files some tools read.
const DATA_FILES: &[&str] = &["/etc/protocols", "/etc/services", "/etc/ethertypes"];

pub const LIBRARY_PATH: &str = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64:/usr/lib";

/// Marker lines printed on the console around the command's output.
pub const BEGIN: &str = "SWITCHYARD-VM-BEGIN";
pub const EXIT: &str = "SWITCHYARD-VM-EXIT";

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=@LIBRARY_PATH@
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/netns /var/run
ln -s /run/netns /var/run/netns 2>/dev/null
ip link set lo up
for m in $(cat /etc/switchyard-vm/preload); do
  modprobe "$m" || echo "SWITCHYARD-VM-MODPROBE-FAILED $m"
done
echo SWITCHYARD-VM-BEGIN
cd /payload && sh /payload/run < /dev/null
echo "SWITCHYARD-VM-EXIT $?"
poweroff -f
"#;

/// The base archive for `kernel`, built once and cached next to the kernel.
pub fn base(kernel: &Kernel, cache: &Path) -> Result<Vec<u8>, VmError> {
    let path = cache
        .join(&kernel.version)
        .join(format!("base-{:016x}.cpio", recipe_hash()));
    if let Ok(bytes) = fs::read(&path) {
        return Ok(bytes);
    }
    let bytes = build_base(kernel)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, &bytes).map_err(|e| VmError::io("write the base image", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| VmError::io("store the base image", &path, e))?;
    Ok(bytes)
}

/// Changes whenever what goes into the base image changes, so a stale cached
/// image is never used.
fn recipe_hash() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (INIT, PRELOAD, TOOLS, MODULES, PLUGIN_DIRS, DATA_FILES).hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    // The layout of tools in the image.
    "usr/sbin".hash(&mut h);
    h.finish()
}

fn build_base(kernel: &Kernel) -> Result<Vec<u8>, VmError> {
    let mut a = Archive::new();
    a.char_device("dev/console", 5, 1);
    a.char_device("dev/null", 1, 3);
    for d in [
        "proc", "sys", "tmp", "run", "var", "etc", "sbin", "usr/sbin", "usr/bin",
    ] {
        a.dir(d);
    }
    let busybox = which("busybox").ok_or_else(|| VmError::MissingTool("busybox".into()))?;
    a.file("bin/busybox", 0o755, &read(&busybox)?);
    a.symlink("sbin/modprobe", "/bin/busybox");
    a.file(
        "init",
        0o755,
        INIT.replace("@LIBRARY_PATH@", LIBRARY_PATH).as_bytes(),
    );
    a.file(
        "etc/switchyard-vm/preload",
        0o644,
        PRELOAD.join("\n").as_bytes(),
    );
    add_modules(&mut a, kernel)?;

    let mut libs = Libraries::default();
    for tool in TOOLS {
        // At /usr/sbin, ahead of busybox's applets in /bin on the guest's PATH.
        if let Some(path) = which(tool) {
            a.file(&format!("usr/sbin/{tool}"), 0o755, &read(&path)?);
            libs.add_for(&path)?;
        }
    }
    for dir in PLUGIN_DIRS {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            add_host_file(&mut a, &path)?;
            libs.add_for(&path)?;
        }
    }
    for file in DATA_FILES {
        let path = Path::new(file);
        if path.exists() {
            add_host_file(&mut a, path)?;
        }
    }
    libs.write(&mut a)?;
    Ok(a.finish())
}

/// The modules of [`MODULES`] and their dependencies, decompressed when the
/// package ships them compressed, with a `modules.dep` naming what is there.
fn add_modules(a: &mut Archive, kernel: &Kernel) -> Result<(), VmError> {
    let deps = kernel.module_deps()?;
    let chosen = module_closure(&deps, MODULES);
    let base = format!("lib/modules/{}", kernel.version);
    let mut dep_text = String::new();
    for module in &chosen {
        let data = read_module(&kernel.modules.join(module))?;
        a.file(&format!("{base}/{}", plain_name(module)), 0o644, &data);
        let list: Vec<&str> = deps
            .get(module)
            .into_iter()
            .flatten()
            .map(|d| plain_name(d))
            .collect();
        dep_text.push_str(&format!("{}: {}\n", plain_name(module), list.join(" ")));
    }
    a.file(&format!("{base}/modules.dep"), 0o644, dep_text.as_bytes());
    for extra in ["modules.alias", "modules.softdep", "modules.builtin"] {
        let path = kernel.modules.join(extra);
        if path.exists() {
            a.file(&format!("{base}/{extra}"), 0o644, &read(&path)?);
        }
    }
    Ok(())
}

/// A module's path with any compression suffix removed.
fn plain_name(module: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| module.strip_suffix(ext))
        .unwrap_or(module)
}

fn read_module(path: &Path) -> Result<Vec<u8>, VmError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return read(path);
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| VmError::io("decompress a module", path, e))?;
    if !out.status.success() {
        return Err(VmError::Kernel {
            operation: "decompress a module",
            detail: format!(
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out.stdout)
}

/// Shared libraries some binaries link, found with `ldd`.
#[derive(Default)]
pub struct Libraries {
    paths: BTreeSet<PathBuf>,
}

impl Libraries {
    /// Record the libraries `binary` links (nothing for a static binary).
    pub fn add_for(&mut self, binary: &Path) -> Result<(), VmError> {
        let out = Command::new("ldd")
            .arg(binary)
            .output()
            .map_err(|e| VmError::io("run ldd", binary, e))?;
        // ldd fails for static binaries and non-ELF files: nothing to add.
        if out.status.success() {
            self.paths
                .extend(parse_ldd(&String::from_utf8_lossy(&out.stdout)));
        }
        Ok(())
    }

    /// Add every recorded library at the path the loader reports.
    pub fn write(&self, a: &mut Archive) -> Result<(), VmError> {
        for path in &self.paths {
            add_host_file(a, path)?;
        }
        Ok(())
    }
}

/// The absolute library paths in `ldd` output.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A host file at its own path, symlinks followed (multi-call binaries such as
/// `xtables-nft-multi` dispatch on the name they are run as, which stays).
pub fn add_host_file(a: &mut Archive, path: &Path) -> Result<(), VmError> {
    let data = read(path)?;
    let mode = if is_executable(path) { 0o755 } else { 0o644 };
    a.file(&path.to_string_lossy(), mode, &data);
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

fn read(path: &Path) -> Result<Vec<u8>, VmError> {
    fs::read(path).map_err(|e| VmError::io("read a file for the image", path, e))
}

/// `program` on the host's `PATH` (plus the sbin directories).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_yields_library_and_loader_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libmnl.so.0"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn compressed_module_names_lose_their_suffix() {
        assert_eq!(
            plain_name("kernel/lib/libcrc32c.ko.xz"),
            "kernel/lib/libcrc32c.ko"
        );
        assert_eq!(
            plain_name("kernel/lib/libcrc32c.ko"),
            "kernel/lib/libcrc32c.ko"
        );
    }
}
