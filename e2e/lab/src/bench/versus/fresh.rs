//! The agent's first sync measured as kube-proxy's is: on a node new to the
//! pool while the pool already runs the mode (a network namespace, a Node
//! object and an agent started fresh, with a scratch bpffs and cgroup of its
//! own), so that it programs the whole state into an empty node, as
//! kube-proxy's first sync does; not a mode switch, which builds beside the
//! old mode, verifies and removes the old one. The node has the probed
//! Services' endpoints behind it: its switch verifies through one of them.
//! Everything is removed afterwards (the Node too, so the pool is one node
//! again for the next switch).

use std::time::Duration;

use switchyard_api::Mode;

use super::rig::Rig;
use super::switchyard::{wait_agent, wait_published_and_applied, wait_settled};
use super::{VersusError, measure_error};
use crate::HarnessError;
use crate::bench::echo_pods::EchoPods;
use crate::bench::states::Size;
use crate::cluster::bpf::NodeBpf;
use crate::cluster::layout::Layout;
use crate::cluster::objects::{create_node, delete_node};
use crate::cluster::processes::Agent;
use crate::controlplane::SERVICE_CIDR;
use crate::metrics::Histogram;
use crate::netns::Netns;

/// Layout index of the first fresh node (`node-100`, 192.168.77.110): the
/// cluster's own nodes are below it.
const FIRST: u8 = 100;

/// The mean full sync of a fresh agent (`run` numbers its node) in `mode`,
/// once it has applied `size`.
pub fn first_sync(rig: &Rig, size: Size, mode: Mode, run: usize) -> Result<Duration, VersusError> {
    let offset = u8::try_from(run)
        .ok()
        .filter(|r| *r <= u8::MAX - 10 - FIRST)
        .ok_or_else(|| measure_error("a fresh node", format!("run {run}: no address left")))?;
    let i = FIRST + offset;
    let name = Layout::node_name(i);
    let ns_name = format!("{}f{run}", rig.cluster.netns_prefix());
    let ns = Netns::create(&ns_name).map_err(HarnessError::from)?;
    // Its address on a link (a veth whose peer stays in the namespace: this
    // kernel has no dummy links): the eBPF mode's tc programs attach to the
    // links that hold the node's addresses.
    ns.batch(&[
        "link add lan0 type veth peer name lan1".to_string(),
        format!("addr add {}/24 dev lan0", Layout::node_ip(i)),
        "link set lan1 up".to_string(),
        "link set lan0 up".to_string(),
    ])
    .map_err(HarnessError::from)?;
    let _pods = EchoPods::attach(&ns, &format!("{ns_name}p"), Some(SERVICE_CIDR))?;
    let scratch = NodeBpf::create(&ns_name)?;
    let cp = rig.cluster.control_plane();
    rig.runtime.block_on(create_node(&cp.client(), i))?;
    let measured = (|| {
        let program = &rig.agent_program;
        let agent = Agent::start(cp, &ns, &name, program, Some(scratch.place()));
        let _agent = rig.runtime.block_on(agent)?;
        wait_settled(rig, &name, mode)?;
        wait_published_and_applied(rig, size, &name)?;
        let (full, _) = wait_agent(&ns, "first sync", |(f, _)| f.count > 0)?;
        full.mean_since(&Histogram::default())
            .ok_or_else(|| measure_error("a fresh agent's first sync", "none observed"))
    })();
    let deleted = rig.runtime.block_on(delete_node(&cp.client(), i));
    let measured = measured?;
    deleted?;
    Ok(measured)
}
