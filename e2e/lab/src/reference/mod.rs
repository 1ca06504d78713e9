//! kube-proxy itself as the reference: the real kube-proxy of the pinned
//! release runs in a node namespace of its own, built like the Switchyard
//! node (same addresses, endpoints, clients; see [`crate::topology`]),
//! against the lab's real control plane, and every flow is sent to both.
//!
//! - [`state`]: the scenario's state written through the API server.
//! - [`kube_proxy`]: kube-proxy's flags, its metrics, the wait for a sync.
//! - [`differences`]: the one list of deliberate differences.
//! - [`rules`]: iptables-save of both nodes compared.
//! - [`random`]: random states whose flows kube-proxy judges (`--random`).
//! - [`reproducer`]: a disagreeing flow and its Services as a scenario file.
//! - [`vm`]: the reference in the stock-kernel VM (kube-proxy's ipvs mode
//!   needs the kernel's IPVS, which this host lacks), the control plane
//!   staying on the host.

pub mod differences;
pub mod kube_proxy;
pub mod random;
pub mod reproducer;
pub mod rules;
pub mod state;
pub mod vm;

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_api::Mode;
use switchyard_api::ruleset::Cidr;

use crate::HarnessError;
use crate::controlplane::access::ApiAccess;
use crate::controlplane::forward::Forwarder;
use crate::controlplane::workdir::Purpose;
use crate::controlplane::{ControlPlane, ControlPlaneError};
use crate::netns::Netns;
use crate::scenario::{Scenario, Stage};
use crate::topology::Topology;
use kube_proxy::{Counters, KubeProxy};
use state::ClusterState;
use vm::GuestApi;

/// kube-proxy's name on the API server (bound to `system:node-proxier`).
pub const KUBE_PROXY_USER: &str = "system:kube-proxy";

/// The API server of a run: a control plane of its own, or, in the VM, the
/// host's ([`vm`]).
// One per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
enum ApiServer {
    Local(ControlPlane),
    Host(GuestApi),
}

impl ApiServer {
    fn access(&self) -> &dyn ApiAccess {
        match self {
            ApiServer::Local(cp) => cp,
            ApiServer::Host(api) => api,
        }
    }

    fn kube_proxy(&self) -> PathBuf {
        match self {
            ApiServer::Local(cp) => cp.binaries().path("kube-proxy"),
            ApiServer::Host(api) => api.kube_proxy(),
        }
    }

    fn forward_into(&self, node: &Netns) -> Result<Forwarder, ControlPlaneError> {
        match self {
            ApiServer::Local(cp) => cp.forward_into(node),
            ApiServer::Host(api) => api.forward_into(node),
        }
    }
}

/// The control plane the reference nodes of a run share.
pub struct Reference {
    mode: Mode,
    state: ClusterState,
    kubeconfig: PathBuf,
    api: ApiServer,
    /// Last: the client's connections live on it.
    runtime: tokio::runtime::Runtime,
}

/// What a stage became on the API server, for the Switchyard node.
pub struct StoredState {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub service_cidrs: Vec<Cidr>,
}

impl Reference {
    /// Start the control plane for kube-proxy in `mode` (iptables, nftables,
    /// or ipvs where the kernel has IPVS); in the VM, connect to the host's.
    pub fn start(mode: Mode) -> Result<Reference, HarnessError> {
        let ipvs_here = mode == Mode::Ipvs && !crate::vm::scenario::needs_vm();
        if !matches!(mode, Mode::Iptables | Mode::Nftables) && !ipvs_here {
            return Err(HarnessError::Setup {
                what: format!("a kube-proxy reference in {mode} mode"),
                message: "only iptables, nftables, and ipvs where the kernel has IPVS (the \
                          scenario runner takes ipvs into the VM by itself)"
                    .into(),
            });
        }
        let runtime = tokio::runtime::Runtime::new().map_err(|source| HarnessError::Spawn {
            what: "the control plane's runtime".into(),
            source,
        })?;
        let (api, kubeconfig, state) = runtime.block_on(async {
            let (api, kubeconfig) = match GuestApi::connect().await {
                Some(api) => {
                    let api = api?;
                    let kubeconfig = api.kube_proxy_kubeconfig();
                    (ApiServer::Host(api), kubeconfig)
                }
                None => {
                    let cp = ControlPlane::start(Purpose::Test).await?;
                    let kubeconfig = vm::kube_proxy_kubeconfig(&cp).await?;
                    (ApiServer::Local(cp), kubeconfig)
                }
            };
            let state = ClusterState::new(api.access().client()).await?;
            Ok::<_, ControlPlaneError>((api, kubeconfig, state))
        })?;
        Ok(Reference {
            mode,
            state,
            kubeconfig,
            api,
            runtime,
        })
    }

    /// The kube-proxy node of one scenario file, in `topology` (built like
    /// the Switchyard node's); kube-proxy has synced the empty state.
    pub fn node(
        &mut self,
        scenario: &Scenario,
        topology: Topology,
    ) -> Result<ReferenceNode<'_>, HarnessError> {
        let addresses = &topology.node_addresses;
        let node_ip = addresses
            .first()
            .map(|a| a.ip)
            .ok_or_else(|| HarnessError::Setup {
                what: "the kube-proxy node".into(),
                message: "the scenario's node has no address".into(),
            })?;
        self.runtime
            .block_on(self.state.set_node(&scenario.node, addresses))?;
        let forwarder = self.api.forward_into(&topology.node)?;
        let mut kube_proxy = KubeProxy::start(
            &self.api.kube_proxy(),
            self.api.access().dir(),
            self.mode,
            &scenario.node,
            node_ip,
            &self.kubeconfig,
            &topology.node,
        )?;
        // Both families' first sync (of nothing: the scenario comes later).
        kube_proxy.wait_taken_in(&topology.node, &Counters::default(), Default::default())?;
        Ok(ReferenceNode {
            reference: self,
            topology,
            kube_proxy,
            clear_on_drop: true,
            _forwarder: forwarder,
        })
    }
}

/// kube-proxy running in its node for one scenario file; stopped and the
/// file's objects deleted on drop.
pub struct ReferenceNode<'r> {
    reference: &'r mut Reference,
    pub topology: Topology,
    kube_proxy: KubeProxy,
    /// Delete the file's objects on drop (for the next file).
    clear_on_drop: bool,
    _forwarder: Forwarder,
}

impl ReferenceNode<'_> {
    /// Write `stage` through the API server, wait until kube-proxy has
    /// programmed it, and return it as stored.
    pub fn apply(&mut self, stage: &Stage<'_>) -> Result<StoredState, HarnessError> {
        let before = self.kube_proxy.counters(&self.topology.node)?;
        let reference = &mut *self.reference;
        let stored = reference.runtime.block_on(reference.state.apply(stage))?;
        let ns = &self.topology.node;
        let mut seen = self.kube_proxy.wait_taken_in(ns, &before, stored.changes)?;
        // Twice: the sync that ends the first round may have begun before
        // the stage was all taken in; the one that ends the second began
        // after it (a family's syncs run one at a time).
        for _ in 0..2 {
            let nudge = reference.runtime.block_on(reference.state.nudge())?;
            seen = self.kube_proxy.wait_synced(ns, &seen, nudge)?;
        }
        Ok(StoredState {
            services: stored.services,
            endpoint_slices: stored.endpoint_slices,
            service_cidrs: stored.service_cidrs,
        })
    }
}

impl ReferenceNode<'_> {
    /// Stop kube-proxy (its rules stay, as when its pod is deleted).
    pub fn stop_kube_proxy(&mut self) {
        self.kube_proxy.stop();
    }

    /// The API server kube-proxy talks to (in the VM, the host's).
    pub fn api(&self) -> &dyn ApiAccess {
        self.reference.api.access()
    }

    /// The control plane goes with this node: its objects are not deleted
    /// on drop (the deletion of a ServiceCIDR waits for its addresses to be
    /// released, seconds for nothing).
    pub fn last_node(&mut self) {
        self.clear_on_drop = false;
    }

    /// Run `work` on the control plane's runtime.
    pub fn block_on<F: std::future::Future>(&self, work: F) -> F::Output {
        self.reference.runtime.block_on(work)
    }
}

impl Drop for ReferenceNode<'_> {
    fn drop(&mut self) {
        if !self.clear_on_drop {
            return;
        }
        let reference = &mut *self.reference;
        if let Err(e) = reference.runtime.block_on(reference.state.clear()) {
            eprintln!("kube-proxy reference: removing the scenario's objects: {e}");
        }
    }
}
