/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-packet NAT for traffic from outside (tc): DNAT of new flows to a
 * backend of the external list, SNAT to the node address where the service
 * masquerades (masq.h), and the reverse rewrite on replies, all through
 * sy_conntrack (ct.h). DNAT and un-SNAT happen on ingress, SNAT and un-DNAT
 * on egress.
 */
#ifndef SY_NAT_H
#define SY_NAT_H

#include "lb.h"
#include "masq.h"
#include "reject.h"

#define SY_IP4_CSUM_OFF (ETH_HLEN + 10)
#define SY_IP4_SRC_OFF (ETH_HLEN + 12)
#define SY_IP6_SRC_OFF (ETH_HLEN + 8)

/* The TCP header's flags byte, and its bits we read. */
#define SY_TCP_FLAGS_OFF 13
#define SY_TCP_FIN 0x01
#define SY_TCP_SYN 0x02
#define SY_TCP_RST 0x04

struct sy_pkt {
	struct sy_tuple t;
	__u32 l4off;
	__u32 csum_off; /* offset of the L4 checksum */
};

/* Parse an Ethernet frame carrying IPv4/IPv6 TCP or UDP (no fragments, no
 * IPv6 extension headers). Returns 0 when pkt is filled in. */
SY_INLINE int sy_parse(struct __sk_buff *skb, struct sy_pkt *pkt)
{
	__u16 ports[2];

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.ihl < 5 || (ip.frag_off & bpf_htons(0x3fff)))
			return -1;
		pkt->t.family = AF_INET;
		pkt->t.proto = ip.protocol;
		pkt->t.src[0] = ip.saddr;
		pkt->t.dst[0] = ip.daddr;
		pkt->l4off = ETH_HLEN + ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return -1;
		pkt->t.family = AF_INET6;
		pkt->t.proto = ip6.nexthdr;
		__builtin_memcpy(pkt->t.src, &ip6.saddr, 16);
		__builtin_memcpy(pkt->t.dst, &ip6.daddr, 16);
		pkt->l4off = ETH_HLEN + sizeof(ip6);
	} else {
		return -1;
	}
	if (pkt->t.proto == IPPROTO_TCP)
		pkt->csum_off = pkt->l4off + 16;
	else if (pkt->t.proto == IPPROTO_UDP)
		pkt->csum_off = pkt->l4off + 6;
	else
		return -1;
	if (bpf_skb_load_bytes(skb, pkt->l4off, ports, sizeof(ports)) < 0)
		return -1;
	pkt->t.sport = ports[0];
	pkt->t.dport = ports[1];
	return 0;
}

SY_INLINE __u64 sy_l4_flags(const struct sy_pkt *pkt)
{
	return pkt->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Replace the address at `off` (4 or 16 bytes) and fix the checksums. */
SY_INLINE int sy_store_addr(struct __sk_buff *skb, const struct sy_pkt *pkt, __u32 off,
			    const __u32 *from, const __u32 *to)
{
	__u64 l4flags = sy_l4_flags(pkt) | BPF_F_PSEUDO_HDR;

	if (pkt->t.family == AF_INET) {
		if (bpf_l4_csum_replace(skb, pkt->csum_off, from[0], to[0], l4flags | 4) < 0 ||
		    bpf_l3_csum_replace(skb, SY_IP4_CSUM_OFF, from[0], to[0], 4) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, off, to, 4, 0);
	}
	{
		__s64 diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);

		if (diff < 0 || bpf_l4_csum_replace(skb, pkt->csum_off, 0, diff, l4flags) < 0)
			return -1;
	}
	return bpf_skb_store_bytes(skb, off, to, 16, 0);
}

SY_INLINE int sy_store_port(struct __sk_buff *skb, const struct sy_pkt *pkt, __u32 off,
			    __u16 from, __u16 to)
{
	if (bpf_l4_csum_replace(skb, pkt->csum_off, from, to, sy_l4_flags(pkt) | 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, 2, 0);
}

/* Rewrite the packet's tuple from pkt->t to *to. */
SY_INLINE int sy_rewrite(struct __sk_buff *skb, const struct sy_pkt *pkt, const struct sy_tuple *to)
{
	__u32 src_off = pkt->t.family == AF_INET ? SY_IP4_SRC_OFF : SY_IP6_SRC_OFF;
	__u32 dst_off = src_off + (pkt->t.family == AF_INET ? 4 : 16);

	if (!sy_addr_eq(pkt->t.src, to->src) &&
	    sy_store_addr(skb, pkt, src_off, pkt->t.src, to->src) < 0)
		return -1;
	if (!sy_addr_eq(pkt->t.dst, to->dst) &&
	    sy_store_addr(skb, pkt, dst_off, pkt->t.dst, to->dst) < 0)
		return -1;
	if (pkt->t.sport != to->sport &&
	    sy_store_port(skb, pkt, pkt->l4off, pkt->t.sport, to->sport) < 0)
		return -1;
	if (pkt->t.dport != to->dport &&
	    sy_store_port(skb, pkt, pkt->l4off + 2, pkt->t.dport, to->dport) < 0)
		return -1;
	return 0;
}

SY_INLINE __u32 sy_tuple_hash(const struct sy_tuple *t)
{
	__u32 h = 0x5977;

	for (int i = 0; i < 4; i++) {
		h = sy_mix(h, t->src[i]);
		h = sy_mix(h, t->dst[i]);
	}
	h = sy_mix(h, ((__u32)t->sport << 16) | t->dport);
	return sy_fmix(sy_mix(h, t->proto));
}

/* loadBalancerSourceRanges: whether the client may reach the service. */
SY_INLINE int sy_source_allowed(const struct sy_frontend *fe, const struct sy_tuple *t)
{
	return !(fe->flags & SY_FE_SOURCE_RANGES) || sy_source_in(fe->svc_id, t->family, t->src);
}

/*
 * Which list serves a new flow from outside, and whether to masquerade it:
 * external frontends use the external list (masquerade per
 * externalTrafficPolicy); a cluster IP reached through the node uses the
 * internal list and is masqueraded unless it comes from the cluster's pods.
 */
SY_INLINE __u8 sy_nat_list(const struct sy_frontend *fe, __u8 family)
{
	return sy_list(fe->kind == SY_KIND_CLUSTER_IP ? SY_LIST_INTERNAL : SY_LIST_EXTERNAL, family);
}

SY_INLINE int sy_nat_masquerade(const struct sy_frontend *fe, const struct sy_svc_slot *s0,
				const struct sy_tuple *t)
{
	if (s0 && (s0->flags & SY_SVC_MASQUERADE))
		return 1;
	return fe->kind == SY_KIND_CLUSTER_IP && CFG_LOCAL_DETECTOR &&
	       !sy_source_in(SY_LOCAL_DETECTOR, t->family, t->src);
}

/* A packet with no conntrack entry: a new flow to an external frontend? */
SY_INLINE int sy_nat_new_flow(struct __sk_buff *skb, const struct sy_pkt *pkt)
{
	struct sy_frontend_key fkey = {.port = pkt->t.dport, .proto = pkt->t.proto,
				       .family = pkt->t.family};
	struct sy_client client = {};
	struct sy_backend *backend = 0;
	struct sy_tuple dnat, key, value;
	struct sy_frontend *fe;
	__u16 now = sy_ct_now();
	__u32 masq[4];
	__u8 list;

	sy_addr_copy(fkey.addr, pkt->t.dst);
	fe = bpf_map_lookup_elem(&sy_frontends, &fkey);
	if (!fe)
		return TC_ACT_OK;
	list = sy_nat_list(fe, pkt->t.family);
	if (!sy_source_allowed(fe, &pkt->t))
		return TC_ACT_SHOT;

	sy_addr_copy(client.addr, pkt->t.src);
	client.hash = sy_tuple_hash(&pkt->t);
	switch (sy_select(fe->svc_id, list, &client, &backend)) {
	case SY_NOT_SERVICE:
		return TC_ACT_OK;
	case SY_REJECT:
		return pkt->t.family == AF_INET ? sy_reject4(skb, pkt->l4off, pkt->t.proto)
						: sy_reject6(skb, pkt->t.proto);
	case SY_DROP:
		return TC_ACT_SHOT;
	case SY_FORWARD:
		break;
	}
	if (!backend || backend->family != pkt->t.family)
		return TC_ACT_SHOT;

	dnat = pkt->t;
	sy_addr_copy(dnat.dst, backend->addr);
	dnat.dport = backend->port;
	dnat.pad = sy_ct_pad(0, now);
	/* snat (after routing, where the flow leaves: a node address as the
	 * source of an arriving packet would be a martian): node -> backend,
	 * and its reply back to the client where it arrives. No port free:
	 * the flow is dropped before any other entry is made. */
	if (sy_nat_masquerade(fe, sy_slot0(fe->svc_id, list), &pkt->t) &&
	    sy_masquerade_addr(pkt->t.family, masq)) {
		__u16 port = sy_masq_port(skb, &dnat, masq, client.hash, now);

		if (!port || sy_masq_record(&dnat, masq, port, now) < 0)
			return TC_ACT_SHOT;
	}

	/* dnat: client -> backend, rewritten here; the reply is rewritten back
	 * where it leaves the node. */
	sy_tuple_reverse(&key, &dnat);
	key.pad = SY_CT_EGRESS;
	sy_tuple_reverse(&value, &pkt->t);
	value.pad = sy_ct_pad(0, now);
	if (bpf_map_update_elem(&sy_conntrack, &key, &value, BPF_ANY) < 0)
		return TC_ACT_SHOT;
	key = pkt->t;
	key.pad = SY_CT_INGRESS;
	if (bpf_map_update_elem(&sy_conntrack, &key, &dnat, BPF_ANY) < 0)
		return TC_ACT_SHOT;
	return sy_rewrite(skb, pkt, &dnat) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
}

/* The TCP flags of the packet (0 for UDP). */
SY_INLINE __u8 sy_tcp_flags(struct __sk_buff *skb, const struct sy_pkt *pkt)
{
	__u8 flags = 0;

	if (pkt->t.proto == IPPROTO_TCP)
		bpf_skb_load_bytes(skb, pkt->l4off + SY_TCP_FLAGS_OFF, &flags, 1);
	return flags;
}

/*
 * A TCP packet without SYN: the middle of a connection. One we have no entry
 * for was not balanced here (it started before this mode took over, or under
 * another mode draining beside it): it passes untouched, so the kernel's
 * conntrack keeps translating it, instead of being balanced afresh to a
 * backend that would reset it.
 */
SY_INLINE int sy_tcp_mid_stream(struct __sk_buff *skb, const struct sy_pkt *pkt)
{
	return pkt->t.proto == IPPROTO_TCP && !(sy_tcp_flags(skb, pkt) & SY_TCP_SYN);
}

/*
 * A FIN or RST of a connection with entry `ct` marks it closing, and on
 * egress also the ingress entry of the other half (the answer to the tuple
 * `ct` rewrites to: the client's DNAT entry for a reply, the reply's un-SNAT
 * entry for a masqueraded request), so either side's FIN marks every
 * ingress entry of the connection.
 */
SY_INLINE void sy_ct_mark_closing(struct __sk_buff *skb, const struct sy_pkt *pkt,
				  struct sy_tuple *ct, int ingress)
{
	struct sy_tuple other_key, *other;

	if (!(sy_tcp_flags(skb, pkt) & (SY_TCP_FIN | SY_TCP_RST)))
		return;
	ct->pad |= SY_CT_CLOSING;
	if (ingress)
		return;
	sy_tuple_reverse(&other_key, ct);
	other_key.pad = SY_CT_INGRESS;
	other = bpf_map_lookup_elem(&sy_conntrack, &other_key);
	if (other)
		other->pad |= SY_CT_CLOSING;
}

/*
 * Entries leave the LRU map only when evicted, so a new flow can meet an old
 * flow's entry on its tuple: a handshake (SYN or SYN-ACK) on the tuple of a
 * connection that closed is a new connection (a client that reuses its
 * port is balanced afresh). A UDP answer that a socket of the node owns is
 * not for an un-SNAT entry on a port outside the masquerade range: such
 * entries kept the client's port (made before the masquerade picked its
 * own ports, or under another ip_local_port_range) and the node's sockets
 * take those ports too. An entry on a port of the range is never a node
 * socket's: the kernel gives none of them out, and the pick skipped the
 * ports sockets held explicitly.
 */
SY_INLINE int sy_ct_stale(struct __sk_buff *skb, const struct sy_pkt *pkt,
			  const struct sy_tuple *ct)
{
	if (pkt->t.proto == IPPROTO_UDP)
		return (ct->pad & SY_CT_UNSNAT) && !sy_masq_port_ours(pkt->t.dport) &&
		       sy_local_socket(skb, &pkt->t);
	return (ct->pad & SY_CT_CLOSING) && (sy_tcp_flags(skb, pkt) & SY_TCP_SYN);
}

/* Both directions: an established flow is rewritten by its conntrack entry
 * for this direction; on ingress, a new flow to a frontend is load-balanced. */
SY_INLINE int sy_nat(struct __sk_buff *skb, int ingress)
{
	struct sy_pkt pkt = {};
	struct sy_tuple *ct;

	if (sy_parse(skb, &pkt) < 0)
		return TC_ACT_OK;
	pkt.t.pad = ingress ? SY_CT_INGRESS : SY_CT_EGRESS;
	ct = bpf_map_lookup_elem(&sy_conntrack, &pkt.t);
	if (ct && sy_ct_stale(skb, &pkt, ct)) {
		bpf_map_delete_elem(&sy_conntrack, &pkt.t);
		ct = 0;
	}
	if (ct) {
		struct sy_tuple to = *ct;

		sy_ct_touch(ct, sy_ct_now());
		sy_ct_mark_closing(skb, &pkt, ct, ingress);
		return sy_rewrite(skb, &pkt, &to) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	}
	if (!ingress || sy_tcp_mid_stream(skb, &pkt))
		return TC_ACT_OK;
	pkt.t.pad = 0;
	return sy_nat_new_flow(skb, &pkt);
}

#endif
