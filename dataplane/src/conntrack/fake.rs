//! An in-memory conntrack table for the unit tests (compiled only for them).

use std::sync::{Mutex, MutexGuard, PoisonError};

use switchyard_api::ruleset::IpFamily;

use super::{ConntrackError, ConntrackTable, UdpFlow};

/// Holds flows, answers dumps from them and records which families were dumped.
#[derive(Debug, Default)]
pub struct FakeConntrack {
    flows: Mutex<Vec<UdpFlow>>,
    dumps: Mutex<Vec<IpFamily>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

    fn delete(&self, flows: &[UdpFlow]) -> Result<usize, ConntrackError> {
        let mut have = lock(&self.flows);
        let before = have.len();
        have.retain(|f| !flows.contains(f));
        Ok(before - have.len())
    }
}
