//! An in-memory IPVS table that answers requests as the kernel does, for
//! the unit tests (compiled only for them).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::dummy::DummyInterface;
use super::genl::{IpvsAttr, IpvsCmd, IpvsMessage, family_of};
use super::kernel::{IpvsKernel, KernelError, message};
use super::objects::{DestState, ServiceKey, Timeouts, VirtualServer};
use crate::conntrack::ConntrackTable;
use crate::exec::{ExecError, FakeRunner, Runner};

/// A fake virtual server with its real servers by address and port.
pub type FakeService = (VirtualServer, BTreeMap<(IpAddr, u16), DestState>);

/// The state of a [`FakeIpvs`].
#[derive(Debug, Default)]
pub struct FakeTable {
    pub services: BTreeMap<ServiceKey, FakeService>,
    pub timeouts: Timeouts,
    /// Every command received, in order.
    pub log: Vec<IpvsCmd>,
}

impl FakeTable {
    /// Pretend real server `rs` of `key` has `active` connections.
    pub fn set_active(&mut self, key: &ServiceKey, rs: (IpAddr, u16), active: u32) {
        if let Some(d) = self.services.get_mut(key).and_then(|(_, d)| d.get_mut(&rs)) {
            d.active = active;
        }
    }
}

/// An in-memory IPVS table answering like the kernel (for unit tests); clones
/// share the table, so a test keeps one to look inside.
#[derive(Clone, Debug, Default)]
pub struct FakeIpvs(Arc<Mutex<FakeTable>>);

impl FakeIpvs {
    pub fn table(&self) -> MutexGuard<'_, FakeTable> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn errno(cmd: IpvsCmd, code: i32) -> KernelError {
    KernelError::Request {
        cmd,
        source: std::io::Error::from_raw_os_error(code),
    }
}

impl IpvsKernel for FakeIpvs {
    fn request(&mut self, msg: IpvsMessage, dump: bool) -> Result<Vec<IpvsMessage>, KernelError> {
        self.table().request(msg, dump)
    }
}

impl FakeTable {
    fn request(&mut self, msg: IpvsMessage, _dump: bool) -> Result<Vec<IpvsMessage>, KernelError> {
        let cmd = msg.cmd;
        self.log.push(cmd);
        let service = msg.attrs.iter().find_map(|a| match a {
            IpvsAttr::Service(s) => VirtualServer::from_attrs(s),
            _ => None,
        });
        let dest = DestState::from_message(
            &msg.attrs,
            service
                .as_ref()
                .map(|s| family_of(&s.key.addr))
                .unwrap_or(2),
        );
        let need_service = || service.clone().ok_or_else(|| errno(cmd, libc::EINVAL));
        match cmd {
            IpvsCmd::GetService => Ok(self
                .services
                .values()
                .map(|(vs, _)| message(IpvsCmd::NewService, vec![IpvsAttr::Service(vs.attrs())]))
                .collect()),
            IpvsCmd::NewService => {
                let vs = need_service()?;
                if self.services.contains_key(&vs.key) {
                    return Err(errno(cmd, libc::EEXIST));
                }
                self.services.insert(vs.key, (vs, BTreeMap::new()));
                Ok(vec![])
            }
            IpvsCmd::SetService => {
                let vs = need_service()?;
                let entry = self
                    .services
                    .get_mut(&vs.key)
                    .ok_or_else(|| errno(cmd, libc::ESRCH))?;
                entry.0 = vs;
                Ok(vec![])
            }
            IpvsCmd::DelService => {
                let vs = need_service()?;
                self.services
                    .remove(&vs.key)
                    .map(|_| vec![])
                    .ok_or_else(|| errno(cmd, libc::ESRCH))
            }
            IpvsCmd::GetDest => {
                let vs = need_service()?;
                let (_, dests) = self
                    .services
                    .get(&vs.key)
                    .ok_or_else(|| errno(cmd, libc::ESRCH))?;
                Ok(dests
                    .values()
                    .map(|d| {
                        let mut attrs = d.server.attrs();
                        attrs.push(super::genl::DestAttr::ActiveConns(d.active));
                        attrs.push(super::genl::DestAttr::InactiveConns(d.inactive));
                        message(IpvsCmd::NewDest, vec![IpvsAttr::Dest(attrs)])
                    })
                    .collect())
            }
            IpvsCmd::NewDest | IpvsCmd::SetDest | IpvsCmd::DelDest => {
                let vs = need_service()?;
                let d = dest.ok_or_else(|| errno(cmd, libc::EINVAL))?;
                let (_, dests) = self
                    .services
                    .get_mut(&vs.key)
                    .ok_or_else(|| errno(cmd, libc::ESRCH))?;
                let k = (d.server.addr, d.server.port);
                match (cmd, dests.contains_key(&k)) {
                    (IpvsCmd::NewDest, true) => return Err(errno(cmd, libc::EEXIST)),
                    (IpvsCmd::SetDest | IpvsCmd::DelDest, false) => {
                        return Err(errno(cmd, libc::ENOENT));
                    }
                    (IpvsCmd::DelDest, true) => {
                        dests.remove(&k);
                    }
                    (IpvsCmd::NewDest, false) => {
                        dests.insert(k, d);
                    }
                    _ => {
                        if let Some(existing) = dests.get_mut(&k) {
                            existing.server.weight = d.server.weight;
                        }
                    }
                }
                Ok(vec![])
            }
            IpvsCmd::GetConfig => Ok(vec![message(IpvsCmd::SetConfig, self.timeouts.attrs())]),
            IpvsCmd::SetConfig => {
                let t = Timeouts::from_attrs(&msg.attrs);
                for (new, old) in [
                    (t.tcp, &mut self.timeouts.tcp),
                    (t.tcp_fin, &mut self.timeouts.tcp_fin),
                    (t.udp, &mut self.timeouts.udp),
                ] {
                    if new != 0 {
                        *old = new;
                    }
                }
                Ok(vec![])
            }
            _ => Err(errno(cmd, libc::EOPNOTSUPP)),
        }
    }
}

/// An in-memory `kube-ipvs0` (for unit tests): `None` while it does not
/// exist; clones share it.
#[derive(Clone, Debug, Default)]
pub struct FakeDummy(Arc<Mutex<Option<BTreeSet<IpAddr>>>>);

impl FakeDummy {
    /// Its addresses, `None` while it does not exist.
    pub fn state(&self) -> Option<BTreeSet<IpAddr>> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Option<BTreeSet<IpAddr>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl DummyInterface for FakeDummy {
    fn exists(&self) -> io::Result<bool> {
        Ok(self.lock().is_some())
    }

    fn ensure(&self) -> io::Result<()> {
        self.lock().get_or_insert_with(BTreeSet::new);
        Ok(())
    }

    fn delete(&self) -> io::Result<()> {
        *self.lock() = None;
        Ok(())
    }

    fn addresses(&self) -> io::Result<BTreeSet<IpAddr>> {
        Ok(self.state().unwrap_or_default())
    }

    fn change_addresses(
        &self,
        add: &BTreeSet<IpAddr>,
        remove: &BTreeSet<IpAddr>,
    ) -> io::Result<()> {
        let mut state = self.lock();
        let Some(have) = state.as_mut() else {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        };
        have.extend(add);
        have.retain(|a| !remove.contains(a));
        Ok(())
    }
}

/// A runner that keeps ipsets as `ipset` does (`restore`'s create, add and
/// destroy lines; `list -n`; `save NAME`), so a test sees what a backend
/// finds in the sets it or kube-proxy left; every call is recorded by
/// [`IpsetRunner::calls`].
#[derive(Debug, Default)]
pub struct IpsetRunner {
    pub calls: FakeRunner,
    /// Members by set name.
    sets: Mutex<BTreeMap<String, Vec<String>>>,
}

impl IpsetRunner {
    pub fn set_names(&self) -> Vec<String> {
        self.sets().keys().cloned().collect()
    }

    fn sets(&self) -> MutexGuard<'_, BTreeMap<String, Vec<String>>> {
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn restore(&self, text: &str) {
        let mut sets = self.sets();
        for line in text.lines() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["create", name, ..] => {
                    sets.entry(name.to_string()).or_default();
                }
                ["add", name, member, ..] => {
                    sets.entry(name.to_string())
                        .or_default()
                        .push(member.to_string());
                }
                ["destroy", name] => {
                    sets.remove(name);
                }
                _ => {}
            }
        }
    }
}

impl Runner for IpsetRunner {
    fn conntrack(&self) -> Arc<dyn ConntrackTable> {
        self.calls.conntrack()
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ExecError> {
        let recorded = self.calls.run(program, args, stdin)?;
        if program != "ipset" {
            return Ok(recorded);
        }
        Ok(match args {
            ["list", "-n"] => self.sets().keys().map(|n| format!("{n}\n")).collect(),
            ["save", name] => self
                .sets()
                .get(*name)
                .into_iter()
                .flatten()
                .map(|m| format!("add {name} {m}\n"))
                .collect(),
            ["restore"] => {
                self.restore(&String::from_utf8_lossy(stdin.unwrap_or_default()));
                String::new()
            }
            _ => recorded,
        })
    }
}
