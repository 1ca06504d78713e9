//! The `nftables` backend.
