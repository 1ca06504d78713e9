//! The reference in the stock-kernel VM (kube-proxy's ipvs mode: IPVS is
//! only there). The control plane stays on the host: under qemu's software
//! emulation kube-apiserver alone was not ready after two minutes (README,
//! "kube-proxy as the reference"). The guest reaches the host's API server
//! through the VM's one forwarded port ([`VmRunner::host_port`]) and sees it
//! at 127.0.0.1:port as every program on the host does, so kubeconfigs,
//! forwarders into nodes and the harness work unchanged.
//!
//! - [`HostSide`]: the control plane, and what the guest needs of it:
//!   kube-proxy, the harness's and kube-proxy's kubeconfigs and their
//!   credentials, all under [`GUEST_DIR`].
//! - [`GuestApi`]: in the guest, that API server (a relay on the guest's
//!   loopback to the forwarded port).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::KUBE_PROXY_USER;
use crate::HarnessError;
use crate::controlplane::forward::Forwarder;
use crate::controlplane::identity::Identity;
use crate::controlplane::kubeconfig;
use crate::controlplane::workdir::{Purpose, WorkDir};
use crate::controlplane::{ControlPlane, ControlPlaneError};
use crate::netns::Netns;
use crate::vm::{ExtraFile, HOST_ADDR, VmRunner};

/// Set in the guest: the API server's port on the host.
const PORT_ENV: &str = "SWITCHYARD_VM_API_PORT";
/// Where the guest finds kube-proxy and the kubeconfigs.
pub const GUEST_DIR: &str = "/payload/k8s";
const KUBE_PROXY: &str = "kube-proxy";
const ADMIN_CONFIG: &str = "admin.kubeconfig";
const KUBE_PROXY_CONFIG: &str = "kube-proxy.kubeconfig";
/// kube-proxy, the runner, both nodes' servers and the initramfs (kept in
/// memory) need more than the VM's default.
const MEMORY: &str = "2G";
/// kube-proxy syncs while the runner sends flows: one emulated CPU each.
const CPUS: u32 = 2;

fn guest_file(name: &str) -> PathBuf {
    Path::new(GUEST_DIR).join(name)
}

/// A kubeconfig for kube-proxy's identity (bound to `system:node-proxier`).
pub async fn kube_proxy_kubeconfig(cp: &ControlPlane) -> Result<PathBuf, ControlPlaneError> {
    let user = Identity::User {
        name: KUBE_PROXY_USER.into(),
        group: None,
    };
    cp.kubeconfig_for(&user).await
}

/// The control plane on the host for a reference run in the VM; stopped on drop.
pub struct HostSide {
    files: Vec<ExtraFile>,
    port: u16,
    _control_plane: ControlPlane,
    /// Last: the control plane's client lives on it.
    _runtime: tokio::runtime::Runtime,
}

impl HostSide {
    /// Start the control plane and write the guest's kubeconfigs.
    pub fn start() -> Result<HostSide, HarnessError> {
        let runtime = tokio::runtime::Runtime::new().map_err(|source| HarnessError::Spawn {
            what: "the control plane's runtime".into(),
            source,
        })?;
        let (control_plane, kube_proxy_config) = runtime.block_on(async {
            let cp = ControlPlane::start(Purpose::Test).await?;
            let kubeconfig = kube_proxy_kubeconfig(&cp).await?;
            Ok::<_, ControlPlaneError>((cp, kubeconfig))
        })?;
        let mut files = vec![ExtraFile {
            host: control_plane.binaries().path(KUBE_PROXY),
            guest: guest_file(KUBE_PROXY).display().to_string(),
        }];
        let configs = [
            (control_plane.admin_kubeconfig(), ADMIN_CONFIG),
            (kube_proxy_config.as_path(), KUBE_PROXY_CONFIG),
        ];
        for (config, name) in configs {
            let relocated = control_plane.dir().join(format!("guest-{name}"));
            let moved = kubeconfig::relocate(config, &relocated, GUEST_DIR)?;
            files.push(ExtraFile {
                host: relocated,
                guest: guest_file(name).display().to_string(),
            });
            files.extend(moved.into_iter().map(|m| ExtraFile {
                host: m.host,
                guest: m.guest,
            }));
        }
        Ok(HostSide {
            files,
            port: control_plane.api_addr().port(),
            _control_plane: control_plane,
            _runtime: runtime,
        })
    }

    /// The files the guest needs, for [`VmRunner::run`].
    pub fn files(&self) -> &[ExtraFile] {
        &self.files
    }

    /// `vm` with the API server's port forwarded and named to the guest.
    pub fn prepare(&self, vm: VmRunner) -> VmRunner {
        vm.host_port(self.port)
            .env(PORT_ENV, &self.port.to_string())
            .memory(MEMORY)
            .cpus(CPUS)
    }
}

/// In the guest: the host's API server, reached at 127.0.0.1:port.
pub struct GuestApi {
    port: u16,
    client: kube::Client,
    /// Logs of the programs run in the guest.
    dir: WorkDir,
    _relay: Forwarder,
}

impl GuestApi {
    /// The API server of the [`HostSide`] this guest was started by, if any.
    pub async fn connect() -> Option<Result<GuestApi, ControlPlaneError>> {
        let port: u16 = std::env::var(PORT_ENV).ok()?.parse().ok()?;
        Some(GuestApi::connect_to(port).await)
    }

    async fn connect_to(port: u16) -> Result<GuestApi, ControlPlaneError> {
        let relay = Forwarder::here(SocketAddr::from((HOST_ADDR, port)))?;
        let client = kubeconfig::client(&guest_file(ADMIN_CONFIG)).await?;
        Ok(GuestApi {
            port,
            client,
            dir: WorkDir::create(Purpose::Test)?,
            _relay: relay,
        })
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The kube-proxy program in the guest.
    pub fn kube_proxy(&self) -> PathBuf {
        guest_file(KUBE_PROXY)
    }

    /// kube-proxy's kubeconfig in the guest.
    pub fn kube_proxy_kubeconfig(&self) -> PathBuf {
        guest_file(KUBE_PROXY_CONFIG)
    }

    /// The API server at 127.0.0.1:port inside `node` too.
    pub fn forward_into(&self, node: &Netns) -> Result<Forwarder, ControlPlaneError> {
        Forwarder::start(node, SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)))
    }
}
