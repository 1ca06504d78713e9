//! The `ebpf` backend.
