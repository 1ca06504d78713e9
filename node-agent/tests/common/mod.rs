//! Fixtures shared by the agent's integration tests.
#![allow(dead_code)] // each test binary uses a different part
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure fails the calling test

pub mod fake;
pub mod netns;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use self::fake::FakeKernel;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use kube::api::ObjectMeta;
use kube::runtime::events::Event;
use switchyard_agent::agent::{Agent, AgentParts};
use switchyard_agent::events::EventSink;
use switchyard_agent::health::ProxyHealth;
use switchyard_agent::inputs::Inputs;
use switchyard_agent::metrics::Metrics;
use switchyard_agent::status::{StatusError, StatusReporter, StatusWriter};
use switchyard_agent::switch::{DataplaneFactory, Probe};
use switchyard_api::proxyconfig::{RolloutSpec, Verification};
use switchyard_api::ruleset::{Endpoint, Protocol, Ruleset, ServicePortRule, ShardLayout};
use switchyard_api::{
    Mode, ProxyConfig, ProxyConfigSpec, ProxyNode, ProxyNodeSpec, ProxyNodeStatus, ProxyRuleset,
    ProxyRulesetSpec,
};
use switchyard_dataplane::kubeproxy::Leftovers;
use tokio::sync::Notify;

pub const NODE: &str = "node-a";
pub const WEB_VIP: &str = "10.96.0.10";

pub fn fixed_clock() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

pub fn endpoint(id: u32, ip: &str, node: &str) -> Endpoint {
    Endpoint {
        node_name: Some(node.to_string()),
        ..Endpoint::new(id, ip.parse().unwrap(), 8080)
    }
}

pub fn rule(id: u32, name: &str, vip: &str, endpoints: Vec<Endpoint>) -> ServicePortRule {
    ServicePortRule {
        cluster_ips: vec![vip.parse::<IpAddr>().unwrap()],
        endpoints,
        ..ServicePortRule::new(id, "default", name, Protocol::Tcp, 80)
    }
}

pub fn web() -> ServicePortRule {
    rule(1, "web", WEB_VIP, vec![endpoint(1, "10.0.1.5", NODE)])
}

pub fn shard(
    epoch: u64,
    index: u32,
    count: u32,
    generation: u64,
    services: Vec<ServicePortRule>,
) -> Arc<ProxyRuleset> {
    let layout = ShardLayout {
        epoch,
        shard_count: count,
    };
    let mut obj = ProxyRuleset::new(
        &switchyard_api::ruleset::shard_name(&layout, index),
        ProxyRulesetSpec {
            shard: index,
            layout,
            generation,
            service_count: u32::try_from(services.len()).unwrap(),
            ruleset: Ruleset { services },
        },
    );
    obj.metadata.resource_version = Some(format!("{epoch}-{index}-{generation}"));
    Arc::new(obj)
}

pub fn node() -> Arc<Node> {
    Arc::new(Node {
        metadata: ObjectMeta {
            name: Some(NODE.into()),
            labels: Some(BTreeMap::from([(
                "topology.kubernetes.io/zone".to_string(),
                "zone-a".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidrs: Some(vec!["10.0.1.0/24".into()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: "192.168.0.10".into(),
            }]),
            ..Default::default()
        }),
    })
}

pub fn proxy_node(target: Option<Mode>, status: Option<ProxyNodeStatus>) -> Arc<ProxyNode> {
    let mut pn = ProxyNode::new(
        NODE,
        ProxyNodeSpec {
            pool: Some("pool".into()),
            target_mode: target,
        },
    );
    pn.metadata.generation = Some(1);
    pn.status = status;
    Arc::new(pn)
}

/// A pool whose rollout verifies through default/web:80.
pub fn config(mode: Mode) -> Arc<ProxyConfig> {
    Arc::new(ProxyConfig::new(
        "pool",
        ProxyConfigSpec {
            mode,
            rollout: RolloutSpec {
                verification: Some(Verification {
                    service: "default/web".into(),
                    port: 80,
                    timeout: Some("2s".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    ))
}

pub fn inputs(target: Option<Mode>, status: Option<ProxyNodeStatus>) -> Inputs {
    Inputs {
        listed: true,
        node: Some(node()),
        proxy_node: Some(proxy_node(target, status)),
        config: Some(config(target.unwrap_or_default())),
        shards: vec![shard(1, 0, 1, 1, vec![web()])],
    }
}

/// Records status writes; the write numbered `hang_at` (0-based) never
/// completes and is not recorded, as if the agent was killed during it.
#[derive(Clone, Default)]
pub struct RecordingWriter {
    pub writes: Arc<Mutex<Vec<ProxyNodeStatus>>>,
    pub hang_at: Arc<Mutex<Option<usize>>>,
    pub attempts: Arc<Mutex<usize>>,
    pub hung: Arc<Notify>,
}

impl RecordingWriter {
    pub fn last(&self) -> Option<ProxyNodeStatus> {
        self.writes.lock().unwrap().last().cloned()
    }

    pub fn count(&self) -> usize {
        self.writes.lock().unwrap().len()
    }
}

impl StatusWriter for RecordingWriter {
    fn write<'a>(&'a self, status: &'a ProxyNodeStatus) -> BoxFuture<'a, Result<(), StatusError>> {
        let n = {
            let mut a = self.attempts.lock().unwrap();
            *a += 1;
            *a - 1
        };
        let hang = *self.hang_at.lock().unwrap() == Some(n);
        if !hang {
            self.writes.lock().unwrap().push(status.clone());
        }
        let hung = self.hung.clone();
        Box::pin(async move {
            if hang {
                hung.notify_one();
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    }
}

/// A published Event: regarding object's name, type, reason, note.
pub type Published = (String, String, String, String);

/// Records published Events.
#[derive(Clone, Default)]
pub struct RecordingEvents {
    pub events: Arc<Mutex<Vec<Published>>>,
}

impl RecordingEvents {
    pub fn all(&self) -> Vec<Published> {
        self.events.lock().unwrap().clone()
    }
}

impl EventSink for RecordingEvents {
    fn publish<'a>(
        &'a self,
        event: &'a Event,
        regarding: &'a ObjectReference,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        self.events.lock().unwrap().push((
            regarding.name.clone().unwrap_or_default(),
            format!("{:?}", event.type_),
            event.reason.clone(),
            event.note.clone().unwrap_or_default(),
        ));
        Box::pin(async { Ok(()) })
    }
}

/// A foreign leftover that is present until removed.
#[derive(Clone, Default)]
pub struct FakeLeftover {
    pub present: Arc<Mutex<bool>>,
    /// Established connections its rules translated, while present.
    pub open: Arc<Mutex<usize>>,
}

impl Leftovers for FakeLeftover {
    fn name(&self) -> &'static str {
        "fake kube-proxy tables"
    }

    fn remove(&self) -> Result<bool, switchyard_dataplane::BackendError> {
        let mut p = self.present.lock().unwrap();
        let was = *p;
        *p = false;
        Ok(was)
    }

    fn open_translated(&self) -> Result<usize, switchyard_dataplane::BackendError> {
        let present = *self.present.lock().unwrap();
        Ok(if present {
            *self.open.lock().unwrap()
        } else {
            0
        })
    }
}

/// An agent with test parts: fixed wall clock, 5s status interval, no HTTP
/// servers, Events recorded and dropped.
pub fn agent_with(
    factory: Arc<dyn DataplaneFactory>,
    probe: Arc<dyn Probe>,
    writer: Box<dyn StatusWriter>,
    leftovers: Vec<Box<dyn Leftovers>>,
) -> Agent {
    let events = Box::new(RecordingEvents::default());
    agent_with_events(factory, probe, writer, events, leftovers)
}

/// [`agent_with`], publishing Events to `events`.
pub fn agent_with_events(
    factory: Arc<dyn DataplaneFactory>,
    probe: Arc<dyn Probe>,
    writer: Box<dyn StatusWriter>,
    events: Box<dyn EventSink>,
    leftovers: Vec<Box<dyn Leftovers>>,
) -> Agent {
    Agent::new(AgentParts {
        node_name: NODE.into(),
        factory,
        probe,
        leftovers,
        reporter: StatusReporter::new(writer, Duration::from_secs(5)),
        events,
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(ProxyHealth::new(Duration::from_secs(60))),
        health_checks: None,
        http: None,
        wall_clock: fixed_clock,
    })
}

/// An agent over the fake kernel.
pub fn agent(kernel: &FakeKernel, writer: &RecordingWriter, leftover: &FakeLeftover) -> Agent {
    agent_with(
        Arc::new(kernel.factory()),
        Arc::new(kernel.probe()),
        Box::new(writer.clone()),
        vec![Box::new(leftover.clone())],
    )
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("syagt{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
