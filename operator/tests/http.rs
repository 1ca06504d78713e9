//! The probe and metrics endpoints, over a real loopback connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::StatusCode;
use switchyard_operator::http::{Health, respond, serve};
use switchyard_operator::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn readyz_follows_the_api_and_names_the_role() {
    let health = Health::default();
    let metrics = Metrics::default();
    assert_eq!(respond("/healthz", &health, &metrics).0, StatusCode::OK);
    let (status, body) = respond("/readyz", &health, &metrics);
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the API server is not reachable (standby)\n"
        )
    );
    health.api_reachable.store(true, Ordering::Relaxed);
    health.leader.store(true, Ordering::Relaxed);
    assert_eq!(
        respond("/readyz", &health, &metrics),
        (StatusCode::OK, "ok (leader)\n".into())
    );
    assert_eq!(respond("/nope", &health, &metrics).0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_are_served_in_the_text_format() {
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
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
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
