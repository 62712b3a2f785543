// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/* The RTT histogram's bucket mapping, on its own so that the test object
 * (testprogs.c) runs the very code the product does. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"

/* Upper bounds (ns) of the RTT histogram buckets (see enum layout), set by
 * the loader from bpf.RTTBounds. */
volatile const __u64 cfg_rtt_bounds[RTT_BUCKETS];

/* The smallest k with ns <= cfg_rtt_bounds[k], by binary search; the last
 * bucket also takes everything above it. */
static __always_inline __u32 rtt_bucket(__u64 ns)
{
	__u32 lo = 0, hi = RTT_BUCKETS - 1;

#pragma unroll
	for (int i = 0; i < 8; i++) {
		__u32 mid = (lo + hi) / 2;

		if (ns <= cfg_rtt_bounds[mid & (RTT_BUCKETS - 1)])
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo & (RTT_BUCKETS - 1);
}
