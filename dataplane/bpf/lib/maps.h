/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map of the dataplane and its key and value layouts, declared once.
 * Both objects (sock and tc) include this file; the maps are pinned by name
 * under the agent's pin root, so both objects and every agent run share them.
 * The Rust side mirrors each struct (#[repr(C)], checked against this
 * object's BTF in a test). Addresses are four network-order words (IPv4 in
 * word 0, the rest zero); ports are network order.
 */
#ifndef SY_MAPS_H
#define SY_MAPS_H

#include "common.h"

/* sy_frontend.kind */
#define SY_KIND_CLUSTER_IP 0
#define SY_KIND_EXTERNAL 1 /* external IP or load-balancer IP */
#define SY_KIND_NODE_PORT 2

/* sy_frontend.flags */
#define SY_FE_SOURCE_RANGES 1 /* loadBalancerSourceRanges apply (sy_source_ranges) */

/* sy_source_range_key.svc_id of the local-traffic detector's ranges */
#define SY_LOCAL_DETECTOR 0xffffffff

/* sy_svc_key.list: which endpoint list of a service port */
#define SY_LIST_INTERNAL 0 /* cluster IPs (internalTrafficPolicy) */
#define SY_LIST_CLUSTER 1  /* external frontends reached from the node or its pods */
#define SY_LIST_EXTERNAL 2 /* external frontends reached from outside (externalTrafficPolicy) */
#define SY_LIST_V6 0x10	   /* or-ed in: the IPv6 endpoints of the list */

/* sy_svc_slot.flags (slot 0) */
#define SY_SVC_REJECT 1	    /* no usable endpoint anywhere: reject instead of drop */
#define SY_SVC_MASQUERADE 2 /* masquerade traffic through tc to the node address */
#define SY_SVC_AFFINITY 4   /* ClientIP session affinity (sy_affinity) */
#define SY_SVC_MAGLEV 8	    /* select through sy_maglev */

struct sy_frontend_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

struct sy_frontend {
	__u32 svc_id;
	__u8 kind;
	__u8 flags;
	__u16 pad;
};

/* slot 0: count, rev and flags of the list; slots 1..count of revision rev: backend ids. */
struct sy_svc_key {
	__u32 svc_id;
	__u16 slot;
	__u8 list;
	__u8 rev;
};

struct sy_svc_slot {
	__u32 backend_id;
	__u16 count;
	__u8 rev;
	__u8 flags;
	__u32 affinity_timeout; /* seconds */
};

struct sy_backend {
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 pad;
};

/* A socket's rewritten destination, to answer recvmsg/getpeername with the VIP. */
struct sy_sock_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u16 family;
	__u32 pad;
};

struct sy_addr_port {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

/* A packet's tuple as seen on the wire; the conntrack value is the tuple to rewrite it to. */
struct sy_tuple {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct sy_affinity_key {
	__u64 client_cookie; /* netns cookie (socket path) or 0 (tc path) */
	__u32 client[4];
	__u32 svc_id;
	__u8 list;
	__u8 pad[3];
};

struct sy_affinity {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

struct sy_source_range_key {
	__u32 prefixlen; /* 64 + the CIDR's prefix length */
	__u32 svc_id;
	__u32 family;
	__u32 addr[4];
};

struct sy_maglev_key {
	__u32 svc_id;
	__u8 list;
	__u8 pad[3];
	__u32 index;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sy_frontend_key);
	__type(value, struct sy_frontend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct sy_svc_key);
	__type(value, struct sy_svc_slot);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 524288);
	__type(key, __u32);
	__type(value, struct sy_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sy_sock_key);
	__type(value, struct sy_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_sock_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sy_tuple);
	__type(value, struct sy_tuple);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sy_affinity_key);
	__type(value, struct sy_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct sy_source_range_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_source_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct sy_maglev_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_maglev SEC(".maps");

/* The agent's record of the interfaces its tc programs are attached to with
 * classic tc (kernels without TCX): ifindex -> SY_TC_* flags. No program
 * reads it; it lives here so it is pinned and removed with the other maps. */
#define SY_TC_CREATED_CLSACT 1 /* the agent added the clsact qdisc */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_tc_clsact SEC(".maps");

/* A digest of the load settings the attached programs run with (slot 0),
 * written by the agent: a restarted agent with the same settings keeps them. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_load_config SEC(".maps");

#endif
