//! The agent's side: its figures from its own metrics (the histograms of
//! kube-proxy's names), the wait until the operator has published a state
//! and the agent applied it, and its pool's switch to a mode, made as a user
//! makes it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kube::{Api, ResourceExt};
use switchyard_api::{Mode, ProxyNode, ProxyRuleset};

use super::rig::Rig;
use super::{POLL, VersusError, WAIT, measure_error, sync_deadline};
use crate::bench::states::{NAMESPACE, Size};
use crate::cluster::layout::Layout;
use crate::cluster::wait;
use crate::metrics::{Histogram, fetch};
use crate::netns::Netns;

/// Where the agent serves `/metrics` in its node (its default).
const AGENT_METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10249);

/// The full and partial sync histograms of the agent in node `ns`.
pub fn agent_syncs(ns: &Netns) -> Result<(Histogram, Histogram), VersusError> {
    let text = fetch(ns, AGENT_METRICS, "node agent")?;
    let read = |name: &str| Histogram::read(&text, name, "");
    Ok((
        read("kubeproxy_sync_full_proxy_rules_duration_seconds"),
        read("kubeproxy_sync_partial_proxy_rules_duration_seconds"),
    ))
}

/// Read the histograms of the agent in `ns` until `done` holds.
pub fn wait_agent(
    ns: &Netns,
    what: &str,
    done: impl Fn(&(Histogram, Histogram)) -> bool,
) -> Result<(Histogram, Histogram), VersusError> {
    let began = Instant::now();
    loop {
        // Not serving yet (the first mode's HTTP server): nothing seen.
        let seen = agent_syncs(ns).unwrap_or_default();
        if done(&seen) {
            return Ok(seen);
        }
        if began.elapsed() > WAIT {
            return Err(measure_error(
                format!("the agent's {what}"),
                format!("not within {WAIT:?}"),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Wait until the operator has published `size` (every bench Service with
/// its endpoints) and the agent of `node` has applied those shards.
pub fn wait_published_and_applied(rig: &Rig, size: Size, node: &str) -> Result<(), VersusError> {
    let client = rig.cluster.client();
    // Up to 65,536 shards written one by one: the whole list checked at
    // most twice a second, not after each of them. A layout of that many
    // shards is written in minutes: the size's sync deadline, not `WAIT`.
    let shards = wait::until_every(
        Api::<ProxyRuleset>::all(client.clone()),
        "the operator's shards to hold the state",
        WAIT.max(sync_deadline(size)),
        Duration::from_millis(500),
        |list| {
            let epoch = list.iter().map(|s| s.spec.layout.epoch).max().unwrap_or(0);
            let current = list.iter().filter(|s| s.spec.layout.epoch == epoch);
            let held = current
                .clone()
                .flat_map(|s| &s.spec.ruleset.services)
                .filter(|r| r.namespace == NAMESPACE && r.endpoints.len() == size.endpoints)
                .count();
            if held < size.services {
                return Err(format!("{held} of {size} in epoch {epoch}"));
            }
            let (count, generations) =
                current.fold((0u32, 0u64), |(n, sum), s| (n + 1, sum + s.spec.generation));
            // The whole layout, not only the shards that hold the state: the
            // agent applies a layout once every shard of it is there.
            let layout = list.iter().find(|s| s.spec.layout.epoch == epoch);
            let expected = layout.map_or(0, |s| s.spec.layout.shard_count);
            if count < expected {
                return Err(format!("{count} of {expected} shards of epoch {epoch}"));
            }
            Ok((epoch, count, generations))
        },
    );
    let shards = rig.runtime.block_on(shards)?;
    let applied = wait::until(
        Api::<ProxyNode>::all(client),
        "the agent to apply the shards",
        WAIT.max(sync_deadline(size)),
        |nodes| {
            let status = nodes
                .iter()
                .find(|n| n.name_any() == *node)
                .and_then(|n| n.status.as_ref());
            // Generations only grow within a layout: the node is current when
            // it applied this layout's shards with at least their sum.
            let (epoch, count, generations) = shards;
            let applied = status.map(|s| {
                (
                    s.applied_epoch,
                    s.applied_shard_count,
                    s.applied_generation_sum,
                )
            });
            match applied {
                Some((Some(e), Some(c), Some(g)))
                    if e == epoch && c == count && g >= generations =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "applied (epoch, shards, generation sum) {applied:?}, published {shards:?}"
                )),
            }
        },
    );
    Ok(rig.runtime.block_on(applied)?)
}

/// Wait until the agent of `node` runs `mode` and no switch is under way.
pub fn wait_settled(rig: &Rig, node: &str, mode: Mode) -> Result<(), VersusError> {
    let settled = wait::until(
        Api::<ProxyNode>::all(rig.cluster.client()),
        "the agent to switch",
        WAIT,
        |nodes| {
            let status = nodes.iter().find(|n| n.name_any() == node);
            let status = status.and_then(|n| n.status.as_ref());
            match status.and_then(|s| s.applied_mode) {
                Some(m) if m == mode && status.is_some_and(|s| s.switch.is_none()) => Ok(()),
                other => Err(format!("applied {other:?}")),
            }
        },
    );
    Ok(rig.runtime.block_on(settled)?)
}

/// Move the agent's pool to `mode` as a user would (the first time, apply
/// the ProxyConfig), verified through port 80 of `verification`
/// (`namespace/name`) with a timeout of `deadline` (else the operator rolls
/// a large state's switch back); the mean full sync the switch made.
pub fn switch_agent(
    rig: &mut Rig,
    mode: Mode,
    deadline: Duration,
    verification: &str,
) -> Result<Option<Duration>, VersusError> {
    let ns = rig.node()?;
    let (full, _) = wait_agent(ns, "metrics", |_| true)?;
    if rig.agent_mode == Some(mode) {
        return Ok(None);
    }
    if rig.agent_mode.is_none() {
        drop(rig.cluster.apply_proxy_config(mode, 1)?);
    }
    let secs = deadline.as_secs();
    let patch = serde_json::json!({"spec": {"mode": mode.as_str(), "rollout": {"verification": {
        "service": verification,
        "timeout": format!("{secs}s"),
    }}}});
    drop(rig.cluster.patch_proxy_config(&patch.to_string())?);
    wait_settled(rig, &Layout::node_name(0), mode)?;
    rig.agent_mode = Some(mode);
    let (after, _) = wait_agent(rig.node()?, "full sync", |(f, _)| f.count > full.count)?;
    Ok(after.mean_since(&full))
}

/// The mode the agent's node reports it runs.
pub async fn applied_mode(rig: &Rig) -> Result<Option<Mode>, VersusError> {
    let api = Api::<ProxyNode>::all(rig.cluster.client());
    let node = api
        .get(&Layout::node_name(0))
        .await
        .map_err(|e| measure_error("the agent's ProxyNode", e.to_string()))?;
    Ok(node.status.and_then(|s| s.applied_mode))
}
