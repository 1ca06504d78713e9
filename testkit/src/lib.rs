//! Switchyard's test fixtures, one per mechanism, shared by the dataplane's
//! kernel tests, the agent's tests, the lab (and through it the end-to-end
//! tests, the VM guest and the CLI's demo):
//!
//! - [`cleanup`]: what is undone on drop and on SIGINT/SIGTERM/SIGHUP.
//! - [`netns`]: network namespaces, removed on drop and by the cleanup
//!   registry; code run on a thread inside one, commands run inside one, veths.
//! - [`echo`]: a TCP echo server inside a namespace, and the client side.
//! - [`golden`]: output compared with a committed file; `UPDATE_GOLDEN=1` rewrites it.
//!
//! It uses only `ip`, `sh` and `/proc`, so it works in the VM guest's
//! busybox userland too.

pub mod cleanup;
pub mod echo;
pub mod golden;
pub mod netns;
