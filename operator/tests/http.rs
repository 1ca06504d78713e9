//! The probe and metrics endpoints, over a real loopback connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::StatusCode;
use switchyard_daemon::http::{OPENMETRICS_TEXT, PLAIN_TEXT, Reply};
use switchyard_operator::http::{Health, respond, serve};
use switchyard_operator::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn readyz_follows_the_api_and_names_the_role() {
    let health = Health::default();
    let metrics = Metrics::default();
    assert_eq!(
        respond("/healthz", &health, &metrics).status,
        StatusCode::OK
    );
    assert_eq!(
        respond("/readyz", &health, &metrics),
        Reply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            content_type: PLAIN_TEXT,
            body: "the API server is not reachable (standby)\n".into(),
        }
    );
    health.api_reachable.store(true, Ordering::Relaxed);
    health.leader.store(true, Ordering::Relaxed);
    assert_eq!(
        respond("/readyz", &health, &metrics),
        Reply {
            status: StatusCode::OK,
            content_type: PLAIN_TEXT,
            body: "ok (leader)\n".into(),
        }
    );
    assert_eq!(
        respond("/nope", &health, &metrics).status,
        StatusCode::NOT_FOUND
    );
}

/// Prometheus refuses a scrape whose Content-Type it cannot read (it sent
/// none before): the body is OpenMetrics, so is the header.
#[tokio::test]
async fn metrics_are_served_as_openmetrics_under_its_content_type() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    metrics.reconcile_started();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Health::default()),
        metrics,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        head.lines()
            .any(|line| line.eq_ignore_ascii_case(&format!("content-type: {OPENMETRICS_TEXT}"))),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        response.contains("switchyard_operator_reconciliations_total 1"),
        "{response}"
    );
    assert!(
        response.contains("# TYPE switchyard_operator_reconcile_duration_seconds histogram"),
        "{response}"
    );
    stop_tx.send(true).unwrap();
    server.await.unwrap();
}
