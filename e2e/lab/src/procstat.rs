//! A process's resident memory and CPU time, from `/proc` (the benches' own,
//! or a program they started).

use std::time::Duration;

/// Which process: this one, or one by pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    This,
    Pid(u32),
}

impl Process {
    fn file(self, name: &str) -> Option<String> {
        let path = match self {
            Process::This => format!("/proc/self/{name}"),
            Process::Pid(pid) => format!("/proc/{pid}/{name}"),
        };
        std::fs::read_to_string(path).ok()
    }

    /// A `status` figure in KiB (`VmRSS:`, `VmHWM:`); 0 when unreadable.
    pub fn status_kib(self, field: &str) -> u64 {
        self.file("status")
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// User plus system CPU time so far; zero when unreadable.
    pub fn cpu_time(self) -> Duration {
        // The fields after the command (which may hold spaces) in parentheses:
        // state is the first, utime the 12th, stime the 13th.
        let ticks = self
            .file("stat")
            .and_then(|s| {
                let fields: Vec<u64> = s
                    .rsplit_once(") ")?
                    .1
                    .split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|f| f.parse().ok())
                    .collect();
                Some(fields.iter().sum::<u64>())
            })
            .unwrap_or(0);
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let per_second = u64::try_from(per_second).unwrap_or(100).max(1);
        Duration::from_millis(ticks * 1000 / per_second)
    }
}
