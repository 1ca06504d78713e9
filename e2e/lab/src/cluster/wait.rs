//! Waiting on the cluster without sleeping: a watch of one kind feeds a
//! store, and a check runs on the whole list after every change until it
//! passes; the timeout is only a deadlock guard. The check sees every state
//! the watch delivers, in order, so it can also record what it saw on the
//! way (the most nodes switching at once during a rollout, say).

use std::fmt::Debug;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::ClusterError;

/// Run `check` on every object of `api` after each change until it returns
/// `Ok`; its `Err` says what is still missing, for the timeout's message.
pub async fn until<K, T>(
    api: Api<K>,
    what: &str,
    timeout: Duration,
    check: impl FnMut(&[Arc<K>]) -> Result<T, String>,
) -> Result<T, ClusterError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    until_every(api, what, timeout, Duration::ZERO, check).await
}

/// [`until`], with `check` run at most once per `every`: for a kind of
/// tens of thousands of objects written one by one, where a check of the
/// whole list after each change would cost the square of the count. The
/// check sees a state no later than `every` after its last change (so
/// not every state on the way).
pub async fn until_every<K, T>(
    api: Api<K>,
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut(&[Arc<K>]) -> Result<T, String>,
) -> Result<T, ClusterError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let deadline = Instant::now() + timeout;
    let (reader, writer) = reflector::store();
    let mut changes = pin!(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
    );
    let mut last = "nothing listed yet".to_string();
    // A change not checked yet, and when the next check may run.
    let mut unchecked = false;
    let mut next_check = Instant::now();
    loop {
        let wake = if unchecked { next_check } else { deadline };
        let change = match tokio::time::timeout_at(wake.min(deadline), changes.next()).await {
            Err(_) if unchecked && Instant::now() < deadline => None,
            Err(_) => {
                return Err(ClusterError::Timeout {
                    what: what.to_string(),
                    waited: timeout,
                    last,
                });
            }
            Ok(None) => {
                return Err(ClusterError::Timeout {
                    what: what.to_string(),
                    waited: timeout,
                    last: format!("the watch ended; {last}"),
                });
            }
            Ok(Some(change)) => Some(change),
        };
        match change {
            // The watcher retries with backoff (an API server restarting, say).
            Some(Err(e)) => last = format!("watch error: {e}"),
            // A list in progress: the store swaps it in whole at InitDone.
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Ok(_)) | None => {
                unchecked = true;
                if Instant::now() >= next_check {
                    unchecked = false;
                    next_check = Instant::now() + every;
                    match check(&reader.state()) {
                        Ok(done) => return Ok(done),
                        Err(why) => last = why,
                    }
                }
            }
        }
    }
}
