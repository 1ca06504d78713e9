//! The health servers on loopback: `/healthz` and the health check node port
//! servers of `externalTrafficPolicy: Local` services, answered as kube-proxy does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::{Value, json};
use switchyard_agent::health::{
    HealthCheckServers, ProxyHealth, health_check_services, proxy_health_handler,
};
use switchyard_agent::http::Rebindable;
use switchyard_api::policy::link;
use switchyard_api::ruleset::{Ruleset, ServicePortRule, TrafficPolicy};
use switchyard_daemon::http::serve;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind((LOOPBACK, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path`; returns status, the raw head, and the JSON body.
async fn get(port: u16, path: &str) -> std::io::Result<(u16, String, Value)> {
    let mut s = TcpStream::connect(SocketAddr::new(LOOPBACK, port)).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Ok((
        status,
        head.to_string(),
        serde_json::from_str(body).unwrap(),
    ))
}

fn local_lb(
    name: &str,
    hc_port: u16,
    endpoints: Vec<switchyard_api::ruleset::Endpoint>,
) -> ServicePortRule {
    let mut r = rule(7, name, "10.96.0.70", endpoints);
    r.node_port = Some(30080);
    r.external_traffic_policy = TrafficPolicy::Local;
    r.health_check_node_port = Some(hc_port);
    r
}

#[tokio::test]
async fn health_check_node_ports_answer_with_local_endpoint_counts() {
    let proxy = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let mut servers = HealthCheckServers::new(LOOPBACK, proxy.clone());
    let (with_local, without_local) = (free_port(), free_port());
    let ruleset = Ruleset {
        services: vec![
            local_lb(
                "lb",
                with_local,
                vec![
                    endpoint(1, "10.0.1.5", NODE),
                    endpoint(2, "10.0.1.6", NODE),
                    endpoint(3, "10.0.2.5", "node-b"),
                ],
            ),
            local_lb(
                "remote-only",
                without_local,
                vec![endpoint(4, "10.0.2.6", "node-b")],
            ),
            // Cluster policy: no health check server even with a port set.
            {
                let mut r = local_lb("cluster", free_port(), vec![]);
                r.external_traffic_policy = TrafficPolicy::Cluster;
                r
            },
        ],
    };
    let linked = link(&ruleset, &switchyard_agent::node::node_info(&node()));
    let errors = servers.sync(health_check_services(&linked));
    assert!(errors.is_empty(), "{errors:?}");
    let mut ports = vec![with_local, without_local];
    ports.sort();
    assert_eq!(servers.ports(), ports);

    let (status, head, body) = get(with_local, "/").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"service": {"namespace": "default", "name": "lb"}, "localEndpoints": 2, "serviceProxyHealthy": true})
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("x-load-balancing-endpoint-weight: 2"),
        "{head}"
    );
    assert!(head.contains("application/json"));

    let (status, _, body) = get(without_local, "/").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["localEndpoints"], 0);

    // An unhealthy proxy fails every service's check.
    proxy.queued(SystemTime::now() - Duration::from_secs(120));
    let (status, _, body) = get(with_local, "/").await.unwrap();
    assert_eq!(
        (status, body["serviceProxyHealthy"].clone()),
        (503, json!(false))
    );
    proxy.updated(SystemTime::now());

    // The service goes away: its port stops listening.
    let only_remote = Ruleset {
        services: vec![ruleset.services[1].clone()],
    };
    let linked = link(&only_remote, &switchyard_agent::node::node_info(&node()));
    servers.sync(health_check_services(&linked));
    assert_eq!(servers.ports(), vec![without_local]);
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // The aborted accept task drops its listener on its next poll.
            match TcpStream::connect(SocketAddr::new(LOOPBACK, with_local)).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break e.kind(),
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("port still listening"));
    assert_eq!(refused, std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn healthz_reports_last_update_and_fails_when_a_change_waits_too_long() {
    let proxy = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve(listener, proxy_health_handler(proxy.clone())));

    proxy.updated(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let (status, _, body) = get(port, "/healthz").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["lastUpdated"], "2027-01-15T08:00:00Z");
    assert_eq!(body["nodeEligible"], true);
    assert!(body["currentTime"].as_str().unwrap().ends_with('Z'));

    proxy.queued(SystemTime::now() - Duration::from_secs(61));
    let (status, _, _) = get(port, "/healthz").await.unwrap();
    assert_eq!(status, 503);
    let (status, _, _) = get(port, "/livez").await.unwrap();
    assert_eq!(status, 503);
    server.abort();
}

#[tokio::test]
async fn healthz_follows_the_configured_address_unless_a_flag_is_given() {
    let proxy = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let (first, second) = (free_port(), free_port());
    let default = SocketAddr::new(LOOPBACK, free_port());
    let mut server = Rebindable::new(
        "healthz",
        proxy_health_handler(proxy.clone()),
        None,
        default,
    );
    server.reconcile(None).unwrap();
    assert_eq!(server.addr(), Some(default));
    assert_eq!(get(default.port(), "/healthz").await.unwrap().0, 200);

    server
        .reconcile(Some(&format!("127.0.0.1:{first}")))
        .unwrap();
    assert_eq!(get(first, "/healthz").await.unwrap().0, 200);
    server
        .reconcile(Some(&format!("127.0.0.1:{second}")))
        .unwrap();
    assert_eq!(get(second, "/livez").await.unwrap().0, 200);
    assert!(server.reconcile(Some("not an address")).is_err());
    assert_eq!(
        server.addr(),
        Some(SocketAddr::new(LOOPBACK, second)),
        "kept serving"
    );

    let flag = SocketAddr::new(LOOPBACK, free_port());
    let mut flagged = Rebindable::new("healthz", proxy_health_handler(proxy), Some(flag), default);
    flagged
        .reconcile(Some(&format!("127.0.0.1:{first}")))
        .unwrap();
    assert_eq!(flagged.addr(), Some(flag), "the command line wins");
}

#[tokio::test]
async fn agent_serves_health_check_node_ports_of_what_it_applied() {
    use common::fake::FakeKernel;
    use switchyard_agent::agent::{Agent, AgentParts, SyncOutcome};
    use switchyard_agent::metrics::Metrics;
    use switchyard_agent::status::StatusReporter;
    use switchyard_api::Mode;

    let kernel = FakeKernel::default();
    let proxy = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let mut agent = Agent::new(AgentParts {
        node_name: NODE.into(),
        factory: Arc::new(kernel.factory()),
        probe: Arc::new(kernel.probe()),
        leftovers: vec![],
        reporter: StatusReporter::new(Box::new(RecordingWriter::default()), Duration::from_secs(5)),
        events: Box::new(RecordingEvents::default()),
        metrics: Arc::new(Metrics::new()),
        health: proxy.clone(),
        health_checks: Some(HealthCheckServers::new(LOOPBACK, proxy)),
        http: None,
        wall_clock: fixed_clock,
    });
    let port = free_port();
    let mut inputs = inputs(Some(Mode::Nftables), None);
    inputs.shards = vec![shard(
        1,
        0,
        1,
        1,
        vec![
            web(),
            local_lb("lb", port, vec![endpoint(9, "10.0.1.9", NODE)]),
        ],
    )];
    let out = agent.sync(&inputs, None).await;
    assert!(matches!(out, SyncOutcome::Synced), "{out:?}");
    let (status, _, body) = get(port, "/").await.unwrap();
    assert_eq!((status, body["localEndpoints"].clone()), (200, json!(1)));
}
