//! `switchyard demo` at a small size, for real: namespaces, the real backends
//! applied through the agent's switch procedure, the operator's batches, and
//! traffic through every switch. Needs root (CI runs as root); skipped loudly
//! otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::sync::Mutex;
use std::time::Duration;

use switchyard_api::Mode;
use switchyard_api::proxyconfig::RolloutPhase;
use switchyard_cli::demo::{DemoOptions, Progress, run_demo};
use switchyard_lab::netns::is_root;

/// One demo at a time: they share the machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn migrate(from: Mode, to: Mode) {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !is_root() {
        eprintln!("SKIP demo {from} -> {to}: needs root");
        return;
    }
    let report = run_demo(DemoOptions {
        from,
        to,
        nodes: 2,
        services: 3,
        batch: 1,
        settle: Duration::from_millis(1500),
        progress: Progress::to(Box::new(std::io::stderr()), false),
    })
    .unwrap();
    eprintln!("{}", report.to_text());
    assert_eq!(report.rollout, Some(RolloutPhase::Complete));
    assert_eq!(report.switches.len(), 2, "one switch per node");
    for s in &report.switches {
        assert_eq!(
            (s.from, s.to, &s.error),
            (Some(from), to, &None),
            "{}",
            s.node
        );
        assert!(s.objects > 0, "{}: the new dataplane has rules", s.node);
    }
    // Traffic ran through the switches: 10 long-lived connections (2 node ports
    // x 2 nodes from outside, 3 cluster IPs x 2 client pods), new connections
    // and UDP requests, and every one was answered by an endpoint of its service.
    assert_eq!(report.established, 10);
    assert!(report.exchanges > 100, "{}", report.exchanges);
    assert!(report.attempted > 100, "{}", report.attempted);
    assert!(report.udp_sent > 50, "{}", report.udp_sent);
    assert_eq!(report.failed, 0, "{:#?}", report.failures);
    assert_eq!(report.dropped, 0, "{:#?}", report.failures);
    assert_eq!(report.udp_lost, 0, "{:#?}", report.failures);
    assert_eq!(report.misrouted, 0, "{:#?}", report.failures);
    assert!(report.clean());
    let ours = format!("sycli{}-", std::process::id());
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&ours),
        "namespaces left behind"
    );
}

#[test]
fn iptables_to_nftables_drops_nothing() {
    migrate(Mode::Iptables, Mode::Nftables);
}

#[test]
fn nftables_to_iptables_drops_nothing() {
    migrate(Mode::Nftables, Mode::Iptables);
}
