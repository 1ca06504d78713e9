//! Tests of the eBPF backend: pure render and sync, the C layouts against the
//! objects' BTF, the tc programs in the kernel through BPF_PROG_TEST_RUN, and
//! the socket programs on a real cgroup and network namespace.

mod btf_layout;
mod fixtures;
mod render;
mod sock_cgroup;
mod sync_order;
mod tc_classic;
mod tc_netlink;
mod tc_run;
mod tc_veth;
