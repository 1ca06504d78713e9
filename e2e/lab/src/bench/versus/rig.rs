//! The cluster `versus` runs on: the lab cluster (the operator and one node
//! agent as processes, the agent with a scratch bpffs and cgroup so that its
//! pool may run eBPF), the bench's states, the probed Services with their
//! endpoints behind the agent's node, a prober in that node (in the agent's
//! cgroup) and kube-proxy's identity.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use switchyard_api::Mode;

use super::{VersusError, measure_error};
use crate::bench::echo_pods::EchoPods;
use crate::bench::probed::ProbedServices;
use crate::bench::prober::Prober;
use crate::bench::states::BenchState;
use crate::cluster::layout::{CLUSTER_CIDR, Layout};
use crate::cluster::processes::{Program, Programs};
use crate::cluster::{Cluster, ClusterOptions};
use crate::controlplane::identity::Identity;
use crate::controlplane::workdir::Purpose;
use crate::netns::Netns;
use crate::reference::KUBE_PROXY_USER;
use crate::reference::state::ClusterState;
use crate::scenario::{NodeAddress, NodeSpec};

/// kube-proxy's node: its name, address and the Node object's address.
const KP_NODE: &str = "kube-proxy-node";
pub const KP_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 10);

/// Everything one run measures on. Field order is drop order: the prober
/// (in the agent's cgroup) and the pods go before the cluster, the cluster
/// before the runtime it was made on.
pub struct Rig {
    pub prober: Prober,
    _pods: EchoPods,
    pub cluster: Cluster,
    pub state: BenchState,
    pub probed: ProbedServices,
    pub kp_spec: NodeSpec,
    pub kp_kubeconfig: PathBuf,
    pub agent_mode: Option<Mode>,
    /// The agent as it ships, for fresh nodes.
    pub agent_program: Program,
    pub runtime: tokio::runtime::Runtime,
}

/// The operator and the agent as they ship, built beside this binary.
fn programs() -> Result<Programs, VersusError> {
    let exe =
        std::env::current_exe().map_err(|e| measure_error("this binary's path", e.to_string()))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let program = |name: &str| {
        let path = dir.join(name);
        if path.exists() {
            Ok(Program::new(path))
        } else {
            Err(measure_error(
                format!("{}", path.display()),
                "not built: cargo build --release -p switchyard-operator -p switchyard-agent",
            ))
        }
    };
    Ok(Programs {
        operator: program("switchyard-operator")?,
        agent: program("node-agent")?,
        traffic: Program::new(exe.clone()),
    })
}

fn kp_spec() -> NodeSpec {
    NodeSpec {
        name: KP_NODE.into(),
        addresses: vec![format!("{KP_IP}/24")],
        zone: None,
        // As the pool's ProxyConfig says: the same rules for local traffic.
        cluster_cidrs: CLUSTER_CIDR.parse().into_iter().collect(),
        service_cidrs: vec![],
        node_port_addresses: None,
        localhost_node_ports: None,
        masquerade_all: false,
    }
}

impl Rig {
    /// The agent's node (the cluster's node 0).
    pub fn node(&self) -> Result<&Netns, VersusError> {
        self.cluster
            .node_netns(0)
            .ok_or_else(|| measure_error("the agent's node", "no node 0"))
    }

    pub fn start() -> Result<Rig, VersusError> {
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|e| measure_error("the bench's runtime", e.to_string()))?;
        let layout = Layout {
            nodes: 1,
            services: 1,
        };
        let programs = programs()?;
        let agent_program = programs.agent.clone();
        let mut options = ClusterOptions::new(layout, programs, Purpose::Test);
        options.tag = "vs";
        let kp_spec = kp_spec();
        let (cluster, state, probed, kp_kubeconfig) = runtime.block_on(async {
            let cluster = Cluster::start(options).await?;
            let cp = cluster.control_plane();
            let mut reference = ClusterState::new(cp.client()).await?;
            let address = NodeAddress {
                ip: IpAddr::V4(KP_IP),
                prefix: 24,
            };
            reference.set_node(&kp_spec, &[address]).await?;
            let user = Identity::User {
                name: KUBE_PROXY_USER.into(),
                group: None,
            };
            let kubeconfig = cp.kubeconfig_for(&user).await?;
            let state = BenchState::new(cp.client()).await?;
            let probed = ProbedServices::create(cp.client()).await?;
            Ok::<_, VersusError>((cluster, state, probed, kubeconfig))
        })?;
        let node = cluster
            .node_netns(0)
            .ok_or_else(|| measure_error("the agent's node", "no node 0"))?;
        let pods = EchoPods::attach(node, &format!("{}n0probed", cluster.netns_prefix()), None)?;
        let prober = Prober::start(node, cluster.ebpf_cgroup(0))?;
        Ok(Rig {
            prober,
            _pods: pods,
            cluster,
            state,
            probed,
            kp_spec,
            kp_kubeconfig,
            agent_mode: None,
            agent_program,
            runtime,
        })
    }
}
