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

/* Verifies the ICMP checksum over the len bytes of the message that follows
 * an option-less IPv4 header. A function of its own (a BPF global function)
 * so that the verifier checks its loop once, not once per caller's path.
 * Words are summed in memory order: the ones'-complement sum is the same in
 * either byte order, and 2^16 = 1 (mod 0xffff) lets 32-bit words stand for
 * pairs of 16-bit ones. */
__attribute__((noinline)) int icmp_csum_ok(struct xdp_md *ctx, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *msg = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	__u64 sum = 0;
	__u32 i;

	if (!ctx || len > ICMP_MAX_LEN)
		return 0;
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
 * the same message with type ECHO turned into ECHOREPLY. 0xffff and 0 are
 * the same ones'-complement number; compare in one form. */
static __always_inline __u16 reply_csum_of(__u16 request_csum)
{
	__u32 sum = (__u16)~request_csum;
	__u16 c;

	sum = csum_add16(sum, bpf_htons(ICMP_ECHO << 8), bpf_htons(ICMP_ECHOREPLY << 8));
	c = ~csum_fold(sum);
	return c == 0xffff ? 0 : c;
}

static __always_inline __u16 csum_norm(__u16 c)
{
	return c == 0xffff ? 0 : c;
}
