//! A process's resident memory, from `/proc/PID/status`.

/// Resident memory now (`VmRSS`) and its high-water mark (`VmHWM`), in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

impl Memory {
    /// Process `pid`'s (`"self"` for this one); `None` once it has exited.
    pub fn of(pid: &str) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(Memory {
            rss_kib: status_kib(&status, "VmRSS:")?,
            peak_kib: status_kib(&status, "VmHWM:")?,
        })
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
    use super::{Memory, status_kib};

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let me = Memory::of("self").unwrap();
        assert!(me.rss_kib > 0 && me.peak_kib >= me.rss_kib);
    }
}
