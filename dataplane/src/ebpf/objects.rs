//! The compiled programs, built by `build.rs` from `bpf/*.bpf.c`.

/// Socket-level load balancing (cgroup sock_addr hooks).
pub static SOCK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.bpf.o"));

/// tc programs for traffic from outside.
pub static TC: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc.bpf.o"));
