//! Network namespaces the runner creates, always removed: [`Netns`] deletes
//! its namespace on drop, and every live one is also in the cleanup registry
//! ([`crate::cleanup`]) that the SIGINT/SIGTERM handler empties before exiting.
//! Child processes are killed with the runner (PR_SET_PDEATHSIG), so nothing
//! holds a namespace after it is gone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use switchyard_dataplane::exec::{RealRunner, Runner};

use crate::HarnessError;
use crate::cleanup::{self, Registration};

/// Run `ip` (only `ip netns add/del` in the host namespace; `-n NAME` otherwise).
pub fn ip(args: &[&str]) -> Result<(), HarnessError> {
    run_ip(args, None)
}

/// Run `ip ARGS`, feeding `stdin` (for `-batch -`) when given.
fn run_ip(args: &[&str], stdin: Option<&str>) -> Result<(), HarnessError> {
    RealRunner
        .run("ip", args, stdin.map(str::as_bytes))
        .map(drop)
        .map_err(|e| HarnessError::Setup {
            what: format!("ip {}", args.join(" ")),
            message: e.to_string(),
        })
}

/// A network namespace owned by this run.
#[derive(Debug)]
pub struct Netns {
    name: String,
    _registered: Registration,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns, HarnessError> {
        let ((), registered) = cleanup::guarded(
            || ip(&["netns", "add", name]),
            |()| {
                let name = name.to_string();
                move || {
                    let _ = ip(&["netns", "del", &name]);
                }
            },
        )?;
        let ns = Netns {
            name: name.to_string(),
            _registered: registered,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <name> ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<(), HarnessError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Run many `ip` commands (one per line, without the leading `ip`) in this namespace.
    pub fn batch(&self, commands: &[String]) -> Result<(), HarnessError> {
        let text = commands.join("\n") + "\n";
        run_ip(&["-n", &self.name, "-batch", "-"], Some(&text))
    }

    /// Write sysctls (`net.ipv4.ip_forward` style names) inside this namespace.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<(), HarnessError> {
        let file = self.open()?;
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let name = self.name.clone();
        std::thread::spawn(move || -> Result<(), HarnessError> {
            enter(&file)?;
            for (key, value) in settings {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, &value).map_err(|e| HarnessError::Setup {
                    what: format!("sysctl {key}={value} in {name}"),
                    message: e.to_string(),
                })?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(HarnessError::Setup {
                what: "sysctl thread".into(),
                message: "panicked".into(),
            })
        })
    }

    /// The namespace file, for `setns`.
    pub fn open(&self) -> Result<File, HarnessError> {
        File::open(format!("/run/netns/{}", self.name)).map_err(|source| HarnessError::Spawn {
            what: format!("open netns {}", self.name),
            source,
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a failure here is reported by `ip netns list` afterwards.
        // The registration goes after this, with the struct's fields.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Delete namespaces named like this harness's (`sy<tag>-<pid>-…`, tag one of
/// `tags`) whose runner process no longer exists (it was killed with SIGKILL).
/// Returns the names removed.
pub fn sweep_orphans(tags: &[&str]) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in dir.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("sy") else {
            continue;
        };
        let Some((tag, rest)) = rest.split_once('-') else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let dead = pid
            .parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
        if tags.contains(&tag) && dead && ip(&["netns", "del", &name]).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// The network namespaces whose name starts with `prefix`.
pub fn named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Make `cmd`'s child enter the namespace `file` refers to between fork and
/// exec (the command keeps the file open until it is dropped).
pub fn enter_on_exec(cmd: &mut Command, file: File) {
    // SAFETY: only the async-signal-safe setns syscall runs between fork and
    // exec, on a descriptor the closure owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Move the calling thread into the namespace `file` refers to.
pub fn enter(file: &File) -> Result<(), HarnessError> {
    // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(HarnessError::Spawn {
            what: "setns".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
