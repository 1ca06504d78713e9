//! Waiting for the request to shut down: SIGTERM, which Kubernetes sends a
//! pod it stops, or Ctrl-C when run by hand.

use tokio::signal::unix::{SignalKind, signal};

/// Which request arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    Terminated,
    Interrupted,
}

/// Wait for SIGTERM or Ctrl-C. When SIGTERM cannot be listened for (logged),
/// only Ctrl-C ends the wait.
pub async fn shutdown_requested() -> Shutdown {
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => Shutdown::Terminated,
        _ = tokio::signal::ctrl_c() => Shutdown::Interrupted,
    }
}
