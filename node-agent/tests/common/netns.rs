//! Network namespaces owned by one test process (`syagt<pid>-<name>`), deleted
//! on drop, and threads that run inside them. Nothing here touches the host
//! namespace beyond `ip netns add/del`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    pub fn create(suffix: &str) -> Netns {
        let name = format!("syagt{}-{suffix}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        check(
            "ip netns add",
            Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .unwrap(),
        );
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace.
    pub fn run(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .unwrap()
    }

    /// Run a command inside the namespace; it must succeed. Returns stdout.
    pub fn ok(&self, cmd: &[&str]) -> String {
        check(&cmd.join(" "), self.run(cmd))
    }

    /// Run `f` on a new thread that has entered this namespace.
    pub fn thread<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> JoinHandle<R> {
        let file = File::open(format!("/run/netns/{}", self.name)).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns with a valid netns fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A node and a pod namespace joined by a veth: node 10.200.0.1, pod 10.200.0.2,
/// and an echo server listening on 10.200.0.2:8080 before this returns.
pub struct Topology {
    pub pod: Netns,
    pub node: Netns,
}

pub const POD_IP: &str = "10.200.0.2";

fn echo(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
}

/// `tag` keeps the namespaces of tests running in parallel apart.
pub fn topology(tag: &str) -> Topology {
    let node = Netns::create(&format!("{tag}-node"));
    let pod = Netns::create(&format!("{tag}-pod"));
    node.ok(&[
        "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &pod.name,
    ]);
    node.ok(&["ip", "addr", "add", "10.200.0.1/24", "dev", "veth0"]);
    node.ok(&["ip", "link", "set", "veth0", "up"]);
    node.ok(&["ip", "route", "add", "default", "via", POD_IP]);
    pod.ok(&["ip", "addr", "add", "10.200.0.2/24", "dev", "veth1"]);
    pod.ok(&["ip", "link", "set", "veth1", "up"]);
    // The socket belongs to the pod namespace; the accept loop may run anywhere.
    let listener = pod
        .thread(|| TcpListener::bind((POD_IP, 8080)).unwrap())
        .join()
        .unwrap();
    std::thread::spawn(move || echo(listener));
    Topology { pod, node }
}

/// Connect from inside `ns` (the socket stays in that namespace).
pub fn connect_from(ns: &Netns, addr: SocketAddr) -> std::io::Result<TcpStream> {
    ns.thread(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .join()
        .unwrap()
}

/// Send `msg` on `stream` and read it back.
pub fn echo_roundtrip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}
