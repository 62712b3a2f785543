// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/* Parsing: finds the ICMP message of a frame the program may act on. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"
#include "csum.h"
#include "proto.h"

struct icmp_pkt {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct icmp_echo *icmp;
};

/* What parse_icmp returns when the frame is ours to look at: no reason to
 * pass it. */
#define PARSED REASON_MAX

/* Fills p for a unicast, untagged, option-less and unfragmented IPv4 frame
 * whose headers are within the packet and whose IP checksum holds, and
 * returns PARSED; else returns the reason the frame is passed untouched. */
static __always_inline enum reason parse_icmp(struct xdp_md *ctx, struct icmp_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct icmp_echo *icmp;
	__u16 tot_len;

	if ((void *)(eth + 1) > data_end)
		return REASON_MALFORMED;
	/* A tag in the frame means another network than the one we serve. A
	 * tag the NIC or veth took out into metadata is invisible here; the
	 * agent warns about interfaces that strip tags. */
	if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD))
		return REASON_VLAN;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return REASON_NOT_IPV4;
	/* A group destination MAC would become the source MAC of the rewrite. */
	if (eth->h_dest[0] & 1)
		return REASON_NOT_UNICAST;

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return REASON_MALFORMED;
	if (ip->protocol != IPPROTO_ICMP)
		return REASON_NOT_ICMP;
	if (ip->version != 4 || ip->ihl < 5)
		return REASON_MALFORMED;
	if (ip->ihl != 5)
		return REASON_IP_OPTIONS;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return REASON_FRAGMENT;
	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < sizeof(*ip) + sizeof(*icmp) || (void *)ip + tot_len > data_end ||
	    !ip_csum_ok(ip))
		return REASON_MALFORMED;

	icmp = (void *)(ip + 1);
	if ((void *)(icmp + 1) > data_end)
		return REASON_MALFORMED;

	p->eth = eth;
	p->ip = ip;
	p->icmp = icmp;
	return PARSED;
}
