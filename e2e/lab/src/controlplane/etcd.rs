//! etcd for one control plane. Its client and peer endpoints are unix sockets
//! in the control plane's directory, so control planes running side by side
//! never compete for a port. etcd insists on `host:port` URLs and, for
//! `unix://` ones, uses that text as the socket's path relative to its working
//! directory; the API server, started in the same directory, resolves the same
//! URL to the same file.

use std::path::Path;

use super::process::Launch;

/// The URL the API server reaches etcd at (relative to the shared working directory).
pub const CLIENT_URL: &str = "unix://localhost:2379";
const PEER_URL: &str = "unix://localhost:2380";

pub fn launch(program: &Path, dir: &Path) -> Launch {
    let args = [
        "--name=lab".to_string(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={CLIENT_URL}"),
        format!("--advertise-client-urls={CLIENT_URL}"),
        format!("--listen-peer-urls={PEER_URL}"),
        format!("--initial-advertise-peer-urls={PEER_URL}"),
        format!("--initial-cluster=lab={PEER_URL}"),
        // A test cluster is thrown away with its directory: no fsync.
        "--unsafe-no-fsync".to_string(),
        "--log-level=warn".to_string(),
    ];
    Launch {
        name: "etcd",
        program: program.to_path_buf(),
        args: args.to_vec(),
        cwd: dir.to_path_buf(),
        log: dir.join("etcd.log"),
        netns: None,
        cgroup: None,
        env: Vec::new(),
    }
}
