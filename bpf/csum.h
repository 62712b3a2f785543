// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/* Checksums: incremental updates (RFC 1624) for the NAT rewrite and full
 * verification of the IP header and of the ICMP message. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"
#include "proto.h"

/* Ones'-complement arithmetic (RFC 1624): HC' = ~(~HC + ~m + m'). */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u32 csum_add16(__u32 sum, __u16 from, __u16 to)
{
	return sum + (__u16)~from + to;
}

static __always_inline __u32 csum_add32(__u32 sum, __u32 from, __u32 to)
{
	sum = csum_add16(sum, (__u16)from, (__u16)to);
	return csum_add16(sum, (__u16)(from >> 16), (__u16)(to >> 16));
}

static __always_inline int ip_csum_ok(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	return csum_fold(sum) == 0xffff;
}

static __always_inline __u32 csum_add128(__u32 sum, const __be32 *from, const __be32 *to)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		sum = csum_add32(sum, from[i], to[i]);
	return sum;
}

/* The ICMPv6 pseudo-header's sum (RFC 8200 8.1): both addresses, the
 * message's length and its next header, as the words icmp_csum_ok sums. */
static __always_inline __u32 pseudo6_sum(const struct ipv6hdr *ip, __u32 len)
{
	__u64 sum = (__u64)bpf_htonl(len) + bpf_htonl(IPPROTO_ICMPV6);

#pragma unroll
	for (int i = 0; i < 4; i++)
		sum += (__u64)ip->saddr[i] + ip->daddr[i];
	sum = (sum & 0xffffffff) + (sum >> 32);
	return (__u32)((sum & 0xffffffff) + (sum >> 32));
}

/* Verifies the ICMP checksum over the len bytes of the message at offset
 * off of the frame, seed being the sum of its pseudo-header (ICMPv6) or 0
 * (ICMPv4). A function of its own (a BPF global function) so that the
 * verifier checks its loop once, not once per caller's path. Words are
 * summed in memory order: the ones'-complement sum is the same in either
 * byte order, and 2^16 = 1 (mod 0xffff) lets 32-bit words stand for pairs
 * of 16-bit ones. */
__attribute__((noinline)) int icmp_csum_ok(struct xdp_md *ctx, __u32 off, __u32 len, __u32 seed)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *msg;
	__u64 sum = seed;
	__u32 i;

	if (!ctx || len > ICMP_MAX_LEN || off > sizeof(struct ethhdr) + sizeof(struct ipv6hdr))
		return 0;
	msg = data + off;
	/* 8 bytes a step, summed as their two 32-bit words: half the loads
	 * and bounds checks of 4-byte steps, the same sum. */
	for (i = 0; i < ICMP_MAX_LEN / 8; i++) {
		__u64 *w = msg + i * 8;
		__u64 v;

		if (i * 8 + 8 > len)
			break;
		if ((void *)(w + 1) > data_end)
			return 0;
		v = *w;
		sum += (v & 0xffffffff) + (v >> 32);
	}
	{
		__u8 *t = msg + (len & ~7U);

		if ((len & ~7U) > ICMP_MAX_LEN)
			return 0;
		if (len & 4) {
			if ((void *)(t + 4) > data_end)
				return 0;
			sum += *(__u32 *)t;
			t += 4;
		}
		if (len & 2) {
			if ((void *)(t + 2) > data_end)
				return 0;
			sum += *(__u16 *)t;
			t += 2;
		}
		if (len & 1) {
			__u8 last[2] = {};

			if ((void *)(t + 1) > data_end)
				return 0;
			/* An odd last byte is the high-order byte of a word padded
			 * with zero: in memory order, the byte then a zero. */
			last[0] = *t;
			sum += *(__u16 *)last;
		}
	}
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return csum_fold((__u32)sum) == 0xffff;
}

/* The checksum a correct reply to this (already rewritten) request carries:
 * the same message with the request's type turned into the reply's; an
 * ICMPv6 pseudo-header has the same sum with its addresses swapped. 0xffff
 * and 0 are the same ones'-complement number; compare in one form. */
static __always_inline __u16 reply_csum_of(__u16 request_csum, int v6)
{
	__u32 sum = (__u16)~request_csum;
	__u16 c;

	if (v6)
		sum = csum_add16(sum, bpf_htons(ICMPV6_ECHO_REQUEST << 8), bpf_htons(ICMPV6_ECHO_REPLY << 8));
	else
		sum = csum_add16(sum, bpf_htons(ICMP_ECHO << 8), bpf_htons(ICMP_ECHOREPLY << 8));
	c = ~csum_fold(sum);
	return c == 0xffff ? 0 : c;
}

static __always_inline __u16 csum_norm(__u16 c)
{
	return c == 0xffff ? 0 : c;
}
