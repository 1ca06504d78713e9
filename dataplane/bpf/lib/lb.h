/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Backend selection for one endpoint list of a service port. */
#ifndef SY_LB_H
#define SY_LB_H

#include "maps.h"

/* What a lookup decided. */
enum sy_verdict {
	SY_NOT_SERVICE = 0, /* not a frontend of ours: leave the traffic alone */
	SY_FORWARD,	    /* *backend is set */
	SY_DROP,	    /* endpoints exist, none for this traffic */
	SY_REJECT,	    /* no endpoint at all */
};

struct sy_client {
	__u64 cookie; /* netns cookie (socket path) or 0 */
	__u32 addr[4];
	/* Flow hash (Maglev, and the slot pick, so one 5-tuple keeps its backend
	 * like conntrack would); 0: unknown, pick at random. */
	__u32 hash;
};

/* Whether `src` is in the ranges stored under `svc_id` (loadBalancerSourceRanges,
 * or the local detector's). */
SY_INLINE int sy_source_in(__u32 svc_id, __u8 family, const __u32 *src)
{
	struct sy_source_range_key key = {};

	key.prefixlen = 64 + (family == AF_INET ? 32 : 128);
	key.svc_id = svc_id;
	key.family = family;
	sy_addr_copy(key.addr, src);
	return bpf_map_lookup_elem(&sy_source_ranges, &key) != 0;
}

/* The list number of `base` for `family`. */
SY_INLINE __u8 sy_list(__u8 base, __u8 family)
{
	return family == AF_INET6 ? (base | SY_LIST_V6) : base;
}

SY_INLINE struct sy_svc_slot *sy_slot0(__u32 svc_id, __u8 list)
{
	struct sy_svc_key key = {.svc_id = svc_id, .slot = 0, .list = list, .rev = 0};

	return bpf_map_lookup_elem(&sy_services, &key);
}

SY_INLINE struct sy_backend *sy_affinity_lookup(const struct sy_affinity_key *key,
						__u32 timeout_s, __u64 now)
{
	struct sy_affinity *aff = bpf_map_lookup_elem(&sy_affinity, key);

	if (!aff || now - aff->last_used_ns > (__u64)timeout_s * 1000000000ULL)
		return 0;
	aff->last_used_ns = now;
	return bpf_map_lookup_elem(&sy_backends, &aff->backend_id);
}

/*
 * Slot 0 is written last by the agent (after slots 1..n of the new revision),
 * so a reader sees one complete list. A slot missing under a revision it just
 * read means the agent flipped and removed the old revision in between:
 * read slot 0 again, once.
 */
SY_INLINE __u32 *sy_pick_slot(__u32 svc_id, __u8 list, __u32 pick, struct sy_svc_slot **s0)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		struct sy_svc_slot *head = sy_slot0(svc_id, list);
		struct sy_svc_key key = {.svc_id = svc_id, .list = list};
		struct sy_svc_slot *slot;

		if (!head || head->count == 0)
			return 0;
		*s0 = head;
		key.slot = (pick % head->count) + 1;
		key.rev = head->rev;
		slot = bpf_map_lookup_elem(&sy_services, &key);
		if (slot)
			return &slot->backend_id;
	}
	return 0;
}

SY_INLINE __u32 *sy_maglev_pick(__u32 svc_id, __u8 list, __u32 hash)
{
	struct sy_maglev_key key = {.svc_id = svc_id, .list = list};

	if (CFG_MAGLEV_SIZE == 0)
		return 0;
	key.index = hash % CFG_MAGLEV_SIZE;
	return bpf_map_lookup_elem(&sy_maglev, &key);
}

/* Select a backend of list `list` of service `svc_id` for `client`. */
SY_INLINE enum sy_verdict sy_select(__u32 svc_id, __u8 list, const struct sy_client *client,
				    struct sy_backend **backend)
{
	struct sy_svc_slot *s0 = sy_slot0(svc_id, list);
	struct sy_affinity_key akey = {};
	__u64 now = 0;
	__u32 *id = 0;
	int affinity;

	if (!s0)
		return SY_NOT_SERVICE;
	if (s0->count == 0)
		return (s0->flags & SY_SVC_REJECT) ? SY_REJECT : SY_DROP;

	affinity = s0->flags & SY_SVC_AFFINITY;
	if (affinity) {
		akey.client_cookie = client->cookie;
		sy_addr_copy(akey.client, client->addr);
		akey.svc_id = svc_id;
		akey.list = list;
		now = bpf_ktime_get_ns();
		*backend = sy_affinity_lookup(&akey, s0->affinity_timeout, now);
		if (*backend)
			return SY_FORWARD;
	}

	if (s0->flags & SY_SVC_MAGLEV)
		id = sy_maglev_pick(svc_id, list, client->hash);
	if (!id)
		id = sy_pick_slot(svc_id, list, client->hash ? client->hash : bpf_get_prandom_u32(),
				  &s0);
	if (!id)
		return SY_DROP;
	*backend = bpf_map_lookup_elem(&sy_backends, id);
	if (!*backend)
		return SY_DROP;

	if (affinity) {
		struct sy_affinity aff = {.last_used_ns = now, .backend_id = *id};

		bpf_map_update_elem(&sy_affinity, &akey, &aff, BPF_ANY);
	}
	return SY_FORWARD;
}

#endif
