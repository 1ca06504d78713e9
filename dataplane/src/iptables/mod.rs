//! The `iptables` backend: kube-proxy's iptables layout, rendered as typed
//! rules ([`rule`]) into a [`Plan`] per IP family and applied with
//! `iptables-restore --noflush` / `ip6tables-restore --noflush`, rewriting only
//! the chains that changed since the last sync. See `README.md`.

pub mod escape;
pub mod names;
pub mod plan;
pub mod render;
pub mod restore;
pub mod rule;
pub mod trace;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use switchyard_api::Mode;
use switchyard_api::policy::LinkedRuleset;
use switchyard_api::ruleset::IpFamily;

use self::plan::{AppliedFamily, FamilyPlan};
use self::restore::{Restore, tools};
use super::{ApplyStats, Backend, BackendError, Retirement};
use crate::conntrack::{self, ConntrackTable, UdpSnapshot};
use crate::exec::Runner;
use crate::nat_drain::{DrainState, NatDrain};
use crate::semantics::{ModeSemantics, NodePortScope, UnknownPort};
use crate::settings::Settings;
use crate::sysctl::Sysctl;

pub use self::plan::Plan;

const ROUTE_LOCALNET: &str = "net.ipv4.conf.all.route_localnet";

/// The iptables dataplane.
pub struct IptablesBackend {
    runner: Arc<dyn Runner>,
    sysctl: Arc<dyn Sysctl>,
    conntrack: Arc<dyn ConntrackTable>,
    /// What was last written per family; `None` forces a full sync.
    applied: [Option<AppliedFamily>; 2],
    udp: UdpSnapshot,
    /// route_localnet before we first set it, restored by cleanup.
    localnet_before: Option<String>,
    /// Retired for eBPF: the rules stay while their connections last.
    drain: NatDrain,
}

fn slot(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

impl IptablesBackend {
    pub fn new(runner: Arc<dyn Runner>, sysctl: Arc<dyn Sysctl>) -> IptablesBackend {
        IptablesBackend {
            conntrack: runner.conntrack(),
            runner,
            sysctl,
            applied: [None, None],
            udp: UdpSnapshot::default(),
            localnet_before: None,
            drain: NatDrain::default(),
        }
    }

    fn restore(&self, family: IpFamily) -> Restore<'_> {
        Restore {
            runner: self.runner.as_ref(),
            mode: Mode::Iptables,
            family,
        }
    }

    fn set_route_localnet(&mut self) -> Result<(), BackendError> {
        let io_err = |operation| {
            move |source| BackendError::Io {
                mode: Mode::Iptables,
                operation,
                source,
            }
        };
        let current = self
            .sysctl
            .read(ROUTE_LOCALNET)
            .map_err(io_err("read route_localnet"))?;
        if current != "1" {
            self.localnet_before.get_or_insert(current);
            self.sysctl
                .write(ROUTE_LOCALNET, "1")
                .map_err(io_err("set route_localnet"))?;
        }
        Ok(())
    }

    fn apply_family(&mut self, fp: &FamilyPlan) -> Result<(usize, bool), BackendError> {
        if fp.route_localnet {
            self.set_route_localnet()?;
        }
        let previous = self.applied[slot(fp.family)].as_ref();
        let written = self.restore(fp.family).write(fp, previous)?;
        let full = previous.is_none();
        match &mut self.applied[slot(fp.family)] {
            Some(applied) => applied.update(fp),
            none => *none = Some(fp.applied()),
        }
        Ok((written, full))
    }

    /// Remove our jump rules and chains from one family's tables.
    fn cleanup_family(&self, family: IpFamily) -> Result<(), BackendError> {
        let restore = self.restore(family);
        restore.remove(&restore.found()?)
    }

    /// Put back what this mode changed outside its rules, and forget them.
    fn forget(&mut self) -> Result<(), BackendError> {
        if let Some(before) = self.localnet_before.take() {
            self.sysctl
                .write(ROUTE_LOCALNET, &before)
                .map_err(|source| BackendError::Io {
                    mode: Mode::Iptables,
                    operation: "restore route_localnet",
                    source,
                })?;
        }
        self.applied = [None, None];
        self.udp = UdpSnapshot::default();
        Ok(())
    }
}

impl Backend for IptablesBackend {
    type Plan = Plan;

    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    fn render(&self, ruleset: &LinkedRuleset, settings: &Settings) -> Plan {
        render::render(ruleset, settings)
    }

    fn apply(&mut self, plan: &Plan) -> Result<ApplyStats, BackendError> {
        let mut stats = ApplyStats {
            full: true,
            ..ApplyStats::default()
        };
        for fp in &plan.families {
            let (written, full) = self.apply_family(fp)?;
            stats.objects += fp.rule_count() as u32;
            stats.written += written as u32;
            stats.full &= full;
        }
        let stale = conntrack::stale_entries(&self.udp, &plan.udp);
        conntrack::delete_stale(self.conntrack.as_ref(), &stale).map_err(|e| {
            BackendError::Kernel {
                mode: Mode::Iptables,
                operation: "delete stale UDP conntrack entries",
                message: e.to_string(),
            }
        })?;
        self.udp = plan.udp.clone();
        Ok(stats)
    }

    fn invalidate(&mut self) {
        self.applied = [None, None];
    }

    fn present(&self) -> Result<bool, BackendError> {
        for family in [IpFamily::V4, IpFamily::V6] {
            let (bin, _, _) = tools(family);
            if self
                .runner
                .run(bin, &["-w", "-t", "nat", "-S", names::KUBE_SERVICES], None)
                .is_ok()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        for family in [IpFamily::V4, IpFamily::V6] {
            self.cleanup_family(family)?;
        }
        self.forget()
    }

    /// The IPVS mode's full write has already taken our chains over (they
    /// share names, [`names::is_ours`]): nothing of ours is left to remove.
    /// eBPF leaves our rules' connections to them: they drain ([`NatDrain`]).
    fn retire(&mut self, successor: Mode) -> Result<Retirement, BackendError> {
        if self.drain.start_for(successor) {
            return self.settle();
        }
        match successor {
            Mode::Ipvs => self.forget(),
            _ => self.cleanup(),
        }
        .map(|()| Retirement::Done)
    }

    fn settle(&mut self) -> Result<Retirement, BackendError> {
        match self.drain.settle(self.runner.as_ref(), Mode::Iptables)? {
            DrainState::Draining => Ok(Retirement::Draining),
            DrainState::Ended => self.cleanup().map(|()| Retirement::Done),
            DrainState::Idle => Ok(Retirement::Done),
        }
    }
}

/// What this mode does differently: a port no service uses is not
/// translated; NodePorts are served on every local address by default and,
/// with `localhostNodePorts`, on 127.0.0.1 (through route_localnet).
pub fn semantics(settings: &Settings) -> ModeSemantics {
    ModeSemantics::new(
        settings,
        UnknownPort::NotTranslated,
        NodePortScope::EveryLocalAddress,
        settings.ipv4_localhost_node_ports(),
    )
}
