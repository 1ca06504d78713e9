//! What Switchyard's two daemons, the operator and the node agent, share at
//! run time:
//!
//! - [`http`]: the accept loop of their HTTP endpoints, the handler shape,
//!   the plain-text and OpenMetrics replies (`/metrics`).
//! - [`logs`]: text or JSON log lines, colour only on a terminal.
//! - [`ratelimit`]: one run per minimum period, folding the requests in
//!   between (the agent's syncs and status writes, the operator's publishing).
//! - [`signal`]: waiting for SIGTERM (what Kubernetes sends a pod) or Ctrl-C.

pub mod http;
pub mod logs;
pub mod ratelimit;
pub mod signal;
