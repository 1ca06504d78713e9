//! The lab's long-running programs (etcd, kube-apiserver, the controller
//! manager, and whatever a test runs in a node): stdout and stderr go to a log
//! file, each runs in its own process group (a terminal's Ctrl-C reaches the
//! harness, which stops them in order), dies with the harness
//! (PR_SET_PDEATHSIG) and is killed and reaped on drop and on SIGINT/SIGTERM
//! (the cleanup registry).
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not
//! the process; so every program is forked by one spawner thread that lives
//! as long as the process, never by a caller's thread (a test thread, or a
//! tokio blocking thread that ends when idle, would take its children along).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use super::ControlPlaneError;
use crate::cleanup::{self, Registration};
use crate::netns;

/// How much of a log an error shows.
const TAIL_BYTES: u64 = 4096;

/// What to start.
#[derive(Debug)]
pub struct Launch {
    /// Short name for messages (`etcd`, `kube-apiserver`, …).
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The working directory; relative paths in `args` resolve here.
    pub cwd: PathBuf,
    /// Receives stdout and stderr.
    pub log: PathBuf,
    /// Run inside this network namespace (its `/run/netns` file) instead of the host's.
    pub netns: Option<File>,
    /// Set in its environment, besides what it inherits.
    pub env: Vec<(String, String)>,
    /// Run inside this cgroup (v2 directory) instead of the harness's.
    pub cgroup: Option<PathBuf>,
}

/// A running program; killed and reaped on drop.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    log: PathBuf,
    child: Child,
    /// Dropped before the kill: see [`Daemon::stop`].
    registered: Option<Registration>,
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The thread every child is forked from (see the module header).
fn spawner() -> &'static mpsc::Sender<SpawnJob> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<SpawnJob>();
        // If the thread cannot start, `queue` is dropped and every spawn reports it.
        let _ = std::thread::Builder::new()
            .name("lab-spawner".into())
            .spawn(move || {
                for (mut command, reply) in queue {
                    let _ = reply.send(command.spawn());
                }
            });
        jobs
    })
}

fn spawn(command: Command) -> std::io::Result<Child> {
    let gone = || std::io::Error::other("the lab's spawner thread is gone");
    let (reply, answer) = mpsc::channel();
    spawner().send((command, reply)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

impl Daemon {
    pub fn start(launch: Launch) -> Result<Daemon, ControlPlaneError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ControlPlaneError::Io { what, path, source }
        };
        // Appended to: a program started again (the API server after a
        // restart) continues its log.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(io("open log", &launch.log))?;
        let log_err = log.try_clone().map_err(io("open log", &launch.log))?;
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and only changes the child.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if let Some(file) = launch.netns {
            netns::enter_on_exec(&mut command, file);
        }
        if let Some(cgroup) = &launch.cgroup {
            let procs = cgroup.join("cgroup.procs");
            let file = OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(io("open", &procs))?;
            join_cgroup_on_exec(&mut command, file);
        }
        let (child, registered) =
            spawn_guarded(command).map_err(|source| ControlPlaneError::Spawn {
                program: launch.name,
                source,
            })?;
        Ok(Daemon {
            name: launch.name,
            log: launch.log,
            child,
            registered: Some(registered),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// An error naming this program and what the harness was waiting for,
    /// with the end of its log, if it has exited.
    pub fn check_running(&mut self, during: &str) -> Result<(), ControlPlaneError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited(status, during)),
            Err(source) => Err(ControlPlaneError::Io {
                what: "wait for the program logging to",
                path: self.log.clone(),
                source,
            }),
        }
    }

    fn exited(&self, status: ExitStatus, during: &str) -> ControlPlaneError {
        ControlPlaneError::Exited {
            program: self.name,
            status,
            during: during.to_string(),
            log: self.log.clone(),
            tail: log_tail(&self.log),
        }
    }

    /// SIGSTOP (`stop: true`) or SIGCONT: hold the program where it is, or
    /// let it go on. A held program is still killed on drop.
    pub fn hold(&mut self, stop: bool) -> Result<(), ControlPlaneError> {
        let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        let failed = |source| ControlPlaneError::Io {
            what: if stop {
                "SIGSTOP the program logging to"
            } else {
                "SIGCONT the program logging to"
            },
            path: self.log.clone(),
            source,
        };
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| failed(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        // SAFETY: signalling our own child, not yet reaped (we hold `child`).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Kill and reap (idempotent). The registration goes first: once the pid
    /// is reaped it may be reused, and the signal thread must not kill a
    /// stranger; a signal in between ends the harness, and PR_SET_PDEATHSIG
    /// ends this program with it.
    pub fn stop(&mut self) {
        self.registered = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Make `command`'s child move itself into the cgroup whose `cgroup.procs`
/// is open as `procs`, between fork and exec.
fn join_cgroup_on_exec(command: &mut Command, procs: File) {
    // SAFETY: only the async-signal-safe write syscall runs between fork and
    // exec, on a descriptor the closure owns; "0" names the writing process.
    unsafe {
        command.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), c"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Fork `command` from the spawner thread and register it with the cleanup
/// registry (killed and reaped on SIGINT/SIGTERM); the owner kills and reaps
/// it itself after dropping the registration.
pub(crate) fn spawn_guarded(command: Command) -> std::io::Result<(Child, Registration)> {
    cleanup::guarded(
        || spawn(command),
        |child| {
            let pid = child.id();
            move || kill_and_reap(pid)
        },
    )
}

fn kill_and_reap(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: signalling and reaping our own child by pid.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// The last few KiB of a log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("({} is missing)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
