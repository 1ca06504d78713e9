//! Leader election: the observed record on its own, then candidates against
//! a fake Lease API with optimistic concurrency, on paused tokio time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::clock::{TokioClock, now};
use common::lease::{LeaseApi, NAME, NAMESPACE};
use http::{Method, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use switchyard_operator::http::Health;
use switchyard_operator::leader::{
    LeaderElector, LeaseSettings, Observed, next_record, run_while_leader,
};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};

const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_PERIOD: Duration = Duration::from_secs(2);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn settings(holder: &str) -> LeaseSettings {
    LeaseSettings {
        name: NAME.into(),
        holder: holder.into(),
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY_PERIOD,
    }
}

fn elector(api: &LeaseApi, holder: &str, health: Arc<Health>) -> LeaderElector {
    LeaderElector::new(
        Api::<Lease>::namespaced(api.client(), NAMESPACE),
        settings(holder),
        Arc::new(TokioClock::starting_at(now())),
        health,
    )
    .unwrap()
}

/// A record as `holder` writes it when its own clock reads `renewed`.
fn held_by(holder: &str, renewed: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        acquire_time: Some(MicroTime(now())),
        renew_time: Some(MicroTime(renewed)),
        lease_transitions: Some(2),
        ..LeaseSpec::default()
    }
}

fn lease(spec: LeaseSpec) -> Lease {
    Lease {
        spec: Some(spec),
        ..Lease::default()
    }
}

#[test]
fn a_record_is_in_force_for_its_duration_after_it_was_last_seen_to_change() {
    let t0 = Instant::now();
    // The holder's clock is an hour behind ours: irrelevant.
    let stale_clock = now() - SignedDuration::from_secs(3600);
    let mut observed = Observed::new(lease(held_by("b", stale_clock)), t0);
    assert!(observed.is_valid(t0 + secs(14), LEASE_DURATION));
    assert!(!observed.is_valid(t0 + secs(15), LEASE_DURATION));
    // Read again unchanged: still judged from when it last changed.
    observed.update(lease(held_by("b", stale_clock)), t0 + secs(10));
    assert!(!observed.is_valid(t0 + secs(15), LEASE_DURATION));
    // Renewed, even to a time earlier than ours by far: in force again.
    let renewed = stale_clock + SignedDuration::from_secs(10);
    observed.update(lease(held_by("b", renewed)), t0 + secs(10));
    assert!(observed.is_valid(t0 + secs(24), LEASE_DURATION));
    assert!(!observed.is_valid(t0 + secs(25), LEASE_DURATION));
    assert!(observed.is_held_by("b") && !observed.is_held_by("a"));
}

#[test]
fn a_renewal_keeps_the_acquire_time_and_a_take_over_counts_a_transition() {
    let later = now() + SignedDuration::from_secs(30);
    let created = next_record(None, "a", LEASE_DURATION, now());
    assert_eq!(
        (created.lease_transitions, created.lease_duration_seconds),
        (Some(0), Some(15))
    );
    let renewed = next_record(Some(&created), "a", LEASE_DURATION, later);
    assert_eq!(renewed.acquire_time, Some(MicroTime(now())));
    assert_eq!(renewed.renew_time, Some(MicroTime(later)));
    assert_eq!(renewed.lease_transitions, Some(0));
    let taken = next_record(Some(&renewed), "b", LEASE_DURATION, later);
    assert_eq!(taken.holder_identity.as_deref(), Some("b"));
    assert_eq!(taken.acquire_time, Some(MicroTime(later)));
    assert_eq!(taken.lease_transitions, Some(1));
}

#[tokio::test]
async fn lease_timing_must_leave_the_renew_deadline_below_the_lease_duration() {
    let api = Api::<Lease>::namespaced(LeaseApi::default().client(), NAMESPACE);
    let too_late = LeaseSettings {
        renew_deadline: LEASE_DURATION,
        ..settings("a")
    };
    let error = LeaderElector::new(
        api,
        too_late,
        Arc::new(TokioClock::starting_at(now())),
        Arc::default(),
    )
    .err()
    .unwrap();
    assert_eq!(error.metric_label(), "lease_timing");
}

/// Regression: expiry was judged by comparing the holder's `renewTime` with
/// our clock, so a holder whose clock ran behind lost the Lease while it
/// renewed, and one whose clock ran ahead kept it forever after it died.
#[tokio::test(start_paused = true)]
async fn a_clock_skewed_holder_is_taken_over_only_a_lease_duration_after_its_record_stops_changing()
{
    for skew in [-3600, 3600] {
        let api = LeaseApi::default();
        let start = Instant::now();
        let b_clock = now() + SignedDuration::from_secs(skew);
        api.set(held_by("replica-b", b_clock));
        // replica-b renews every 2 s, between our polls (at even seconds),
        // by its own clock, the last time at 29 s.
        let b = api.clone();
        tokio::spawn(async move {
            for at in (1..30).step_by(2) {
                sleep_until(start + secs(at)).await;
                b.set(held_by(
                    "replica-b",
                    b_clock + SignedDuration::from_secs(at as i64),
                ));
            }
        });
        let health = Arc::new(Health::default());
        let mut a = elector(&api, "replica-a", health.clone());
        timeout(secs(120), a.acquire()).await.unwrap();
        let taken_at = start.elapsed();
        // Seen unchanged from its poll at 30 s on, the record expires at 45 s;
        // the next poll takes the Lease.
        assert_eq!(taken_at, secs(46), "skew {skew}");
        let writes = api.writes();
        assert_eq!(writes.len(), 1, "skew {skew}: {writes:?}");
        assert_eq!(writes[0].status, Some(StatusCode::OK));
        let spec = api.spec().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert!(health.leader.load(Ordering::Relaxed));
        assert!(health.api_reachable.load(Ordering::Relaxed));
    }
}

/// Regression: a renewal that never got an answer kept the leader acting
/// (its request had no timeout and the loop waited for it).
#[tokio::test(start_paused = true)]
async fn a_stalled_api_makes_the_leader_step_down_by_the_renew_deadline() {
    let api = LeaseApi::default();
    let health = Arc::new(Health::default());
    let mut a = elector(&api, "replica-a", health.clone());
    let start = Instant::now();
    a.acquire().await;
    assert!(health.leader.load(Ordering::Relaxed));
    let staller = api.clone();
    tokio::spawn(async move {
        sleep_until(start + secs(3)).await;
        staller.stall(true);
    });
    timeout(secs(60), a.hold()).await.unwrap();
    // Renewed at 2 s; the renewal sent at 4 s hangs; the deadline is 2 + 10 s.
    assert_eq!(start.elapsed(), secs(2) + RENEW_DEADLINE);
    assert!(!health.leader.load(Ordering::Relaxed));
    let writes: Vec<_> = api
        .writes()
        .iter()
        .map(|w| (w.at - start, w.method.clone(), w.status))
        .collect();
    assert_eq!(
        writes,
        [
            (secs(0), Method::POST, Some(StatusCode::CREATED)),
            (secs(2), Method::PUT, Some(StatusCode::OK)),
            (secs(4), Method::PUT, None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn of_two_candidates_racing_for_an_expired_lease_one_wins_and_the_other_gets_409() {
    let api = LeaseApi::default();
    // replica-b stopped renewing.
    api.set(held_by("replica-b", now()));
    let mut a = elector(&api, "replica-a", Arc::default());
    let mut c = elector(&api, "replica-c", Arc::default());
    let start = Instant::now();
    let (a_won, c_won) = tokio::join!(
        timeout(secs(30), a.acquire()),
        timeout(secs(30), c.acquire())
    );
    assert!(a_won.is_ok() != c_won.is_ok(), "exactly one wins");
    let winner = if a_won.is_ok() {
        "replica-a"
    } else {
        "replica-c"
    };
    let writes = api.writes();
    let outcomes: Vec<_> = writes.iter().map(|w| (w.at - start, w.status)).collect();
    assert_eq!(
        outcomes,
        [
            (secs(16), Some(StatusCode::OK)),
            (secs(16), Some(StatusCode::CONFLICT))
        ]
    );
    let version = |i: usize| {
        writes[i]
            .body
            .as_ref()
            .unwrap()
            .metadata
            .resource_version
            .clone()
    };
    assert_eq!(version(0), version(1), "both wrote as of the same read");
    assert_eq!(api.spec().unwrap().holder_identity.as_deref(), Some(winner));
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_is_taken_over_at_the_next_poll() {
    let api = LeaseApi::default();
    let mut a = elector(&api, "replica-a", Arc::default());
    let mut c = elector(&api, "replica-c", Arc::default());
    let start = Instant::now();
    a.acquire().await;
    let (released, taken_at) = tokio::join!(
        async {
            sleep(secs(5)).await;
            a.release().await
        },
        async {
            timeout(secs(60), c.acquire()).await.unwrap();
            start.elapsed()
        }
    );
    released.unwrap();
    // Polls at 0, 2, 4 s saw replica-a; the one at 6 s sees the release.
    assert_eq!(taken_at, secs(6));
    let writes = api.writes();
    let release = writes[1].body.as_ref().unwrap().spec.clone().unwrap();
    assert_eq!(
        (release.holder_identity, release.lease_duration_seconds),
        (None, Some(1))
    );
    let spec = api.spec().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-c"));
    assert_eq!(spec.lease_transitions, Some(1));
}

/// Regression guard for the operator's main loop: the controllers run only
/// while the Lease is held, stop the moment the leader steps down, and start
/// again when it wins the Lease back.
#[tokio::test(start_paused = true)]
async fn the_leaders_work_stops_when_the_lease_is_lost_and_resumes_when_it_is_won_back() {
    let api = LeaseApi::default();
    let health = Arc::new(Health::default());
    let mut a = elector(&api, "replica-a", health.clone());
    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    // The stand-in for the controllers: a write every 700 ms until shutdown.
    let writes = Arc::new(Mutex::new(Vec::new()));
    let lead = || {
        let writes = writes.clone();
        let mut stop = stop_rx.clone();
        async move {
            loop {
                writes.lock().unwrap().push(start.elapsed());
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = sleep(Duration::from_millis(700)) => {}
                }
            }
        }
    };
    let mut shutdown = stop_rx.clone();
    let script = async {
        // The renewal at 4 s hangs: replica-a steps down at 12 s.
        sleep_until(start + secs(3)).await;
        api.stall(true);
        // replica-b takes the Lease over (it expired for b at 17 s).
        sleep_until(start + secs(20)).await;
        api.stall(false);
        api.set(held_by("replica-b", now()));
        // replica-b releases it; replica-a takes it at its next poll (32 s).
        sleep_until(start + secs(31)).await;
        let mut released = api.spec().unwrap();
        released.holder_identity = None;
        released.lease_duration_seconds = Some(1);
        api.set(released);
        sleep_until(start + secs(40)).await;
        stop_tx.send(true).unwrap();
    };
    let run = run_while_leader(&mut a, lead, async move {
        let _ = shutdown.wait_for(|s| *s).await;
    });
    timeout(secs(120), async { tokio::join!(run, script) })
        .await
        .unwrap();
    let writes = writes.lock().unwrap().clone();
    assert!(
        writes.iter().all(|w| *w <= secs(12) || *w >= secs(32)),
        "a write while not leading: {writes:?}"
    );
    assert!(writes.iter().any(|w| *w < secs(12)), "{writes:?}");
    assert_eq!(writes.iter().find(|w| **w > secs(12)), Some(&secs(32)));
    // Released on shutdown.
    let spec = api.spec().unwrap();
    assert_eq!(
        (spec.holder_identity, spec.lease_duration_seconds),
        (None, Some(1))
    );
    assert!(!health.leader.load(Ordering::Relaxed));
}
