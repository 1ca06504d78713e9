/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reject like kube-proxy (icmp-port-unreachable): turn the packet into an
 * ICMP / ICMPv6 destination unreachable from its destination and send it back out of
 * the interface it came in on. TCP and UDP clients both see ECONNREFUSED.
 */
#ifndef SY_REJECT_H
#define SY_REJECT_H

#include "common.h"

/* <linux/icmp.h> drags in libc headers; the two constants and the header are all we need. */
#define SY_ICMP_DEST_UNREACH 3
#define SY_ICMP_PORT_UNREACH 3

struct sy_icmphdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 unused;
};

/*
 * How much of the original packet the ICMP quotes: its IPv4 header (no
 * options) and the L4 header up to and including its checksum. With
 * CHECKSUM_PARTIAL (as from a veth) the kernel will not trim the packet
 * shorter than that, and ICMP needs at least 8 bytes of L4.
 */
#define SY_QUOTE4_TCP 40
#define SY_QUOTE4_UDP 28

SY_INLINE __u16 sy_csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

struct sy_icmp4 {
	struct iphdr ip;
	struct sy_icmphdr icmp;
};

SY_INLINE int sy_reject4_quote(struct __sk_buff *skb, __u32 l4off, __u8 *quote, __u32 len)
{
	struct sy_icmp4 hdr = {};
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];
	struct iphdr *orig = (struct iphdr *)quote;
	__s64 sum;

	if (l4off != ETH_HLEN + sizeof(struct iphdr))
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, quote, len) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, ETH_HLEN + len, 0) < 0 ||
	    bpf_skb_adjust_room(skb, sizeof(hdr), BPF_ADJ_ROOM_MAC, 0) < 0)
		return TC_ACT_SHOT;

	hdr.ip.version = 4;
	hdr.ip.ihl = 5;
	hdr.ip.ttl = 64;
	hdr.ip.protocol = IPPROTO_ICMP;
	hdr.ip.tot_len = bpf_htons(sizeof(hdr) + len);
	hdr.ip.saddr = orig->daddr;
	hdr.ip.daddr = orig->saddr;
	sum = bpf_csum_diff(0, 0, (__be32 *)&hdr.ip, sizeof(hdr.ip), 0);
	hdr.ip.check = sy_csum_fold(sum);
	hdr.icmp.type = SY_ICMP_DEST_UNREACH;
	hdr.icmp.code = SY_ICMP_PORT_UNREACH;
	sum = bpf_csum_diff(0, 0, (__be32 *)&hdr.icmp, sizeof(hdr.icmp), 0);
	sum = bpf_csum_diff(0, 0, (__be32 *)quote, len, sum);
	hdr.icmp.checksum = sy_csum_fold(sum);

	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &hdr, sizeof(hdr), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(hdr), quote, len, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

SY_INLINE int sy_reject4(struct __sk_buff *skb, __u32 l4off, __u8 proto)
{
	__u8 quote[SY_QUOTE4_TCP];

	if (proto == IPPROTO_TCP)
		return sy_reject4_quote(skb, l4off, quote, SY_QUOTE4_TCP);
	return sy_reject4_quote(skb, l4off, quote, SY_QUOTE4_UDP);
}

/* ICMPv6: the IPv6 header and the L4 header up to its checksum. */
#define SY_QUOTE6_TCP 60
#define SY_QUOTE6_UDP 48
#define SY_ICMP6_DEST_UNREACH 1
#define SY_ICMP6_PORT_UNREACH 4

struct sy_icmp6 {
	struct ipv6hdr ip;
	struct sy_icmphdr icmp;
};

/* The ICMPv6 checksum's pseudo header. */
struct sy_pseudo6 {
	__u32 src[4];
	__u32 dst[4];
	__u32 len;
	__u32 next; /* 3 zero bytes, then the next header */
};

SY_INLINE int sy_reject6_quote(struct __sk_buff *skb, __u8 *quote, __u32 len)
{
	struct sy_icmp6 hdr = {};
	struct sy_pseudo6 pseudo = {};
	struct ipv6hdr *orig = (struct ipv6hdr *)quote;
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];
	__s64 sum;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, quote, len) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, ETH_HLEN + len, 0) < 0 ||
	    bpf_skb_adjust_room(skb, sizeof(hdr), BPF_ADJ_ROOM_MAC, 0) < 0)
		return TC_ACT_SHOT;

	hdr.ip.version = 6;
	hdr.ip.payload_len = bpf_htons(sizeof(hdr.icmp) + len);
	hdr.ip.nexthdr = 58; /* IPPROTO_ICMPV6 */
	hdr.ip.hop_limit = 64;
	__builtin_memcpy(&hdr.ip.saddr, &orig->daddr, 16);
	__builtin_memcpy(&hdr.ip.daddr, &orig->saddr, 16);
	hdr.icmp.type = SY_ICMP6_DEST_UNREACH;
	hdr.icmp.code = SY_ICMP6_PORT_UNREACH;
	__builtin_memcpy(pseudo.src, &hdr.ip.saddr, 16);
	__builtin_memcpy(pseudo.dst, &hdr.ip.daddr, 16);
	pseudo.len = bpf_htonl(sizeof(hdr.icmp) + len);
	pseudo.next = bpf_htonl(58);
	sum = bpf_csum_diff(0, 0, (__be32 *)&pseudo, sizeof(pseudo), 0);
	sum = bpf_csum_diff(0, 0, (__be32 *)&hdr.icmp, sizeof(hdr.icmp), sum);
	sum = bpf_csum_diff(0, 0, (__be32 *)quote, len, sum);
	hdr.icmp.checksum = sy_csum_fold(sum);

	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &hdr, sizeof(hdr), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(hdr), quote, len, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

SY_INLINE int sy_reject6(struct __sk_buff *skb, __u8 proto)
{
	__u8 quote[SY_QUOTE6_TCP];

	if (proto == IPPROTO_TCP)
		return sy_reject6_quote(skb, quote, SY_QUOTE6_TCP);
	return sy_reject6_quote(skb, quote, SY_QUOTE6_UDP);
}

#endif
