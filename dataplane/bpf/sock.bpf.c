// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-level load balancing entry points (cgroup v2 sock_addr hooks). */
#include "lib/sock.h"

SEC("cgroup/connect4")
int sy_connect4(struct bpf_sock_addr *ctx)
{
	return sy_sock_forward(ctx, AF_INET);
}

SEC("cgroup/connect6")
int sy_connect6(struct bpf_sock_addr *ctx)
{
	return sy_sock_forward(ctx, AF_INET6);
}

SEC("cgroup/sendmsg4")
int sy_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sy_sock_forward(ctx, AF_INET);
}

SEC("cgroup/sendmsg6")
int sy_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sy_sock_forward(ctx, AF_INET6);
}

SEC("cgroup/recvmsg4")
int sy_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sy_sock_reverse(ctx, AF_INET);
}

SEC("cgroup/recvmsg6")
int sy_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sy_sock_reverse(ctx, AF_INET6);
}

SEC("cgroup/getpeername4")
int sy_getpeername4(struct bpf_sock_addr *ctx)
{
	return sy_sock_reverse(ctx, AF_INET);
}

SEC("cgroup/getpeername6")
int sy_getpeername6(struct bpf_sock_addr *ctx)
{
	return sy_sock_reverse(ctx, AF_INET6);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
