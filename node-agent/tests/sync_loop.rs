//! The control loop under tokio's paused clock: bursts are coalesced into one
//! sync per minSyncPeriod, the periodic resync rewrites everything, a failed
//! sync is retried, a lost API server keeps the rules and reports Degraded,
//! a drained mode goes within a drain check, a status write left unanswered
//! holds up no sync.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake::FakeKernel;
use common::*;
use futures::channel::mpsc;
use switchyard_agent::agent::Agent;
use switchyard_agent::inputs::Inputs;
use switchyard_agent::sync::{DRAIN_CHECK, run};
use switchyard_agent::watch::{Source, WatchEvent};
use switchyard_api::Mode;
use switchyard_api::proxyconfig::{NftablesSettings, SyncSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Harness {
    kernel: FakeKernel,
    writer: RecordingWriter,
    inputs: Arc<Mutex<Inputs>>,
    events: mpsc::UnboundedSender<WatchEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Agent>>,
    generation: u64,
}

/// Let the loop task run until it waits on its timers again.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

impl Harness {
    async fn start() -> Harness {
        let kernel = FakeKernel::default();
        let writer = RecordingWriter::default();
        let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
        let mut initial = inputs(Some(Mode::Nftables), None);
        let mut config = (*config(Mode::Nftables)).clone();
        config.spec.nftables = Some(NftablesSettings {
            masquerade_bit: None,
            sync: SyncSettings {
                min_sync_period: Some("1s".into()),
                sync_period: Some("1m".into()),
            },
        });
        initial.config = Some(Arc::new(config));
        let inputs = Arc::new(Mutex::new(initial));
        let (events, rx) = mpsc::unbounded();
        // The watches' initial lists.
        events
            .unbounded_send(WatchEvent::Changed(Source::ProxyNode))
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shared = inputs.clone();
        let task = tokio::spawn(async move {
            let read = move || shared.lock().unwrap().clone();
            run(&mut agent, rx, read, async {
                let _ = stopped.await;
            })
            .await;
            agent
        });
        settle().await;
        Harness {
            kernel,
            writer,
            inputs,
            events,
            stop: Some(stop),
            task: Some(task),
            generation: 1,
        }
    }

    /// A new shard generation arrives with `services` web and `extra` more.
    fn change(&mut self, extra: usize) {
        self.generation += 1;
        let mut services = vec![web()];
        for i in 0..extra {
            let n = u32::try_from(i).unwrap() + 2;
            services.push(rule(n, &format!("svc{n}"), &format!("10.96.1.{n}"), vec![]));
        }
        self.inputs.lock().unwrap().shards = vec![shard(1, 0, 1, self.generation, services)];
        self.events
            .unbounded_send(WatchEvent::Changed(Source::ProxyRuleset))
            .unwrap();
    }

    async fn stop(mut self) -> Agent {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn burst_of_changes_is_coalesced_into_one_sync_per_min_period() {
    let mut h = Harness::start().await;
    assert_eq!(h.kernel.syncs().len(), 1, "initial sync");
    for extra in 1..=10 {
        tokio::time::advance(Duration::from_millis(50)).await;
        h.change(extra);
        settle().await;
    }
    // 500ms after the first sync: still inside minSyncPeriod.
    assert_eq!(h.kernel.syncs().len(), 1);
    tokio::time::advance(Duration::from_millis(500)).await;
    settle().await;
    let syncs = h.kernel.syncs();
    assert_eq!(syncs.len(), 2, "ten changes, one sync: {syncs:?}");
    assert_eq!(
        h.kernel.rules(Mode::Nftables).unwrap().len(),
        11,
        "the last change applied"
    );
    let agent = h.stop().await;
    let text = agent.metrics().encode();
    assert!(
        text.contains("switchyard_sync_delay_seconds_count 2"),
        "{text}"
    );
    // The initial lists applied at once; the burst's oldest change (t=50ms) waited until t=1s.
    assert!(text.contains("switchyard_sync_delay_seconds_bucket{le=\"0.25\"} 1"));
    assert!(text.contains("switchyard_sync_delay_seconds_bucket{le=\"0.5\"} 1"));
    assert!(text.contains("switchyard_sync_delay_seconds_bucket{le=\"1.0\"} 2"));
}

/// A status write the API server never answered held the loop: the
/// changes after it waited for it. Status writes run beside the syncs.
#[tokio::test(start_paused = true)]
async fn a_status_write_left_unanswered_holds_up_no_sync() {
    let mut h = Harness::start().await;
    let next = *h.writer.attempts.lock().unwrap();
    *h.writer.hang_at.lock().unwrap() = Some(next);
    h.change(1);
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(
        *h.writer.attempts.lock().unwrap(),
        next + 1,
        "the change's status write started and hangs"
    );
    for extra in 2..=4 {
        h.change(extra);
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert_eq!(
        h.kernel.rules(Mode::Nftables).unwrap().len(),
        5,
        "every change synced while the write hangs"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn periodic_resync_rewrites_everything() {
    let h = Harness::start().await;
    tokio::time::advance(Duration::from_secs(59)).await;
    settle().await;
    assert_eq!(h.kernel.syncs().len(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    let syncs = h.kernel.syncs();
    assert_eq!(syncs.len(), 2, "{syncs:?}");
    assert!(syncs[1].full, "resync is a full sync after invalidate");
    h.stop().await;
}

/// A retired mode whose last connection ended stayed until the next sync
/// (the periodic resync, up to a minute later): the loop looks at what
/// drains every [`DRAIN_CHECK`].
#[tokio::test(start_paused = true)]
async fn a_drained_mode_goes_within_a_drain_check_not_at_the_next_resync() {
    let h = Harness::start().await;
    h.kernel.connections_open(Mode::Nftables, true);
    tokio::time::advance(Duration::from_secs(2)).await;
    h.inputs.lock().unwrap().proxy_node = Some(proxy_node(Some(Mode::Iptables), None));
    h.events
        .unbounded_send(WatchEvent::Changed(Source::ProxyNode))
        .unwrap();
    settle().await;
    let both = vec![Mode::Iptables, Mode::Nftables];
    let mut installed = h.kernel.installed();
    installed.sort();
    assert_eq!(installed, both, "switched, the old mode draining");
    tokio::time::advance(DRAIN_CHECK * 3).await;
    settle().await;
    let mut installed = h.kernel.installed();
    installed.sort();
    assert_eq!(installed, both, "its connections are open");
    h.kernel.connections_open(Mode::Nftables, false);
    tokio::time::advance(DRAIN_CHECK).await;
    settle().await;
    assert_eq!(h.kernel.installed(), vec![Mode::Iptables]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failed_sync_is_retried_and_previous_rules_stay() {
    let mut h = Harness::start().await;
    h.kernel.fail_sync(Mode::Nftables, true);
    tokio::time::advance(Duration::from_secs(2)).await;
    h.change(3);
    settle().await;
    assert_eq!(h.kernel.syncs().len(), 2);
    assert!(!h.kernel.syncs()[1].ok);
    assert_eq!(
        h.kernel.rules(Mode::Nftables).unwrap().len(),
        1,
        "previous rules"
    );
    h.kernel.fail_sync(Mode::Nftables, false);
    // Retry after min(syncPeriod, 30s) = 30s.
    tokio::time::advance(Duration::from_secs(29)).await;
    settle().await;
    assert_eq!(h.kernel.syncs().len(), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(h.kernel.syncs().len(), 3);
    assert_eq!(h.kernel.rules(Mode::Nftables).unwrap().len(), 4);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn lost_api_server_keeps_rules_and_reports_degraded() {
    let h = Harness::start().await;
    tokio::time::advance(Duration::from_secs(6)).await;
    settle().await;
    let before = h.writer.count();
    h.events
        .unbounded_send(WatchEvent::Failed {
            source: Source::ProxyRuleset,
            error: "connection refused".into(),
        })
        .unwrap();
    settle().await;
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    let last = h.writer.last().unwrap();
    assert!(h.writer.count() > before);
    let degraded = last
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "APIUnreachable")
    );
    assert!(degraded.message.contains("connection refused"));
    assert_eq!(h.kernel.rules(Mode::Nftables).unwrap().len(), 1);
    assert!(h.kernel.cleanups().is_empty());
    // Quiet afterwards: nothing changed, nothing written.
    let n = h.writer.count();
    tokio::time::advance(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(h.writer.count(), n);
    h.stop().await;
}

fn degraded(h: &Harness) -> (String, String) {
    let last = h.writer.last().unwrap();
    let c = last
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    (c.status.clone(), c.reason.clone())
}

#[tokio::test(start_paused = true)]
async fn degraded_until_the_failing_watch_itself_delivers_again() {
    let h = Harness::start().await;
    let send = |e: WatchEvent| h.events.unbounded_send(e).unwrap();
    send(WatchEvent::Failed {
        source: Source::ProxyRuleset,
        error: "connection refused".into(),
    });
    // Another watch delivering does not mean the failing one recovered.
    send(WatchEvent::Changed(Source::ProxyNode));
    settle().await;
    tokio::time::advance(Duration::from_secs(6)).await;
    settle().await;
    assert_eq!(degraded(&h), ("True".into(), "APIUnreachable".into()));
    send(WatchEvent::Changed(Source::ProxyRuleset));
    settle().await;
    tokio::time::advance(Duration::from_secs(6)).await;
    settle().await;
    assert_eq!(degraded(&h), ("False".into(), "AsExpected".into()));
    h.stop().await;
}
