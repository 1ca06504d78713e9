//! A real Kubernetes control plane on loopback — etcd, kube-apiserver and
//! kube-controller-manager from `target/k8s/bin` (built by `e2e/k8s/build.sh`
//! at the pinned release) — for the tests, the demo and `switchyard lab up`.
//!
//! [`ControlPlane::start`] returns once `/readyz` answers and the controller
//! manager has made the `default` ServiceAccount, with an admin kubeconfig;
//! [`ControlPlane::kubeconfig_for`] mints kubeconfigs for other identities.
//! Each control plane has its own directory, PKI, etcd (on unix sockets) and
//! API server port, so tests may run several side by side. Dropping it stops
//! every program and removes the directory; so do a panic (unwinding drops)
//! and SIGINT/SIGTERM (the cleanup registry), and a SIGKILLed owner's
//! programs die with it (PR_SET_PDEATHSIG).
//!
//! - [`access`]: what the lab's programs need of an API server, here or
//!   the host's seen from the VM.
//! - [`certs`]: CA, serving and client certificates, service-account keys.
//! - [`process`]: one running program, its log, its teardown.
//! - [`etcd`], [`apiserver`], [`controller_manager`]: each program's flags.
//! - [`kubeconfig`], [`identity`]: kubeconfig files and who they speak as.
//! - [`forward`]: the API server reached from inside a node's namespace.
//! - [`kubectl`]: the pinned kubectl with a kubeconfig.
//! - [`audit`]: the API server's record of who did what.
//! - [`workdir`]: the directory, and the checks that nothing is left behind.
//!
//! [`ControlPlane::stop_apiserver`] and [`ControlPlane::start_apiserver`]
//! restart the API server on the same port and etcd, as an outage would.

pub mod access;
pub mod apiserver;
pub mod audit;
pub mod binaries;
pub mod certs;
pub mod controller_manager;
pub mod etcd;
pub mod forward;
pub mod identity;
pub mod kubeconfig;
pub mod kubectl;
pub mod process;
pub mod workdir;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;

use binaries::Binaries;
use certs::Pki;
use forward::{Forwarder, Gate};
use identity::Identity;
use kubeconfig::Credential;
use kubectl::Kubectl;
use process::Daemon;
use workdir::{Purpose, WorkDir};

use crate::netns::Netns;

/// `config/base` of the checkout this was built from: the CRDs, RBAC and the
/// agent's admission policy, what [`ControlPlane::install`] usually installs.
pub fn config_base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/base")
}

/// Services get cluster IPs from here; the `kubernetes` Service has the first.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The IPv6 range of the dual-stack cluster (dual-stack Services need one).
pub const SERVICE_CIDR6: &str = "fd00:10:96::/112";
const KUBERNETES_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Deadlock guard for each readiness wait (a start takes seconds; a loaded
/// two-core machine building in parallel can stretch that a lot).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two readiness probes.
const POLL: Duration = Duration::from_millis(100);

/// The control plane could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "{missing} is missing: build Kubernetes' programs with `e2e/k8s/build.sh` (needs Go; see README.md), or point ${env} at them",
        env = binaries::ENV
    )]
    BinariesMissing { missing: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making the {what} certificate: {source}")]
    Cert {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("starting {program}: {source}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited ({status}) while {during}; the end of {log}:\n{tail}", log = log.display())]
    Exited {
        program: &'static str,
        status: ExitStatus,
        during: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} not ready after {waited:?}: {last}\nthe end of {log}:\n{tail}", log = log.display())]
    NotReady {
        what: String,
        waited: Duration,
        last: String,
        log: PathBuf,
        tail: String,
    },
    #[error("kubeconfig {path}: {message}", path = path.display())]
    Kubeconfig { path: PathBuf, message: String },
    #[error("{operation}: {source}")]
    Api {
        operation: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "{identity}: only a ServiceAccount's kubeconfig can be made here (a client certificate needs the CA's key, which stays with the control plane)"
    )]
    NotServiceAccount { identity: String },
    #[error("the TokenRequest for ServiceAccount {service_account} came back without a token")]
    NoToken { service_account: String },
    #[error("kubectl {args}: {stderr}")]
    Kubectl { args: String, stderr: String },
    #[error("audit log {path}: {message}", path = path.display())]
    Audit { path: PathBuf, message: String },
    #[error("no ServiceCIDR can hold cluster IP {ip} without covering a flow's destination")]
    NoServiceCidr { ip: IpAddr },
    #[error("forwarding into network namespace {netns}: {source}")]
    Forward {
        netns: String,
        #[source]
        source: std::io::Error,
    },
}

/// The programs, stopped newest first, then the directory.
struct Running {
    daemons: Vec<Daemon>,
    dir: WorkDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for daemon in &self.daemons {
                eprintln!(
                    "--- the end of {} ({}):\n{}",
                    daemon.log().display(),
                    daemon.name(),
                    process::log_tail(daemon.log())
                );
            }
        }
        while let Some(mut daemon) = self.daemons.pop() {
            daemon.stop();
        }
    }
}

/// A running control plane; stopped and removed on drop.
pub struct ControlPlane {
    binaries: Binaries,
    pki: Pki,
    port: u16,
    admin: PathBuf,
    client: kube::Client,
    started_in: Duration,
    /// Open while the API server is ready: the forwarders' gate.
    ready: Gate,
    running: Running,
}

impl ControlPlane {
    /// Start etcd, the API server and the controller manager; return when
    /// they serve.
    pub async fn start(purpose: Purpose) -> Result<ControlPlane, ControlPlaneError> {
        let began = Instant::now();
        let binaries = Binaries::locate()?;
        workdir::remove_orphans(purpose);
        let mut running = Running {
            daemons: Vec::new(),
            dir: WorkDir::create(purpose)?,
        };
        let dir = running.dir.path().to_path_buf();
        let Credentials {
            pki,
            port,
            admin,
            controller_manager: kcm_config,
        } = credentials(&dir)?;
        audit::write_policy(&dir)?;

        running
            .daemons
            .push(Daemon::start(etcd::launch(&binaries.path("etcd"), &dir))?);
        running.daemons.push(Daemon::start(apiserver::launch(
            &binaries.path("kube-apiserver"),
            &dir,
            port,
            &pki,
            &format!("{SERVICE_CIDR},{SERVICE_CIDR6}"),
        ))?);
        let client = kubeconfig::client(&admin).await?;
        wait_until(&mut running.daemons, "the API server (/readyz)", || {
            apiserver::readyz(&client)
        })
        .await?;

        running
            .daemons
            .push(Daemon::start(controller_manager::launch(
                &binaries.path("kube-controller-manager"),
                &dir,
                &kcm_config,
                &pki,
            ))?);
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), "default");
        wait_until(
            &mut running.daemons,
            "the controller manager (the default ServiceAccount)",
            || async {
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("not there yet".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
        Ok(ControlPlane {
            binaries,
            pki,
            port,
            admin,
            client,
            started_in: began.elapsed(),
            ready: Arc::new(AtomicBool::new(true)),
            running,
        })
    }

    /// How long [`ControlPlane::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// This control plane's directory (certificates, kubeconfigs, logs, etcd's data).
    pub fn dir(&self) -> &Path {
        self.running.dir.path()
    }

    /// The API server's address on the host (and, through a [`Forwarder`], in a node).
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The kubeconfig of a cluster admin (group `system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin
    }

    /// A client with the admin kubeconfig.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// kubectl as the admin.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.binaries.path("kubectl"), &self.admin)
    }

    /// The pids and names of the running programs, oldest first.
    pub fn programs(&self) -> Vec<(u32, &'static str)> {
        self.running
            .daemons
            .iter()
            .map(|d| (d.pid(), d.name()))
            .collect()
    }

    /// `kubectl apply -k dir` as the admin ([`Kubectl::install`]).
    pub fn install(&self, kustomization: &Path) -> Result<(), ControlPlaneError> {
        self.kubectl().install(kustomization)
    }

    /// Write a kubeconfig speaking as `who` (see [`identity`]); returns its path.
    pub async fn kubeconfig_for(&self, who: &Identity) -> Result<PathBuf, ControlPlaneError> {
        let credential = match who {
            Identity::User { name, group } => {
                Credential::ClientCert(self.pki.client(&who.slug(), name, group.as_deref())?)
            }
            Identity::ServiceAccount { .. } => {
                identity::token_credential(&self.client, self.dir(), who).await?
            }
        };
        identity::write_kubeconfig(who, self.dir(), self.port, &self.pki.ca_cert(), &credential)
    }

    /// The CA certificate the API server's serving certificate is signed with.
    pub fn ca_cert(&self) -> PathBuf {
        self.pki.ca_cert()
    }

    /// The API server's audit log so far ([`audit`]).
    pub fn audit(&self) -> Result<Vec<audit::AuditEvent>, ControlPlaneError> {
        audit::read(&self.dir().join(audit::LOG_FILE))
    }

    /// Kill the API server (etcd and the controller manager keep running).
    /// The forwarders turn programs in node namespaces away until it is ready
    /// again, as a load balancer's health check would.
    pub fn stop_apiserver(&mut self) {
        self.ready.store(false, Ordering::SeqCst);
        if let Some(daemon) = self.apiserver() {
            daemon.stop();
        }
    }

    /// Start the API server again on the same port, with the same etcd, and
    /// return once it serves (a no-op while it runs).
    pub async fn start_apiserver(&mut self) -> Result<(), ControlPlaneError> {
        let launch = apiserver::launch(
            &self.binaries.path("kube-apiserver"),
            self.running.dir.path(),
            self.port,
            &self.pki,
            SERVICE_CIDR,
        );
        if let Some(daemon) = self.apiserver()
            && daemon.check_running("checking it before a start").is_err()
        {
            *daemon = Daemon::start(launch)?;
        }
        let client = self.client.clone();
        wait_until(
            &mut self.running.daemons,
            "the restarted API server (/readyz)",
            || apiserver::readyz(&client),
        )
        .await?;
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn apiserver(&mut self) -> Option<&mut Daemon> {
        self.running
            .daemons
            .iter_mut()
            .find(|d| d.name() == "kube-apiserver")
    }

    /// Make the API server reachable at [`ControlPlane::api_addr`] from
    /// inside `node`, while it is ready.
    pub fn forward_into(&self, node: &Netns) -> Result<Forwarder, ControlPlaneError> {
        Forwarder::gated(node, self.api_addr(), self.ready.clone())
    }
}

/// The PKI, the API server's port and the kubeconfigs made before anything runs.
struct Credentials {
    pki: Pki,
    port: u16,
    admin: PathBuf,
    controller_manager: PathBuf,
}

fn credentials(dir: &Path) -> Result<Credentials, ControlPlaneError> {
    let pki = Pki::create(&dir.join("pki"), IpAddr::V4(KUBERNETES_IP))?;
    let port = free_port(dir)?;
    let kubeconfig = |file: &str, user: &str, group: Option<&str>| {
        let path = dir.join(format!("{file}.kubeconfig"));
        let credential = Credential::ClientCert(pki.client(file, user, group)?);
        kubeconfig::write(&path, port, &pki.ca_cert(), file, &credential).map(|()| path)
    };
    let admin = kubeconfig("admin", "switchyard-lab-admin", Some("system:masters"))?;
    let controller_manager =
        kubeconfig("controller-manager", "system:kube-controller-manager", None)?;
    Ok(Credentials {
        pki,
        port,
        admin,
        controller_manager,
    })
}

/// A free port on 127.0.0.1 for the API server. Another process may take it
/// before the API server binds it; the API server then exits and says so.
fn free_port(dir: &Path) -> Result<u16, ControlPlaneError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| ControlPlaneError::Io {
            what: "find a free port for",
            path: dir.to_path_buf(),
            source,
        })
}

/// Probe until `ready` succeeds, failing early when a program exits and
/// after [`READY_TIMEOUT`] (with the newest program's log).
async fn wait_until<F, Fut>(
    daemons: &mut [Daemon],
    what: &str,
    mut ready: F,
) -> Result<(), ControlPlaneError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let began = Instant::now();
    loop {
        for daemon in daemons.iter_mut() {
            daemon.check_running(&format!("waiting for {what}"))?;
        }
        let last = match ready().await {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if began.elapsed() > READY_TIMEOUT {
            let newest = daemons
                .last()
                .map(|d| d.log().to_path_buf())
                .unwrap_or_default();
            return Err(ControlPlaneError::NotReady {
                what: what.to_string(),
                waited: began.elapsed(),
                last,
                tail: process::log_tail(&newest),
                log: newest,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
