// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/* Measurement: requests remembered until their replies, RTTs into the
 * histogram, requests and answers counted per epoch, and sampled exchanges
 * sent to the trace pipeline. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"
#include "csum.h"
#include "maps.h"
#include "parse.h"
#include "proto.h"
#include "rtt.h"

static __always_inline struct epoch_count *epoch_slot(__u32 idx, __u64 epoch)
{
	__u32 key = idx * EPOCHS + (__u32)(epoch % EPOCHS);

	return bpf_map_lookup_elem(&epochs, &key);
}

static __always_inline void trace(enum trace_kind kind, __u64 sent_ns, __u64 rtt_ns, const struct ipaddr *client,
				  const struct ipaddr *backend, __be16 echo_id, __be16 seq, __u32 idx, __u32 late,
				  enum icmp_error error)
{
	struct trace_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&trace_dropped, &zero);

		if (n)
			*n += 1;
		return;
	}
	e->sent_ns = sent_ns;
	e->rtt_ns = rtt_ns;
	e->client = *client;
	e->backend = *backend;
	e->echo_id = echo_id;
	e->seq = seq;
	e->backend_idx = idx;
	e->kind = kind;
	e->late = late;
	e->error = error;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
}

enum track {
	TRACK_NEW,  /* remembered: its reply will be measured */
	TRACK_DUP,  /* the same session resent a request still awaited */
	TRACK_COLLISION,
	TRACK_FULL,
};

/* Requests older than this are lost even to late replies: their ring slots
 * and inflight entries may be taken over. */
#define INFLIGHT_MAX_AGE (2 * cfg_loss_timeout_ns)

/* Compares by addition: another CPU may have stamped sent after our now. */
static __always_inline int awaited(__u64 sent, __u64 now)
{
	return sent && sent + INFLIGHT_MAX_AGE >= now;
}

/* Whether any request in a session's ring still awaits its reply. */
static __always_inline int ring_awaited(const struct rev_val *rv, __u64 now)
{
#pragma unroll
	for (int i = 0; i < INFLIGHT_RING; i++)
		if (awaited(rv->sent_ns[i], now))
			return 1;
	return 0;
}

/* A forwarded request's own fields, for the inflight map. */
struct sent_req {
	__u64 now;
	__be16 nat_id;
	__be16 seq;
	__sum16 reply_csum; /* what its reply's ICMP checksum must be */
	__u16 sampled;
};

/* Keeps a request of session rv that found its ring slot taken in the
 * inflight map. Never overwrites another session's request: its reply
 * would then go to the wrong client. Not inlined, its entry built in this
 * CPU's scratch space: a rare path, kept off the request's stack. */
static __noinline enum track overflow(const struct ipaddr *backend, const struct rev_val *rv,
				      const struct ipaddr *snat, const struct sent_req *r)
{
	struct inflight_key ik = { .backend = *backend, .nat_id = r->nat_id, .seq = r->seq };
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	struct inflight_val *iv;
	long err;

	if (!s)
		return TRACK_FULL;
	iv = &s->inflight;
	__builtin_memset(iv, 0, sizeof(*iv));
	iv->sent_ns = r->now;
	iv->backend_idx = rv->backend_idx;
	iv->client = rv->client;
	iv->echo_id = rv->echo_id;
	iv->reply_csum = r->reply_csum;
	iv->sampled = r->sampled;
	iv->vip = rv->vip;
	iv->snat = *snat;
	__builtin_memcpy(iv->client_mac, rv->client_mac, ETH_ALEN);
	err = bpf_map_update_elem(&inflight, &ik, iv, BPF_NOEXIST);
	if (err == -17 /* EEXIST */) {
		struct inflight_val *old = bpf_map_lookup_elem(&inflight, &ik);

		/* A request older than the sweeper's horizon is already lost: its
		 * key may be taken over, by its own session too (the sequence
		 * wrapped), which makes a new, counted request. */
		if (old && awaited(old->sent_ns, r->now)) {
			if (addr_eq(&old->client, &rv->client) && old->echo_id == rv->echo_id &&
			    addr_eq(&old->vip, &rv->vip))
				return TRACK_DUP;
			return TRACK_COLLISION;
		}
		err = bpf_map_update_elem(&inflight, &ik, iv, BPF_ANY);
	}
	return err ? TRACK_FULL : TRACK_NEW;
}

/* Remembers a forwarded request (already rewritten) until its reply, in its
 * session's ring (rv) or else the inflight map, and counts it in its epoch. */
static __always_inline enum track track_request(struct backend *be, __u32 idx, struct rev_val *rv, const struct fwd_key *fk,
						const struct ipaddr *snat, struct icmp_echo *icmp, int v6, __u64 now)
{
	__u32 i = bpf_ntohs(icmp->seq) & (INFLIGHT_RING - 1);
	__u16 sampled = cfg_trace_sample && bpf_get_prandom_u32() % cfg_trace_sample == 0;
	int busy = awaited(rv->sent_ns[i], now);
	struct epoch_count *ep;

	if (busy && rv->seq[i] == icmp->seq)
		return TRACK_DUP;
	/* The ring holds one SNAT address for all its requests: it follows
	 * the service's once no request of the ring awaits its reply. */
	if (!addr_eq(&rv->snat, snat) && !busy && !ring_awaited(rv, now))
		rv->snat = *snat;
	if (busy || !addr_eq(&rv->snat, snat)) {
		enum track t;
		struct sent_req r = {
			.now = now,
			.nat_id = icmp->id,
			.seq = icmp->seq,
			.reply_csum = reply_csum_of(icmp->checksum, v6),
			.sampled = sampled,
		};

		t = overflow(&be->addr, rv, snat, &r);
		if (t != TRACK_NEW)
			return t;
	} else {
		rv->seq[i] = icmp->seq;
		rv->reply_csum[i] = reply_csum_of(icmp->checksum, v6);
		if (sampled)
			rv->sampled |= 1 << i;
		else
			rv->sampled &= ~(1 << i);
		/* A reply reads sent_ns before the rest and takes the slot only if
		 * sent_ns is still what it read: the rest must be written first. */
		barrier();
		rv->sent_ns[i] = now;
	}

	ep = epoch_slot(idx, now >> EPOCH_SHIFT);
	if (ep) {
		if (ep->epoch != now >> EPOCH_SHIFT) {
			ep->epoch = now >> EPOCH_SHIFT;
			ep->sent = 0;
			ep->answered = 0;
		}
		ep->sent++;
	}
	if (sampled)
		trace(TRACE_REQUEST, now, 0, &fk->client, &be->addr, fk->echo_id, icmp->seq, idx, 0, 0);
	return TRACK_NEW;
}

/* Counts the answer to a request sent at sent into the request's epoch,
 * unless the sweep of a newer epoch took its slot already. */
static __always_inline void epoch_answered(__u32 idx, __u64 sent)
{
	struct epoch_count *ep = epoch_slot(idx, sent >> EPOCH_SHIFT);

	if (!ep)
		return;
	if (ep->epoch < sent >> EPOCH_SHIFT) {
		ep->epoch = sent >> EPOCH_SHIFT;
		ep->sent = 0;
		ep->answered = 0;
	}
	if (ep->epoch == sent >> EPOCH_SHIFT)
		ep->answered++;
}

/* Counts a matched reply: RTT into the histogram and answer into the
 * request's epoch, or late when past the loss timeout. */
static __always_inline void reply_measured(struct backend_counters *bs, __u32 idx, __u64 sent, __u16 sampled,
					   const struct ipaddr *client, __be16 echo_id, const struct ipaddr *backend,
					   __be16 seq, __u64 now)
{
	__u64 rtt = now - sent;
	__u32 late = rtt > cfg_loss_timeout_ns;

	if (late) {
		bs->late++;
	} else {
		__u32 key = idx * RTT_BUCKETS + rtt_bucket(rtt);
		__u64 *n = bpf_map_lookup_elem(&rtt_hist, &key);

		if (n)
			*n += 1;
		bs->rtt_sum_ns += rtt;
		epoch_answered(idx, sent);
	}
	if (sampled)
		trace(TRACE_REPLY, sent, rtt, client, backend, echo_id, seq, idx, late, 0);
}

/* Counts an ICMP error that answered a request: by its kind, and as an
 * answer within the loss timeout, so that it is not taken for a loss. Its
 * time is not the backend's round trip (a router on the way may have sent
 * it): it stays out of the RTT histogram. */
static __always_inline void error_measured(struct backend_counters *bs, __u32 idx, __u64 sent, __u16 sampled,
					   const struct ipaddr *client, __be16 echo_id, const struct ipaddr *backend,
					   __be16 seq, __u64 now, enum icmp_error kind)
{
	__u32 late = now - sent > cfg_loss_timeout_ns;

	if (kind < ICMP_ERRORS)
		bs->errors[kind]++;
	if (!late)
		epoch_answered(idx, sent);
	if (sampled)
		trace(TRACE_ERROR, sent, now - sent, client, backend, echo_id, seq, idx, late, kind);
}
