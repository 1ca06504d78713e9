//! Shared by the CLI's tests that run `switchyard` as a person does: in a
//! private TMPDIR, its standard output read line by line, interrupted by a
//! signal.
#![allow(dead_code)] // each test binary uses its own part
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure fails the calling test

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A private temporary directory for one test's runs; removed on drop.
pub struct Tmp(pub PathBuf);

impl Tmp {
    pub fn new(tag: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("sycli-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `switchyard ARGS` with TMPDIR set to `tmp`.
pub fn switchyard(tmp: &Tmp, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command.args(args).env("TMPDIR", &tmp.0);
    command
}

/// A running `switchyard`; asked to stop (SIGTERM) on drop if still running.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Start `switchyard ARGS`; its output lines are echoed with `tag`.
    pub fn start(tmp: &Tmp, args: &[&str], tag: &'static str) -> Running {
        let mut command = switchyard(tmp, args);
        command.stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. A killed test run asks its
        // runs to clean up after themselves.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{tag}: {line}");
                let _ = sender.send(line);
            }
        });
        Running { child, lines }
    }

    /// The next line containing `text`, printed within `timeout`.
    pub fn line_with(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("nothing printed {text:?}: {e}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap()
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            let _ = self.child.wait();
        }
    }
}
