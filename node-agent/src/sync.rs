//! The control loop: watch events request a sync, the [`SyncLimiter`] folds
//! bursts into one sync per `minSyncPeriod`, every `syncPeriod` a full resync
//! rewrites everything (`invalidate` then sync), a failed sync is retried,
//! what drains is looked at every [`DRAIN_CHECK`], and status writes go out
//! at their own rate, each as a task of its own: a slow API server holds up
//! no sync.
//!
//! All timing is tokio's clock, so tests run the loop under `tokio::time::pause()`.

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::{Instant, sleep_until};

use crate::agent::{Agent, SyncOutcome};
use crate::heap;
use crate::inputs::Inputs;
use crate::status::{StatusWrite, WriteDone};
use crate::watch::WatchEvent;
use switchyard_daemon::ratelimit::SyncLimiter;

/// The longest wait before a failed sync is tried again (kube-proxy retries
/// after its sync period, 30s by default).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How often, while something drains (a retired mode, kube-proxy's tables
/// under eBPF), the agent looks whether it may go: it goes within this of
/// its last connection instead of at the next sync.
pub const DRAIN_CHECK: Duration = Duration::from_secs(1);

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The answer to the status write in flight; never without one.
async fn write_done(writing: &mut Option<StatusWrite>) -> WriteDone {
    match writing {
        Some(write) => write.done().await,
        None => std::future::pending().await,
    }
}

/// Run until `events` ends or `shutdown` completes. `inputs` reads the
/// current state of the watches. Nothing syncs before the first event (the
/// watches' initial lists), so an agent that cannot reach the API server
/// leaves the kernel as it found it.
pub async fn run(
    agent: &mut Agent,
    mut events: impl Stream<Item = WatchEvent> + Unpin,
    inputs: impl Fn() -> Inputs,
    shutdown: impl Future<Output = ()>,
) {
    let mut limiter = SyncLimiter::new(agent.settings().min_sync_period);
    let mut last_resync = Instant::now();
    let mut retry_at: Option<Instant> = None;
    let mut last_drain_check = Instant::now();
    let mut writing: Option<StatusWrite> = None;
    tokio::pin!(shutdown);
    loop {
        let resync_at = last_resync + agent.settings().sync_period;
        let drain_at = agent.draining().then_some(last_drain_check + DRAIN_CHECK);
        let sync_at = limiter.next_run();
        // One status write at a time, beside the syncs.
        let status_at = match writing {
            Some(_) => None,
            None => agent.reporter().next_write(),
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            event = events.next() => match event {
                None => break,
                Some(WatchEvent::Changed(source)) => {
                    tracing::trace!(%source, "change");
                    agent.set_api_error(source, None);
                    agent.queued();
                    limiter.request(Instant::now());
                }
                Some(WatchEvent::Failed { source, error }) => {
                    tracing::warn!(%source, %error, "watch failed; keeping the last applied rules");
                    agent.set_api_error(source, Some(error));
                }
            },
            () = sleep_until_some(sync_at) => {
                let now = Instant::now();
                let queued = limiter.start(now);
                let outcome = agent.sync(&inputs(), queued).await;
                if matches!(outcome, SyncOutcome::Synced | SyncOutcome::Failed(_)) {
                    heap::release_freed();
                }
                let settings = agent.settings();
                limiter.set_min_period(settings.min_sync_period);
                retry_at = match outcome {
                    SyncOutcome::Failed(_) => Some(now + settings.sync_period.min(MAX_RETRY_DELAY)),
                    _ => None,
                };
            }
            () = sleep_until_some(retry_at) => {
                retry_at = None;
                limiter.request(Instant::now());
            }
            () = sleep_until_some(drain_at) => {
                last_drain_check = Instant::now();
                if agent.settle_drains() {
                    limiter.request(last_drain_check);
                }
            }
            () = sleep_until(resync_at) => {
                last_resync = Instant::now();
                agent.invalidate();
                limiter.request(last_resync);
            }
            done = write_done(&mut writing) => {
                writing = None;
                if let Err(e) = agent.reporter().finished(done, Instant::now()) {
                    tracing::warn!(error = %e, "status write failed; will retry");
                }
            }
            () = sleep_until_some(status_at) => {
                writing = agent.reporter().start(Instant::now());
            }
        }
    }
}
