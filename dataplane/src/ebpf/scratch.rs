//! Throwaway kernel places for tests, the scenario runner and benchmarks: a
//! bpffs mounted at a fresh directory and a child cgroup (never the root).
//! Both are removed on drop.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use switchyard_api::Mode;

use super::kernel::KernelConfig;
use crate::BackendError;

fn io_err(operation: &'static str) -> impl FnOnce(std::io::Error) -> BackendError {
    move |source| BackendError::Io {
        mode: Mode::Ebpf,
        operation,
        source,
    }
}

fn c_path(path: &Path) -> Result<CString, BackendError> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| BackendError::Kernel {
        mode: Mode::Ebpf,
        operation: "path with a NUL byte",
        message: e.to_string(),
    })
}

/// A bpffs mounted at `<tmp>/<name>`.
#[derive(Debug)]
pub struct ScratchBpffs {
    dir: PathBuf,
}

impl ScratchBpffs {
    pub fn mount(name: &str) -> Result<ScratchBpffs, BackendError> {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir(&dir).map_err(io_err("create bpffs mount point"))?;
        let target = c_path(&dir)?;
        let fstype = c"bpf";
        // SAFETY: NUL-terminated strings that outlive the call; no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(io_err("mount bpffs")(err));
        }
        Ok(ScratchBpffs { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ScratchBpffs {
    fn drop(&mut self) {
        if let Ok(target) = c_path(&self.dir) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A child of the cgroup v2 root, `<root>/<name>`.
#[derive(Debug)]
pub struct ScratchCgroup {
    dir: PathBuf,
}

impl ScratchCgroup {
    pub fn create(name: &str) -> Result<ScratchCgroup, BackendError> {
        let root = KernelConfig::for_node()
            .cgroup
            .ok_or_else(|| BackendError::Unavailable {
                mode: Mode::Ebpf,
                reason: "no cgroup v2 hierarchy is mounted".to_string(),
            })?;
        let dir = root.join(name);
        std::fs::create_dir(&dir).map_err(io_err("create cgroup"))?;
        Ok(ScratchCgroup { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        // Only an empty cgroup can go: its processes must have exited.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Whether `name` is `<tag>-<pid>-…` for a process that no longer exists.
fn orphaned(name: &str, tag: &str) -> bool {
    name.strip_prefix(tag)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

fn entries_named(dir: &Path, tag: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| orphaned(&e.file_name().to_string_lossy(), tag))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Remove the bpffs mounts and cgroups named `<tag>-<pid>-…` that a killed
/// run (its pid gone) left behind; returns what was removed.
pub fn sweep_orphans(tag: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for dir in entries_named(&std::env::temp_dir(), tag) {
        if let Ok(target) = c_path(&dir) {
            // SAFETY: a NUL-terminated path; unmounting a non-mount point just fails.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        if std::fs::remove_dir(&dir).is_ok() {
            removed.push(dir);
        }
    }
    if let Some(root) = KernelConfig::for_node().cgroup {
        for dir in entries_named(&root, tag) {
            if std::fs::remove_dir(&dir).is_ok() {
                removed.push(dir);
            }
        }
    }
    removed
}
