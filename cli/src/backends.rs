//! The real backends, built through the agent's factory.

use std::sync::Arc;

use switchyard_agent::backend::{BackendError, Dataplane, for_mode};
use switchyard_agent::exec::RealRunner;
use switchyard_agent::switch::DataplaneFactory;
use switchyard_api::Mode;

/// Builds each mode's real backend, running kernel tools in the calling
/// thread's network namespace. Building touches nothing; `plan` and `diff`
/// only render.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFactory;

impl DataplaneFactory for RealFactory {
    fn build(&self, mode: Mode) -> Result<Box<dyn Dataplane>, BackendError> {
        for_mode(mode, Arc::new(RealRunner))
    }
}
