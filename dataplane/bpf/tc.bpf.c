// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc entry points for the node's interfaces (clsact ingress and egress). */
#include "lib/nat.h"

SEC("classifier")
int sy_tc_ingress(struct __sk_buff *skb)
{
	return sy_nat(skb, 1);
}

SEC("classifier")
int sy_tc_egress(struct __sk_buff *skb)
{
	return sy_nat(skb, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
