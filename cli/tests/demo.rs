//! `switchyard demo` at a small size, for real: a real control plane, the
//! operator and node agents as processes (this package's `switchyard` in its
//! operator and agent roles), the mode changed with `kubectl patch`, and
//! traffic through every switch. Needs root (CI runs as root); skipped loudly
//! otherwise.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use switchyard_api::Mode;
use switchyard_api::proxyconfig::RolloutPhase;
use switchyard_cli::demo::{DemoOptions, Progress, run_demo};
use switchyard_lab::controlplane::workdir;

/// One demo at a time: they share the machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn migrate(from: Mode, to: Mode) {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
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
    assert_eq!(report.misrouted, 0, "{:#?}", report.failures);
    assert!(report.clean(), "{:#?}", report.cleanup_errors);
    let ours = format!("sydemo-{}-", std::process::id());
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

/// `switchyard demo` as a process, in a private TMPDIR; stdout lines are
/// forwarded to the returned channel (and echoed).
fn demo_process(tmp: &Path, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .arg("demo")
        .args(args)
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped());
    // SAFETY: prctl is async-signal-safe. A killed test run asks its demo to
    // clean up after itself.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("demo: {line}");
            let _ = lines.send(line);
        }
    });
    (child, printed)
}

/// The first line containing `text`.
fn line_with(printed: &mpsc::Receiver<String>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = printed
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("the demo never printed {text:?}: {e}"));
        if line.contains(text) {
            return line;
        }
    }
}

/// Ctrl-C in the middle of the rollout stops the operator and the agents,
/// removes every namespace and the control plane's directory.
#[test]
fn ctrl_c_mid_rollout_leaves_nothing_behind() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP demo Ctrl-C: needs root");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("sydemo-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (mut child, printed) = demo_process(&tmp, &["--nodes", "2", "--services", "2"]);
    let ready = line_with(&printed, "kubeconfig: ");
    let kubeconfig = PathBuf::from(ready.split("kubeconfig: ").nth(1).unwrap().trim());
    let dir = kubeconfig.parent().unwrap().to_path_buf();
    line_with(&printed, "switching iptables -> nftables");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert_eq!(workdir::left_behind(&dir), Vec::<String>::new());
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ours = format!("sydemo-{pid}-");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&ours),
        "namespaces left behind"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Without Kubernetes' programs the demo names the one command that builds them.
#[test]
fn without_kubernetes_programs_the_demo_says_how_to_build_them() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: the demo checks for root first");
        return;
    }
    let empty = std::env::temp_dir().join(format!("sydemo-nok8s-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("demo")
        .env("SWITCHYARD_K8S_BIN", &empty)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is missing: build Kubernetes' programs with `e2e/k8s/build.sh`"),
        "{stderr}"
    );
}
