//! `ProxyNode.status`: written by server-side apply on the status subresource
//! with the field manager `switchyard-agent`, rate-limited, and only when it
//! differs from what was last written.

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{Patch, PatchParams};
use std::sync::Arc;
use switchyard_api::validation::limits::clip_message;
use switchyard_api::{ProxyNode, ProxyNodeStatus};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use switchyard_daemon::ratelimit::SyncLimiter;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "switchyard-agent";

/// A status write failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("patching ProxyNode {node} status: {source}")]
    Patch {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("the ProxyNode status write ended without an answer: {0}")]
    Task(String),
    #[error("the ProxyNode status write had no answer after {0:?}")]
    TimedOut(std::time::Duration),
}

/// Writes a ProxyNode status.
pub trait StatusWriter: Send + Sync {
    fn write<'a>(&'a self, status: &'a ProxyNodeStatus) -> BoxFuture<'a, Result<(), StatusError>>;
}

/// The server-side-apply body of a status write.
pub fn apply_body(status: &ProxyNodeStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ProxyNode",
        "status": status,
    })
}

/// Writes to the API server.
#[derive(Clone)]
pub struct ApiStatusWriter {
    api: Api<ProxyNode>,
    node: String,
}

impl ApiStatusWriter {
    pub fn new(client: kube::Client, node: &str) -> ApiStatusWriter {
        ApiStatusWriter {
            api: Api::all(client),
            node: node.to_string(),
        }
    }
}

impl StatusWriter for ApiStatusWriter {
    fn write<'a>(&'a self, status: &'a ProxyNodeStatus) -> BoxFuture<'a, Result<(), StatusError>> {
        Box::pin(async move {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            self.api
                .patch_status(&self.node, &params, &Patch::Apply(apply_body(status)))
                .await
                .map(|_| ())
                .map_err(|source| StatusError::Patch {
                    node: self.node.clone(),
                    source,
                })
        })
    }
}

/// Deduplicates and rate-limits status writes.
pub struct StatusReporter {
    writer: Arc<dyn StatusWriter>,
    written: Option<ProxyNodeStatus>,
    pending: Option<ProxyNodeStatus>,
    limiter: SyncLimiter,
    /// Writes started so far; a started write that is not the last one was
    /// overtaken (a checkpoint written while it ran).
    started: u64,
}

/// How long a started write may wait for its answer before it is retried.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A status write running as its own task ([`StatusReporter::start`]).
pub struct StatusWrite {
    task: JoinHandle<Result<(), StatusError>>,
    status: ProxyNodeStatus,
    seq: u64,
}

/// How a [`StatusWrite`] went: for [`StatusReporter::finished`].
pub struct WriteDone {
    status: ProxyNodeStatus,
    seq: u64,
    result: Result<(), StatusError>,
}

impl StatusWrite {
    /// Wait until the write is answered.
    pub async fn done(&mut self) -> WriteDone {
        let result = (&mut self.task)
            .await
            .unwrap_or_else(|e| Err(StatusError::Task(e.to_string())));
        WriteDone {
            status: std::mem::take(&mut self.status),
            seq: self.seq,
            result,
        }
    }
}

impl StatusReporter {
    /// At most one write per `min_interval` (checkpoints of a mode switch excepted).
    pub fn new(writer: Box<dyn StatusWriter>, min_interval: std::time::Duration) -> StatusReporter {
        StatusReporter {
            writer: Arc::from(writer),
            written: None,
            pending: None,
            limiter: SyncLimiter::new(min_interval),
            started: 0,
        }
    }

    /// Queue `status`; nothing is queued when it equals what was last written.
    pub fn offer(&mut self, status: &ProxyNodeStatus, now: Instant) {
        if self.written.as_ref() == Some(status) {
            self.pending = None;
            return;
        }
        self.pending = Some(status.clone());
        self.limiter.request(now);
    }

    /// When the queued status may be written.
    pub fn next_write(&self) -> Option<Instant> {
        self.pending.as_ref().and(self.limiter.next_run())
    }

    /// Start writing the queued status if it is due, as a task of its own:
    /// an API server that answers slowly holds up no sync. Its outcome goes
    /// to [`StatusReporter::finished`].
    pub fn start(&mut self, now: Instant) -> Option<StatusWrite> {
        if !self.limiter.is_due(now) {
            return None;
        }
        self.limiter.start(now);
        let status = self.pending.take()?;
        self.started += 1;
        let (writer, written) = (Arc::clone(&self.writer), status.clone());
        let task = tokio::spawn(async move {
            tokio::time::timeout(WRITE_TIMEOUT, writer.write(&written))
                .await
                .unwrap_or(Err(StatusError::TimedOut(WRITE_TIMEOUT)))
        });
        Some(StatusWrite {
            task,
            status,
            seq: self.started,
        })
    }

    /// Take in how a started write went. A failed one is queued again unless
    /// a newer status is. One overtaken by a checkpoint written meanwhile may
    /// have landed after it: the newest status is written again.
    pub fn finished(&mut self, done: WriteDone, now: Instant) -> Result<bool, StatusError> {
        match done.result {
            Ok(()) if done.seq == self.started => {
                if self.pending.as_ref() == Some(&done.status) {
                    self.pending = None;
                }
                self.written = Some(done.status);
                Ok(true)
            }
            Ok(()) => {
                let newest = self.written.take();
                if self.pending.is_none() {
                    self.pending = newest;
                }
                self.limiter.request(now);
                Ok(true)
            }
            Err(e) => {
                if self.pending.is_none() && done.seq == self.started {
                    self.pending = Some(done.status);
                }
                self.limiter.request(now);
                Err(e)
            }
        }
    }

    /// Write `status` now, bypassing the rate limit (a switch checkpoint).
    pub async fn write_now(
        &mut self,
        status: &ProxyNodeStatus,
        now: Instant,
    ) -> Result<bool, StatusError> {
        self.pending = None;
        if self.written.as_ref() == Some(status) {
            return Ok(false);
        }
        self.limiter.start(now);
        self.started += 1;
        let result = self.writer.write(status).await;
        let done = WriteDone {
            status: status.clone(),
            seq: self.started,
            result,
        };
        self.finished(done, now)
    }
}

/// Set condition `type_`, keeping its transition time when its status is
/// unchanged; a message longer than the schema allows is clipped.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
    observed_generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    let condition = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: clip_message(message),
        last_transition_time,
        observed_generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Recording {
        writes: Arc<Mutex<Vec<ProxyNodeStatus>>>,
        fail: Arc<Mutex<bool>>,
    }

    impl StatusWriter for Recording {
        fn write<'a>(
            &'a self,
            status: &'a ProxyNodeStatus,
        ) -> BoxFuture<'a, Result<(), StatusError>> {
            let fail = *self.fail.lock().unwrap();
            self.writes.lock().unwrap().push(status.clone());
            Box::pin(async move {
                if fail {
                    Err(StatusError::Patch {
                        node: "n".into(),
                        source: kube::Error::LinesCodecMaxLineLengthExceeded,
                    })
                } else {
                    Ok(())
                }
            })
        }
    }

    /// Start the due write and take in its outcome.
    async fn flush(r: &mut StatusReporter, now: Instant) -> Result<bool, StatusError> {
        match r.start(now) {
            Some(mut write) => {
                let done = write.done().await;
                r.finished(done, now)
            }
            None => Ok(false),
        }
    }

    fn status(error: &str) -> ProxyNodeStatus {
        ProxyNodeStatus {
            last_error: Some(error.to_string()),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_status_is_not_written_and_writes_are_rate_limited() {
        let rec = Recording::default();
        let mut r = StatusReporter::new(Box::new(rec.clone()), Duration::from_secs(5));
        let now = Instant::now();
        r.offer(&status("a"), now);
        assert!(flush(&mut r, now).await.unwrap());
        r.offer(&status("a"), now);
        assert_eq!(r.next_write(), None, "same status queues nothing");
        r.offer(&status("b"), now);
        r.offer(&status("c"), now);
        assert_eq!(r.next_write(), Some(now + Duration::from_secs(5)));
        assert!(!flush(&mut r, now).await.unwrap());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(flush(&mut r, Instant::now()).await.unwrap());
        let writes = rec.writes.lock().unwrap().clone();
        assert_eq!(
            writes,
            vec![status("a"), status("c")],
            "b was folded into c"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_write_is_retried_after_the_interval() {
        let rec = Recording::default();
        *rec.fail.lock().unwrap() = true;
        let mut r = StatusReporter::new(Box::new(rec.clone()), Duration::from_secs(5));
        let now = Instant::now();
        r.offer(&status("a"), now);
        assert!(flush(&mut r, now).await.is_err());
        assert_eq!(r.next_write(), Some(now + Duration::from_secs(5)));
        *rec.fail.lock().unwrap() = false;
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(flush(&mut r, Instant::now()).await.unwrap());
        assert_eq!(r.next_write(), None);
    }

    /// A checkpoint written while a rate-limited write ran: that write may
    /// land after it, so the checkpoint's status is written again.
    #[tokio::test(start_paused = true)]
    async fn a_write_overtaken_by_a_checkpoint_writes_the_checkpoint_again() {
        let rec = Recording::default();
        let mut r = StatusReporter::new(Box::new(rec.clone()), Duration::from_secs(5));
        let now = Instant::now();
        r.offer(&status("a"), now);
        let mut running = r.start(now).unwrap();
        assert!(r.write_now(&status("checkpoint"), now).await.unwrap());
        let done = running.done().await;
        assert!(r.finished(done, now).unwrap());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(flush(&mut r, Instant::now()).await.unwrap());
        // "a" may reach the API server before or after the checkpoint; the
        // checkpoint is written last either way.
        let mut writes = rec.writes.lock().unwrap().clone();
        assert_eq!(writes.pop(), Some(status("checkpoint")));
        writes.sort_by(|x, y| x.last_error.cmp(&y.last_error));
        assert_eq!(writes, vec![status("a"), status("checkpoint")]);
        assert_eq!(r.next_write(), None);
    }

    #[test]
    fn condition_transition_time_kept_while_status_unchanged() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            "Ready",
            true,
            "Synced",
            "a".into(),
            &t0,
            Some(1),
        );
        set_condition(
            &mut conds,
            "Ready",
            true,
            "Synced",
            "b".into(),
            &t1,
            Some(2),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t0);
        assert_eq!(conds[0].message, "b");
        set_condition(
            &mut conds,
            "Ready",
            false,
            "SyncFailed",
            "c".into(),
            &t1,
            Some(2),
        );
        assert_eq!(conds[0].last_transition_time, t1);
    }
}
