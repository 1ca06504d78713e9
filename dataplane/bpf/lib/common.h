/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Includes, load-time settings and small helpers shared by every program. */
#ifndef SY_COMMON_H
#define SY_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SY_INLINE static __always_inline

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif
#ifndef ETIMEDOUT
#define ETIMEDOUT 110
#endif

/* Settings written by the agent at load time (EbpfLoader::set_global). */
/* Maglev lookup-table size per service (a prime); 0 selects backends at random. */
volatile const __u32 CFG_MAGLEV_SIZE = 0;
/* The node address external traffic is masqueraded to (network byte order; 0: none). */
volatile const __u32 CFG_NODE_IP4 = 0;
volatile const __u32 CFG_NODE_IP6[4] = {0, 0, 0, 0};
/* The source ports masquerade picks from (inclusive, host order): a block
 * outside the node's ip_local_port_range (the agent's MasqueradePorts; these
 * defaults are its choice for the kernel's default range). */
volatile const __u16 CFG_MASQ_PORT_MIN = 1024;
volatile const __u16 CFG_MASQ_PORT_MAX = 32767;
/* Whether sy_source_ranges holds the cluster's pod ranges under
 * SY_LOCAL_DETECTOR (traffic from elsewhere to a cluster IP is masqueraded). */
volatile const __u8 CFG_LOCAL_DETECTOR = 0;
/* A kernel capability, probed by the agent: whether cgroup programs may call
 * bpf_set_retval (5.18). A run-time constant rather than an #ifdef because one
 * object serves every kernel; the verifier never visits the call when it is 0. */
volatile const __u8 CFG_HAVE_SET_RETVAL = 0;

SY_INLINE int sy_addr_eq(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

SY_INLINE void sy_addr_copy(__u32 *dst, const __u32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

/* A well-mixed 32-bit hash of n words (murmur3 finalizer per word). */
SY_INLINE __u32 sy_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

SY_INLINE __u32 sy_fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

#endif
