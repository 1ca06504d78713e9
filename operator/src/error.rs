//! The operator's error type: one variant per failed operation, naming the object.

use std::time::Duration;

/// Why a reconcile, publish or server task failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {kind} {name}: {source}")]
    Read {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing {kind} {name}: {source}")]
    Serialize {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("finalizer of ProxyConfig {name}: {source}")]
    Finalizer {
        name: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },
    #[error("ProxyConfig has no name")]
    MissingName,
    #[error("the {kind} cache stopped before it was filled")]
    CacheNotReady { kind: &'static str },
    #[error("{operation} lease {name}: {source}")]
    Lease {
        name: String,
        operation: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{operation} lease {name}: no answer within {after:?}")]
    LeaseTimeout {
        name: String,
        operation: &'static str,
        after: Duration,
    },
    #[error(
        "lease timing: the lease duration ({lease_duration:?}) must exceed the renew deadline ({renew_deadline:?}), which must exceed the retry period ({retry_period:?}), which must not be zero"
    )]
    LeaseTiming {
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    },
    #[error("serving HTTP on {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A static label for the `reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Serialize { .. } => "serialize",
            Error::Finalizer { .. } => "finalizer",
            Error::MissingName => "missing_name",
            Error::CacheNotReady { .. } => "cache_not_ready",
            Error::Lease { .. } => "lease",
            Error::LeaseTimeout { .. } => "lease_timeout",
            Error::LeaseTiming { .. } => "lease_timing",
            Error::Serve { .. } => "serve",
        }
    }

    /// How long to wait before retrying after this error.
    pub fn retry_after(&self) -> Duration {
        match self {
            Error::Serialize { .. } | Error::MissingName => Duration::from_secs(300),
            _ => Duration::from_secs(5),
        }
    }
}
