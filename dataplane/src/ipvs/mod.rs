//! The `ipvs` backend: kube-proxy's IPVS mode.
//!
//! See `README.md` next to this file for the objects it creates. Rendering is
//! pure ([`render`]); [`IpvsBackend::apply`] and [`IpvsBackend::cleanup`] are
//! the only code touching the kernel, through narrow doors: the IPVS table
//! over generic netlink ([`kernel::IpvsKernel`]), `kube-ipvs0` over
//! rtnetlink ([`dummy::DummyInterface`]), the command-line tools and the
//! conntrack table ([`crate::exec::Runner`]) and sysctls
//! ([`crate::sysctl::Sysctl`]). All of them act in one network namespace.

pub mod capture;
pub mod dummy;
#[cfg(test)]
mod dummy_tests;
#[cfg(test)]
mod fake;
pub mod genl;
pub mod host;
pub mod ipset;
pub mod kernel;
pub mod objects;
pub mod plan;
pub mod render;
pub mod rules;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_api::ruleset::{IpFamily, Protocol};

use crate::conntrack::{self, ConntrackTable, UdpSnapshot};
use crate::escape::NameError;
use crate::exec::{ExecError, Runner};
use crate::iptables::plan::FamilyPlan;
use crate::iptables::restore::Restore;
use crate::semantics::{ModeSemantics, NodePortScope, UnknownPort};
use crate::settings::Settings;
use crate::sysctl::{ProcSysctl, Sysctl};
use crate::{ApplyStats, Backend, BackendError, Retirement};
use dummy::{DummyInterface, RtnlDummy};
use host::Host;
use kernel::{Ipvs, IpvsKernel, KernelError};
use objects::{RealServer, ServiceKey, VirtualServer};
use plan::{IpvsPlan, PlannedService};

pub use plan::DUMMY_INTERFACE;

/// How long a retired IPVS mode keeps its virtual servers and `kube-ipvs0`
/// addresses for the TCP connections established through it (their packets
/// keep their conntrack entries, so the next mode's DNAT never sees them and
/// IPVS goes on serving them at LOCAL_IN) when they do not end before.
pub const RETIRE_GRACE: Duration = Duration::from_secs(120);

/// The IPVS dataplane of one network namespace.
pub struct IpvsBackend {
    kernel: Box<dyn IpvsKernel>,
    dummy: Box<dyn DummyInterface>,
    runner: Arc<dyn Runner>,
    sysctl: Box<dyn Sysctl>,
    conntrack: Arc<dyn ConntrackTable>,
    /// The plan last applied in full; `None` forces a full sync.
    applied: Option<IpvsPlan>,
    /// Services with real servers left at weight 0 until their connections end.
    draining: BTreeSet<ServiceKey>,
    /// UDP service ports as last applied (stale conntrack entries are diffed against it).
    udp: UdpSnapshot,
    /// Retired, draining until then ([`RETIRE_GRACE`]).
    retiring_until: Option<Instant>,
    /// Retired for eBPF: our rules and ipsets drain with the virtual servers.
    rules_kept: bool,
}

fn kernel_err(operation: &'static str) -> impl FnOnce(KernelError) -> BackendError {
    move |e| BackendError::Kernel {
        mode: Mode::Ipvs,
        operation,
        message: e.to_string(),
    }
}

fn exec_err(operation: &'static str) -> impl FnOnce(ExecError) -> BackendError {
    move |source| BackendError::Exec {
        mode: Mode::Ipvs,
        operation,
        source,
    }
}

fn io_err(operation: &'static str) -> impl FnOnce(std::io::Error) -> BackendError {
    move |source| BackendError::Io {
        mode: Mode::Ipvs,
        operation,
        source,
    }
}

fn name_err(operation: &'static str) -> impl FnOnce(NameError) -> BackendError {
    move |source| BackendError::Name {
        mode: Mode::Ipvs,
        operation,
        source,
    }
}

impl IpvsBackend {
    pub fn new(
        kernel: Box<dyn IpvsKernel>,
        dummy: Box<dyn DummyInterface>,
        runner: Arc<dyn Runner>,
        sysctl: Box<dyn Sysctl>,
    ) -> IpvsBackend {
        IpvsBackend {
            kernel,
            dummy,
            conntrack: runner.conntrack(),
            runner,
            sysctl,
            applied: None,
            draining: BTreeSet::new(),
            udp: UdpSnapshot::default(),
            retiring_until: None,
            rules_kept: false,
        }
    }

    /// The real backend of the calling thread's network namespace.
    pub fn open(runner: Arc<dyn Runner>) -> Result<IpvsBackend, BackendError> {
        let kernel = kernel::NetlinkIpvs::open().map_err(|e| BackendError::Unavailable {
            mode: Mode::Ipvs,
            reason: e.to_string(),
        })?;
        let dummy = RtnlDummy::open().map_err(io_err("open rtnetlink"))?;
        Ok(IpvsBackend::new(
            Box::new(kernel),
            Box::new(dummy),
            runner,
            Box::new(ProcSysctl),
        ))
    }

    /// Services with real servers still draining (weight 0, connections open).
    pub fn draining(&self) -> &BTreeSet<ServiceKey> {
        &self.draining
    }

    fn host(&self) -> Host<'_> {
        Host {
            runner: self.runner.as_ref(),
        }
    }

    /// Write one family's iptables rules with the iptables mode's writer:
    /// the chains that changed since the last apply, all of them (and the
    /// missing jumps) when this family's rules were not applied before.
    fn sync_rules(&self, rules: &FamilyPlan) -> Result<usize, BackendError> {
        let previous = self
            .applied
            .iter()
            .flat_map(|a| &a.rules)
            .find(|r| r.family == rules.family);
        if previous == Some(rules) {
            return Ok(0);
        }
        let restore = Restore {
            runner: self.runner.as_ref(),
            mode: Mode::Ipvs,
            family: rules.family,
        };
        restore.write(rules, previous.map(FamilyPlan::applied).as_ref())
    }

    /// Virtual servers that are ours: on an address of `kube-ipvs0`, or a
    /// NodePort recorded in our node-port ipsets, or in the last applied plan.
    fn owned(&mut self, vs: &[VirtualServer]) -> Result<Vec<ServiceKey>, BackendError> {
        let host = Host {
            runner: self.runner.as_ref(),
        };
        let addrs = self
            .dummy
            .addresses()
            .map_err(io_err("list kube-ipvs0 addresses"))?;
        let node_ports = owned_node_ports(&host).map_err(exec_err("read node-port ipsets"))?;
        let applied: BTreeSet<ServiceKey> = self
            .applied
            .iter()
            .flat_map(|p| p.services.keys().copied())
            .collect();
        Ok(vs
            .iter()
            .map(|v| v.key)
            .filter(|k| {
                addrs.contains(&k.addr)
                    || applied.contains(k)
                    || node_ports.contains(&NodePortKey::of(k))
                    || node_ports.contains(&NodePortKey::any_addr(k))
            })
            .collect())
    }

    /// Remove our chains and the jumps to them, in both families.
    fn remove_rules(&self) -> Result<(), BackendError> {
        for family in [IpFamily::V4, IpFamily::V6] {
            let restore = Restore {
                runner: self.runner.as_ref(),
                mode: Mode::Ipvs,
                family,
            };
            restore.remove(&restore.found()?)?;
        }
        Ok(())
    }

    /// Destroy our ipsets (no rule may match them any more).
    fn destroy_sets(&self) -> Result<(), BackendError> {
        let host = self.host();
        let existing = host.ipset_names().map_err(exec_err("list ipsets"))?;
        let ours = render::all_set_names();
        let text = ipset::destroy_text(
            ours.iter()
                .filter(|n| existing.contains(*n))
                .map(String::as_str),
        )
        .map_err(name_err("destroy ipsets"))?;
        host.ipset_restore(&text)
            .map_err(exec_err("destroy ipsets"))
    }

    /// Remove our virtual servers and `kube-ipvs0`, and forget them.
    fn remove_servers(&mut self) -> Result<(), BackendError> {
        let services = Ipvs(self.kernel.as_mut())
            .services()
            .map_err(kernel_err("list virtual servers"))?;
        let owned = self.owned(&services)?;
        let mut ipvs = Ipvs(self.kernel.as_mut());
        for key in owned {
            ipvs.delete_service(&key)
                .map_err(kernel_err("delete virtual server"))?;
        }
        self.dummy.delete().map_err(io_err("delete kube-ipvs0"))?;
        self.applied = None;
        self.draining.clear();
        self.udp = UdpSnapshot::default();
        self.retiring_until = None;
        Ok(())
    }

    /// Established TCP connections through our virtual servers.
    fn open_connections(&mut self) -> Result<u32, BackendError> {
        let services = Ipvs(self.kernel.as_mut())
            .services()
            .map_err(kernel_err("list virtual servers"))?;
        let owned = self.owned(&services)?;
        let mut ipvs = Ipvs(self.kernel.as_mut());
        let mut open = 0;
        for key in owned.iter().filter(|k| k.protocol == Protocol::Tcp) {
            let dests = ipvs.dests(key).map_err(kernel_err("list real servers"))?;
            open += dests.iter().map(|d| d.active).sum::<u32>();
        }
        Ok(open)
    }

    fn sync_virtual_servers(
        &mut self,
        plan: &IpvsPlan,
        written: &mut u32,
    ) -> Result<(), BackendError> {
        let mut ipvs = Ipvs(self.kernel.as_mut());
        let current: BTreeMap<ServiceKey, VirtualServer> = ipvs
            .services()
            .map_err(kernel_err("list virtual servers"))?
            .into_iter()
            .map(|v| (v.key, v))
            .collect();
        let mut draining = BTreeSet::new();
        for (key, planned) in &plan.services {
            let unchanged = self.applied.as_ref().and_then(|a| a.services.get(key))
                == Some(planned)
                && current.get(key) == Some(&planned.server)
                && !self.draining.contains(key);
            if unchanged {
                continue;
            }
            match current.get(key) {
                None => {
                    ipvs.add_service(&planned.server)
                        .map_err(kernel_err("add virtual server"))?;
                    *written += 1;
                }
                Some(existing) if *existing != planned.server => {
                    ipvs.update_service(&planned.server)
                        .map_err(kernel_err("update virtual server"))?;
                    *written += 1;
                }
                Some(_) => {}
            }
            if sync_real_servers(&mut ipvs, key, planned, written)? {
                draining.insert(*key);
            }
        }
        self.draining = draining;
        let current_list: Vec<VirtualServer> = current.into_values().collect();
        let stale: Vec<ServiceKey> = self
            .owned(&current_list)?
            .into_iter()
            .filter(|k| !plan.services.contains_key(k))
            .collect();
        let mut ipvs = Ipvs(self.kernel.as_mut());
        for key in stale {
            ipvs.delete_service(&key)
                .map_err(kernel_err("delete virtual server"))?;
            *written += 1;
        }
        Ok(())
    }
}

/// Make `key`'s real servers the planned ones. A leaving real server with
/// open connections is quiesced (weight 0) rather than deleted: returns
/// whether one is left draining.
fn sync_real_servers(
    ipvs: &mut Ipvs<'_>,
    key: &ServiceKey,
    planned: &PlannedService,
    written: &mut u32,
) -> Result<bool, BackendError> {
    let dests = ipvs.dests(key).map_err(kernel_err("list real servers"))?;
    let have: BTreeMap<(IpAddr, u16), _> = dests
        .iter()
        .map(|d| ((d.server.addr, d.server.port), d))
        .collect();
    for rs in &planned.real_servers {
        match have.get(&(rs.addr, rs.port)) {
            None => {
                ipvs.add_dest(key, rs)
                    .map_err(kernel_err("add real server"))?;
                *written += 1;
            }
            Some(d) if d.server.weight != rs.weight => {
                ipvs.update_dest(key, rs)
                    .map_err(kernel_err("update real server"))?;
                *written += 1;
            }
            Some(_) => {}
        }
    }
    let mut draining = false;
    for d in &dests {
        if planned
            .real_servers
            .iter()
            .any(|rs| rs.addr == d.server.addr && rs.port == d.server.port)
        {
            continue;
        }
        // Graceful removal: no new connections (weight 0) until the
        // established ones end; UDP has no end, so it goes at once.
        if d.active == 0 || key.protocol == Protocol::Udp {
            ipvs.delete_dest(key, &d.server)
                .map_err(kernel_err("delete real server"))?;
        } else {
            if d.server.weight != 0 {
                ipvs.update_dest(
                    key,
                    &RealServer {
                        weight: 0,
                        ..d.server
                    },
                )
                .map_err(kernel_err("quiesce real server"))?;
            }
            draining = true;
        }
        *written += 1;
    }
    Ok(draining)
}

/// A NodePort as our ipsets record it: `bitmap:port` sets have no address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct NodePortKey {
    protocol: Protocol,
    addr: Option<IpAddr>,
    port: u16,
}

impl NodePortKey {
    fn of(k: &ServiceKey) -> NodePortKey {
        NodePortKey {
            protocol: k.protocol,
            addr: Some(k.addr),
            port: k.port,
        }
    }

    fn any_addr(k: &ServiceKey) -> NodePortKey {
        NodePortKey {
            addr: None,
            ..NodePortKey::of(k)
        }
    }
}

fn owned_node_ports(host: &Host<'_>) -> Result<BTreeSet<NodePortKey>, ExecError> {
    let existing = host.ipset_names()?;
    let mut out = BTreeSet::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for (base, protocol) in [
            ("KUBE-NODE-PORT-TCP", Protocol::Tcp),
            ("KUBE-NODE-PORT-UDP", Protocol::Udp),
            ("KUBE-NODE-PORT-SCTP-HASH", Protocol::Sctp),
        ] {
            let name = render::set_name(base, family);
            if !existing.contains(&name) {
                continue;
            }
            for member in host.ipset_members(&name)? {
                // `30080` for bitmap:port, `192.0.2.1,sctp:30080` for hash:ip,port.
                let key = match member.split_once(',') {
                    None => member.parse().ok().map(|port| NodePortKey {
                        protocol,
                        addr: None,
                        port,
                    }),
                    Some((ip, rest)) => {
                        let port = rest.rsplit(':').next().and_then(|p| p.parse().ok());
                        match (ip.parse().ok(), port) {
                            (Some(addr), Some(port)) => Some(NodePortKey {
                                protocol,
                                addr: Some(addr),
                                port,
                            }),
                            _ => None,
                        }
                    }
                };
                out.extend(key);
            }
        }
    }
    Ok(out)
}

impl Backend for IpvsBackend {
    type Plan = IpvsPlan;

    fn mode(&self) -> Mode {
        Mode::Ipvs
    }

    fn render(&self, ruleset: &LinkedRuleset, settings: &Settings) -> IpvsPlan {
        render::render(ruleset, settings)
    }

    fn apply(&mut self, plan: &IpvsPlan) -> Result<ApplyStats, BackendError> {
        let full = self.applied.is_none();
        let mut written = 0;
        for (key, value) in host::sysctls(plan.strict_arp) {
            self.sysctl
                .write(key, value)
                .map_err(|source| BackendError::Io {
                    mode: Mode::Ipvs,
                    operation: "set sysctl",
                    source,
                })?;
        }
        if !plan.timeouts.is_unset() {
            Ipvs(self.kernel.as_mut())
                .set_timeouts(&plan.timeouts)
                .map_err(kernel_err("set connection timeouts"))?;
        }
        self.dummy.ensure().map_err(io_err("create kube-ipvs0"))?;
        let have = self
            .dummy
            .addresses()
            .map_err(io_err("list kube-ipvs0 addresses"))?;
        let add: BTreeSet<IpAddr> = plan.addresses.difference(&have).copied().collect();
        self.dummy
            .change_addresses(&add, &BTreeSet::new())
            .map_err(io_err("add kube-ipvs0 addresses"))?;
        let host = self.host();
        written += add.len() as u32;
        let sets_changed = self
            .applied
            .as_ref()
            .is_none_or(|a| a.ipsets != plan.ipsets);
        if sets_changed {
            let text = ipset::restore_text(&plan.ipsets).map_err(name_err("sync ipsets"))?;
            host.ipset_restore(&text).map_err(exec_err("sync ipsets"))?;
            written += plan
                .ipsets
                .iter()
                .map(|s| s.entries.len() as u32)
                .sum::<u32>();
        }
        // Virtual servers before the rules: a full write of the rules takes
        // over the iptables mode's chains (same names) in one transaction,
        // and from then on IPVS must serve the service addresses.
        self.sync_virtual_servers(plan, &mut written)?;
        for rules in &plan.rules {
            written += self.sync_rules(rules)? as u32;
        }
        // UDP has no teardown: entries made while a VIP had no virtual server
        // or to an endpoint that left would keep a client's flow stuck.
        let stale = conntrack::stale_entries(&self.udp, &plan.udp);
        conntrack::delete_stale(self.conntrack.as_ref(), &stale).map_err(|e| {
            BackendError::Kernel {
                mode: Mode::Ipvs,
                operation: "delete stale UDP conntrack entries",
                message: e.to_string(),
            }
        })?;
        self.udp = plan.udp.clone();
        let stale: BTreeSet<IpAddr> = have.difference(&plan.addresses).copied().collect();
        self.dummy
            .change_addresses(&BTreeSet::new(), &stale)
            .map_err(io_err("remove kube-ipvs0 addresses"))?;
        written += stale.len() as u32;
        self.applied = Some(plan.clone());
        Ok(ApplyStats {
            objects: plan.object_count(),
            written,
            full,
        })
    }

    fn invalidate(&mut self) {
        self.applied = None;
    }

    fn present(&self) -> Result<bool, BackendError> {
        if self.dummy.exists().map_err(io_err("look for kube-ipvs0"))? {
            return Ok(true);
        }
        let host = self.host();
        let sets = host.ipset_names().map_err(exec_err("list ipsets"))?;
        let ours = render::all_set_names();
        Ok(sets.iter().any(|s| ours.contains(s)) || host.has_rules(IpFamily::V4))
    }

    /// Rules first (they match the sets), then the virtual servers, then
    /// the sets: the node-port ipsets are what tells a NodePort server on a
    /// node address ours (kube-proxy's, when a fresh agent adopts its layout).
    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.remove_rules()?;
        self.remove_servers()?;
        self.destroy_sets()
    }

    /// Our rules go at once (the iptables mode's full write has already
    /// taken them over); the virtual servers, `kube-ipvs0` and the ipsets
    /// (unmatched from now on, but the node-port ones name our NodePort
    /// servers) stay while TCP connections established through them last,
    /// up to [`RETIRE_GRACE`]. eBPF translates new flows before netfilter
    /// sees them, so our rules stay for the drain too: the NAT of their
    /// connections' conntrack entries (masquerade) needs them hooked.
    fn retire(&mut self, successor: Mode) -> Result<Retirement, BackendError> {
        self.rules_kept = successor == Mode::Ebpf;
        if !self.rules_kept && successor != Mode::Iptables {
            self.remove_rules()?;
        }
        self.retiring_until = Some(Instant::now() + RETIRE_GRACE);
        self.settle()
    }

    fn settle(&mut self) -> Result<Retirement, BackendError> {
        let Some(until) = self.retiring_until else {
            return Ok(Retirement::Done);
        };
        if Instant::now() < until && self.open_connections()? > 0 {
            return Ok(Retirement::Draining);
        }
        if std::mem::take(&mut self.rules_kept) {
            self.cleanup()?;
        } else {
            self.remove_servers()?;
            self.destroy_sets()?;
        }
        Ok(Retirement::Done)
    }
}

/// What this mode does differently: service addresses are the node's own on
/// `kube-ipvs0`, so a new connection to a port no service uses is rejected
/// (KUBE-IPVS-FILTER); NodePorts are served on every local address by
/// default, never on 127.0.0.1.
pub fn semantics(settings: &Settings) -> ModeSemantics {
    ModeSemantics::new(
        settings,
        UnknownPort::Rejected,
        NodePortScope::EveryLocalAddress,
        false,
    )
}
