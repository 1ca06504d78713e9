//! The agent's watches: its own Node and ProxyNode (by name), every ProxyConfig
//! (it needs the one its ProxyNode names as pool, which can change), and the
//! ProxyRuleset shards, each a kube-runtime watcher feeding a reflector store.
//!
//! The stores swap in a new list only when it is complete (`InitDone`), so a
//! re-list never shows a partial view; an unreachable API server leaves them
//! holding the last state, and the agent keeps the last applied rules.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
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

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    source: Source,
    listed: Arc<[AtomicBool; 4]>,
) -> (Store<K>, BoxStream<'static, WatchEvent>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .map(move |event| match event {
            Ok(event) => {
                if matches!(event, watcher::Event::InitDone) {
                    listed[source as usize].store(true, Ordering::Release);
                }
                WatchEvent::Changed(source)
            }
            Err(e) => WatchEvent::Failed {
                source,
                error: e.to_string(),
            },
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
        listed.clone(),
    );
    let (proxy_node, s2) = watch(
        Api::<ProxyNode>::all(client.clone()),
        by_name,
        Source::ProxyNode,
        listed.clone(),
    );
    let (configs, s3) = watch(
        Api::<ProxyConfig>::all(client.clone()),
        watcher::Config::default(),
        Source::ProxyConfig,
        listed.clone(),
    );
    let (shards, s4) = watch(
        Api::<ProxyRuleset>::all(client),
        watcher::Config::default(),
        Source::ProxyRuleset,
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
