//! Threads that run inside one of the lab's network namespaces: the thread
//! enters the namespace first (sockets it opens and programs it starts live
//! there) and never runs its work if entering fails.

use std::thread::JoinHandle;

use crate::HarnessError;
use crate::netns::{self, Netns};

/// Run `work` on a new thread inside `ns`; the thread's result is `Err` when
/// it could not enter the namespace or `work` failed.
pub fn spawn_in<T, F>(
    ns: &Netns,
    name: &str,
    work: F,
) -> Result<JoinHandle<Result<T, String>>, HarnessError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    let file = ns.open()?;
    let where_ = ns.name().to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            netns::enter(&file).map_err(|e| format!("entering {where_}: {e}"))?;
            work()
        })
        .map_err(|source| HarnessError::Spawn {
            what: format!("thread {name}"),
            source,
        })
}

/// A single-threaded tokio runtime for a namespace thread.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}
