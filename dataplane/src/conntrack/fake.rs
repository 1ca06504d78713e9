//! An in-memory conntrack table for the unit tests (compiled only for them).

use std::sync::{Mutex, MutexGuard, PoisonError};

use switchyard_api::ruleset::IpFamily;

use super::{ConntrackError, ConntrackTable, UdpFlow};

/// Holds flows, answers dumps from them and records which families were dumped.
#[derive(Debug, Default)]
pub struct FakeConntrack {
    flows: Mutex<Vec<UdpFlow>>,
    dumps: Mutex<Vec<IpFamily>>,
    /// Established TCP connections with a translated destination, per family.
    translated_tcp: Mutex<[usize; 2]>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn family_index(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

impl FakeConntrack {
    pub fn with(flows: Vec<UdpFlow>) -> FakeConntrack {
        FakeConntrack {
            flows: Mutex::new(flows),
            ..FakeConntrack::default()
        }
    }

    /// The flows left.
    pub fn flows(&self) -> Vec<UdpFlow> {
        lock(&self.flows).clone()
    }

    /// Set how many translated TCP connections of `family` are open.
    pub fn set_translated_tcp(&self, family: IpFamily, open: usize) {
        lock(&self.translated_tcp)[family_index(family)] = open;
    }

    /// The families dumped, in order.
    pub fn dumps(&self) -> Vec<IpFamily> {
        lock(&self.dumps).clone()
    }
}

impl ConntrackTable for FakeConntrack {
    fn udp_flows(&self, family: IpFamily) -> Result<Vec<UdpFlow>, ConntrackError> {
        lock(&self.dumps).push(family);
        Ok(self
            .flows()
            .into_iter()
            .filter(|f| IpFamily::of(&f.orig_dst.ip()) == family)
            .collect())
    }

    fn translated_tcp_open(&self, family: IpFamily) -> Result<usize, ConntrackError> {
        Ok(lock(&self.translated_tcp)[family_index(family)])
    }

    fn delete(&self, flows: &[UdpFlow]) -> Result<usize, ConntrackError> {
        let mut have = lock(&self.flows);
        let before = have.len();
        have.retain(|f| !flows.contains(f));
        Ok(before - have.len())
    }
}
