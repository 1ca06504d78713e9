//! The `ipvs` backend.
