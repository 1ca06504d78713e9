//! `node-agent apply`: drive one dataplane without a cluster, for debugging and
//! demos. Services, EndpointSlices, Nodes and (optionally) a ProxyConfig are
//! read from the YAML files of a directory (at most
//! [`switchyard_compiler::MAX_STATE_BYTES`] in all), compiled, linked for this
//! node and applied once, or again whenever the files change (`--watch-dir`,
//! polled). Objects the API server would refuse are skipped and reported, as
//! the compiler does; a node name it would refuse stops the apply. A failed
//! load or apply keeps the rules applied last.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use switchyard_api::Mode;
use switchyard_api::policy::{LinkedRuleset, NodeInfo, link};
use switchyard_api::ruleset::Cidr;
use switchyard_api::validation::{FieldError, check_node};
use switchyard_compiler::{
    CompileSettings, Diagnostic, Objects, ReadError, Snapshot, StateReader, compile, parse_into,
};
use switchyard_dataplane::settings::Settings;
use switchyard_dataplane::{ApplyStats, BackendError, Dataplane};

use crate::heap;
use crate::node::{node_info, pod_cidrs};

/// Standalone mode failed.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("state directory: {0}")]
    Read(#[from] ReadError),
    #[error("node {node:?}: {source}")]
    InvalidNode {
        node: String,
        #[source]
        source: FieldError,
    },
    #[error("applying {mode}: {source}")]
    Apply {
        mode: Mode,
        #[source]
        source: BackendError,
    },
}

/// What to apply, and for which node.
#[derive(Clone, Debug)]
pub struct StandaloneOptions {
    pub mode: Mode,
    /// Directory of `*.yaml` / `*.yml` files.
    pub state: PathBuf,
    pub node_name: String,
    /// The node's addresses; default: those of the Node object of that name in
    /// the state directory, if any.
    pub node_ips: Vec<IpAddr>,
}

/// A compiled and linked state directory.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub ruleset: LinkedRuleset,
    pub settings: Settings,
    pub diagnostics: Vec<Diagnostic>,
}

/// The names and contents of the directory's YAML files, sorted by name.
fn read_state(dir: &Path) -> Result<Vec<(String, String)>, StandaloneError> {
    if !dir.is_dir() {
        let source = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory");
        return Err(ReadError::Read {
            path: dir.display().to_string(),
            source,
        }
        .into());
    }
    Ok(StateReader::default().read_path(dir, &["yaml", "yml"])?)
}

/// A digest of the directory's YAML files (names and contents).
pub fn fingerprint(dir: &Path) -> Result<Vec<u8>, StandaloneError> {
    let mut hash = Sha256::new();
    for (path, text) in read_state(dir)? {
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    Ok(hash.finalize().to_vec())
}

/// Load, compile and link the state directory.
pub fn prepare(opts: &StandaloneOptions) -> Result<Prepared, StandaloneError> {
    let mut objects = Objects::default();
    for (path, text) in read_state(&opts.state)? {
        parse_into(&mut objects, &path, &text)?;
    }
    let node = objects
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(opts.node_name.as_str()));
    let mut info = node.map(node_info).unwrap_or_else(|| NodeInfo {
        name: opts.node_name.clone(),
        ..Default::default()
    });
    if !opts.node_ips.is_empty() {
        info.addresses = opts.node_ips.clone();
    }
    check_node(&info).map_err(|source| StandaloneError::InvalidNode {
        node: info.name.clone(),
        source,
    })?;
    let pod_cidrs: Vec<Cidr> = node.map(pod_cidrs).unwrap_or_default();
    let spec = objects
        .proxy_configs
        .first()
        .map(|c| c.spec.clone())
        .unwrap_or_default();
    let (settings, warnings) = Settings::from_spec(&spec, opts.mode, &pod_cidrs);
    for w in warnings {
        tracing::warn!(warning = %w, "ProxyConfig setting skipped");
    }
    let compiled = compile(&Snapshot::from(objects), &CompileSettings::default());
    for d in &compiled.diagnostics {
        tracing::warn!(diagnostic = %d, "skipped");
    }
    Ok(Prepared {
        ruleset: link(&compiled.ruleset, &info),
        settings,
        diagnostics: compiled.diagnostics,
    })
}

/// Apply a prepared state.
pub fn apply(
    dataplane: &mut dyn Dataplane,
    prepared: &Prepared,
) -> Result<ApplyStats, StandaloneError> {
    dataplane
        .sync(&prepared.ruleset, &prepared.settings)
        .map_err(|source| StandaloneError::Apply {
            mode: dataplane.mode(),
            source,
        })
}

/// Load and apply once.
pub fn apply_once(
    dataplane: &mut dyn Dataplane,
    opts: &StandaloneOptions,
) -> Result<ApplyStats, StandaloneError> {
    let stats = apply(dataplane, &prepare(opts)?);
    heap::release_freed();
    stats
}

/// Apply, then poll the directory every `poll` and apply again when its files
/// change, until `shutdown` completes. Errors are logged and the last applied
/// rules stay; a failed apply is tried again on every poll, but the error is
/// logged once per change of the directory (or of the error), not every poll.
pub async fn watch(
    dataplane: &mut dyn Dataplane,
    opts: &StandaloneOptions,
    poll: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut applied: Option<Vec<u8>> = None;
    // The directory's digest (None: unreadable) and the error last logged.
    let mut reported: Option<(Option<Vec<u8>>, String)> = None;
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        let (digest, error) = match fingerprint(&opts.state) {
            Err(e) => (None, e),
            Ok(d) if applied.as_ref() == Some(&d) => {
                reported = None;
                continue;
            }
            Ok(d) => match apply_once(dataplane, opts) {
                Ok(stats) => {
                    tracing::info!(objects = stats.objects, written = stats.written, "applied");
                    applied = Some(d);
                    reported = None;
                    continue;
                }
                Err(e) => (Some(d), e),
            },
        };
        let now = (digest, error.to_string());
        if reported.as_ref() != Some(&now) {
            tracing::error!(error = %error, "state directory not applied; keeping the previous rules until it changes");
            reported = Some(now);
        }
    }
}
