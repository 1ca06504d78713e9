//! The agent's sync pass and mode switch over the fake kernel: fail-static
//! apply, complete shard generations only, restart recovery, the switch with
//! verification and rollback, and a kill at every recorded step.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::fake::{EBPF_MASQUERADE_PORTS, FakeKernel, SyncRecord, rule_lines};
use common::*;
use switchyard_agent::agent::SyncOutcome;
use switchyard_agent::watch::Source;
use switchyard_api::Mode;
use switchyard_api::proxynode::SwitchStep;
use switchyard_dataplane::ebpf::masq_ports::MasqueradePorts;

fn condition(status: &switchyard_api::ProxyNodeStatus, type_: &str) -> (String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (c.status.clone(), c.reason.clone())
}

fn web_lines() -> Vec<String> {
    vec![format!("{WEB_VIP}:80 -> 10.0.1.5:8080")]
}

#[tokio::test(start_paused = true)]
async fn first_sync_applies_the_target_mode_and_reports_it() {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    let out = agent.sync(&inputs(Some(Mode::Nftables), None), None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(kernel.installed(), vec![Mode::Nftables]);
    assert_eq!(kernel.rules(Mode::Nftables), Some(web_lines()));
    let s = agent.status();
    assert_eq!(s.applied_mode, Some(Mode::Nftables));
    assert_eq!(s.applied_epoch, Some(1));
    assert_eq!(s.applied_generation_sum, Some(1));
    let counts = s.counts.clone().unwrap();
    assert_eq!(
        (counts.service_ports, counts.endpoints, counts.objects),
        (1, 1, 1)
    );
    assert_eq!(condition(s, "Ready"), ("True".into(), "Synced".into()));
    assert_eq!(
        condition(s, "Degraded"),
        ("False".into(), "AsExpected".into())
    );
    // The same inputs again do nothing.
    let again = agent.sync(&inputs(Some(Mode::Nftables), None), None).await;
    assert!(matches!(again, SyncOutcome::Unchanged), "{again:?}");
    assert_eq!(kernel.syncs().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_sweep_after_a_first_sync_looks_only_for_the_other_modes() {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    let out = agent.sync(&inputs(Some(Mode::Iptables), None), None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    // Recovery asks about every mode; the sweep neither about the active
    // one nor about IPVS, which shares its chains (each check of an
    // iptables mode lists the nat table the sync just wrote).
    let checks = kernel.take_presence_checks();
    let (recovery, sweep) = checks.split_at(Mode::ALL.len());
    assert_eq!(recovery, Mode::ALL);
    assert_eq!(sweep, [Mode::Nftables, Mode::Ebpf]);
}

#[tokio::test(start_paused = true)]
async fn apply_error_keeps_previous_rules_and_reports_degraded() {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    agent.sync(&inputs(Some(Mode::Iptables), None), None).await;
    kernel.fail_sync(Mode::Iptables, true);
    let mut changed = inputs(Some(Mode::Iptables), None);
    changed.shards = vec![shard(1, 0, 1, 2, vec![])];
    let out = agent.sync(&changed, None).await;
    assert!(
        matches!(out, SyncOutcome::Failed(ref e) if e.to_string().contains("injected failure")),
        "{out:?}"
    );
    assert_eq!(
        kernel.rules(Mode::Iptables),
        Some(web_lines()),
        "previous rules stay"
    );
    let s = agent.status();
    assert_eq!(s.applied_generation_sum, Some(1), "still generation 1");
    assert_eq!(
        condition(s, "Degraded"),
        ("True".into(), "ApplyFailed".into())
    );
    assert!(
        s.last_error
            .as_deref()
            .unwrap()
            .contains("injected failure")
    );
    assert!(
        agent
            .metrics()
            .encode()
            .contains("switchyard_sync_proxy_rules_failures_total{mode=\"iptables\"} 1")
    );
    // The same inputs are retried (not skipped as unchanged) and succeed.
    kernel.fail_sync(Mode::Iptables, false);
    let out = agent.sync(&changed, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(kernel.rules(Mode::Iptables), Some(vec![]));
    assert_eq!(agent.status().last_error, None);
    assert_eq!(condition(agent.status(), "Degraded").0, "False");
}

#[tokio::test(start_paused = true)]
async fn incomplete_shard_generation_is_not_applied() {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    let mut partial = inputs(Some(Mode::Nftables), None);
    partial.shards = vec![shard(1, 0, 2, 1, vec![web()])];
    let out = agent.sync(&partial, None).await;
    assert!(matches!(out, SyncOutcome::Waiting(_)), "{out:?}");
    assert!(
        kernel.installed().is_empty(),
        "nothing applied from half a layout"
    );

    agent.sync(&inputs(Some(Mode::Nftables), None), None).await;
    // Re-sharding: epoch 2 with one of two shards published; epoch 1 stays applied.
    let other = rule(
        2,
        "api",
        "10.96.0.20",
        vec![endpoint(2, "10.0.2.5", "node-b")],
    );
    let mut resharding = inputs(Some(Mode::Nftables), None);
    resharding
        .shards
        .push(shard(2, 0, 2, 1, vec![web(), other.clone()]));
    agent.sync(&resharding, None).await;
    assert_eq!(kernel.rules(Mode::Nftables), Some(web_lines()));
    assert_eq!(agent.status().applied_epoch, Some(1));
    resharding.shards.push(shard(2, 1, 2, 1, vec![]));
    agent.sync(&resharding, None).await;
    assert_eq!(agent.status().applied_epoch, Some(2));
    assert_eq!(kernel.rules(Mode::Nftables).unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn restart_converges_on_existing_kernel_state_without_flushing() {
    let kernel = FakeKernel::default();
    kernel.install(Mode::Nftables, web_lines());
    let recorded = switchyard_api::ProxyNodeStatus {
        applied_mode: Some(Mode::Nftables),
        ..Default::default()
    };
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    let out = agent
        .sync(&inputs(Some(Mode::Nftables), Some(recorded)), None)
        .await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert!(
        kernel.cleanups().is_empty(),
        "nothing flushed: {:?}",
        kernel.cleanups()
    );
    assert_eq!(
        kernel.syncs(),
        vec![SyncRecord {
            mode: Mode::Nftables,
            full: true,
            ok: true,
            masquerade_ports: None,
        }]
    );
    assert_eq!(kernel.probes(), vec![], "no switch, no probe");
}

#[tokio::test(start_paused = true)]
async fn without_api_input_nothing_is_touched() {
    let kernel = FakeKernel::default();
    kernel.install(Mode::Iptables, web_lines());
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    let out = agent.sync(&Default::default(), None).await;
    assert!(matches!(out, SyncOutcome::Waiting(_)));
    agent.set_api_error(Source::ProxyRuleset, Some("connection refused".into()));
    assert_eq!(kernel.rules(Mode::Iptables), Some(web_lines()));
    assert!(kernel.syncs().is_empty() && kernel.cleanups().is_empty());
    assert!(
        agent.reporter().next_write().is_none(),
        "no status write before the recorded status was read back"
    );
}

#[tokio::test(start_paused = true)]
async fn switch_verifies_then_removes_the_old_mode_and_records_each_step() {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    agent.sync(&inputs(Some(Mode::Iptables), None), None).await;
    let first_writes = writer.count();
    let out = agent.sync(&inputs(Some(Mode::Nftables), None), None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(kernel.installed(), vec![Mode::Nftables]);
    let vip: std::net::SocketAddr = format!("{WEB_VIP}:80").parse().unwrap();
    assert_eq!(
        kernel.probes(),
        vec![vip, vip],
        "one probe per switch, the first from nothing"
    );
    let steps: Vec<Option<SwitchStep>> = writer
        .writes
        .lock()
        .unwrap()
        .iter()
        .skip(first_writes)
        .map(|s| s.switch.as_ref().map(|sw| sw.step))
        .collect();
    assert_eq!(
        steps,
        vec![
            Some(SwitchStep::Building),
            Some(SwitchStep::Verifying),
            Some(SwitchStep::RemovingOld),
            None
        ]
    );
    let s = agent.status();
    assert_eq!(s.applied_mode, Some(Mode::Nftables));
    assert_eq!(s.switch, None);
    assert_eq!(condition(s, "Ready").0, "True");
}

#[tokio::test(start_paused = true)]
async fn failed_verification_rolls_back_and_is_not_retried_for_the_same_target() {
    let kernel = FakeKernel::default();
    kernel.break_datapath(Mode::Ebpf);
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    agent.sync(&inputs(Some(Mode::Iptables), None), None).await;
    agent.sync(&inputs(Some(Mode::Ebpf), None), None).await;
    assert_eq!(
        kernel.installed(),
        vec![Mode::Iptables],
        "new mode removed, old kept"
    );
    assert_eq!(kernel.rules(Mode::Iptables), Some(web_lines()));
    let s = agent.status().clone();
    assert_eq!(s.applied_mode, Some(Mode::Iptables));
    assert_eq!(s.failed_mode, Some(Mode::Ebpf));
    assert!(
        s.last_error.as_deref().unwrap().contains("verification"),
        "{s:?}"
    );
    assert_eq!(
        condition(&s, "Ready"),
        ("False".into(), "SwitchFailed".into())
    );
    assert_eq!(
        condition(&s, "Degraded"),
        ("True".into(), "SwitchFailed".into())
    );
    // A ruleset change is applied to the kept mode; the failed switch is not retried.
    let probes = kernel.probes().len();
    let mut changed = inputs(Some(Mode::Ebpf), None);
    changed.shards = vec![shard(
        1,
        0,
        1,
        2,
        vec![web(), rule(2, "api", "10.96.0.20", vec![])],
    )];
    let out = agent.sync(&changed, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(kernel.probes().len(), probes);
    assert_eq!(kernel.rules(Mode::Iptables).unwrap().len(), 2);
    // Moving the target back to the kept mode clears the failure.
    agent.sync(&inputs(Some(Mode::Iptables), None), None).await;
    assert_eq!(agent.status().failed_mode, None);
    assert_eq!(condition(agent.status(), "Degraded").0, "False");
}

#[tokio::test(start_paused = true)]
async fn failed_build_removes_the_half_built_mode() {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    agent.sync(&inputs(Some(Mode::Ipvs), None), None).await;
    kernel.fail_sync(Mode::Nftables, true);
    agent.sync(&inputs(Some(Mode::Nftables), None), None).await;
    assert_eq!(kernel.installed(), vec![Mode::Ipvs]);
    assert!(kernel.cleanups().contains(&Mode::Nftables));
    assert_eq!(agent.status().failed_mode, Some(Mode::Nftables));
}

#[tokio::test(start_paused = true)]
async fn adopting_from_kube_proxy_verifies_ours_then_removes_its_leftovers() {
    let kernel = FakeKernel::default();
    // kube-proxy's iptables layout shows as the iptables mode being present.
    kernel.install(Mode::Iptables, vec!["kube-proxy rules".into()]);
    let leftover = FakeLeftover::default();
    *leftover.present.lock().unwrap() = true;
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &leftover);
    let out = agent.sync(&inputs(Some(Mode::Nftables), None), None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(kernel.installed(), vec![Mode::Nftables]);
    assert_eq!(
        kernel.probes().len(),
        1,
        "verified before removing kube-proxy's rules"
    );
    assert!(
        !*leftover.present.lock().unwrap(),
        "kube-proxy nftables tables removed"
    );
    assert_eq!(kernel.rules(Mode::Nftables), Some(web_lines()));
}

/// Adopting from kube-proxy's nftables mode into eBPF dropped every
/// connection its tables had translated: the sweep removed them at once,
/// and netfilter stopped translating those connections (eBPF leaves them to
/// it). Into a netfilter mode, whose own NAT chains keep netfilter
/// translating, they go at once.
#[tokio::test(start_paused = true)]
async fn kube_proxys_tables_stay_under_ebpf_while_connections_they_translated_are_open() {
    for (to, kept) in [(Mode::Ebpf, true), (Mode::Nftables, false)] {
        let kernel = FakeKernel::default();
        let leftover = FakeLeftover::default();
        *leftover.present.lock().unwrap() = true;
        *leftover.open.lock().unwrap() = 2;
        let writer = RecordingWriter::default();
        let mut agent = agent(&kernel, &writer, &leftover);
        let target = inputs(Some(to), None);
        let out = agent.sync(&target, None).await;
        assert!(matches!(out, SyncOutcome::Synced), "{to}: {out:?}");
        assert_eq!(kernel.installed(), vec![to]);
        assert_eq!(*leftover.present.lock().unwrap(), kept, "{to}");
        assert_eq!(agent.draining(), kept, "{to}");
        if !kept {
            continue;
        }
        // A full pass (periodic resync) does not sweep them either.
        agent.invalidate();
        agent.sync(&target, None).await;
        agent.settle_drains();
        assert!(*leftover.present.lock().unwrap(), "still translating");
        *leftover.open.lock().unwrap() = 0;
        agent.settle_drains();
        assert!(!*leftover.present.lock().unwrap(), "removed once drained");
        assert!(!agent.draining());
    }
}

/// A switch from eBPF to a netfilter mode: the new mode's fully-random
/// masquerade picked ports eBPF's draining un-SNAT entries held, and the
/// draining tc program sent those answers to the old flows' clients. While
/// eBPF drains, the new mode masquerades on the ports beside eBPF's; once it
/// is gone, the next pass syncs the new mode with the kernel's ports.
#[tokio::test(start_paused = true)]
async fn a_mode_beside_a_draining_ebpf_masquerades_outside_ebpfs_ports_until_it_is_gone() {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    agent.sync(&inputs(Some(Mode::Ebpf), None), None).await;
    kernel.connections_open(Mode::Ebpf, true);
    let to_nftables = inputs(Some(Mode::Nftables), None);
    let out = agent.sync(&to_nftables, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert!(agent.draining());
    let beside = EBPF_MASQUERADE_PORTS.beside();
    assert_eq!(
        beside,
        Some(MasqueradePorts {
            min: 32768,
            max: 65535
        })
    );
    let last = |kernel: &FakeKernel| kernel.syncs().last().cloned().unwrap();
    assert_eq!(last(&kernel).mode, Mode::Nftables);
    assert_eq!(last(&kernel).masquerade_ports, beside, "built beside eBPF");
    assert!(!agent.settle_drains(), "eBPF still drains");
    agent.invalidate();
    agent.sync(&to_nftables, None).await;
    assert_eq!(
        last(&kernel).masquerade_ports,
        beside,
        "a resync while it drains"
    );

    kernel.connections_open(Mode::Ebpf, false);
    assert!(agent.settle_drains(), "eBPF gone: nftables is synced again");
    let before = kernel.syncs().len();
    agent.sync(&to_nftables, None).await;
    assert_eq!(kernel.syncs().len(), before + 1, "the same inputs, synced");
    assert_eq!(last(&kernel).masquerade_ports, None);
}

#[tokio::test(start_paused = true)]
async fn iptables_is_never_swept_from_under_ipvs() {
    let kernel = FakeKernel::default();
    kernel.install(Mode::Iptables, vec!["shared chains".into()]);
    kernel.install(Mode::Ipvs, web_lines());
    let recorded = switchyard_api::ProxyNodeStatus {
        applied_mode: Some(Mode::Ipvs),
        ..Default::default()
    };
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    agent
        .sync(&inputs(Some(Mode::Ipvs), Some(recorded)), None)
        .await;
    assert!(kernel.cleanups().is_empty(), "{:?}", kernel.cleanups());
}

/// Adopting from kube-proxy's ipvs mode into eBPF cut the node's and the
/// masqueraded connections IPVS carried: its chains (which have the iptables
/// mode's names) made the iptables mode look active, so the agent retired
/// "iptables", then IPVS, and as one drains at a time, removed the first at
/// once, and with it the rules IPVS's connections still needed. Unrecorded,
/// the layout is retired as IPVS, and its chains stay while it drains.
#[tokio::test(start_paused = true)]
async fn kube_proxys_ipvs_layout_drains_as_ipvs_with_its_chains() {
    let kernel = FakeKernel::default();
    kernel.install(Mode::Iptables, vec!["kube-proxy's ipvs chains".into()]);
    kernel.install(Mode::Ipvs, vec!["kube-proxy's virtual servers".into()]);
    kernel.connections_open(Mode::Iptables, true);
    kernel.connections_open(Mode::Ipvs, true);
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    let to_ebpf = inputs(Some(Mode::Ebpf), None);
    let out = agent.sync(&to_ebpf, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(agent.status().applied_mode, Some(Mode::Ebpf));
    assert!(agent.draining());
    // A full pass (periodic resync) sweeps neither.
    agent.invalidate();
    agent.sync(&to_ebpf, None).await;
    agent.settle_drains();
    assert!(kernel.cleanups().is_empty(), "{:?}", kernel.cleanups());

    kernel.connections_open(Mode::Ipvs, false);
    agent.settle_drains();
    assert_eq!(kernel.cleanups(), [Mode::Ipvs]);
}

/// Leaving IPVS cut the connections it carried: its virtual servers went
/// with the switch. A retired mode with open connections stays (and the
/// sweep leaves it) until they end.
#[tokio::test(start_paused = true)]
async fn leaving_a_mode_with_open_connections_drains_it_before_removing_it() {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut agent = agent(&kernel, &writer, &FakeLeftover::default());
    agent.sync(&inputs(Some(Mode::Ipvs), None), None).await;
    kernel.connections_open(Mode::Ipvs, true);
    let to_nftables = inputs(Some(Mode::Nftables), None);
    let out = agent.sync(&to_nftables, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(agent.status().applied_mode, Some(Mode::Nftables));
    assert_eq!(kernel.rules(Mode::Ipvs), Some(web_lines()), "draining");
    // A full pass (periodic resync) sweeps leftovers, not the draining mode.
    agent.invalidate();
    agent.sync(&to_nftables, None).await;
    assert_eq!(
        kernel.rules(Mode::Ipvs),
        Some(web_lines()),
        "still draining"
    );
    assert!(kernel.cleanups().is_empty(), "{:?}", kernel.cleanups());
    kernel.connections_open(Mode::Ipvs, false);
    agent.sync(&to_nftables, None).await;
    assert_eq!(kernel.installed(), vec![Mode::Nftables]);
    assert_eq!(kernel.cleanups(), vec![Mode::Ipvs]);
}

/// An agent restarted while a retired mode drained swept that mode as a
/// leftover on its first pass, cutting the connections it still served:
/// the restarted agent retires it again, and it drains to the end.
#[tokio::test(start_paused = true)]
async fn an_agent_restarted_mid_drain_keeps_draining_the_retired_mode() {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut first = agent(&kernel, &writer, &FakeLeftover::default());
    first.sync(&inputs(Some(Mode::Ipvs), None), None).await;
    kernel.connections_open(Mode::Ipvs, true);
    let to_nftables = inputs(Some(Mode::Nftables), None);
    first.sync(&to_nftables, None).await;
    assert_eq!(kernel.rules(Mode::Ipvs), Some(web_lines()), "draining");
    drop(first);

    let recorded = writer.last();
    let mut second = agent(
        &kernel,
        &RecordingWriter::default(),
        &FakeLeftover::default(),
    );
    let restarted = inputs(Some(Mode::Nftables), recorded);
    let out = second.sync(&restarted, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    assert_eq!(second.status().applied_mode, Some(Mode::Nftables));
    assert_eq!(
        kernel.rules(Mode::Ipvs),
        Some(web_lines()),
        "still draining after the restart"
    );
    assert!(kernel.cleanups().is_empty(), "{:?}", kernel.cleanups());
    kernel.connections_open(Mode::Ipvs, false);
    second.sync(&restarted, None).await;
    assert_eq!(kernel.installed(), vec![Mode::Nftables]);
    assert_eq!(kernel.cleanups(), vec![Mode::Ipvs]);
}

/// Kill the agent during status write `kill_at` (0: Building, 1: Verifying,
/// 2: RemovingOld, 3: Done), restart it from the last recorded status and the
/// kernel as it was left, and check it converges on the target with traffic
/// routed at every point.
async fn kill_during_write_and_restart(kill_at: usize) {
    let kernel = FakeKernel::default();
    let writer = RecordingWriter::default();
    let mut first = agent(&kernel, &writer, &FakeLeftover::default());
    first.sync(&inputs(Some(Mode::Iptables), None), None).await;
    let before = *writer.attempts.lock().unwrap();
    *writer.hang_at.lock().unwrap() = Some(before + kill_at);
    let switching = inputs(Some(Mode::Nftables), None);
    tokio::select! {
        out = first.sync(&switching, None) => panic!("sync finished despite the kill: {out:?}"),
        () = writer.hung.notified() => {}
    }
    drop(first);
    let installed = kernel.installed();
    assert!(
        installed
            .iter()
            .any(|m| kernel.rules(*m) == Some(web_lines())),
        "kill at {kill_at}: traffic routed by {installed:?}"
    );

    let recorded = writer.last();
    let restarted_writer = RecordingWriter::default();
    let mut second = agent(&kernel, &restarted_writer, &FakeLeftover::default());
    let out = second
        .sync(&inputs(Some(Mode::Nftables), recorded.clone()), None)
        .await;
    assert!(
        matches!(out, SyncOutcome::Synced),
        "kill at {kill_at}: {out:?}"
    );
    assert_eq!(
        kernel.installed(),
        vec![Mode::Nftables],
        "kill at {kill_at}, recorded {recorded:?}"
    );
    assert_eq!(kernel.rules(Mode::Nftables), Some(web_lines()));
    let s = second.status();
    assert_eq!(
        (s.applied_mode, s.switch.clone(), s.failed_mode),
        (Some(Mode::Nftables), None, None)
    );
}

#[tokio::test(start_paused = true)]
async fn killed_before_building_converges() {
    kill_during_write_and_restart(0).await;
}

#[tokio::test(start_paused = true)]
async fn killed_before_verifying_converges() {
    kill_during_write_and_restart(1).await;
}

#[tokio::test(start_paused = true)]
async fn killed_before_removing_old_converges() {
    kill_during_write_and_restart(2).await;
}

#[tokio::test(start_paused = true)]
async fn killed_before_recording_done_converges() {
    kill_during_write_and_restart(3).await;
}

#[test]
fn rule_lines_name_vip_and_endpoints() {
    let linked = switchyard_api::policy::link(
        &switchyard_api::ruleset::Ruleset {
            services: vec![web()],
        },
        &switchyard_agent::node::node_info(&node()),
    );
    assert_eq!(rule_lines(&linked), web_lines());
}
