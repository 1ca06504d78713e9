//! A process's resident memory and CPU time, from `/proc` (the benches' own,
//! or a program they started).

use std::time::Duration;

/// Resident memory now (`VmRSS`) and its high-water mark (`VmHWM`), in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

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
            .and_then(|s| status_kib(&s, field))
            .unwrap_or(0)
    }

    /// Resident memory now and its high-water mark; `None` once it has exited.
    pub fn memory(self) -> Option<Memory> {
        let status = self.file("status")?;
        Some(Memory {
            rss_kib: status_kib(&status, "VmRSS:")?,
            peak_kib: status_kib(&status, "VmHWM:")?,
        })
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

/// Field `field` (with its colon) of a `/proc/PID/status` text, in KiB.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::{Process, status_kib};

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let me = Process::This.memory().unwrap();
        assert!(me.rss_kib > 0 && me.peak_kib >= me.rss_kib);
    }
}
