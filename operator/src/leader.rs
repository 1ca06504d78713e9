//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's
//! leaderelection semantics:
//!
//! - A candidate judges the Lease expired by its own monotonic clock: the
//!   record (the Lease's spec) is in force for its `leaseDurationSeconds` after
//!   the local moment this candidate last saw it change (client-go's
//!   `observedTime`). The holder's `renewTime` is written but never compared
//!   with our clock, so clock skew between replicas does not matter.
//! - Every write carries the resourceVersion of the Lease as last read or
//!   written, so of two candidates racing for an expired Lease exactly one
//!   wins and the other gets 409 Conflict.
//! - The leader renews every `retry_period`. When no renewal succeeds within
//!   `renew_deadline` of the start of the last one that did, or the Lease is
//!   seen held by another replica, it stops leading. Every request has a
//!   timeout and the whole renewal is cut off at the deadline, so a hanging
//!   request cannot keep a stale leader acting. Since `renew_deadline <
//!   lease_duration`, it stops before any other candidate may take over.
//! - On shutdown the leader releases the Lease (client-go's `ReleaseOnCancel`)
//!   so a standby takes over at its next retry.
//!
//! [`run_while_leader`] ties this to the work a leader does: that work runs
//! only while the Lease is held and is dropped the moment leadership is lost.

mod record;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use record::{Observed, next_record};

use crate::clock::Clock;
use crate::error::Error;
use crate::http::Health;

/// Who we are, and client-go's three durations.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    /// This replica's identity (its pod name).
    pub holder: String,
    /// How long a record stays in force after a candidate saw it change
    /// (client-go's LeaseDuration).
    pub lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal
    /// (RenewDeadline); half of it bounds every request.
    pub renew_deadline: Duration,
    /// The pause between two attempts to take or renew the Lease (RetryPeriod).
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's rule: LeaseDuration > RenewDeadline > RetryPeriod > 0.
    fn validate(&self) -> Result<(), Error> {
        if self.retry_period.is_zero()
            || self.renew_deadline <= self.retry_period
            || self.lease_duration <= self.renew_deadline
        {
            return Err(Error::LeaseTiming {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        Ok(())
    }
}

/// Takes, keeps and gives up the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// Only for the times written into the record.
    clock: Arc<dyn Clock>,
    health: Arc<Health>,
    observed: Option<Observed>,
    /// When the last successful acquisition or renewal was sent: the renew
    /// deadline counts from here.
    renewed_at: Instant,
}

/// The HTTP status of a failed Lease request, when the API server answered.
fn api_code(error: &Error) -> Option<u16> {
    match error {
        Error::Lease {
            source: kube::Error::Api(status),
            ..
        } => Some(status.code),
        _ => None,
    }
}

impl LeaderElector {
    pub fn new(
        api: Api<Lease>,
        settings: LeaseSettings,
        clock: Arc<dyn Clock>,
        health: Arc<Health>,
    ) -> Result<LeaderElector, Error> {
        settings.validate()?;
        Ok(LeaderElector {
            api,
            settings,
            clock,
            health,
            observed: None,
            renewed_at: Instant::now(),
        })
    }

    /// Whether the Lease as last seen names us (client-go's `IsLeader`).
    pub fn is_leader(&self) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|o| o.is_held_by(&self.settings.holder))
    }

    /// One request, cut off after half the renew deadline (at least a
    /// second), as client-go's leader-election client: one hung request
    /// leaves time for a retry before the deadline.
    async fn call<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, Error> {
        let name = || self.settings.name.clone();
        let timeout = (self.settings.renew_deadline / 2).max(Duration::from_secs(1));
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(Error::Lease {
                name: name(),
                operation,
                source,
            }),
            Err(_) => Err(Error::LeaseTimeout {
                name: name(),
                operation,
                after: timeout,
            }),
        }
    }

    /// A write as of the resourceVersion it carries; `None` when another
    /// replica wrote first (409).
    async fn write(
        &self,
        operation: &'static str,
        request: impl Future<Output = kube::Result<Lease>>,
    ) -> Result<Option<Lease>, Error> {
        match self.call(operation, request).await {
            Ok(lease) => Ok(Some(lease)),
            Err(error) if api_code(&error) == Some(409) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn replace(&self, operation: &'static str, lease: Lease) -> Result<Option<Lease>, Error> {
        let params = PostParams::default();
        let request = self.api.replace(&self.settings.name, &params, &lease);
        self.write(operation, request).await
    }

    fn observe(&mut self, lease: Lease) -> &Observed {
        let now = Instant::now();
        let observed = match self.observed.take() {
            Some(mut observed) => {
                observed.update(lease, now);
                observed
            }
            None => Observed::new(lease, now),
        };
        self.observed.insert(observed)
    }

    /// Observe what a write returned; true when it was written.
    fn written(&mut self, lease: Option<Lease>) -> bool {
        lease.map(|lease| self.observe(lease)).is_some()
    }

    /// One attempt to take or renew the Lease (client-go's
    /// `tryAcquireOrRenew`); true when we hold it afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let identity = self.settings.holder.clone();
        let duration = self.settings.lease_duration;
        // Fast path: a leader renews from its own last write without reading.
        if let Some(observed) = self
            .observed
            .as_ref()
            .filter(|o| o.is_held_by(&identity) && o.is_valid(Instant::now(), duration))
        {
            let lease = observed.claimed(&identity, duration, self.clock.now());
            match self.replace("renewing", lease).await {
                Ok(Some(written)) => {
                    self.observe(written);
                    return Ok(true);
                }
                Ok(None) => debug!("the lease changed since our last renewal; reading it"),
                Err(error) => debug!(%error, "renewing failed; reading the lease"),
            }
        }
        let current = match self
            .call("reading", self.api.get(&self.settings.name))
            .await
        {
            Ok(lease) => lease,
            Err(error) if api_code(&error) == Some(404) => return self.create().await,
            Err(error) => return Err(error),
        };
        let now = self.clock.now();
        let observed = self.observe(current);
        if observed.holder().is_some()
            && !observed.is_held_by(&identity)
            && observed.is_valid(Instant::now(), duration)
        {
            return Ok(false);
        }
        let operation = if observed.is_held_by(&identity) {
            "renewing"
        } else {
            "taking over"
        };
        let lease = observed.claimed(&identity, duration, now);
        let written = self.replace(operation, lease).await?;
        Ok(self.written(written))
    }

    async fn create(&mut self) -> Result<bool, Error> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(next_record(
                None,
                &self.settings.holder,
                self.settings.lease_duration,
                self.clock.now(),
            )),
        };
        let params = PostParams::default();
        let request = self.api.create(&params, &lease);
        let written = self.write("creating", request).await?;
        Ok(self.written(written))
    }

    /// One attempt, its API reachability recorded in [`Health`].
    async fn attempt(&mut self) -> Result<bool, Error> {
        let result = self.try_acquire_or_renew().await;
        self.health
            .api_reachable
            .store(result.is_ok(), Ordering::Relaxed);
        result
    }

    /// Wait until we hold the Lease.
    pub async fn acquire(&mut self) {
        loop {
            let started = Instant::now();
            match self.attempt().await {
                Ok(true) => {
                    self.renewed_at = started;
                    self.health.leader.store(true, Ordering::Relaxed);
                    info!(lease = %self.settings.name, holder = %self.settings.holder, "became leader");
                    return;
                }
                Ok(false) => debug!(lease = %self.settings.name, "another replica holds the lease"),
                Err(error) => warn!(%error, "leader election"),
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    /// Keep renewing; returns when this replica must stop acting as leader:
    /// another replica holds the Lease, or no renewal succeeded within the
    /// renew deadline (a hanging request is abandoned at the deadline).
    pub async fn hold(&mut self) {
        loop {
            let deadline = self.renewed_at + self.settings.renew_deadline;
            match tokio::time::timeout_at(deadline, self.renew()).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(lease = %self.settings.name, "another replica took the lease over");
                    break;
                }
                Err(_) => {
                    warn!(lease = %self.settings.name, deadline = ?self.settings.renew_deadline, "no renewal within the renew deadline");
                    break;
                }
            }
        }
        self.health.leader.store(false, Ordering::Relaxed);
    }

    /// Retry until a renewal succeeds (true) or the Lease is seen held by
    /// another replica (false).
    async fn renew(&mut self) -> bool {
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            let started = Instant::now();
            match self.attempt().await {
                Ok(true) => {
                    self.renewed_at = started;
                    return true;
                }
                Ok(false) if !self.is_leader() => return false,
                Ok(false) => debug!("renewing the lease lost a race; retrying"),
                Err(error) => warn!(%error, "renewing the lease failed; retrying"),
            }
        }
    }

    /// Give the Lease up (client-go's `ReleaseOnCancel`). Read first: a
    /// renewal abandoned on the way out may have been written after all, and
    /// the release must carry its resourceVersion. When another replica
    /// holds the Lease, or writes first (409), nothing is released.
    pub async fn release(&mut self) -> Result<(), Error> {
        self.health.leader.store(false, Ordering::Relaxed);
        if !self.is_leader() {
            return Ok(());
        }
        let current = self
            .call("reading", self.api.get(&self.settings.name))
            .await?;
        self.observe(current);
        let Some(observed) = self
            .observed
            .as_ref()
            .filter(|o| o.is_held_by(&self.settings.holder))
        else {
            return Ok(());
        };
        let lease = observed.released(self.clock.now());
        let written = self.replace("releasing", lease).await?;
        self.written(written);
        Ok(())
    }
}

/// Run the work of a leader (`lead`) whenever this replica holds the Lease,
/// until `shutdown` resolves.
///
/// When leadership is lost the `lead` future is dropped at once, so nothing
/// it was doing makes another request, and the replica is a candidate again;
/// `lead` starts afresh when it wins the Lease back. `lead` watches the
/// shutdown itself and ends gracefully; the Lease is released after it ended.
pub async fn run_while_leader<L, F>(
    elector: &mut LeaderElector,
    mut lead: L,
    shutdown: impl Future<Output = ()>,
) where
    L: FnMut() -> F,
    F: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = elector.acquire() => {}
            () = &mut shutdown => return,
        }
        tokio::select! {
            () = lead() => break,
            () = elector.hold() => warn!("stopped leading: the controllers stopped; waiting for the lease"),
        }
    }
    if let Err(error) = elector.release().await {
        warn!(%error, "releasing the lease");
    }
}
