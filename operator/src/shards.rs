//! The publisher's side of the API: watch Services and EndpointSlices, sync the
//! [`Publisher`] after each burst of changes, write its [`Publication`].

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::json;
use switchyard_api::ProxyRuleset;
use switchyard_compiler::{CompileSettings, Diagnostic, ObjectKind};
use switchyard_daemon::ratelimit::SyncLimiter;
use tracing::{info, warn};

use crate::FIELD_MANAGER;
use crate::controller::DEBOUNCE;
use crate::error::Error;
use crate::events::EventPublisher;
use crate::metrics::{Metrics, ShardLabels};
use crate::publish::{Change, Publication, Publisher};

/// Write a publication: every changed shard, then the deletions, then Events
/// for new diagnostics.
pub async fn write_publication(
    client: &Client,
    publication: &Publication,
    events: &EventPublisher,
    metrics: &Metrics,
) -> Result<(), Error> {
    let api: Api<ProxyRuleset> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let (api, params) = (&api, &params);
    side_by_side(&publication.apply, "apply", metrics, |(name, spec)| {
        let body = json!({
            "apiVersion": ProxyRuleset::api_version(&()),
            "kind": ProxyRuleset::kind(&()),
            "metadata": {"name": name},
            "spec": spec,
        });
        async move {
            api.patch(name, params, &Patch::Apply(body))
                .await
                .map(|_| ())
                .map_err(|source| Error::Apply {
                    kind: "ProxyRuleset",
                    name: name.clone(),
                    source,
                })
        }
    })
    .await?;
    side_by_side(&publication.delete, "delete", metrics, |name| async move {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(Error::Delete {
                kind: "ProxyRuleset",
                name: name.clone(),
                source,
            }),
        }
    })
    .await?;
    for diagnostic in &publication.diagnostics {
        let event = diagnostic_event(diagnostic);
        if let Err(error) = events.publish(&event, &diagnostic_ref(diagnostic)).await {
            warn!(%error, %diagnostic, "publishing an event failed");
        }
    }
    Ok(())
}

fn diagnostic_ref(d: &Diagnostic) -> ObjectReference {
    let api_version = match d.kind {
        ObjectKind::Service => "v1",
        ObjectKind::EndpointSlice => "discovery.k8s.io/v1",
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(d.kind.as_str().into()),
        namespace: Some(d.namespace.clone()),
        name: Some(d.name.clone()),
        ..ObjectReference::default()
    }
}

/// The Event for a diagnostic: what was skipped and why.
pub fn diagnostic_event(d: &Diagnostic) -> Event {
    let mut note = format!("skipped by switchyard: {}", d.message);
    if note.len() > 1024 {
        let mut cut = 1021;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    Event {
        type_: EventType::Warning,
        reason: d.reason.as_str().to_string(),
        note: Some(note),
        action: "Compile".into(),
        secondary: None,
    }
}

/// Shard writes in flight at once.
const PARALLEL_WRITES: usize = 16;

/// `write` every item, [`PARALLEL_WRITES`] at a time, counting each one done
/// under `operation`; the first error ends it. Shards are independent
/// objects (agents wait for a complete layout), so they are written and
/// deleted side by side: a new layout of thousands of small shards, or the
/// deletion of the old one, would take minutes one request at a time.
async fn side_by_side<'a, T: 'a, Fut>(
    items: &'a [T],
    operation: &'static str,
    metrics: &Metrics,
    write: impl Fn(&'a T) -> Fut,
) -> Result<(), Error>
where
    Fut: Future<Output = Result<(), Error>>,
{
    let done = metrics
        .shard_writes
        .get_or_create(&ShardLabels { operation })
        .clone();
    stream::iter(items)
        .map(write)
        .buffer_unordered(PARALLEL_WRITES)
        .try_for_each(|()| {
            done.inc();
            futures::future::ready(Ok(()))
        })
        .await
}

/// How long to wait before publishing again after a failed write.
const PUBLISH_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Watch, compile and publish until `shutdown` resolves. A failed write is
/// retried (with every shard) rather than ending the loop.
pub async fn run_publisher(
    client: Client,
    settings: CompileSettings,
    budget_bytes: usize,
    events: EventPublisher,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let rulesets: Api<ProxyRuleset> = Api::all(client.clone());
    // The published shards decide the first epoch; keep asking until the API answers.
    let existing = loop {
        match rulesets.list(&ListParams::default()).await {
            Ok(list) => break list.items,
            Err(error) => {
                warn!(%error, "listing ProxyRulesets failed; retrying");
                metrics.publish_errors.inc();
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(PUBLISH_RETRY) => {}
        }
    };
    let mut publisher = Publisher::new(settings, budget_bytes, &existing);
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Change::Service(Box::new(e))));
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Change::EndpointSlice(Box::new(e))));
    let mut changes = std::pin::pin!(stream::select(services, slices));
    // A change after a quiet second is published at once (a fixed delay
    // would put a floor under every change's latency); a burst is folded into
    // one publication per second, and a steady stream cannot postpone it.
    let mut limiter = SyncLimiter::new(DEBOUNCE);
    // After a failed write: when to try again.
    let mut retry_at: Option<tokio::time::Instant> = None;
    // A publication that failed: the next one rewrites every shard.
    let mut retry: Option<Publication> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            change = changes.next() => match change {
                Some(Ok(change)) => {
                    publisher.apply(&change);
                    limiter.request(tokio::time::Instant::now());
                }
                Some(Err(error)) => warn!(%error, "watch"),
                None => return,
            },
            () = sleep_until(retry_at) => {
                retry_at = None;
                limiter.request(tokio::time::Instant::now());
            }
            () = sleep_until(limiter.next_run()) => {
                limiter.start(tokio::time::Instant::now());
                let started = Instant::now();
                let mut publication = publisher.sync();
                metrics.compile_duration.observe(started.elapsed().as_secs_f64());
                if let Some(failed) = retry.take() {
                    publication = publisher.republish(failed, publication);
                }
                if !publication.apply.is_empty() || !publication.delete.is_empty() {
                    info!(written = publication.apply.len(), deleted = publication.delete.len(), "publishing shards");
                }
                if let Err(error) = write_publication(&client, &publication, &events, &metrics).await {
                    warn!(%error, "publishing shards failed; retrying with every shard");
                    metrics.publish_errors.inc();
                    retry = Some(publication);
                    retry_at = Some(tokio::time::Instant::now() + PUBLISH_RETRY);
                }
            }
        }
    }
}
