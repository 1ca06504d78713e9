//! `switchyard lab up` / `lab down` as a person uses them: `up` serves a
//! control plane with `config/base` installed until Ctrl-C, which removes
//! everything; `down` stops a running `up`, and clears what a SIGKILLed one
//! left (its programs already died with it). Each test has its own TMPDIR, so
//! `down` sees only that test's labs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::{Running, Tmp, switchyard};
use switchyard_lab::controlplane::binaries::Binaries;
use switchyard_lab::controlplane::kubectl::Kubectl;
use switchyard_lab::controlplane::workdir;

/// Deadlock guard: a start takes seconds.
const START: Duration = Duration::from_secs(120);

/// A running `lab up` and the admin kubeconfig it printed.
struct LabUp {
    up: Running,
    kubeconfig: PathBuf,
}

impl LabUp {
    fn start(tmp: &Tmp) -> LabUp {
        let up = Running::start(tmp, &["lab", "up"], "lab up");
        let line = up.line_with("kubeconfig: ", START);
        let kubeconfig = PathBuf::from(line.trim_start_matches("kubeconfig: "));
        LabUp { up, kubeconfig }
    }

    fn dir(&self) -> PathBuf {
        self.kubeconfig.parent().unwrap().to_path_buf()
    }

    fn signal(&self, signal: libc::c_int) {
        self.up.signal(signal);
    }

    fn wait(&mut self) -> ExitStatus {
        self.up.wait()
    }
}

/// `switchyard lab down`'s lines; it must succeed.
fn lab_down(tmp: &Tmp) -> Vec<String> {
    let out = switchyard(tmp, &["lab", "down"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(String::from).collect()
}

fn kubectl(kubeconfig: &Path) -> Kubectl {
    let binaries = Binaries::locate().unwrap_or_else(|e| panic!("{e}"));
    Kubectl::new(&binaries.path("kubectl"), kubeconfig)
}

#[test]
fn lab_up_serves_config_base_until_ctrl_c_removes_everything() {
    let tmp = Tmp::new("up");
    let mut up = LabUp::start(&tmp);
    let kubectl = kubectl(&up.kubeconfig);
    for object in [
        "crd/proxynodes.switchyard.dev",
        "validatingadmissionpolicy/switchyard-agent-own-node-only",
        "clusterrole/switchyard-agent",
    ] {
        kubectl
            .run(&["get", object])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let proxynodes = kubectl.run(&["get", "proxynodes", "-A"]).unwrap();
    assert_eq!(proxynodes, "", "a fresh lab has no ProxyNodes");

    let dir = up.dir();
    up.signal(libc::SIGINT);
    assert_eq!(up.wait().code(), Some(130));
    assert_eq!(workdir::left_behind(&dir), Vec::<String>::new());
}

#[test]
fn lab_down_stops_a_running_lab_and_clears_what_a_killed_one_left() {
    let tmp = Tmp::new("down");
    let mut killed = LabUp::start(&tmp);
    let killed_dir = killed.dir();
    killed.signal(libc::SIGKILL);
    killed.wait();
    // Its programs die with it (PR_SET_PDEATHSIG); its directory stays.
    let deadline = Instant::now() + START;
    while !workdir::processes_in(&killed_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "programs outlived a SIGKILLed `lab up`"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(killed_dir.exists());

    assert_eq!(
        lab_down(&tmp),
        [format!("removed {}", killed_dir.display())]
    );
    assert_eq!(workdir::left_behind(&killed_dir), Vec::<String>::new());

    let mut running = LabUp::start(&tmp);
    let running_dir = running.dir();
    assert_eq!(
        lab_down(&tmp),
        [format!("removed {}", running_dir.display())]
    );
    assert_eq!(workdir::left_behind(&running_dir), Vec::<String>::new());
    assert_eq!(running.wait().code(), Some(130), "`lab up` ends by SIGTERM");

    assert_eq!(lab_down(&tmp), ["no lab control plane to remove"]);
}
