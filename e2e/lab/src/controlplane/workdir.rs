//! Every file of one control plane lives in one directory,
//! `$TMPDIR/switchyard-<purpose>-<pid>-<n>`, which is also every one of its
//! programs' working directory. So "nothing left behind" is checkable: no
//! such directory, and no process working in it. The directory is removed on
//! drop and by the signal handler; one whose owner died without either (it
//! was SIGKILLed; its programs died with it by PR_SET_PDEATHSIG) is found by
//! [`remove_orphans`] (at every start) and [`sweep`] (`lab down`) from the
//! owner's pid in its name and start time recorded in it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::ControlPlaneError;
use crate::cleanup::{self, Registration};

const PREFIX: &str = "switchyard-";
/// Holds `<pid> <start time>` of the process that made the directory.
const OWNER_FILE: &str = "owner";

/// What a control plane is for; tells `lab down` which directories are its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Test,
    /// `switchyard lab up`.
    Lab,
    /// `switchyard demo`.
    Demo,
}

impl Purpose {
    fn tag(self) -> &'static str {
        match self {
            Purpose::Test => "test",
            Purpose::Lab => "lab",
            Purpose::Demo => "demo",
        }
    }
}

/// The directory of one control plane; removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    _registered: Registration,
}

impl WorkDir {
    pub fn create(purpose: Purpose) -> Result<WorkDir, ControlPlaneError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{PREFIX}{}-{pid}-{n}", purpose.tag()));
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| ControlPlaneError::Io { what, path, source }
        };
        let ((), registered) = cleanup::guarded(
            || std::fs::create_dir(&path).map_err(io("create", &path)),
            |()| {
                let path = path.clone();
                move || {
                    let _ = std::fs::remove_dir_all(&path);
                }
            },
        )?;
        let dir = WorkDir {
            path,
            _registered: registered,
        };
        let owner = format!("{pid} {}\n", start_time(pid).unwrap_or_default());
        let owner_file = dir.path.join(OWNER_FILE);
        std::fs::write(&owner_file, owner).map_err(io("write", &owner_file))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Best effort: `left_behind` reports what remains.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A process's start time (clock ticks since boot): with the pid, it names
/// one process for good, where a pid alone may have been reused.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; fields after the command name (which may hold spaces) start at 3.
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Processes whose working directory is `dir` (or was, before it was removed).
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| within(&cwd, dir))
        })
        .collect()
}

/// `cwd` is `dir` or below it; a removed directory reads as "<path> (deleted)".
fn within(cwd: &Path, dir: &Path) -> bool {
    let deleted = format!("{} (deleted)", dir.display());
    cwd.starts_with(dir) || cwd.to_string_lossy().starts_with(&deleted)
}

/// What a stopped control plane left behind: its directory, processes
/// working in it. Empty when the teardown was complete.
pub fn left_behind(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = processes_in(dir)
        .into_iter()
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("process {pid} ({})", comm.trim())
        })
        .collect();
    if dir.exists() {
        found.push(format!("directory {}", dir.display()));
    }
    found
}

/// Remove every control plane of `purpose` on this machine but this
/// process's own: a live owner is asked to stop (SIGTERM; it then cleans up
/// itself) and waited for, up to `patience`; what a dead owner left is
/// removed here, any process still working in it killed first. Returns the
/// directories handled.
pub fn sweep(purpose: Purpose, patience: Duration) -> Vec<PathBuf> {
    clear(purpose, Some(patience))
}

/// Remove what owners that died without cleaning up (SIGKILL) left.
pub fn remove_orphans(purpose: Purpose) -> Vec<PathBuf> {
    clear(purpose, None)
}

fn clear(purpose: Purpose, stop_live: Option<Duration>) -> Vec<PathBuf> {
    let prefix = format!("{PREFIX}{}-", purpose.tag());
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    let mut cleared = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let dir = entry.path();
        match (owner(rest, &dir), stop_live) {
            (Owner::Me, _) | (Owner::Alive(_), None) => continue,
            (Owner::Alive(pid), Some(patience)) => {
                signal(pid, libc::SIGTERM);
                let deadline = Instant::now() + patience;
                while dir.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            (Owner::Gone, _) => {}
        }
        for pid in processes_in(&dir) {
            signal(pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&dir);
        cleared.push(dir);
    }
    cleared
}

enum Owner {
    Me,
    Alive(u32),
    Gone,
}

/// Who made a directory named `…-<pid>-<n>` (`name` is the `<pid>-<n>` part).
/// Without the owner file (being made, or damaged) a running pid counts as
/// alive: never remove what may be in use.
fn owner(name: &str, dir: &Path) -> Owner {
    let Some(pid) = name
        .split_once('-')
        .and_then(|(pid, _)| pid.parse::<u32>().ok())
    else {
        return Owner::Gone;
    };
    if pid == std::process::id() {
        return Owner::Me;
    }
    let recorded = std::fs::read_to_string(dir.join(OWNER_FILE))
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok());
    let alive = match recorded {
        Some(started) => start_time(pid) == Some(started),
        None => Path::new(&format!("/proc/{pid}")).exists(),
    };
    if alive {
        Owner::Alive(pid)
    } else {
        Owner::Gone
    }
}

/// Signal one process (never a group: pids that do not fit are skipped).
fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) on one positive pid: the directory's recorded owner
        // or a process working in one of our directories.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}
