//! `switchyard demo` at a small size, for real: a real control plane, the
//! operator and node agents as processes (this package's `switchyard` in its
//! operator and agent roles), the mode changed with `kubectl patch`, and
//! traffic through every switch. Needs root (CI runs as root); skipped loudly
//! otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use switchyard_api::Mode;
use switchyard_api::proxyconfig::RolloutPhase;
use switchyard_cli::demo::{DemoOptions, Progress, run_demo};
use switchyard_dataplane::ebpf::kernel::KernelConfig;
use switchyard_lab::controlplane::workdir;
use switchyard_lab::netns::{self, is_root};

use common::{Running, Tmp, switchyard};

/// Deadlock guard for a demo to start and to reach its rollout.
const STARTED: Duration = Duration::from_secs(180);

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
        programs: DemoOptions::programs_of(Path::new(env!("CARGO_BIN_EXE_switchyard"))),
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
    assert_eq!(report.wrong_address, 0, "{:#?}", report.failures);
    assert!(report.clean(), "{:#?}", report.cleanup_errors);
    let ours = format!("sydemo-{}-", std::process::id());
    assert_eq!(netns::named(&ours), Vec::<String>::new());
    assert_eq!(ebpf_places(&ours), Vec::<PathBuf>::new());
}

/// The nodes' scratch bpffs mounts and cgroups named `prefix…`.
fn ebpf_places(prefix: &str) -> Vec<PathBuf> {
    let cgroups = KernelConfig::for_node().cgroup;
    [Some(std::env::temp_dir()), cgroups]
        .into_iter()
        .flatten()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

#[test]
fn iptables_to_nftables_drops_nothing() {
    migrate(Mode::Iptables, Mode::Nftables);
}

#[test]
fn nftables_to_iptables_drops_nothing() {
    migrate(Mode::Nftables, Mode::Iptables);
}

/// Each node's agent attaches eBPF's socket programs to a cgroup of the
/// node's own (where its client pod runs) and its tc programs to the node's
/// links: the client pods' cluster-IP and the external client's NodePort
/// connections keep working through the switch, and nothing is attached to
/// the host's cgroup root.
#[test]
fn nftables_to_ebpf_drops_nothing() {
    migrate(Mode::Nftables, Mode::Ebpf);
}

#[test]
fn ebpf_to_nftables_drops_nothing() {
    migrate(Mode::Ebpf, Mode::Nftables);
}

/// Ctrl-C in the middle of the rollout (onto eBPF: programs attached to the
/// nodes' cgroups, pinned in their bpffs) stops the operator, the agents and
/// the traffic, removes every namespace, bpffs and cgroup and the control
/// plane's directory.
#[test]
fn ctrl_c_mid_rollout_leaves_nothing_behind() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !is_root() {
        eprintln!("SKIP demo Ctrl-C: needs root");
        return;
    }
    let tmp = Tmp::new("demo-ctrl-c");
    let args = [
        "demo",
        "--from",
        "nftables",
        "--to",
        "ebpf",
        "--nodes",
        "2",
        "--services",
        "2",
    ];
    let mut demo = Running::start(&tmp, &args, "demo");
    let ready = demo.line_with("kubeconfig: ", STARTED);
    let kubeconfig = PathBuf::from(ready.split("kubeconfig: ").nth(1).unwrap().trim());
    let dir = kubeconfig.parent().unwrap().to_path_buf();
    demo.line_with("switching nftables -> ebpf", STARTED);
    demo.signal(libc::SIGINT);
    let status = demo.wait();
    assert_eq!(status.code(), Some(130), "{status}");
    assert_eq!(workdir::left_behind(&dir), Vec::<String>::new());
    let ours = format!("sydemo-{}-", demo.pid());
    assert_eq!(netns::named(&ours), Vec::<String>::new());
    assert_eq!(ebpf_places(&ours), Vec::<PathBuf>::new());
}

/// Without Kubernetes' programs the demo names the one command that builds them.
#[test]
fn without_kubernetes_programs_the_demo_says_how_to_build_them() {
    if !is_root() {
        eprintln!("SKIP: the demo checks for root first");
        return;
    }
    let empty = Tmp::new("no-k8s");
    let out = switchyard(&empty, &["demo"])
        .env("SWITCHYARD_K8S_BIN", &empty.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is missing: build Kubernetes' programs with `e2e/k8s/build.sh`"),
        "{stderr}"
    );
}
