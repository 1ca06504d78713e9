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

use super::ClusterError;

/// Run `check` on every object of `api` after each change until it returns
/// `Ok`; its `Err` says what is still missing, for the timeout's message.
pub async fn until<K, T>(
    api: Api<K>,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&[Arc<K>]) -> Result<T, String>,
) -> Result<T, ClusterError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let (reader, writer) = reflector::store();
    let mut changes = pin!(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
    );
    let mut last = "nothing listed yet".to_string();
    loop {
        let change = match tokio::time::timeout_at(deadline, changes.next()).await {
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
            Ok(Some(change)) => change,
        };
        match change {
            // The watcher retries with backoff (an API server restarting, say).
            Err(e) => last = format!("watch error: {e}"),
            // A list in progress: the store swaps it in whole at InitDone.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => match check(&reader.state()) {
                Ok(done) => return Ok(done),
                Err(why) => last = why,
            },
        }
    }
}
