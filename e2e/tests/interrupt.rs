//! An interrupted run removes its namespaces (needs root).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_lab::netns;

#[test]
fn sigint_removes_every_namespace() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let mut child = Command::new(common::lab_bin("scenario"))
        .args(["--mode", "iptables", dir])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let prefix = format!("syipt-{}-", child.id());
    // Deadlock guard only: wait until the run has built namespaces.
    let deadline = Instant::now() + Duration::from_secs(60);
    while netns::named(&prefix).is_empty() && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(
        !netns::named(&prefix).is_empty(),
        "the run never created namespaces"
    );
    // SAFETY: sending SIGINT to our own child.
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let status = child.wait().unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(!status.success());
    assert_eq!(netns::named(&prefix), Vec::<String>::new());
}
