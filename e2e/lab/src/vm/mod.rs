//! Run a binary inside Debian's stock kernel under qemu (software emulation).
//!
//! The host kernel may lack IPVS; Debian's `linux-image-amd64` ships it. The
//! kernel is fetched once into `target/vm-cache/` ([`kernel`]); the initramfs is
//! a cached base archive plus a per-run payload ([`image`]). `/init` loads the
//! modules, runs the command between marker lines on the serial console and
//! powers off; the host reads the console and returns the command's output and
//! exit status.
//!
//! ```no_run
//! # use switchyard_lab::vm::VmRunner;
//! let out = VmRunner::new()?.run("/bin/true".as_ref(), &[], &[])?;
//! assert_eq!(out.exit_code, 0);
//! # Ok::<(), switchyard_lab::vm::VmError>(())
//! ```

pub mod cpio;
pub mod image;
pub mod kernel;
pub mod scenario;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cpio::Archive;
use image::{BEGIN, EXIT, Libraries};
use kernel::Kernel;

/// The network card's driver (one module, no dependencies), also qemu's
/// name for the device.
const NIC_MODULE: &str = "e1000";

/// Set in the VM's environment for the command.
pub const IN_VM_ENV: &str = "SWITCHYARD_IN_VM";

/// Deadlock guard for one VM run.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// Running something in the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("vm kernel: {operation}: {detail}")]
    Kernel {
        operation: &'static str,
        detail: String,
    },
    #[error("vm: {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vm: {0} is not installed")]
    MissingTool(String),
    #[error("vm: qemu did not finish within {0:?}")]
    Timeout(Duration),
    #[error("vm: the command never started or never finished; console:\n{console}")]
    NoResult { console: String },
}

impl VmError {
    pub(crate) fn io(operation: &'static str, path: &Path, source: std::io::Error) -> VmError {
        VmError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What the command did in the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmOutput {
    pub exit_code: i32,
    /// The command's standard output and error, interleaved as on the console.
    pub output: String,
    /// The whole console, boot messages included.
    pub console: String,
}

/// Where payload files go in the guest (outside /tmp and /run, which the guest
/// mounts afresh).
pub const GUEST_PAYLOAD: &str = "/payload";

/// The guest's own address on the VM's one network link (qemu's user-mode
/// network, which never routes anything out: see [`VmRunner::host_port`]).
const GUEST_ADDR: &str = "10.0.2.15/24";
/// The address at which the guest reaches the host's forwarded port.
pub const HOST_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 100);

/// A file to place in the VM: host path → absolute guest path.
#[derive(Clone, Debug)]
pub struct ExtraFile {
    pub host: PathBuf,
    pub guest: String,
}

/// Boots the stock kernel for one command at a time.
pub struct VmRunner {
    cache: PathBuf,
    kernel: Kernel,
    memory: String,
    cpus: u32,
    timeout: Duration,
    env: Vec<(String, String)>,
    host_port: Option<u16>,
}

impl VmRunner {
    /// Fetch (first time) the kernel and prepare the cache. The cache lives in
    /// `$SWITCHYARD_VM_CACHE`, else `vm-cache/` in the cargo target directory.
    pub fn new() -> Result<VmRunner, VmError> {
        let cache = cache_dir();
        fs::create_dir_all(&cache).map_err(|e| VmError::io("create the cache", &cache, e))?;
        let _lock = CacheLock::take(&cache)?;
        let kernel = Kernel::fetch(&cache)?;
        image::base(&kernel, &cache)?;
        Ok(VmRunner {
            cache,
            kernel,
            memory: "1G".to_string(),
            cpus: 1,
            timeout: DEFAULT_TIMEOUT,
            env: Vec::new(),
            host_port: None,
        })
    }

    /// The kernel release the VM boots (`uname -r`).
    pub fn kernel_version(&self) -> &str {
        &self.kernel.version
    }

    /// Set an environment variable for the command.
    pub fn env(mut self, key: &str, value: &str) -> VmRunner {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The guest's memory, as qemu's `-m` takes it (default `1G`).
    pub fn memory(mut self, memory: &str) -> VmRunner {
        self.memory = memory.to_string();
        self
    }

    /// The guest's CPUs (default 1; qemu emulates each on a host thread).
    pub fn cpus(mut self, cpus: u32) -> VmRunner {
        self.cpus = cpus;
        self
    }

    /// Give the guest one network link on which [`HOST_ADDR`]`:port` is
    /// the host's `127.0.0.1:port` (each connection relayed by `socat`).
    /// Nothing else is reachable: qemu's user-mode network runs restricted,
    /// so the guest reaches neither the host's other ports nor the outside.
    pub fn host_port(mut self, port: u16) -> VmRunner {
        self.host_port = Some(port);
        self
    }

    /// Deadlock guard for a run (default 15 minutes).
    pub fn timeout(mut self, timeout: Duration) -> VmRunner {
        self.timeout = timeout;
        self
    }

    /// Run `binary args...` in the VM (as `/payload/<name>`, working directory
    /// `/payload`), with `extra_files` in place.
    pub fn run(
        &self,
        binary: &Path,
        args: &[&str],
        extra_files: &[ExtraFile],
    ) -> Result<VmOutput, VmError> {
        self.run_with(binary, args, extra_files, &mut |_| {})
    }

    /// As [`VmRunner::run`], calling `on_line` with each line of the command's
    /// output as it arrives.
    pub fn run_with(
        &self,
        binary: &Path,
        args: &[&str],
        extra_files: &[ExtraFile],
        on_line: &mut dyn FnMut(&str),
    ) -> Result<VmOutput, VmError> {
        let base = image::base(&self.kernel, &self.cache)?;
        let payload = self.payload(binary, args, extra_files)?;
        let initrd = self
            .cache
            .join(format!("initrd-{}-{}.cpio", std::process::id(), unique()));
        let _remove = RemoveOnDrop(initrd.clone());
        let mut bytes = base;
        bytes.extend_from_slice(&payload);
        fs::write(&initrd, &bytes).map_err(|e| VmError::io("write the initrd", &initrd, e))?;
        self.boot(&initrd, on_line)
    }

    fn payload(
        &self,
        binary: &Path,
        args: &[&str],
        extra_files: &[ExtraFile],
    ) -> Result<Vec<u8>, VmError> {
        let mut a = Archive::new();
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "command".to_string());
        let data = fs::read(binary).map_err(|e| VmError::io("read the binary", binary, e))?;
        a.file(&format!("payload/{name}"), 0o755, &data);
        let mut libs = Libraries::default();
        libs.add_for(binary)?;
        libs.write(&mut a)?;
        for extra in extra_files {
            let data =
                fs::read(&extra.host).map_err(|e| VmError::io("read a file", &extra.host, e))?;
            a.file(&extra.guest, 0o755, &data);
        }
        a.file("payload/run", 0o755, self.script(&name, args).as_bytes());
        Ok(a.finish())
    }

    fn script(&self, name: &str, args: &[&str]) -> String {
        let mut s = format!("export {IN_VM_ENV}=1\n");
        if self.host_port.is_some() {
            s.push_str(&format!(
                "modprobe {NIC_MODULE} && ip link set eth0 up && ip addr add {GUEST_ADDR} dev eth0\n"
            ));
        }
        for (k, v) in &self.env {
            s.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        s.push_str(&format!("exec /payload/{}", shell_quote(name)));
        for arg in args {
            s.push(' ');
            s.push_str(&shell_quote(arg));
        }
        s.push_str(" 2>&1\n");
        s
    }

    /// qemu's network options: none, or the restricted user-mode link of
    /// [`VmRunner::host_port`].
    fn network(&self) -> Result<Vec<String>, VmError> {
        let Some(port) = self.host_port else {
            return Ok(vec!["-nic".into(), "none".into()]);
        };
        let socat = image::which("socat").ok_or_else(|| VmError::MissingTool("socat".into()))?;
        let forward = format!(
            "user,id=host,restrict=on,guestfwd=tcp:{HOST_ADDR}:{port}-cmd:{} STDIO TCP:127.0.0.1:{port}",
            socat.display()
        );
        Ok(vec![
            "-netdev".into(),
            forward,
            "-device".into(),
            format!("{NIC_MODULE},netdev=host"),
        ])
    }

    fn boot(&self, initrd: &Path, on_line: &mut dyn FnMut(&str)) -> Result<VmOutput, VmError> {
        let mut qemu = Command::new("qemu-system-x86_64");
        // qemu dies with this thread, which waits for it below: a killed
        // harness leaves no VM (nor, their connections closed, its relays).
        // SAFETY: prctl is async-signal-safe and only changes the child.
        unsafe {
            qemu.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = qemu
            .args(["-accel", "tcg", "-nographic", "-no-reboot"])
            .args(["-smp", &self.cpus.to_string(), "-m", &self.memory])
            .args(self.network()?)
            .arg("-kernel")
            .arg(&self.kernel.vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args([
                "-append",
                "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => VmError::MissingTool("qemu-system-x86_64".into()),
                _ => VmError::io("start qemu", Path::new("qemu-system-x86_64"), e),
            })?;
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            if let Some(out) = stdout {
                for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let deadline = std::time::Instant::now() + self.timeout;
        let mut console = String::new();
        let mut output = String::new();
        let mut started = false;
        let mut exit_code = None;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    console.push_str(&line);
                    console.push('\n');
                    if !started {
                        started = line.ends_with(BEGIN);
                    } else if let Some(code) = line.strip_prefix(EXIT) {
                        exit_code = code.trim().parse().ok();
                        started = false;
                    } else if exit_code.is_none() {
                        output.push_str(&line);
                        output.push('\n');
                        on_line(&line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Killing qemu closes the pipe; the reader then ends.
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = reader.join();
                    return Err(VmError::Timeout(self.timeout));
                }
            }
        }
        let _ = child.wait();
        let _ = reader.join();
        match exit_code {
            Some(exit_code) => Ok(VmOutput {
                exit_code,
                output,
                console,
            }),
            None => Err(VmError::NoResult { console }),
        }
    }
}

/// Whether `ip_vs` is usable in this kernel (the host kernel often lacks it).
pub fn host_has_ipvs() -> bool {
    Path::new("/proc/net/ip_vs").exists()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SWITCHYARD_VM_CACHE") {
        return PathBuf::from(dir);
    }
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|d| d.join("CACHEDIR.TAG").exists())
            .map(Path::to_path_buf)
    });
    from_exe
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("vm-cache")
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// An exclusive `flock` on the cache while the kernel and base image are prepared,
/// so parallel tests do not fetch twice.
struct CacheLock {
    _file: fs::File,
}

impl CacheLock {
    fn take(cache: &Path) -> Result<CacheLock, VmError> {
        let path = cache.join("lock");
        let file = fs::File::create(&path).map_err(|e| VmError::io("create the lock", &path, e))?;
        // SAFETY: flock on a file descriptor we own; released when the file closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(VmError::io(
                "lock the cache",
                &path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(CacheLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_for_the_guest_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
