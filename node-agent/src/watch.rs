//! The agent's watches: its own Node and ProxyNode (by name), every ProxyConfig
//! (it needs the one its ProxyNode names as pool, which can change), and the
//! ProxyRuleset shards, each a kube-runtime watcher feeding a reflector store.
//!
//! The stores swap in a new list only when it is complete (`InitDone`), so a
//! re-list never shows a partial view; an unreachable API server leaves them
//! holding the last state, and the agent keeps the last applied rules.

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_api::{ProxyConfig, ProxyNode, ProxyRuleset};

use crate::inputs::Inputs;

/// Which watch an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Node,
    ProxyNode,
    ProxyConfig,
    ProxyRuleset,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Node => "Node",
            Source::ProxyNode => "ProxyNode",
            Source::ProxyConfig => "ProxyConfig",
            Source::ProxyRuleset => "ProxyRuleset",
        })
    }
}

/// Something happened on a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The store may have changed.
    Changed(Source),
    /// The watch failed (it retries with backoff).
    Failed { source: Source, error: String },
}

/// The reflector stores.
#[derive(Clone)]
pub struct Watches {
    /// Per watch: its initial list has completed.
    listed: Arc<[AtomicBool; 4]>,
    node: Store<Node>,
    proxy_node: Store<ProxyNode>,
    configs: Store<ProxyConfig>,
    shards: Store<ProxyRuleset>,
}

impl Watches {
    /// The current inputs of a sync.
    pub fn inputs(&self) -> Inputs {
        let proxy_node = self.proxy_node.state().into_iter().next();
        let config = proxy_node
            .as_ref()
            .and_then(|p| p.spec.pool.as_deref())
            .and_then(|pool| self.configs.get(&ObjectRef::new(pool)));
        Inputs {
            listed: self.listed.iter().all(|l| l.load(Ordering::Acquire)),
            node: self.node.state().into_iter().next(),
            proxy_node,
            config,
            shards: self.shards.state(),
        }
    }
}

/// What of an object the agent acts on, as a hash: an update that leaves it
/// alone (the agent's own status write coming back, a Node's heartbeat, the
/// operator's rollout status) is no change. Each one made a sync pass, and
/// the pass held the next real change back by the minimum sync period.
type Fingerprint<K> = fn(&K) -> u64;

fn hash_of(value: &impl Serialize) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_vec(value)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// A Node: its labels (topology zone), spec and addresses.
fn node_fingerprint(node: &Node) -> u64 {
    let addresses = node.status.as_ref().map(|s| &s.addresses);
    hash_of(&(&node.metadata.labels, &node.spec, addresses))
}

/// A ProxyNode: its spec (target mode, pool); its status is the agent's own.
fn proxy_node_fingerprint(proxy_node: &ProxyNode) -> u64 {
    hash_of(&proxy_node.spec)
}

/// A ProxyConfig: its spec; its status is the operator's rollout.
fn proxy_config_fingerprint(config: &ProxyConfig) -> u64 {
    hash_of(&config.spec)
}

/// A shard: every new version.
fn version_fingerprint<K: Resource>(object: &K) -> u64 {
    hash_of(&object.meta().resource_version)
}

/// The fingerprint each object of a watch had when last seen.
struct Seen<K> {
    fingerprint: Fingerprint<K>,
    last: HashMap<(Option<String>, Option<String>), u64>,
}

impl<K: Resource> Seen<K> {
    fn new(fingerprint: Fingerprint<K>) -> Seen<K> {
        Seen {
            fingerprint,
            last: HashMap::new(),
        }
    }

    /// Whether `event` may change what the agent does.
    fn changed(&mut self, event: &watcher::Event<K>) -> bool {
        let key = |o: &K| (o.meta().namespace.clone(), o.meta().name.clone());
        match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                let print = (self.fingerprint)(o);
                self.last.insert(key(o), print) != Some(print)
                    || matches!(event, watcher::Event::InitApply(_))
            }
            watcher::Event::Delete(o) => {
                self.last.remove(&key(o));
                true
            }
            watcher::Event::Init | watcher::Event::InitDone => true,
        }
    }
}

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    source: Source,
    fingerprint: Fingerprint<K>,
    listed: Arc<[AtomicBool; 4]>,
) -> (Store<K>, BoxStream<'static, WatchEvent>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let mut seen = Seen::new(fingerprint);
    let stream = watcher(api, config)
        .default_backoff()
        .modify(switchyard_api::forget_managed_fields)
        .reflect(writer)
        .filter_map(move |event| {
            let out = match event {
                Ok(event) => {
                    if matches!(event, watcher::Event::InitDone) {
                        listed[source as usize].store(true, Ordering::Release);
                    }
                    seen.changed(&event).then_some(WatchEvent::Changed(source))
                }
                Err(e) => Some(WatchEvent::Failed {
                    source,
                    error: e.to_string(),
                }),
            };
            futures::future::ready(out)
        })
        .boxed();
    (reader, stream)
}

/// Start the four watches for `node_name`. The stream drives them: poll it.
pub fn start(
    client: Client,
    node_name: &str,
) -> (
    Watches,
    impl Stream<Item = WatchEvent> + Send + Unpin + use<>,
) {
    let listed: Arc<[AtomicBool; 4]> = Arc::default();
    let by_name = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let (node, s1) = watch(
        Api::<Node>::all(client.clone()),
        by_name.clone(),
        Source::Node,
        node_fingerprint,
        listed.clone(),
    );
    let (proxy_node, s2) = watch(
        Api::<ProxyNode>::all(client.clone()),
        by_name,
        Source::ProxyNode,
        proxy_node_fingerprint,
        listed.clone(),
    );
    let (configs, s3) = watch(
        Api::<ProxyConfig>::all(client.clone()),
        watcher::Config::default(),
        Source::ProxyConfig,
        proxy_config_fingerprint,
        listed.clone(),
    );
    let (shards, s4) = watch(
        Api::<ProxyRuleset>::all(client),
        watcher::Config::default(),
        Source::ProxyRuleset,
        version_fingerprint,
        listed.clone(),
    );
    let events: SelectAll<BoxStream<'static, WatchEvent>> =
        futures::stream::select_all([s1, s2, s3, s4]);
    let watches = Watches {
        listed,
        node,
        proxy_node,
        configs,
        shards,
    };
    (watches, events)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus};
    use switchyard_api::proxynode::ProxyNodeStatus;
    use switchyard_api::{Mode, ProxyNodeSpec};

    use super::*;

    fn apply<K>(o: &K) -> watcher::Event<K>
    where
        K: Clone,
    {
        watcher::Event::Apply(o.clone())
    }

    /// The agent's own status write came back as a ProxyNode event and made a
    /// sync pass, which held the next shard change back by the minimum sync
    /// period (about a second of every change's programming latency).
    #[test]
    fn the_agents_own_status_write_is_no_change_its_spec_is() {
        let mut seen = Seen::new(proxy_node_fingerprint);
        let mut node = ProxyNode::new("a", ProxyNodeSpec::default());
        assert!(seen.changed(&apply(&node)), "first seen");
        node.status = Some(ProxyNodeStatus {
            applied_mode: Some(Mode::Nftables),
            ..ProxyNodeStatus::default()
        });
        node.metadata.resource_version = Some("2".into());
        assert!(!seen.changed(&apply(&node)), "status only");
        node.spec.target_mode = Some(Mode::Iptables);
        assert!(seen.changed(&apply(&node)), "spec");
        assert!(seen.changed(&watcher::Event::Delete(node.clone())));
        assert!(seen.changed(&apply(&node)), "seen again after its deletion");
    }

    #[test]
    fn a_nodes_heartbeat_is_no_change_its_addresses_and_labels_are() {
        let mut seen = Seen::new(node_fingerprint);
        let mut node = Node::default();
        node.metadata.name = Some("a".into());
        assert!(seen.changed(&apply(&node)));
        node.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        });
        assert!(!seen.changed(&apply(&node)), "conditions only");
        node.status.as_mut().unwrap().addresses = Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: "192.168.0.2".into(),
        }]);
        assert!(seen.changed(&apply(&node)), "addresses");
        node.metadata.labels =
            Some([("topology.kubernetes.io/zone".to_string(), "z".to_string())].into());
        assert!(seen.changed(&apply(&node)), "labels");
    }

    #[test]
    fn every_new_version_of_a_shard_is_a_change_and_a_relist_is_one() {
        let mut seen = Seen::new(version_fingerprint::<ProxyNode>);
        let mut shard = ProxyNode::new("s", ProxyNodeSpec::default());
        shard.metadata.resource_version = Some("1".into());
        assert!(seen.changed(&apply(&shard)));
        assert!(!seen.changed(&apply(&shard)), "the same version again");
        shard.metadata.resource_version = Some("2".into());
        assert!(seen.changed(&apply(&shard)));
        assert!(seen.changed(&watcher::Event::InitApply(shard.clone())));
        assert!(seen.changed(&watcher::Event::InitDone));
    }
}
