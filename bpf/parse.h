// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/* Parsing: finds the ICMP or ICMPv6 message of a frame the program may act
 * on, and its addresses in the one form every map uses. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"
#include "csum.h"
#include "proto.h"

/* A frame's ICMP message and what the handlers need of its headers. */
struct icmp_pkt {
	struct ethhdr *eth;
	struct iphdr *ip;    /* IPv4 only */
	struct ipv6hdr *ip6; /* IPv6 only */
	struct icmp_echo *icmp;
	struct ipaddr src, dst;
	__u32 off; /* of the ICMP message in the frame */
	__u32 len; /* of the ICMP message */
	__u8 v6;
	__u8 ttl; /* TTL or hop limit */
};

/* What parse_icmp returns when the frame is ours to look at: no reason to
 * pass it. */
#define PARSED REASON_MAX

static __always_inline void addr_from4(struct ipaddr *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = v4;
}

static __always_inline void addr_from6(struct ipaddr *a, const __be32 *v6)
{
	a->w[0] = v6[0];
	a->w[1] = v6[1];
	a->w[2] = v6[2];
	a->w[3] = v6[3];
}

static __always_inline int addr_eq(const struct ipaddr *a, const struct ipaddr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

/* Whether a is an IPv4 address (mapped). */
static __always_inline int addr_is4(const struct ipaddr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

/* Whether nh, the next header of an IPv6 header, is an extension header. */
static __always_inline int ipv6_ext(__u8 nh)
{
	switch (nh) {
	case IPV6_NH_HOPOPTS:
	case IPV6_NH_ROUTING:
	case IPV6_NH_ESP:
	case IPV6_NH_AH:
	case IPV6_NH_DSTOPTS:
	case IPV6_NH_MOBILITY:
	case IPV6_NH_HIP:
	case IPV6_NH_SHIM6:
		return 1;
	}
	return 0;
}

/* Fills p for an unfragmented IPv4 frame without options whose headers are
 * within the packet and whose IP checksum holds, and returns PARSED; else
 * returns the reason the frame is passed untouched. */
static __always_inline enum reason parse_ipv4(struct xdp_md *ctx, struct icmp_pkt *p)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = (void *)(p->eth + 1);
	__u16 tot_len;

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
	if (tot_len < sizeof(*ip) + sizeof(struct icmp_echo) || (void *)ip + tot_len > data_end ||
	    !ip_csum_ok(ip))
		return REASON_MALFORMED;
	p->icmp = (void *)(ip + 1);
	if ((void *)(p->icmp + 1) > data_end)
		return REASON_MALFORMED;
	p->ip = ip;
	p->ip6 = NULL;
	addr_from4(&p->src, ip->saddr);
	addr_from4(&p->dst, ip->daddr);
	p->off = sizeof(struct ethhdr) + sizeof(*ip);
	p->len = tot_len - sizeof(*ip);
	p->v6 = 0;
	p->ttl = ip->ttl;
	return PARSED;
}

/* Fills p for an IPv6 frame whose next header is ICMPv6 and whose headers
 * are within the packet, and returns PARSED; else the reason to pass it.
 * Extension headers are not walked: the balancer never sends any, and a
 * hop-by-hop or routing header asks for what only the kernel does. */
static __always_inline enum reason parse_ipv6(struct xdp_md *ctx, struct icmp_pkt *p)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = (void *)(p->eth + 1);
	__u16 len;

	if ((void *)(ip6 + 1) > data_end)
		return REASON_MALFORMED;
	if (ip6->version != 6)
		return REASON_MALFORMED;
	if (ip6->nexthdr == IPV6_NH_FRAGMENT)
		return REASON_FRAGMENT;
	if (ipv6_ext(ip6->nexthdr))
		return REASON_IP_OPTIONS;
	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return REASON_NOT_ICMP;
	len = bpf_ntohs(ip6->payload_len);
	/* A jumbogram (payload length 0) needs a hop-by-hop header. */
	if (len < sizeof(struct icmp_echo) || (void *)(ip6 + 1) + len > data_end)
		return REASON_MALFORMED;
	p->icmp = (void *)(ip6 + 1);
	if ((void *)(p->icmp + 1) > data_end)
		return REASON_MALFORMED;
	p->ip = NULL;
	p->ip6 = ip6;
	addr_from6(&p->src, ip6->saddr);
	addr_from6(&p->dst, ip6->daddr);
	/* IPv4-mapped addresses never appear on the wire (RFC 4291 2.5.5.2),
	 * and the maps hold IPv4 addresses in that form: such a packet would
	 * pass for one of an IPv4 session. */
	if (addr_is4(&p->src) || addr_is4(&p->dst))
		return REASON_MALFORMED;
	p->off = sizeof(struct ethhdr) + sizeof(*ip6);
	p->len = len;
	p->v6 = 1;
	p->ttl = ip6->hop_limit;
	return PARSED;
}

/* Fills p for a unicast, untagged IPv4 or IPv6 frame carrying an ICMP
 * message the program may act on (see parse_ipv4, parse_ipv6) and returns
 * PARSED; else returns the reason the frame is passed untouched. */
static __always_inline enum reason parse_icmp(struct xdp_md *ctx, struct icmp_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return REASON_MALFORMED;
	/* A tag in the frame means another network than the one we serve. A
	 * tag the NIC or veth took out into metadata is invisible here; the
	 * agent warns about interfaces that strip tags. */
	if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD))
		return REASON_VLAN;
	if (eth->h_proto != bpf_htons(ETH_P_IP) && eth->h_proto != bpf_htons(ETH_P_IPV6))
		return REASON_NOT_IP;
	/* A group destination MAC would become the source MAC of the rewrite;
	 * neighbour discovery's solicitations go to one, among others. */
	if (eth->h_dest[0] & 1)
		return REASON_NOT_UNICAST;
	p->eth = eth;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(ctx, p);
	return parse_ipv6(ctx, p);
}

/* Verifies the ICMP message's checksum, with its pseudo-header for ICMPv6. */
static __always_inline int pkt_csum_ok(struct xdp_md *ctx, const struct icmp_pkt *p)
{
	__u32 seed = p->ip6 ? pseudo6_sum(p->ip6, p->len) : 0;

	return icmp_csum_ok(ctx, p->off, p->len, seed);
}
