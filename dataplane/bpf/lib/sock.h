/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Socket-level load balancing (cgroup sock_addr hooks): the destination is
 * rewritten at connect/sendmsg time, and recvmsg/getpeername answer with the
 * service address the application asked for.
 */
#ifndef SY_SOCK_H
#define SY_SOCK_H

#include "lb.h"

/* The frontend a socket address names, or 0. */
SY_INLINE struct sy_frontend *sy_sock_frontend(const __u32 *addr, __u16 port, __u8 proto,
					       __u8 family)
{
	struct sy_frontend_key key = {.port = port, .proto = proto, .family = family};

	sy_addr_copy(key.addr, addr);
	return bpf_map_lookup_elem(&sy_frontends, &key);
}

/* Cluster IPs use the internal list; external frontends reached from the node
 * or its pods short-circuit to the cluster list (kube-proxy does the same). */
SY_INLINE __u8 sy_sock_list(const struct sy_frontend *fe, __u8 family)
{
	return sy_list(fe->kind == SY_KIND_CLUSTER_IP ? SY_LIST_INTERNAL : SY_LIST_CLUSTER, family);
}

SY_INLINE __u8 sy_sock_proto(struct bpf_sock_addr *ctx)
{
	return (__u8)ctx->protocol;
}

enum sy_src_check { SY_SRC_ALLOWED, SY_SRC_DENIED, SY_SRC_UNKNOWN };

/*
 * loadBalancerSourceRanges at the socket: decided by the bound source
 * address. An unbound socket's source is not known yet: it is left
 * untranslated, so its packets meet the tc programs (which check) where
 * they enter the node from a pod.
 */
SY_INLINE enum sy_src_check sy_sock_source_allowed(struct bpf_sock_addr *ctx,
						   const struct sy_frontend *fe, __u8 family)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 src[4] = {};

	if (!(fe->flags & SY_FE_SOURCE_RANGES))
		return SY_SRC_ALLOWED;
	if (!sk)
		return SY_SRC_UNKNOWN;
	if (family == AF_INET) {
		src[0] = sk->src_ip4;
	} else {
		src[0] = sk->src_ip6[0];
		src[1] = sk->src_ip6[1];
		src[2] = sk->src_ip6[2];
		src[3] = sk->src_ip6[3];
	}
	if ((src[0] | src[1] | src[2] | src[3]) == 0)
		return SY_SRC_UNKNOWN;
	return sy_source_in(fe->svc_id, family, src) ? SY_SRC_ALLOWED : SY_SRC_DENIED;
}

/* A hash of the socket's 5-tuple when its source port is already bound
 * (the same flow then keeps its backend), else 0 (pick at random). */
SY_INLINE __u32 sy_sock_flow_hash(struct bpf_sock_addr *ctx, const __u32 *addr, __u16 port,
				  __u8 family)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 h = 0x50c7;

	if (!sk || sk->src_port == 0)
		return 0;
	if (family == AF_INET) {
		h = sy_mix(h, sk->src_ip4);
	} else {
		h = sy_mix(h, sk->src_ip6[0]);
		h = sy_mix(h, sk->src_ip6[1]);
		h = sy_mix(h, sk->src_ip6[2]);
		h = sy_mix(h, sk->src_ip6[3]);
	}
	for (int i = 0; i < 4; i++)
		h = sy_mix(h, addr[i]);
	h = sy_mix(h, (sk->src_port << 16) | port);
	h = sy_fmix(sy_mix(h, ctx->protocol));
	return h ? h : 1;
}

/* Fail the socket call with `err`; a kernel without bpf_set_retval fails it
 * with EPERM, the hook's own error. Returns the hook's verdict. */
SY_INLINE int sy_sock_fail(int err)
{
	if (CFG_HAVE_SET_RETVAL)
		bpf_set_retval(err);
	return 0;
}

/*
 * Rewrite addr and port (the socket's destination) to a backend. Returns the
 * hook's verdict: 1 to let the call go on, 0 to fail it (sy_sock_fail).
 */
SY_INLINE int sy_sock_rewrite(struct bpf_sock_addr *ctx, __u32 *addr, __u16 *port, __u8 family)
{
	struct sy_frontend *fe = sy_sock_frontend(addr, *port, sy_sock_proto(ctx), family);
	struct sy_client client = {};
	struct sy_backend *backend = 0;
	struct sy_sock_key rkey = {};
	struct sy_addr_port vip = {};

	if (!fe)
		return 1;
	switch (sy_sock_source_allowed(ctx, fe, family)) {
	case SY_SRC_DENIED:
		return sy_sock_fail(-ETIMEDOUT);
	case SY_SRC_UNKNOWN:
		return 1;
	case SY_SRC_ALLOWED:
		break;
	}
	client.cookie = bpf_get_netns_cookie(ctx);
	client.hash = sy_sock_flow_hash(ctx, addr, *port, family);
	switch (sy_select(fe->svc_id, sy_sock_list(fe, family), &client, &backend)) {
	case SY_NOT_SERVICE:
		return 1;
	case SY_REJECT:
		return sy_sock_fail(-ECONNREFUSED);
	case SY_DROP:
		return sy_sock_fail(-ETIMEDOUT);
	case SY_FORWARD:
		break;
	}
	if (!backend || backend->family != family)
		return 1;

	sy_addr_copy(vip.addr, addr);
	vip.port = *port;
	rkey.cookie = bpf_get_socket_cookie(ctx);
	sy_addr_copy(rkey.addr, backend->addr);
	rkey.port = backend->port;
	rkey.family = family;
	bpf_map_update_elem(&sy_sock_revnat, &rkey, &vip, BPF_ANY);

	sy_addr_copy(addr, backend->addr);
	*port = backend->port;
	return 1;
}

/* Answer with the service address a socket's peer was rewritten from. */
SY_INLINE void sy_sock_restore(struct bpf_sock_addr *ctx, __u32 *addr, __u16 *port, __u8 family)
{
	struct sy_sock_key rkey = {.port = *port, .family = family};
	struct sy_addr_port *vip;

	rkey.cookie = bpf_get_socket_cookie(ctx);
	sy_addr_copy(rkey.addr, addr);
	vip = bpf_map_lookup_elem(&sy_sock_revnat, &rkey);
	if (!vip)
		return;
	sy_addr_copy(addr, vip->addr);
	*port = vip->port;
}

/* The context's v4 or v6 fields as one address/port pair; `family` is a
 * constant at every call, so each program touches only its own fields. */
SY_INLINE void sy_ctx_load(struct bpf_sock_addr *ctx, __u8 family, __u32 *addr, __u16 *port)
{
	if (family == AF_INET) {
		addr[0] = ctx->user_ip4;
		addr[1] = addr[2] = addr[3] = 0;
	} else {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
	}
	*port = (__u16)ctx->user_port;
}

SY_INLINE void sy_ctx_store(struct bpf_sock_addr *ctx, __u8 family, const __u32 *addr, __u16 port)
{
	if (family == AF_INET) {
		ctx->user_ip4 = addr[0];
	} else {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	}
	ctx->user_port = port;
}

/* connect / sendmsg: send the socket to a backend. */
SY_INLINE int sy_sock_forward(struct bpf_sock_addr *ctx, __u8 family)
{
	__u32 addr[4];
	__u16 port;
	int verdict;

	sy_ctx_load(ctx, family, addr, &port);
	verdict = sy_sock_rewrite(ctx, addr, &port, family);
	sy_ctx_store(ctx, family, addr, port);
	return verdict;
}

/* recvmsg / getpeername: show the service address instead of the backend's. */
SY_INLINE int sy_sock_reverse(struct bpf_sock_addr *ctx, __u8 family)
{
	__u32 addr[4];
	__u16 port;

	sy_ctx_load(ctx, family, addr, &port);
	sy_sock_restore(ctx, addr, &port, family);
	sy_ctx_store(ctx, family, addr, port);
	return 1;
}

#endif
