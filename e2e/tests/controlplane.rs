//! The lab's control plane itself: it starts in seconds, its controllers work,
//! identities authenticate as themselves, a node namespace reaches it through
//! its forwarder, and a stop leaves nothing behind (needs root for the
//! namespace).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use switchyard_lab::controlplane::forward::Forwarder;
use switchyard_lab::controlplane::identity::Identity;
use switchyard_lab::controlplane::kubectl::Kubectl;
use switchyard_lab::controlplane::process::{Daemon, Launch};
use switchyard_lab::controlplane::workdir::{self, Purpose, WorkDir};
use switchyard_lab::controlplane::{ControlPlane, SERVICE_CIDR};
use switchyard_lab::netns::{self, Netns};

/// Deadlock guard for what the controllers do asynchronously.
const CONVERGE: Duration = Duration::from_secs(60);

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + CONVERGE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ns_name(tag: &str) -> String {
    format!("sycp-{}-{tag}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_serves_and_leaves_nothing_behind() {
    let cp = ControlPlane::start(Purpose::Test)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("control plane ready in {:.1?}", cp.started_in());

    let version = cp.kubectl().run(&["version", "-o", "json"]).unwrap();
    assert!(version.contains("\"gitVersion\": \"v1.36."), "{version}");

    services_get_cluster_ips_and_endpoint_slices(&cp).await;
    garbage_collector_removes_dependents(&cp).await;
    client_certificate_users_are_who_they_say(&cp).await;
    a_node_namespace_reaches_the_api_through_its_forwarder(&cp).await;

    let dir = cp.dir().to_path_buf();
    let programs = cp.programs();
    assert_eq!(programs.len(), 3, "{programs:?}");
    let stopping = Instant::now();
    drop(cp);
    println!("control plane stopped in {:.1?}", stopping.elapsed());
    assert_eq!(workdir::left_behind(&dir), Vec::<String>::new());
}

async fn services_get_cluster_ips_and_endpoint_slices(cp: &ControlPlane) {
    let services = Api::<Service>::namespaced(cp.client(), "default");
    let service = Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let made = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let ip = made.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    assert!(
        ip.starts_with("10.96."),
        "cluster IP {ip:?} outside {SERVICE_CIDR}"
    );
    // The endpointslice controller makes the (empty) slice of every Service.
    let slices = Api::<EndpointSlice>::namespaced(cp.client(), "default");
    let by_service = ListParams::default().labels("kubernetes.io/service-name=web");
    eventually("the EndpointSlice of Service web", || async {
        let list = slices.list(&by_service).await.ok()?;
        (!list.items.is_empty()).then_some(())
    })
    .await;
}

async fn garbage_collector_removes_dependents(cp: &ControlPlane) {
    let maps = Api::<ConfigMap>::namespaced(cp.client(), "default");
    let named = |name: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    let owner = maps
        .create(&PostParams::default(), &named("owner"))
        .await
        .unwrap();
    let mut dependent = named("dependent");
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.unwrap_or_default(),
        ..OwnerReference::default()
    }]);
    maps.create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    maps.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually("the garbage collector to delete the dependent", || async {
        matches!(maps.get_opt("dependent").await, Ok(None)).then_some(())
    })
    .await;
}

async fn client_certificate_users_are_who_they_say(cp: &ControlPlane) {
    let who = Identity::User {
        name: "jane".into(),
        group: Some("platform-team".into()),
    };
    let config = cp.kubeconfig_for(&who).await.unwrap();
    let jane = Kubectl::new(&cp.binaries().path("kubectl"), &config);
    let review = jane.run(&["auth", "whoami", "-o", "json"]).unwrap();
    assert!(review.contains("\"username\": \"jane\""), "{review}");
    assert!(review.contains("\"platform-team\""), "{review}");
    // RBAC is on: jane has no rights.
    let denied = jane.run(&["get", "nodes"]).unwrap_err().to_string();
    assert!(denied.contains("Forbidden"), "{denied}");
}

/// A long-running program in a node (as an agent will be) watches the API
/// through the node's forwarder and sees what the host writes.
async fn a_node_namespace_reaches_the_api_through_its_forwarder(cp: &ControlPlane) {
    let node = Netns::create(&ns_name("node")).unwrap();
    let readyz = || {
        let mut command = cp.kubectl().command(&["get", "--raw", "/readyz"]);
        netns::enter_on_exec(&mut command, node.open().unwrap());
        command.output().unwrap()
    };
    // Without the forwarder nothing listens on the node's loopback.
    assert!(
        !readyz().status.success(),
        "reached the API server without a forwarder"
    );
    let forwarder = cp.forward_into(&node).unwrap();
    assert_eq!(forwarder.listen_addr(), cp.api_addr());
    let kubectl = cp.binaries().path("kubectl");
    let log = cp.dir().join("node-watch.log");
    let kubeconfig = cp.admin_kubeconfig().display().to_string();
    let mut watch = Daemon::start(Launch {
        name: "kubectl-watch",
        program: kubectl,
        args: [
            "--kubeconfig",
            &kubeconfig,
            "get",
            "namespaces",
            "--watch",
            "-o",
            "name",
        ]
        .map(String::from)
        .to_vec(),
        cwd: cp.dir().to_path_buf(),
        log: log.clone(),
        netns: Some(node.open().unwrap()),
        cgroup: None,
        env: Vec::new(),
    })
    .unwrap();
    let namespaces = Api::<Namespace>::all(cp.client());
    let made = Namespace {
        metadata: ObjectMeta {
            name: Some("made-on-the-host".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &made)
        .await
        .unwrap();
    let deadline = Instant::now() + CONVERGE;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("namespace/made-on-the-host")
    {
        watch.check_running("watching namespaces").unwrap();
        assert!(
            Instant::now() < deadline,
            "the node's watch never saw the namespace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The forwarder alone: bytes both ways, half-close passed on, the client's
/// connection made in the namespace and the relayed one from the host.
#[test]
fn forwarder_relays_from_a_namespace_to_host_loopback() {
    let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let target = server.local_addr().unwrap();
    let node = Netns::create(&ns_name("fwd")).unwrap();
    let forwarder = Forwarder::start(&node, target).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut conn, peer) = server.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(&got).unwrap();
        peer
    });
    let listen = forwarder.listen_addr();
    let answer = node
        .run(move || {
            let mut conn = TcpStream::connect(listen).unwrap();
            conn.write_all(b"through the forwarder").unwrap();
            conn.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).unwrap();
            answer
        })
        .unwrap();
    assert_eq!(answer, "through the forwarder");
    assert!(echo.join().unwrap().ip().is_loopback());
    drop(forwarder);
    // Stopped: nothing listens in the node any more.
    let refused = node
        .run(move || TcpStream::connect(listen).is_err())
        .unwrap();
    assert!(refused, "the forwarder still listens after drop");
}

/// Guards the leftover check itself: a program working in the directory, and
/// the directory, are reported until they are gone.
#[test]
fn left_behind_reports_programs_and_the_directory_until_removed() {
    let dir = WorkDir::create(Purpose::Test).unwrap();
    let path = dir.path().to_path_buf();
    let sleeper = Daemon::start(Launch {
        name: "sleep",
        program: "sleep".into(),
        args: vec!["600".into()],
        cwd: path.clone(),
        log: path.join("sleep.log"),
        netns: None,
        cgroup: None,
        env: Vec::new(),
    })
    .unwrap();
    let found = workdir::left_behind(&path);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with(&format!("process {} (sleep)", sleeper.pid())));
    drop(sleeper);
    assert_eq!(
        workdir::left_behind(&path),
        [format!("directory {}", path.display())]
    );
    drop(dir);
    assert_eq!(workdir::left_behind(&path), Vec::<String>::new());
}

/// A SIGKILLed test run leaves its directory (its programs die with it); the
/// next start removes it, and never a live run's (this process's own here).
#[test]
fn directories_of_killed_runs_are_removed_and_live_ones_kept() {
    let mine = WorkDir::create(Purpose::Test).unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let orphan = std::env::temp_dir().join(format!("switchyard-test-{}-0", gone.id()));
    std::fs::create_dir_all(orphan.join("pki")).unwrap();
    let cleared = workdir::remove_orphans(Purpose::Test);
    assert!(cleared.contains(&orphan), "{cleared:?}");
    assert!(!orphan.exists());
    assert!(mine.path().exists());
}
