//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test binary uses its own subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure fails the calling test

pub mod agent;
pub mod clock;
pub mod lease;
pub mod objects;
pub mod verifier;
