//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test binary uses its own subset

pub mod agent;
pub mod clock;
pub mod lease;
pub mod objects;
pub mod verifier;
