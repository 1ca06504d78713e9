/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The conventions of sy_conntrack entries (an LRU map of ours): keys are the
 * tuple as seen on the wire plus the direction (in `pad`); the value is the
 * tuple to rewrite the packet to, with flags and a coarse last-use time in
 * its `pad`. Also the one lookup of the node's own sockets.
 */
#ifndef SY_CT_H
#define SY_CT_H

#include "maps.h"

/* sy_tuple.pad of conntrack keys */
#define SY_CT_INGRESS 1
#define SY_CT_EGRESS 2

/* sy_tuple.pad of conntrack values, bits 0-1: a FIN or RST of the connection
 * passed (a retired eBPF mode drains until no ingress entry lacks it); the
 * entry un-SNATs answers to the masquerade address. */
#define SY_CT_CLOSING 1
#define SY_CT_UNSNAT 2
#define SY_CT_FLAGS 3
/* Bits 2-15: when the entry was made or last rewrote a packet, in seconds of
 * the monotonic clock modulo 2^14 (4.5 hours). An idle time read from it is
 * never longer than the real one, so a live flow never looks idle. */
#define SY_CT_STAMP_SHIFT 2
#define SY_CT_STAMP_MASK 0x3fff

/* The packet tuple that answers `t`. */
SY_INLINE void sy_tuple_reverse(struct sy_tuple *out, const struct sy_tuple *t)
{
	sy_addr_copy(out->src, t->dst);
	sy_addr_copy(out->dst, t->src);
	out->sport = t->dport;
	out->dport = t->sport;
	out->proto = t->proto;
	out->family = t->family;
	out->pad = 0;
}

/* Now, as a value's stamp. */
SY_INLINE __u16 sy_ct_now(void)
{
	return (bpf_ktime_get_ns() / 1000000000ULL) & SY_CT_STAMP_MASK;
}

/* A value's pad: `flags`, stamped `now`. */
SY_INLINE __u16 sy_ct_pad(__u16 flags, __u16 now)
{
	return (flags & SY_CT_FLAGS) | (now << SY_CT_STAMP_SHIFT);
}

/* The entry rewrote a packet `now` (the value is written at most once a
 * second, not per packet). */
SY_INLINE void sy_ct_touch(struct sy_tuple *ct, __u16 now)
{
	__u16 pad = sy_ct_pad(ct->pad, now);

	if (ct->pad != pad)
		ct->pad = pad;
}

/* Seconds since the entry was made or last rewrote a packet (modulo 2^14). */
SY_INLINE __u16 sy_ct_idle(const struct sy_tuple *ct, __u16 now)
{
	return (now - (ct->pad >> SY_CT_STAMP_SHIFT)) & SY_CT_STAMP_MASK;
}

/* Whether a socket of this namespace would receive a packet with tuple `t`
 * (TCP: a connected or listening socket; UDP: connected or bound). */
SY_INLINE int sy_local_socket(struct __sk_buff *skb, const struct sy_tuple *t)
{
	struct bpf_sock_tuple st = {};
	struct bpf_sock *sk;
	__u32 len;

	if (t->family == AF_INET) {
		st.ipv4.saddr = t->src[0];
		st.ipv4.daddr = t->dst[0];
		st.ipv4.sport = t->sport;
		st.ipv4.dport = t->dport;
		len = sizeof(st.ipv4);
	} else {
		__builtin_memcpy(st.ipv6.saddr, t->src, 16);
		__builtin_memcpy(st.ipv6.daddr, t->dst, 16);
		st.ipv6.sport = t->sport;
		st.ipv6.dport = t->dport;
		len = sizeof(st.ipv6);
	}
	if (t->proto == IPPROTO_TCP)
		sk = bpf_sk_lookup_tcp(skb, &st, len, BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(skb, &st, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

#endif
