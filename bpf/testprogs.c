// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

//go:build ignore

// Programs for tests only, in an object of their own (IcmplbTest) that the
// agent never loads.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "parse.h"
#include "rtt.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Keeps enum xdp_action in the object's BTF, so that bpf2go gives the tests
 * the kernel's verdict values. */
const enum xdp_action *unused_xdp_action __attribute__((unused));

/* Lets tests check the RTT bucket mapping in the kernel itself: maps the
 * u64 at the start of the packet to its bucket, written back over it. */
SEC("xdp")
int rtt_bucket_probe(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 *v = data;

	if ((void *)(v + 1) > data_end)
		return XDP_ABORTED;
	*v = rtt_bucket(*v);
	return XDP_PASS;
}

/* Attached to the far end of a veth so that native-mode XDP_TX frames are
 * accepted there (a veth peer without an XDP program drops them). */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* The seed's approach, kept to benchmark against: a stateless DNAT of echo
 * requests to dnat_vip, with the data plane's own parsing and no
 * conntrack, NAT ids or measurement: a hash of (client, echo id) picks one
 * of two backends, and the request leaves from dnat_snat. */
volatile const __be32 dnat_vip;
volatile const __be32 dnat_snat;
volatile const __be32 dnat_backend[2];
volatile const __u8 dnat_mac[2][ETH_ALEN];

SEC("xdp")
int stateless_dnat(struct xdp_md *ctx)
{
	struct icmp_pkt p;
	__u32 sum, i;

	if (parse_icmp(ctx, &p) != PARSED || !p.ip || p.icmp->type != ICMP_ECHO || p.ip->daddr != dnat_vip)
		return XDP_PASS;
	i = (p.ip->saddr ^ p.icmp->id) & 1;
	__builtin_memcpy(p.eth->h_source, p.eth->h_dest, ETH_ALEN);
	__builtin_memcpy(p.eth->h_dest, (const void *)dnat_mac[i], ETH_ALEN);
	sum = (__u16)~p.ip->check;
	sum = csum_add32(sum, p.ip->saddr, dnat_snat);
	sum = csum_add32(sum, p.ip->daddr, dnat_backend[i]);
	p.ip->check = ~csum_fold(sum);
	p.ip->saddr = dnat_snat;
	p.ip->daddr = dnat_backend[i];
	return XDP_TX;
}
