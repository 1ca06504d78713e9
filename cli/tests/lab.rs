//! `switchyard lab up` / `lab down` as a person uses them: `up` serves a
//! control plane with `config/base` installed until Ctrl-C, which removes
//! everything; `down` stops a running `up`, and clears what a SIGKILLed one
//! left (its programs already died with it). Each test has its own TMPDIR, so
//! `down` sees only that test's labs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchyard_lab::controlplane::binaries::Binaries;
use switchyard_lab::controlplane::kubectl::Kubectl;
use switchyard_lab::controlplane::workdir;

/// Deadlock guard: a start takes seconds.
const START: Duration = Duration::from_secs(120);

/// A private temporary directory for one test's labs; removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("sylab-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn switchyard(tmp: &Tmp, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command.args(args).env("TMPDIR", &tmp.0);
    command
}

/// A running `lab up`; asked to stop (SIGTERM) on drop if still running.
struct LabUp {
    child: Child,
    kubeconfig: PathBuf,
}

impl LabUp {
    fn start(tmp: &Tmp) -> LabUp {
        let mut command = switchyard(tmp, &["lab", "up"]);
        command.stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. A killed test run asks its labs
        // to clean up after themselves.
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
                println!("lab up: {line}");
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + START;
        let kubeconfig = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = printed
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("`lab up` printed no kubeconfig: {e}"));
            if let Some(path) = line.strip_prefix("kubeconfig: ") {
                break PathBuf::from(path);
            }
        };
        LabUp { child, kubeconfig }
    }

    fn dir(&self) -> PathBuf {
        self.kubeconfig.parent().unwrap().to_path_buf()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for LabUp {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            let _ = self.child.wait();
        }
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
