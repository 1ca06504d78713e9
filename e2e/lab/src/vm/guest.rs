//! Helpers for tests running inside the VM: network namespaces (deleted on
//! drop), veth links between them, code run in a namespace, and tiny TCP
//! servers that answer with their name.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

/// A test failure in the guest helpers (tests unwrap these).
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{command}: {detail}")]
    Command { command: String, detail: String },
    #[error("{operation}: {source}")]
    Io {
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Run `ip args...`, failing with its standard error.
pub fn ip(args: &[&str]) -> Result<String, GuestError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| GuestError::Io {
            operation: "run ip",
            source,
        })?;
    if !out.status.success() {
        return Err(GuestError::Command {
            command: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, `syipvs-<pid>-<suffix>`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(suffix: &str) -> Result<Netns, GuestError> {
        let name = format!("syipvs-{}-{suffix}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <name> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String, GuestError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Run `f` on a thread that has entered this namespace (sockets it opens,
    /// processes it starts and `/proc/sys/net` it writes are the namespace's).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, GuestError> {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name)).map_err(|source| {
            GuestError::Io {
                operation: "open the namespace",
                source,
            }
        })?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a namespace file we hold open; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(GuestError::Io {
                        operation: "setns",
                        source: std::io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Start a TCP server on `addr` in this namespace that writes `name` and
    /// then echoes what it reads, one thread per connection, for the life of the process.
    pub fn serve_name(&self, addr: SocketAddr, name: &str) -> Result<(), GuestError> {
        let listener = self
            .run(|| TcpListener::bind(addr))?
            .map_err(|source| GuestError::Io {
                operation: "bind a test server",
                source,
            })?;
        let name = name.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let name = name.clone();
                std::thread::spawn(move || serve_one(conn, &name));
            }
        });
        Ok(())
    }
}

fn serve_one(mut conn: TcpStream, name: &str) {
    if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 256];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A veth pair between two namespaces with an address on each end and the
/// peer as default gateway of `b` when `b_gateway` is set.
pub fn link(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
) -> Result<(), GuestError> {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.ip(&["addr", "add", a_addr, "dev", a_if])?;
    b.ip(&["addr", "add", b_addr, "dev", b_if])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Connect from the calling thread's namespace to `addr` and read the server's
/// name line. Errors (refused, unreachable, timeout) are returned as text.
pub fn ask_name(addr: SocketAddr) -> Result<(String, TcpStream), String> {
    let mut conn =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while conn.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok((String::from_utf8_lossy(&line).into_owned(), conn))
}
