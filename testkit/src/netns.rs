//! Network namespaces owned by this process, always removed: a [`Netns`]
//! deletes its namespace on drop, and while it lives the namespace is in the
//! cleanup registry ([`crate::cleanup`]), whose signal handler deletes it
//! when the process is interrupted. Nothing here changes the host namespace
//! beyond `ip netns add/del`: commands run inside a namespace (`ip -n`,
//! `ip netns exec`), Rust code on a thread that entered it ([`Netns::run`],
//! [`Netns::spawn`]), a child process enters it between fork and exec
//! ([`enter_on_exec`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;

use switchyard_exec::{ExecError, run};

use crate::cleanup::{self, Registration};

/// A namespace could not be made, entered or used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command (`ip netns add`, one run inside a namespace) failed.
    #[error(transparent)]
    Command(#[from] ExecError),
    #[error("{operation} {object}: {source}")]
    Io {
        operation: &'static str,
        object: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether this process may create namespaces (kernel tests skip otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Run `ip ARGS` (in the host namespace only `ip netns add/del`; `-n NAME` otherwise).
pub fn ip(args: &[&str]) -> Result<String, NetnsError> {
    Ok(run("ip", args, None)?)
}

/// A network namespace owned by this process.
#[derive(Debug)]
pub struct Netns {
    name: String,
    _registered: Registration,
}

impl Netns {
    /// Create the namespace `name` with `lo` up.
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        let ((), registered) = cleanup::guarded(
            || ip(&["netns", "add", name]).map(drop),
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

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Many `ip` commands (one per line, without the leading `ip`) in one run.
    pub fn batch(&self, commands: &[String]) -> Result<(), NetnsError> {
        let text = commands.join("\n") + "\n";
        run(
            "ip",
            &["-n", &self.name, "-batch", "-"],
            Some(text.as_bytes()),
        )?;
        Ok(())
    }

    /// Run `program args...` inside the namespace (`ip netns exec`); its output.
    pub fn exec(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<String, NetnsError> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        Ok(run("ip", &full, stdin)?)
    }

    /// Write sysctls (`net.ipv4.ip_forward` style names) of this namespace.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<(), NetnsError> {
        self.write_sysctls(settings, false)
    }

    /// As [`Netns::sysctls`], skipping keys this kernel does not have per
    /// namespace (e.g. `net.ipv4.icmp_msgs_per_sec` before 6.0).
    pub fn sysctls_where_present(&self, settings: &[(&str, &str)]) -> Result<(), NetnsError> {
        self.write_sysctls(settings, true)
    }

    fn write_sysctls(&self, settings: &[(&str, &str)], optional: bool) -> Result<(), NetnsError> {
        self.run(|| {
            settings.iter().try_for_each(|(key, value)| {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                match std::fs::write(path, value) {
                    Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other.map_err(|source| NetnsError::Io {
                        operation: "set sysctl",
                        object: format!("{key}={value} in {}", self.name),
                        source,
                    }),
                }
            })
        })?
    }

    /// The namespace file (`/run/netns/NAME`), for `setns`.
    pub fn open(&self) -> Result<File, NetnsError> {
        File::open(Path::new("/run/netns").join(&self.name)).map_err(|source| NetnsError::Io {
            operation: "open the namespace",
            object: self.name.clone(),
            source,
        })
    }

    /// Run `f` on a thread that entered this namespace, and wait for it:
    /// sockets it opens, programs it starts and `/proc/sys/net` it writes are
    /// the namespace's. A panic in `f` continues in the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let file = self.open()?;
        std::thread::scope(|s| {
            s.spawn(|| enter(&file, &self.name).map(|()| f()))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Start a thread named `thread` that enters this namespace and then runs
    /// `work` (never, when entering fails: the handle then holds the error).
    pub fn spawn<T: Send + 'static>(
        &self,
        thread: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<Result<T, NetnsError>>, NetnsError> {
        let file = self.open()?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(thread.to_string())
            .spawn(move || enter(&file, &name).map(|()| work()))
            .map_err(|source| NetnsError::Io {
                operation: "start a thread in",
                object: self.name.clone(),
                source,
            })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a failure shows in `ip netns list` afterwards. The
        // registration goes after this, with the struct's fields.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Move the calling thread into the namespace `file` (named `name`) refers to.
fn enter(file: &File, name: &str) -> Result<(), NetnsError> {
    // SAFETY: setns on a namespace fd we hold open only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Io {
            operation: "enter",
            object: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
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

/// A veth pair from `a` to `b`, an address on each end, both up.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
) -> Result<(), NetnsError> {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.ip(&["addr", "add", a_addr, "dev", a_if])?;
    b.ip(&["addr", "add", b_addr, "dev", b_if])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Delete namespaces named `sy<tag>-<pid>-…`, `tag` one of `tags`, whose
/// process no longer exists (it was killed with SIGKILL). The names removed.
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
