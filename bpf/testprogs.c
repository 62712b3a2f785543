// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

//go:build ignore

// Programs for tests only, in an object of their own (IcmplbTest) that the
// agent never loads.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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
