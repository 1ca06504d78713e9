//! Network namespaces the runner creates, always removed: [`Netns`] deletes
//! its namespace on drop, and every live name is also in a process-wide
//! registry that the SIGINT/SIGTERM handler thread ([`install_signal_cleanup`])
//! empties before exiting. Child processes are killed with the runner
//! (PR_SET_PDEATHSIG), so nothing holds a namespace after it is gone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use switchyard_dataplane::exec::{RealRunner, Runner};

use crate::HarnessError;

static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<String>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns, HarnessError> {
        // The registry stays locked while the namespace is created, so the
        // signal thread never misses one that is half made.
        {
            let mut live = live();
            ip(&["netns", "add", name])?;
            live.push(name.to_string());
        }
        let ns = Netns {
            name: name.to_string(),
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
        let mut live = live();
        // Best effort: a failure here is reported by `ip netns list` afterwards.
        let _ = ip(&["netns", "del", &self.name]);
        live.retain(|n| n != &self.name);
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

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block SIGINT/SIGTERM/SIGHUP in every thread and handle them in one thread
/// that deletes every live namespace, then exits with 130. Call first in main,
/// before any other thread starts.
pub fn install_signal_cleanup() {
    let set = signal_set();
    // SAFETY: blocking signals in the calling (main) thread; threads spawned later inherit it.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on a valid, blocked set.
        unsafe {
            libc::sigwait(&set, &mut sig);
        }
        // Held until exit: no namespace is created after this point.
        let live = live();
        for name in live.iter() {
            let _ = ip(&["netns", "del", name]);
        }
        eprintln!("interrupted (signal {sig}): namespaces removed");
        std::process::exit(130);
    });
}

/// For child processes: restore the default signal mask and die with the parent.
pub fn child_setup() {
    let set = signal_set();
    // SAFETY: unblocking signals and setting the parent-death signal for this process.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}
