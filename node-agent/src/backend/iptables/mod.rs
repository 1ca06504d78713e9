//! The `iptables` backend.
