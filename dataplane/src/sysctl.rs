//! The sysctl touchpoint of every mode (iptables' `route_localnet`, the IPVS
//! mode's conntrack and ARP settings), behind one trait with a fake for unit
//! tests. Reads and writes go to `/proc/sys` of the calling thread's network
//! namespace.

use std::io;

/// Reads and writes `net.*` sysctls by dotted name.
pub trait Sysctl: Send + Sync {
    fn read(&self, key: &str) -> io::Result<String>;
    fn write(&self, key: &str, value: &str) -> io::Result<()>;
}

/// The real `/proc/sys`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSysctl;

fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

impl Sysctl for ProcSysctl {
    fn read(&self, key: &str) -> io::Result<String> {
        Ok(std::fs::read_to_string(path(key))?.trim().to_string())
    }

    fn write(&self, key: &str, value: &str) -> io::Result<()> {
        std::fs::write(path(key), value)
    }
}

#[cfg(test)]
pub use fake::FakeSysctl;

#[cfg(test)]
mod fake {
    use std::collections::BTreeMap;
    use std::io;
    use std::sync::Mutex;

    use super::Sysctl;

    /// In-memory sysctls; unknown keys read as "0".
    #[derive(Debug, Default)]
    pub struct FakeSysctl {
        values: Mutex<BTreeMap<String, String>>,
    }

    impl FakeSysctl {
        pub fn get(&self, key: &str) -> Option<String> {
            self.lock().get(key).cloned()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
            self.values
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl Sysctl for FakeSysctl {
        fn read(&self, key: &str) -> io::Result<String> {
            Ok(self.get(key).unwrap_or_else(|| "0".to_string()))
        }

        fn write(&self, key: &str, value: &str) -> io::Result<()> {
            self.lock().insert(key.to_string(), value.to_string());
            Ok(())
        }
    }
}
