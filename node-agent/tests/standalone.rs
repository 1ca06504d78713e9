//! Standalone mode: a directory of YAML compiled, linked for the node and
//! applied once, and re-applied when a file changes; hostile objects are
//! skipped with their diagnostics, a hostile node name or an oversized
//! directory is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::TempDir;
use common::fake::FakeKernel;
use switchyard_agent::standalone::{StandaloneOptions, apply_once, prepare, watch};
use switchyard_agent::switch::DataplaneFactory;
use switchyard_api::Mode;
use switchyard_dataplane::settings::LocalDetector;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"#;

fn slice(ips: &[&str]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!("  - {{addresses: [{ip}], nodeName: node-a, conditions: {{ready: true}}}}")
        })
        .collect();
    format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{}
"#,
        endpoints.join("\n")
    )
}

/// `watch` of `dir` in nftables mode on `kernel`, polling every second, in a
/// task; sending on (or dropping) the sender stops it.
fn spawn_watch(
    kernel: &FakeKernel,
    dir: &TempDir,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let opts = options(dir);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let k = kernel.clone();
    let task = tokio::spawn(async move {
        let mut dp = k.factory().build(Mode::Nftables).unwrap();
        watch(dp.as_mut(), &opts, Duration::from_secs(1), async {
            let _ = stopped.await;
        })
        .await;
    });
    (stop, task)
}

fn options(dir: &TempDir) -> StandaloneOptions {
    StandaloneOptions {
        mode: Mode::Nftables,
        state: dir.0.clone(),
        node_name: "node-a".into(),
        node_ips: vec!["192.168.0.10".parse().unwrap()],
    }
}

#[test]
fn directory_is_compiled_linked_and_applied() {
    let dir = TempDir::new("once");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    std::fs::write(dir.0.join("slice.yml"), slice(&["10.0.1.5"])).unwrap();
    std::fs::write(dir.0.join("README.md"), "not yaml, ignored").unwrap();
    let kernel = FakeKernel::default();
    let mut dp = kernel.factory().build(Mode::Nftables).unwrap();
    let stats = apply_once(dp.as_mut(), &options(&dir)).unwrap();
    assert_eq!(stats.objects, 1);
    assert_eq!(
        kernel.rules(Mode::Nftables),
        Some(vec!["10.96.0.10:80 -> 10.0.1.5:8080".to_string()])
    );
    let prepared = prepare(&options(&dir)).unwrap();
    assert_eq!(
        prepared.ruleset.node.addresses,
        vec!["192.168.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(
        prepared.diagnostics.is_empty(),
        "{:?}",
        prepared.diagnostics
    );
}

/// `node-agent apply` read only `spec.podCIDRs`; a single-stack Node with
/// only `spec.podCIDR` got no NodeCIDR local detector (the agent's sync read both).
#[test]
fn node_with_only_pod_cidr_gets_the_node_cidr_local_detector() {
    let dir = TempDir::new("podcidr");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    std::fs::write(
        dir.0.join("node.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nspec: {podCIDR: 10.244.1.0/24}\n",
    )
    .unwrap();
    std::fs::write(
        dir.0.join("config.yaml"),
        "apiVersion: switchyard.dev/v1alpha1\nkind: ProxyConfig\nmetadata: {name: pool}\n\
         spec: {mode: nftables, detectLocalMode: NodeCIDR}\n",
    )
    .unwrap();
    let prepared = prepare(&options(&dir)).unwrap();
    assert_eq!(
        prepared.settings.local_detector,
        LocalDetector::Cidrs(vec!["10.244.1.0/24".parse().unwrap()])
    );
}

#[test]
fn bad_yaml_names_the_file_and_applies_nothing() {
    let dir = TempDir::new("bad");
    std::fs::write(dir.0.join("broken.yaml"), "kind: Service\nspec: [").unwrap();
    let kernel = FakeKernel::default();
    let mut dp = kernel.factory().build(Mode::Nftables).unwrap();
    let err = apply_once(dp.as_mut(), &options(&dir)).unwrap_err();
    assert!(err.to_string().contains("broken.yaml"), "{err}");
    assert!(kernel.installed().is_empty());
}

#[tokio::test(start_paused = true)]
async fn watch_dir_reapplies_on_change_and_keeps_rules_on_bad_input() {
    let dir = TempDir::new("watch");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    std::fs::write(dir.0.join("slice.yaml"), slice(&["10.0.1.5"])).unwrap();
    let kernel = FakeKernel::default();
    let (stop, task) = spawn_watch(&kernel, &dir);
    let settle = || async {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    };
    settle().await;
    assert_eq!(kernel.syncs().len(), 1);
    tokio::time::advance(Duration::from_secs(3)).await;
    settle().await;
    assert_eq!(kernel.syncs().len(), 1, "unchanged directory, no apply");

    std::fs::write(dir.0.join("slice.yaml"), slice(&["10.0.1.5", "10.0.1.6"])).unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(
        kernel.rules(Mode::Nftables),
        Some(vec![
            "10.96.0.10:80 -> 10.0.1.5:8080,10.0.1.6:8080".to_string()
        ])
    );

    std::fs::write(dir.0.join("slice.yaml"), "kind: [").unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(kernel.syncs().len(), 2, "bad input is not applied");
    assert_eq!(
        kernel.rules(Mode::Nftables).unwrap()[0]
            .matches(',')
            .count(),
        1
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// The log lines of the calling thread, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

#[tokio::test(start_paused = true)]
async fn a_state_directory_that_stays_broken_is_reported_once_per_change_not_every_poll() {
    let logs = Logs::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    let dir = TempDir::new("broken");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    std::fs::write(dir.0.join("slice.yaml"), slice(&["10.0.1.5"])).unwrap();
    let kernel = FakeKernel::default();
    let (stop, task) = spawn_watch(&kernel, &dir);
    let polls = |n: u64| async move {
        for _ in 0..n {
            tokio::time::advance(Duration::from_secs(1)).await;
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        }
    };
    const REPORT: &str = "state directory not applied";
    polls(1).await;
    assert_eq!(kernel.syncs().len(), 1);

    std::fs::write(dir.0.join("slice.yaml"), "kind: [").unwrap();
    polls(10).await;
    assert_eq!(
        logs.count(REPORT),
        1,
        "one report for ten polls of the same broken directory"
    );
    std::fs::write(dir.0.join("slice.yaml"), "kind: {").unwrap();
    polls(5).await;
    assert_eq!(logs.count(REPORT), 2, "a new report for a new change");
    assert_eq!(kernel.syncs().len(), 1, "nothing broken was applied");

    std::fs::write(dir.0.join("slice.yaml"), slice(&["10.0.1.6"])).unwrap();
    polls(3).await;
    assert_eq!(kernel.syncs().len(), 2);
    std::fs::write(dir.0.join("slice.yaml"), "kind: {").unwrap();
    polls(5).await;
    assert_eq!(
        logs.count(REPORT),
        3,
        "broken again after a good state: reported again"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[test]
fn hostile_objects_are_skipped_with_their_field_and_the_rest_is_applied() {
    let dir = TempDir::new("hostile");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    std::fs::write(dir.0.join("slice.yaml"), slice(&["10.0.1.5"])).unwrap();
    let hostile = SERVICE
        .replace("name: web,", "name: \"web\\\"\\n-A INPUT -j ACCEPT\",")
        .replace("10.96.0.10", "10.96.0.11");
    std::fs::write(dir.0.join("hostile.yaml"), hostile).unwrap();
    let kernel = FakeKernel::default();
    let mut dp = kernel.factory().build(Mode::Nftables).unwrap();
    apply_once(dp.as_mut(), &options(&dir)).unwrap();
    assert_eq!(
        kernel.rules(Mode::Nftables),
        Some(vec!["10.96.0.10:80 -> 10.0.1.5:8080".to_string()])
    );
    let diagnostics: Vec<String> = prepare(&options(&dir))
        .unwrap()
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert!(
        diagnostics[0].starts_with(
            r#"Service default/web\"\n-A INPUT -j ACCEPT: InvalidName: metadata.name: "web\"\n-A INPUT -j ACCEPT": a DNS-1035 label"#
        ),
        "{}",
        diagnostics[0]
    );
}

#[test]
fn a_node_name_the_api_server_would_refuse_applies_nothing() {
    let dir = TempDir::new("node");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    let kernel = FakeKernel::default();
    let mut dp = kernel.factory().build(Mode::Nftables).unwrap();
    let opts = StandaloneOptions {
        node_name: "node-a\n-A INPUT -j ACCEPT".into(),
        ..options(&dir)
    };
    let err = apply_once(dp.as_mut(), &opts).unwrap_err().to_string();
    assert!(
        err.starts_with(r#"node "node-a\n-A INPUT -j ACCEPT": metadata.name: "node-a\n-A INPUT -j ACCEPT": a lowercase RFC 1123 subdomain"#),
        "{err}"
    );
    assert!(kernel.installed().is_empty());
}

#[test]
fn a_state_directory_over_the_size_cap_is_refused_unread() {
    let dir = TempDir::new("huge");
    std::fs::write(dir.0.join("service.yaml"), SERVICE).unwrap();
    // Sparse: as large as it says, without the disk space or the time.
    let huge = std::fs::File::create(dir.0.join("huge.yaml")).unwrap();
    huge.set_len(switchyard_compiler::MAX_STATE_BYTES + 1)
        .unwrap();
    let kernel = FakeKernel::default();
    let mut dp = kernel.factory().build(Mode::Nftables).unwrap();
    let err = apply_once(dp.as_mut(), &options(&dir))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("huge.yaml: the state is larger than 536870912 bytes"),
        "{err}"
    );
    assert!(kernel.installed().is_empty());
}
