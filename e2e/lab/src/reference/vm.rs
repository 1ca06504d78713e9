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
//!   credentials, all under [`GUEST_DIR`]; for an adoption also kubectl,
//!   `config/`, the CA certificate and Switchyard's operator and agent
//!   ([`HostSide::add_switchyard`]).
//! - [`GuestApi`]: in the guest, that API server (a relay on the guest's
//!   loopback to the forwarded port), with what the lab's programs need of
//!   it ([`ApiAccess`]): the operator and the agent run in the guest too.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::KUBE_PROXY_USER;
use crate::HarnessError;
use crate::controlplane::access::ApiAccess;
use crate::controlplane::forward::Forwarder;
use crate::controlplane::identity::{self, Identity};
use crate::controlplane::kubeconfig;
use crate::controlplane::kubectl::Kubectl;
use crate::controlplane::workdir::{Purpose, WorkDir};
use crate::controlplane::{ControlPlane, ControlPlaneError};
use crate::netns::Netns;
use crate::vm::{ExtraFile, HOST_ADDR, VmRunner};

/// Set in the guest: the API server's port on the host.
const PORT_ENV: &str = "SWITCHYARD_VM_API_PORT";
/// Where the guest finds kube-proxy and the kubeconfigs.
pub const GUEST_DIR: &str = "/payload/k8s";
const KUBE_PROXY: &str = "kube-proxy";
const KUBECTL: &str = "kubectl";
const ADMIN_CONFIG: &str = "admin.kubeconfig";
const KUBE_PROXY_CONFIG: &str = "kube-proxy.kubeconfig";
const CA_CERT: &str = "ca.crt";
/// The checkout's `config/`, in which `base` is installed.
const CONFIG: &str = "config";
/// kube-proxy, the runner, both nodes' servers and the initramfs (kept in
/// memory) need more than the VM's default.
const MEMORY: &str = "2G";
/// With Switchyard's operator and agent and kubectl in the initramfs too.
const MEMORY_WITH_SWITCHYARD: &str = "3G";
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
    memory: &'static str,
    control_plane: ControlPlane,
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
            memory: MEMORY,
            control_plane,
            _runtime: runtime,
        })
    }

    /// Also place what an adoption runs in the guest: kubectl, the
    /// checkout's `config/` (for [`ApiAccess::config_base`]), the CA
    /// certificate (for the kubeconfigs the guest mints), and `operator`
    /// and `agent`; where the guest finds those two.
    pub fn add_switchyard(
        &mut self,
        operator: &Path,
        agent: &Path,
    ) -> Result<GuestSwitchyard, HarnessError> {
        let cp = &self.control_plane;
        let base = cp.config_base();
        let mut files = files_under(base.parent().unwrap_or(&base), &guest_file(CONFIG))?;
        files.push(ExtraFile {
            host: cp.binaries().path(KUBECTL),
            guest: guest_file(KUBECTL).display().to_string(),
        });
        files.push(ExtraFile {
            host: cp.ca_cert(),
            guest: guest_file(CA_CERT).display().to_string(),
        });
        let mut place = |program: &Path| {
            let name = program
                .file_name()
                .map_or_else(|| "program".into(), |n| n.to_string_lossy().into_owned());
            let guest = guest_file(&name);
            files.push(ExtraFile {
                host: program.to_path_buf(),
                guest: guest.display().to_string(),
            });
            guest
        };
        let placed = GuestSwitchyard {
            operator: place(operator),
            agent: place(agent),
        };
        self.files.extend(files);
        self.memory = MEMORY_WITH_SWITCHYARD;
        Ok(placed)
    }

    /// The files the guest needs, for [`VmRunner::run`].
    pub fn files(&self) -> &[ExtraFile] {
        &self.files
    }

    /// `vm` with the API server's port forwarded and named to the guest.
    pub fn prepare(&self, vm: VmRunner) -> VmRunner {
        vm.host_port(self.port)
            .env(PORT_ENV, &self.port.to_string())
            .memory(self.memory)
            .cpus(CPUS)
    }
}

/// Where the guest finds Switchyard's programs ([`HostSide::add_switchyard`]).
pub struct GuestSwitchyard {
    pub operator: PathBuf,
    pub agent: PathBuf,
}

/// Every file under `dir`, placed under `guest` at the same relative path.
fn files_under(dir: &Path, guest: &Path) -> Result<Vec<ExtraFile>, ControlPlaneError> {
    let listing = |source| ControlPlaneError::Io {
        what: "list the directory",
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        let entry = entry.map_err(listing)?;
        let (host, guest) = (entry.path(), guest.join(entry.file_name()));
        if host.is_dir() {
            files.extend(files_under(&host, &guest)?);
        } else {
            files.push(ExtraFile {
                host,
                guest: guest.display().to_string(),
            });
        }
    }
    Ok(files)
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

impl ApiAccess for GuestApi {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn client(&self) -> kube::Client {
        self.client.clone()
    }

    fn kubectl(&self) -> Kubectl {
        Kubectl::new(&guest_file(KUBECTL), &guest_file(ADMIN_CONFIG))
    }

    fn config_base(&self) -> PathBuf {
        guest_file(CONFIG).join("base")
    }

    /// A ServiceAccount's (a client certificate needs the CA's key, which
    /// stays on the host).
    fn kubeconfig_for<'a>(
        &'a self,
        who: &'a Identity,
    ) -> BoxFuture<'a, Result<PathBuf, ControlPlaneError>> {
        Box::pin(async move {
            let credential = identity::token_credential(&self.client, self.dir(), who).await?;
            let ca = guest_file(CA_CERT);
            identity::write_kubeconfig(who, self.dir(), self.port, &ca, &credential)
        })
    }
}
