/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Masquerade of flows from outside (SNAT where they leave the node, at tc
 * egress, after netfilter: the kernel's conntrack never sees the rewritten
 * tuple and cannot make it unique). The source becomes the node address of
 * the family and a port of CFG_MASQ_PORT_MIN..MAX, a block the agent chose
 * outside the node's ip_local_port_range: the kernel gives none of them to a
 * socket of the node, so a masqueraded flow and a socket of the node never
 * share an address and port towards one backend (with the client's port
 * kept they did, and the backend's answers went to the wrong one). The port
 * is probed from the flow's hash in sy_conntrack: no entry may answer on it
 * already (two clients with one source port to one backend get two ports).
 */
#ifndef SY_MASQ_H
#define SY_MASQ_H

#include "ct.h"

/* Ports probed for a new flow before it is dropped. */
#define SY_MASQ_PORT_TRIES 16
/* How long the flow that had a port must have been idle, both ways, before
 * the port goes to another flow: netfilter's timeouts of an assured UDP flow
 * and of TCP TIME_WAIT (120 s), so the backend has forgotten the old one. */
#define SY_MASQ_REUSE_IDLE_S 120

/* The node address to masquerade to, or 0 when none is configured. */
SY_INLINE int sy_masquerade_addr(__u8 family, __u32 *out)
{
	if (family == AF_INET) {
		out[0] = CFG_NODE_IP4;
		out[1] = out[2] = out[3] = 0;
		return CFG_NODE_IP4 != 0;
	}
	out[0] = CFG_NODE_IP6[0];
	out[1] = CFG_NODE_IP6[1];
	out[2] = CFG_NODE_IP6[2];
	out[3] = CFG_NODE_IP6[3];
	return (out[0] | out[1] | out[2] | out[3]) != 0;
}

/* Whether `port` (network order) is one the masquerade picks from. */
SY_INLINE int sy_masq_port_ours(__u16 port)
{
	__u16 p = bpf_ntohs(port);

	return p >= CFG_MASQ_PORT_MIN && p <= CFG_MASQ_PORT_MAX;
}

/* The SNAT entry of the client of un-SNAT entry `old` (key `reply`), if it
 * still sends from that entry's port (the client's tuple may have become a
 * new flow with another port since). */
SY_INLINE struct sy_tuple *sy_masq_request(const struct sy_tuple *reply,
					   const struct sy_tuple *old)
{
	struct sy_tuple key, *req;

	sy_tuple_reverse(&key, old);
	key.pad = SY_CT_EGRESS;
	req = bpf_map_lookup_elem(&sy_conntrack, &key);
	return req && req->sport == reply->dport ? req : 0;
}

/* Whether the flow of un-SNAT entry `old` (key `reply`) is over: UDP, or
 * TCP that a FIN or RST passed, idle both ways for SY_MASQ_REUSE_IDLE_S. A
 * TCP connection that never closed keeps its port until LRU eviction. */
SY_INLINE int sy_masq_flow_over(const struct sy_tuple *reply, const struct sy_tuple *old,
				__u16 now)
{
	struct sy_tuple *req;

	if (!(old->pad & SY_CT_UNSNAT) || sy_ct_idle(old, now) < SY_MASQ_REUSE_IDLE_S)
		return 0;
	if (old->proto == IPPROTO_TCP && !(old->pad & SY_CT_CLOSING))
		return 0;
	req = sy_masq_request(reply, old);
	return !req || sy_ct_idle(req, now) >= SY_MASQ_REUSE_IDLE_S;
}

/* The client of an over flow starts afresh: its DNAT entry goes, so its next
 * packet is a new flow (a TCP segment passes untouched) instead of being
 * sent from the port another flow now has. */
SY_INLINE void sy_masq_forget_client(const struct sy_tuple *reply, const struct sy_tuple *old)
{
	struct sy_tuple key, *undnat;

	if (!sy_masq_request(reply, old))
		return;
	key = *old;
	key.pad = SY_CT_EGRESS;
	undnat = bpf_map_lookup_elem(&sy_conntrack, &key);
	if (!undnat)
		return;
	sy_tuple_reverse(&key, undnat);
	key.pad = SY_CT_INGRESS;
	bpf_map_delete_elem(&sy_conntrack, &key);
}

/* Whether the port reply->dport may carry a new flow to the backend
 * reply->src: no entry answers on it (or only one of a flow that is over,
 * removed here), and no socket of the node (one bound to it explicitly)
 * would receive the backend's packets on it. */
SY_INLINE int sy_masq_port_free(struct __sk_buff *skb, const struct sy_tuple *reply, __u16 now)
{
	struct sy_tuple *old = bpf_map_lookup_elem(&sy_conntrack, reply);

	if (old && !sy_masq_flow_over(reply, old, now))
		return 0;
	if (sy_local_socket(skb, reply))
		return 0;
	if (old) {
		sy_masq_forget_client(reply, old);
		bpf_map_delete_elem(&sy_conntrack, reply);
	}
	return 1;
}

/* A free masquerade port (network order) for the flow `dnat` (client ->
 * backend) masqueraded to `masq`, probed from the flow's `hash`; 0: none
 * within SY_MASQ_PORT_TRIES. */
SY_INLINE __u16 sy_masq_port(struct __sk_buff *skb, const struct sy_tuple *dnat,
			     const __u32 *masq, __u32 hash, __u16 now)
{
	__u32 min = CFG_MASQ_PORT_MIN;
	__u32 size = CFG_MASQ_PORT_MAX - min + 1;
	struct sy_tuple reply = {};

	sy_addr_copy(reply.src, dnat->dst);
	sy_addr_copy(reply.dst, masq);
	reply.sport = dnat->dport;
	reply.proto = dnat->proto;
	reply.family = dnat->family;
	reply.pad = SY_CT_INGRESS;
	for (__u32 i = 0; i < SY_MASQ_PORT_TRIES; i++) {
		reply.dport = bpf_htons(min + (hash + i) % size);
		if (sy_masq_port_free(skb, &reply, now))
			return reply.dport;
	}
	return 0;
}

/* The entries of a masqueraded flow `dnat` (client -> backend): its answers
 * back to the client where they arrive, claimed first (a flow on another
 * CPU that picked the same port in the meantime keeps it, this one is
 * dropped), then the SNAT to masq:port where it leaves the node. */
SY_INLINE int sy_masq_record(const struct sy_tuple *dnat, const __u32 *masq, __u16 port,
			     __u16 now)
{
	struct sy_tuple snat = *dnat, key, value;

	sy_addr_copy(snat.src, masq);
	snat.sport = port;
	snat.pad = sy_ct_pad(0, now);
	sy_tuple_reverse(&key, &snat);
	key.pad = SY_CT_INGRESS;
	sy_tuple_reverse(&value, dnat);
	value.pad = sy_ct_pad(SY_CT_UNSNAT, now);
	if (bpf_map_update_elem(&sy_conntrack, &key, &value, BPF_NOEXIST) < 0)
		return -1;
	key = *dnat;
	key.pad = SY_CT_EGRESS;
	return bpf_map_update_elem(&sy_conntrack, &key, &snat, BPF_ANY);
}

#endif
