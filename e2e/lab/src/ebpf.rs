//! The eBPF mode's hooks: a bpffs and a client cgroup of the runner's own (never
//! the root cgroup), the socket programs attached to that cgroup, the tc
//! programs to the node namespace's interfaces.
//!
//! Which clients join the cgroup: the node itself and this node's pods (their
//! sockets are the node's, as under a real kubelet's cgroup tree). Everybody
//! else (external clients, pods of other nodes) reaches the node over the wire
//! and meets the tc programs.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_api::Mode;
use switchyard_api::ruleset::{Cidr, Protocol};
use switchyard_dataplane::Dataplane;
use switchyard_dataplane::ebpf::EbpfBackend;
use switchyard_dataplane::ebpf::kernel::{AyaKernel, KernelConfig};
use switchyard_dataplane::ebpf::plan::SCTP_UNSUPPORTED;
use switchyard_dataplane::ebpf::scratch::{self, ScratchBpffs, ScratchCgroup};
use switchyard_dataplane::ebpf::tc::TcAttachMode;
use switchyard_dataplane::settings::Settings;

use crate::HarnessError;
use crate::cluster::processes::EbpfPlace;
use crate::hooks::{DataplaneFactory, ModeHooks};
use crate::scenario::{Expected, Flow, Scenario};
use crate::topology::Topology;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Names of this mode's bpffs mounts and cgroups: `sybpf-<pid>-<n>`.
const TAG: &str = "sybpf";

/// The sources whose sockets live on the node.
#[derive(Debug, Default)]
struct NodeSockets {
    addresses: BTreeSet<IpAddr>,
    cluster_cidrs: Vec<Cidr>,
    /// Endpoints named on other nodes: pods, but not this node's.
    remote: BTreeSet<IpAddr>,
}

impl NodeSockets {
    fn of(scenario: &Scenario) -> NodeSockets {
        let mut addresses: BTreeSet<IpAddr> = scenario
            .node
            .parsed_addresses()
            .unwrap_or_default()
            .iter()
            .map(|a| a.ip)
            .collect();
        let mut remote = BTreeSet::new();
        for slice in scenario.all_slices() {
            for ep in &slice.endpoints {
                let ips = ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok());
                match ep.node_name.as_deref() {
                    Some(n) if n == scenario.node.name => addresses.extend(ips),
                    Some(_) => remote.extend(ips),
                    None => {}
                }
            }
        }

        NodeSockets {
            addresses,
            cluster_cidrs: scenario.node.cluster_cidrs.clone(),
            remote,
        }
    }

    /// Whether `flow`'s client socket is one of the node's (or its pods').
    fn owns(&self, flow: &Flow) -> bool {
        let ip = &flow.source_ip;
        flow.from_node
            || ip.is_loopback()
            || self.addresses.contains(ip)
            || (!self.remote.contains(ip) && self.cluster_cidrs.iter().any(|c| c.contains(ip)))
    }
}

/// Why a flow from a loopback source that expects translation is skipped.
pub const LOOPBACK_SOURCE: &str = "a socket bound to a loopback address cannot be connected to \
     an endpoint (EINVAL); eBPF serves localhost NodePorts to unbound sockets, tested in \
     switchyard_dataplane::ebpf::tests::sock_cgroup";

/// Every reason this mode gives for a SKIP.
pub const SKIP_REASONS: [&str; 2] = [SCTP_UNSUPPORTED, LOOPBACK_SOURCE];

/// The eBPF hooks of one scenario.
#[derive(Debug, Default)]
pub struct EbpfHooks {
    bpffs: Option<ScratchBpffs>,
    cgroup: Option<ScratchCgroup>,
    sockets: NodeSockets,
    tc_attach: TcAttachMode,
}

impl EbpfHooks {
    /// Hooks whose tc programs attach with `tc_attach`.
    pub fn new(tc_attach: TcAttachMode) -> EbpfHooks {
        EbpfHooks {
            tc_attach,
            ..EbpfHooks::default()
        }
    }

    /// Where a node agent process (`node-agent run`) pins and attaches: the
    /// same bpffs and client cgroup as the in-process dataplane's, once
    /// [`ModeHooks::prepare_node`] made them.
    pub fn agent_place(&self) -> Option<EbpfPlace> {
        Some(EbpfPlace {
            pin_root: self.pin_root()?,
            cgroup: self.cgroup.as_ref()?.dir().to_path_buf(),
        })
    }

    fn pin_root(&self) -> Option<PathBuf> {
        self.bpffs.as_ref().map(|b| b.dir().join("switchyard"))
    }
}

fn setup(what: &str) -> impl FnOnce(switchyard_dataplane::BackendError) -> HarnessError {
    let what = what.to_string();
    move |e| HarnessError::Setup {
        what,
        message: e.to_string(),
    }
}

impl ModeHooks for EbpfHooks {
    fn mode(&self) -> Mode {
        Mode::Ebpf
    }

    fn prepare_node(
        &mut self,
        _topology: &Topology,
        scenario: &Scenario,
    ) -> Result<(), HarnessError> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        if seq == 0 {
            for path in scratch::sweep_orphans(TAG) {
                eprintln!("removed {} left by a killed run", path.display());
            }
        }
        let tag = format!("{TAG}-{}-{seq}", std::process::id());
        self.bpffs = Some(ScratchBpffs::mount(&format!("{tag}-bpffs")).map_err(setup("bpffs"))?);
        self.cgroup = Some(ScratchCgroup::create(&tag).map_err(setup("client cgroup"))?);
        self.sockets = NodeSockets::of(scenario);
        Ok(())
    }

    /// The tc programs go on the node namespace's links, named explicitly.
    fn adjust_settings(&self, settings: &mut Settings, topology: &Topology) {
        settings.ebpf.host_devices = topology.node_devices();
    }

    fn client_cgroup(&self, flow: &Flow) -> Option<PathBuf> {
        if !self.sockets.owns(flow) {
            return None;
        }
        self.cgroup.as_ref().map(|c| c.dir().to_path_buf())
    }

    fn dataplane(&self) -> DataplaneFactory {
        let config = KernelConfig {
            pin_root: self
                .pin_root()
                .unwrap_or_else(|| PathBuf::from("/nonexistent")),
            cgroup: self.cgroup.as_ref().map(|c| c.dir().to_path_buf()),
            tc_attach: self.tc_attach,
        };
        Box::new(move || {
            let backend: Box<dyn Dataplane> = Box::new(EbpfBackend::new(AyaKernel::new(config)));
            Ok(backend)
        })
    }

    fn unsupported(&self, flow: &Flow) -> Option<String> {
        let translated = !matches!(
            Expected::parse(&flow.output),
            Ok(Expected::Untranslated | Expected::Accept)
        );
        if flow.protocol == Protocol::Sctp && translated {
            return Some(SCTP_UNSUPPORTED.to_string());
        }
        if flow.source_ip.is_loopback() && translated {
            return Some(LOOPBACK_SOURCE.to_string());
        }
        None
    }

    /// Socket-level load balancing connects the node's and its pods' sockets
    /// straight to the endpoint from their own address: never masqueraded
    /// (kube-proxy masquerades node, hairpin and masqueradeAll traffic).
    fn masquerade(&self, flow: &Flow) -> Option<bool> {
        if self.sockets.owns(flow) {
            flow.masq.map(|_| false)
        } else {
            flow.masq
        }
    }

    fn teardown(&mut self) {
        self.cgroup = None;
        self.bpffs = None;
    }
}
