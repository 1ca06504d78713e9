//! The ProxyConfig reconciler: a thin layer that reads the API, runs the pure
//! [`plan_pool`], and writes the result (status first, so a crash between the
//! writes leaves a state the next step repairs; see `rollout`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use switchyard_api::{ProxyConfig, ProxyNode};
use tracing::{Instrument, info, info_span, warn};

use crate::clock::Clock;
use crate::error::Error;
use crate::events::{EventPublisher, to_event};
use crate::metrics::{ErrorLabels, Metrics, PoolLabels};
use crate::plan::{PoolInput, PoolPlan, plan_pool, release_pool};
use crate::pools::assign_pools;
use crate::writes::{apply_proxy_node, apply_status};

/// Finalizer on every ProxyConfig: its nodes are released before it goes.
pub const FINALIZER: &str = "switchyard.dev/release-nodes";

/// Changes within this time are reconciled once (a batch's agents report together).
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// Requeue a settled pool this often, as a safety net.
const RESYNC: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// Every Node (labels, uids), kept by a reflector.
    pub nodes: Store<Node>,
    /// Every ProxyConfig (selectors, priorities), kept by the controller.
    pub configs: Store<ProxyConfig>,
    pub events: EventPublisher,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Added to each pool's verification timeout for a node's switch deadline.
    pub switch_margin: Duration,
}

/// The reporter of the operator's Events.
pub fn reporter(instance: Option<String>) -> Reporter {
    Reporter {
        controller: crate::FIELD_MANAGER.to_string(),
        instance,
    }
}

/// Reconcile one ProxyConfig.
pub async fn reconcile(config: Arc<ProxyConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = config.metadata.name.clone().ok_or(Error::MissingName)?;
    let _timer = ctx.metrics.reconcile_started();
    let span = info_span!("reconcile", pool = %name, generation = ?config.metadata.generation);
    let api: Api<ProxyConfig> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, config, |event| async {
        match event {
            Finalizer::Apply(config) => apply_pool(&config, &ctx).await,
            Finalizer::Cleanup(config) => cleanup_pool(&config, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|source| Error::Finalizer {
        name,
        source: Box::new(source),
    })
}

/// Count the error and retry later.
pub fn error_policy(config: Arc<ProxyConfig>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(pool = %config.name_any(), %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            error: error.metric_label(),
        })
        .inc();
    Action::requeue(error.retry_after())
}

async fn list_proxy_nodes(client: &Client) -> Result<Vec<ProxyNode>, Error> {
    let api: Api<ProxyNode> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            kind: "ProxyNode",
            name: "*".into(),
            source,
        })?;
    Ok(list.items)
}

/// Every Node, once the cache holds the first full list (before that every
/// node would look gone).
async fn filled_nodes(ctx: &Context) -> Result<Vec<Arc<Node>>, Error> {
    ctx.nodes
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheNotReady { kind: "Node" })?;
    Ok(ctx.nodes.state())
}

async fn apply_pool(config: &ProxyConfig, ctx: &Context) -> Result<Action, Error> {
    let name = config.name_any();
    let api: Api<ProxyConfig> = Api::all(ctx.client.clone());
    // The rollout decides from its recorded status; the cache may lag our own
    // last write, so read the object and the node specs from the API.
    let fresh = api.get(&name).await.map_err(|source| Error::Read {
        kind: "ProxyConfig",
        name: name.clone(),
        source,
    })?;
    let proxy_nodes = list_proxy_nodes(&ctx.client).await?;
    let mut configs: Vec<Arc<ProxyConfig>> = ctx
        .configs
        .state()
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none() && c.name_any() != name)
        .collect();
    configs.push(Arc::new(fresh.clone()));
    let nodes = filled_nodes(ctx).await?;
    let assignment = assign_pools(&nodes, &configs);
    let plan = plan_pool(&PoolInput {
        config: &fresh,
        assignment: &assignment,
        nodes: &nodes,
        proxy_nodes: &proxy_nodes,
        now: ctx.clock.now(),
        switch_margin: ctx.switch_margin,
    });
    write_plan(&fresh, &plan, ctx).await?;
    Ok(Action::requeue(
        plan.requeue_after
            .unwrap_or(RESYNC)
            .max(Duration::from_secs(1)),
    ))
}

async fn write_plan(config: &ProxyConfig, plan: &PoolPlan, ctx: &Context) -> Result<(), Error> {
    let name = config.name_any();
    let configs: Api<ProxyConfig> = Api::all(ctx.client.clone());
    if config.status.as_ref() != Some(&plan.status) {
        apply_status(&configs, &name, &plan.status).await?;
    }
    let proxy_nodes: Api<ProxyNode> = Api::all(ctx.client.clone());
    for apply in &plan.proxy_nodes {
        apply_proxy_node(&proxy_nodes, apply).await?;
    }
    let reference = config.object_ref(&());
    for pool_event in &plan.events {
        info!(pool = %name, event = ?pool_event, "pool event");
        if let Err(error) = ctx.events.publish(&to_event(pool_event), &reference).await {
            warn!(pool = %name, %error, "publishing an event failed");
        }
    }
    let labels = PoolLabels { pool: name };
    let updated = plan
        .status
        .rollout
        .as_ref()
        .map_or(plan.status.updated_nodes, |r| r.updated);
    ctx.metrics
        .rollout_updated_nodes
        .get_or_create(&labels)
        .set(i64::from(updated));
    ctx.metrics
        .rollout_total_nodes
        .get_or_create(&labels)
        .set(i64::from(plan.status.nodes));
    Ok(())
}

async fn cleanup_pool(config: &ProxyConfig, ctx: &Context) -> Result<Action, Error> {
    let name = config.name_any();
    let proxy_nodes = list_proxy_nodes(&ctx.client).await?;
    let api: Api<ProxyNode> = Api::all(ctx.client.clone());
    for apply in release_pool(&name, &filled_nodes(ctx).await?, &proxy_nodes) {
        apply_proxy_node(&api, &apply).await?;
    }
    info!(pool = %name, "released the pool's nodes");
    Ok(Action::await_change())
}

/// Every ProxyConfig the store holds.
fn all_configs(store: &Store<ProxyConfig>) -> Vec<ObjectRef<ProxyConfig>> {
    store
        .state()
        .iter()
        .map(|c| ObjectRef::from_obj(&**c))
        .collect()
}

/// Run the ProxyConfig controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    switch_margin: Duration,
    instance: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (nodes, node_writer) = reflector::store();
    let node_labels_changed = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(switchyard_api::forget_managed_fields)
        .reflect(node_writer)
        .applied_objects()
        .predicate_filter(predicates::labels, Default::default())
        .filter_map(|node| async move { node.ok().map(|_| ()) });
    let controller = Controller::new(
        Api::<ProxyConfig>::all(client.clone()),
        watcher::Config::default(),
    );
    let configs = controller.store();
    let configs_for_nodes = configs.clone();
    let ctx = Arc::new(Context {
        events: EventPublisher::new(client.clone(), reporter(instance)),
        client: client.clone(),
        nodes,
        configs,
        metrics,
        clock,
        switch_margin,
    });
    controller
        .watches(
            Api::<ProxyNode>::all(client),
            watcher::Config::default(),
            move |proxy_node| match proxy_node.spec.pool.as_deref() {
                Some(pool) => vec![ObjectRef::new(pool)],
                // A released node may now belong to another pool.
                None => all_configs(&configs_for_nodes),
            },
        )
        .reconcile_all_on(node_labels_changed)
        .with_config(controller::Config::default().debounce(DEBOUNCE))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "controller");
            }
        })
        .await;
}
