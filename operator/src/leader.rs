//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does it: the holder renews `renewTime` every few seconds; a
//! candidate takes the Lease over only when it has not been renewed for
//! `leaseDurationSeconds`. Writes carry the read's resourceVersion, so of two
//! candidates racing for an expired Lease exactly one wins (the other gets 409).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::error::Error;
use crate::http::Health;

/// Who we are and how long a Lease lasts.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    /// This replica's identity (its pod name).
    pub holder: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

/// What to do with the Lease as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or its holder stopped renewing: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and renewed it recently.
    Wait { holder: String },
}

/// Decide from the Lease's spec (`None`: the Lease does not exist).
pub fn decide(spec: Option<&LeaseSpec>, holder: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(h) if h == holder => Decision::Renew,
        Some(other) => {
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            match renewed {
                Some(at) if now.duration_since(at) < duration => Decision::Wait {
                    holder: other.to_string(),
                },
                _ => Decision::Acquire,
            }
        }
    }
}

/// Takes and keeps the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    clock: Arc<dyn Clock>,
    health: Arc<Health>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl LeaderElector {
    pub fn new(
        api: Api<Lease>,
        settings: LeaseSettings,
        clock: Arc<dyn Clock>,
        health: Arc<Health>,
    ) -> LeaderElector {
        LeaderElector {
            api,
            settings,
            clock,
            health,
        }
    }

    /// One attempt, recorded in [`Health`].
    async fn attempt(&self) -> Result<bool, Error> {
        let result = self.try_acquire_or_renew().await;
        self.health
            .api_reachable
            .store(result.is_ok(), Ordering::Relaxed);
        self.health
            .leader
            .store(matches!(result, Ok(true)), Ordering::Relaxed);
        result
    }

    fn lease_error(&self, source: kube::Error) -> Error {
        Error::Lease {
            name: self.settings.name.clone(),
            source,
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp, renew: bool) -> LeaseSpec {
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.holder.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if renew {
                previous.and_then(|s| s.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if renew || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew; true when we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let now = self.clock.now();
        let current = match self.api.get(&self.settings.name).await {
            Ok(lease) => Some(lease),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(self.lease_error(e)),
        };
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let renew = match decide(spec, &self.settings.holder, now) {
            Decision::Wait { .. } => return Ok(false),
            Decision::Renew => true,
            Decision::Acquire => false,
        };
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, now, false)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(self.spec(lease.spec.as_ref(), now, renew));
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.lease_error(e)),
        }
    }

    /// Wait until we hold the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.attempt().await {
                Ok(true) => {
                    info!(lease = %self.settings.name, holder = %self.settings.holder, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(error) => warn!(%error, "leader election"),
            }
            tokio::time::sleep(self.settings.renew_every).await;
        }
    }

    /// Keep renewing; returns when the Lease is lost (taken over, or not
    /// renewed within its duration because the API was unreachable).
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.settings.renew_every).await;
            match self.attempt().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.settings.name, "the lease was taken over");
                    return;
                }
                Err(error) => {
                    warn!(%error, "renewing the lease failed");
                    if last_renewed.elapsed() >= self.settings.duration {
                        return;
                    }
                    // Still ours until the duration passes.
                    self.health.leader.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Give the Lease up on shutdown so the other replica takes over at once.
    pub async fn release(&self) -> Result<(), Error> {
        let mut lease = self
            .api
            .get(&self.settings.name)
            .await
            .map_err(|e| self.lease_error(e))?;
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.settings.holder.as_str());
        if !ours {
            return Ok(());
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.lease_error(e)),
        }
    }
}
