// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

//go:build ignore

// XDP ICMP echo load balancer: full NAT of echo requests to a VIP towards a
// backend chosen by Maglev hashing, and reverse NAT of the backends' replies
// through an LRU conntrack. Everything it does not own goes to the kernel
// untouched (XDP_PASS).
//
// This file holds the programs: the XDP program with its request and reply
// handlers, and the two the agent runs through BPF_PROG_RUN. The headers
// hold the ABI shared with Go (abi.h), wire formats (proto.h), settings and
// maps (maps.h), parsing (parse.h), checksums (csum.h), NAT (nat.h) and
// measurement (measure.h, rtt.h). Programs only tests load are in
// testprogs.c, an object of their own.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"
#include "csum.h"
#include "maps.h"
#include "measure.h"
#include "nat.h"
#include "parse.h"
#include "proto.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Keep types in the object's BTF for bpf2go that no map or program names:
 * the ring buffer has no value type, and enum layout only has constants. */
const struct trace_event *unused_trace_event __attribute__((unused));
const enum layout *unused_layout __attribute__((unused));

static __always_inline int count(enum reason r, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &r);

	if (n)
		*n += 1;
	return verdict;
}

#define NO_SLOT 0xffffffffU

/* Counts a request's verdict for its service too, so that what the balancer
 * itself failed (enum reason's balancer-limited ones) is known per VIP. */
static __always_inline int count_svc(__u32 table, enum reason r, int verdict)
{
	__u32 key = table * REASON_MAX + r;
	__u64 *n = bpf_map_lookup_elem(&svc_stats, &key);

	if (n)
		*n += 1;
	return count(r, verdict);
}

/* Addresses no client's request can come from: replies to them would go to
 * the wrong place or to many hosts at once. */
static __always_inline int bogus_source(const struct icmp_pkt *p)
{
	const struct ipaddr *src = &p->src;
	__u8 zero_mac[ETH_ALEN] = {};

	if ((p->eth->h_source[0] & 1) || mac_eq(p->eth->h_source, zero_mac))
		return 1;
	if (p->v6) {
		__u32 w0 = bpf_ntohl(src->w[0]);

		/* ff00::/8 (multicast), :: (unspecified), ::1 (loopback), and
		 * IPv4-mapped addresses, which no IPv6 host sends from. */
		if ((w0 >> 24) == 0xff || addr_is4(src))
			return 1;
		if (w0 == 0 && src->w[1] == 0 && src->w[2] == 0 && (src->w[3] == 0 || src->w[3] == bpf_htonl(1)))
			return 1;
	} else {
		__u8 first = bpf_ntohl(src->w[3]) >> 24;

		/* 0/8 (this network), 127/8 (loopback), 224/4 and 240/4
		 * (multicast, reserved, limited broadcast). */
		if (first == 0 || first == 127 || first >= 224)
			return 1;
	}
	/* The VIPs and SNAT addresses are in it too. */
	return bpf_map_lookup_elem(&src_deny, src) != NULL;
}

static __always_inline __u32 session_hash(const struct ipaddr *client, __be16 echo_id)
{
	__u64 h = ((__u64)client->w[3] << 16) | echo_id;

	/* An IPv4 client hashes as it did before IPv6: its sessions keep
	 * their backends across the upgrade. */
	if (!addr_is4(client))
		h ^= ((__u64)client->w[0] << 32 | client->w[1]) ^ ((__u64)client->w[2] << 23);
	/* murmur3 fmix64: spreads nearby addresses and ids over the table. */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (__u32)h;
}

/* What a request of a session needs on its way out, on the handler's stack
 * and, for a new session, handed to open_session. */
struct opening {
	struct rev_key rk;  /* its backend and NAT id */
	struct ipaddr snat; /* its service's */
	__u64 now;
	__u32 idx;   /* its backend slot */
	__u32 home;  /* its home NAT id at Maglev's pick (nat_home), or NO_HOME */
	__u8 client_mac[ETH_ALEN];
};

/* Points session fk's ct_fwd entry at o's backend and NAT id, built in
 * this CPU's scratch space s. */
static __always_inline void set_fwd(struct scratch *s, const struct fwd_key *fk, const struct opening *o)
{
	struct fwd_val *nv = &s->fwd;

	__builtin_memset(nv, 0, sizeof(*nv));
	nv->backend = o->rk.backend;
	nv->backend_idx = o->idx;
	nv->nat_id = o->rk.nat_id;
	__builtin_memcpy(nv->client_mac, o->client_mac, ETH_ALEN);
	bpf_map_update_elem(&ct_fwd, fk, nv, BPF_ANY);
}

/* Opens the session fk at backend slot o->idx: a NAT id (into o->rk) with
 * its ct_rev entry, then its ct_fwd entry, both built in this CPU's
 * scratch space; or adopts the entry another CPU just opened for it (see
 * nat_take_home). Not inlined: a path of its own for the verifier's stack
 * limit. */
static __noinline enum nat_alloc_result open_session(const struct fwd_key *fk, struct opening *o)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	enum nat_alloc_result r;
	struct rev_val *rv;

	if (!s)
		return NAT_NONE;
	rv = &s->rev;
	__builtin_memset(rv, 0, sizeof(*rv));
	rv->client = fk->client;
	rv->echo_id = fk->echo_id;
	rv->backend_idx = o->idx;
	rv->vip = fk->vip;
	rv->snat = o->snat;
	rv->last_seen_ns = o->now;
	rv->fwd_ref = o->now >> FWD_REFRESH_SHIFT;
	__builtin_memcpy(rv->client_mac, o->client_mac, ETH_ALEN);
	r = nat_alloc(o->idx, &o->rk, rv, o->now, o->home);
	/* An adopted session's opener writes its ct_fwd entry. */
	if (r == NAT_NEW)
		set_fwd(s, fk, o);
	return r;
}

/* Whether ct_rev entry rv is session fk's, live (not retired). */
static __always_inline int session_is(const struct rev_val *rv, const struct fwd_key *fk)
{
	return rev_is(rv, &fk->client, &fk->vip, fk->echo_id);
}

/* Looks up the ct_fwd entry of session fk, found at its home o->rk, so
 * that the LRU keeps it, and points it there again if it was evicted or
 * points to no live entry of the session. One that points to another live
 * entry is left: the session took a second id in a race, or another CPU
 * just moved it off this backend. Once every FWD_REFRESH: rare, and not
 * inlined. */
static __noinline void refresh_fwd(const struct fwd_key *fk, const struct opening *o)
{
	struct fwd_val *fv = bpf_map_lookup_elem(&ct_fwd, fk);
	__u32 zero = 0;
	struct scratch *s;

	if (fv) {
		struct rev_key rk = { .backend = fv->backend, .nat_id = fv->nat_id };
		struct rev_val *other;

		if (addr_eq(&rk.backend, &o->rk.backend) && rk.nat_id == o->rk.nat_id)
			return;
		other = bpf_map_lookup_elem(&ct_rev, &rk);
		if (other && session_is(other, fk))
			return;
	}
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (s)
		set_fwd(s, fk, o);
}

/* A request to a VIP of service svc: fk is its session's key.
 *
 * A session opens at its home NAT id (nat_home) at the backend Maglev
 * picks when that id is free, so a request of a known session is found
 * with one lookup of ct_rev, where its ring is: a session's two entries
 * are two cache misses each when its packets come far apart, and ct_fwd is
 * looked up only for sessions away from their home (an id taken, a move, a
 * Maglev table changed since they opened) and for new ones. */
static __always_inline int handle_request(struct xdp_md *ctx, struct icmp_pkt *p, const struct service *svc,
					  const struct fwd_key *fk)
{
	struct opening o = { .snat = svc->snat, .home = NO_HOME };
	__u32 table = svc->table, pick_idx = 0;
	struct backend *pick = NULL, *be;
	struct rev_key old_rk = {};
	__u32 moved_from = NO_SLOT;
	enum nat_alloc_result opened;
	struct rev_val *cur;
	struct fwd_val *fv;
	int moving = 0;
	__u32 h;

	if (svc->flags & SERVICE_F_PASS)
		return count_svc(table, REASON_ALL_DOWN, XDP_PASS);
	if (p->ttl == 0)
		return count_svc(table, REASON_TTL_ZERO, XDP_PASS);
	if (!pkt_csum_ok(ctx, p))
		return count_svc(table, REASON_MALFORMED, XDP_PASS);

	__builtin_memcpy(o.client_mac, p->eth->h_source, ETH_ALEN);
	o.now = bpf_ktime_get_ns();

	h = session_hash(&fk->client, fk->echo_id);
	{
		__u32 slot = h % cfg_maglev_size;
		void *tbl = bpf_map_lookup_elem(&maglev_tables, &table);
		__u32 *idx = tbl ? bpf_map_lookup_elem(tbl, &slot) : NULL;

		if (idx) {
			pick_idx = *idx;
			pick = bpf_map_lookup_elem(&backends, &pick_idx);
		}
	}
	/* A backend of the other family would make a frame of neither: the
	 * agent never configures one, and this keeps it so. */
	if (pick && (!addr_eq(&pick->vip, &fk->vip) || addr_is4(&pick->addr) == p->v6 || addr_is4(&o.snat) == p->v6))
		pick = NULL;
	if (pick && (pick->flags & BACKEND_F_UP) == BACKEND_F_UP) {
		struct nat_pool *pool = bpf_map_lookup_elem(&nat_pools, &pick_idx);

		if (pool)
			o.home = nat_home(pool, &fk->vip, h);
		if (o.home != NO_HOME) {
			o.rk.backend = pick->addr;
			o.rk.nat_id = bpf_htons(o.home);
			cur = bpf_map_lookup_elem(&ct_rev, &o.rk);
			if (cur && session_is(cur, fk) && cur->backend_idx == pick_idx) {
				/* The session is live: it belongs to the MAC that
				 * opened it. Anyone else on the segment could otherwise
				 * take its replies by sending one request with its
				 * address. */
				if (!mac_eq(cur->client_mac, o.client_mac))
					return count_svc(table, REASON_SESSION_MAC_MISMATCH, XDP_DROP);
				o.idx = pick_idx;
				be = pick;
				cur->last_seen_ns = o.now;
				if ((__u16)((o.now >> FWD_REFRESH_SHIFT) - cur->fwd_ref) >= FWD_REFRESH) {
					cur->fwd_ref = o.now >> FWD_REFRESH_SHIFT;
					refresh_fwd(fk, &o);
				}
				goto forward;
			}
		}
	}

	fv = bpf_map_lookup_elem(&ct_fwd, fk);
	if (fv) {
		o.rk.backend = fv->backend;
		o.rk.nat_id = fv->nat_id;
		cur = bpf_map_lookup_elem(&ct_rev, &o.rk);
		if (cur && session_is(cur, fk)) {
			if (!mac_eq(fv->client_mac, o.client_mac))
				return count_svc(table, REASON_SESSION_MAC_MISMATCH, XDP_DROP);
			o.idx = fv->backend_idx;
			be = bpf_map_lookup_elem(&backends, &o.idx);
			/* It stays on its backend while that backend is in the
			 * service's pool (draining included) and reachable. */
			if (be && (be->flags & BACKEND_F_UP) == BACKEND_F_UP && addr_eq(&be->addr, &fv->backend) &&
			    addr_eq(&be->vip, &fk->vip)) {
				cur->last_seen_ns = o.now;
				goto forward;
			}
			/* Its backend left the pool: the session moves. Its old
			 * entry keeps waiting for the replies of its ring once the
			 * move succeeded; until then the session stays bound to
			 * its MAC. */
			if (be && addr_eq(&be->addr, &fv->backend) && addr_eq(&be->vip, &fk->vip))
				moved_from = o.idx;
			old_rk = o.rk;
			moving = 1;
		}
	}

	/* A session's source was checked when it opened: a known session's
	 * address is one a client had. */
	if (bogus_source(p))
		return count_svc(table, REASON_BOGUS_SOURCE, XDP_PASS);
	be = pick;
	if (!be || !(be->flags & BACKEND_F_ACTIVE))
		return count_svc(table, REASON_NO_BACKEND, XDP_DROP);
	if (!(be->flags & BACKEND_F_NEIGH))
		return count_svc(table, REASON_NEIGH_UNRESOLVED, XDP_PASS);
	/* The agent takes an unhealthy backend out of the table before it
	 * clears the flag; this only closes the window of a racing update. */
	if (!(be->flags & BACKEND_F_HEALTHY))
		return count_svc(table, REASON_NO_BACKEND, XDP_DROP);

	o.idx = pick_idx;
	o.rk.backend = be->addr;
	opened = open_session(fk, &o);
	switch (opened) {
	case NAT_NONE:
		return count_svc(table, REASON_NAT_EXHAUSTED, XDP_PASS);
	case NAT_MAC_MISMATCH:
		return count_svc(table, REASON_SESSION_MAC_MISMATCH, XDP_DROP);
	default:
		break;
	}
	cur = bpf_map_lookup_elem(&ct_rev, &o.rk);
	/* Freed at once by a sweep on another CPU (an idle time shorter than
	 * this packet's way here), or its element reused meanwhile: no NAT id
	 * after all. The request is never sent with an id whose entry is
	 * another session's: that one's client would get its reply. */
	if (!cur || !session_is(cur, fk) || !mac_eq(cur->client_mac, o.client_mac))
		return count_svc(table, REASON_NAT_EXHAUSTED, XDP_PASS);
	/* A session two CPUs move at once moves once: the one that adopted
	 * the other's new entry leaves the old one and the count to it. */
	if (moving && opened == NAT_NEW) {
		/* Looked up again: the sweeper may have freed it meanwhile. */
		struct rev_val *old = bpf_map_lookup_elem(&ct_rev, &old_rk);

		if (old && session_is(old, fk))
			old->flags |= REV_F_RETIRED;
	}
	if (moved_from != NO_SLOT && opened == NAT_NEW) {
		struct backend_counters *old = bpf_map_lookup_elem(&backend_stats, &moved_from);

		if (old)
			old->moved++;
	}

forward:
	rewrite(p, be->mac, &o.snat, &be->addr, o.rk.nat_id);
	switch (track_request(be, o.idx, cur, fk, &o.snat, p->icmp, p->v6, o.now)) {
	case TRACK_COLLISION:
		return count_svc(table, REASON_NAT_COLLISION, XDP_DROP);
	case TRACK_FULL:
		return count_svc(table, REASON_INFLIGHT_FULL, XDP_DROP);
	case TRACK_DUP:
		/* Forwarded, not counted again: the first copy's reply answers it. */
		return count_svc(table, REASON_REQUEST_FORWARDED, XDP_TX);
	default:
		break;
	}
	{
		struct backend_counters *bs = bpf_map_lookup_elem(&backend_stats, &o.idx);

		if (bs) {
			bs->requests++;
			bs->request_bytes += ctx->data_end - ctx->data;
		}
	}
	return count_svc(table, REASON_REQUEST_FORWARDED, XDP_TX);
}

/* A reply that answers no request we remember: the backend's (duplicate, or
 * later than the sweeper's horizon) or a forgery from someone else. */
static __always_inline int reply_unmatched(const struct icmp_pkt *p)
{
	__u32 *idx = bpf_map_lookup_elem(&backend_addrs, &p->src);
	struct backend_counters *bs;
	struct backend *be;

	if (!idx)
		return count(REASON_CONNTRACK_MISS, XDP_PASS);
	be = bpf_map_lookup_elem(&backends, idx);
	if (!be || !mac_eq(be->mac, p->eth->h_source))
		return count(REASON_REPLY_SPOOFED, XDP_PASS);
	bs = bpf_map_lookup_elem(&backend_stats, idx);
	if (bs)
		bs->unmatched++;
	return count(REASON_CONNTRACK_MISS, XDP_PASS);
}

/* What a reply or an error needs of the request it answers, once it took
 * that request off its session's ring or the inflight map. */
struct answered {
	__u64 sent;
	__u32 idx;
	__u16 sampled;
	__be16 echo_id;
	struct ipaddr client;
	struct ipaddr vip;
	struct ipaddr snat;
	__sum16 reply_csum;
	__u8 client_mac[ETH_ALEN];
};

/* Sends a matched reply back to its client, measured: the exchange's
 * request was taken off the ring or the inflight map by this CPU. */
static __always_inline int reply_return(struct xdp_md *ctx, struct icmp_pkt *p, const struct answered *a, __u64 now)
{
	struct backend_counters *bs = bpf_map_lookup_elem(&backend_stats, &a->idx);

	if (bs) {
		bs->replies++;
		bs->reply_bytes += ctx->data_end - ctx->data;
		reply_measured(bs, a->idx, a->sent, a->sampled, &a->client, a->echo_id, &p->src, p->icmp->seq, now);
	}
	rewrite(p, a->client_mac, &a->vip, &a->client, a->echo_id);
	/* An incremental update writes 0x0000 both for a message whose other
	 * words sum to 0xffff, where it is right, and for one whose other words
	 * are all zero (id 0, seq 0, zero data), which only 0xffff verifies:
	 * the rare zero is settled by verifying it. */
	if (p->icmp->checksum == 0 && !pkt_csum_ok(ctx, p))
		p->icmp->checksum = 0xffff;
	return count(REASON_REPLY_RETURNED, XDP_TX);
}

/* Checks common to every reply to a SNAT address, before its request is
 * looked for: returns the reason to pass it, or PARSED. */
static __always_inline enum reason reply_sane(struct xdp_md *ctx, const struct icmp_pkt *p)
{
	if (p->ttl == 0)
		return REASON_TTL_ZERO;
	if (!pkt_csum_ok(ctx, p))
		return REASON_MALFORMED;
	/* The agent's own probe: its socket takes it (no NAT id is ever
	 * PROBE_ECHO_ID, so this is no session's). */
	if (p->icmp->id == bpf_htons(PROBE_ECHO_ID))
		return REASON_PROBE_REPLY;
	return PARSED;
}

/* Copies what an answer needs of a request waiting in the inflight map. */
static __always_inline void answered_from(struct answered *a, const struct inflight_val *iv)
{
	a->sent = iv->sent_ns;
	a->idx = iv->backend_idx;
	a->client = iv->client;
	a->vip = iv->vip;
	a->snat = iv->snat;
	a->echo_id = iv->echo_id;
	a->reply_csum = iv->reply_csum;
	a->sampled = iv->sampled;
	__builtin_memcpy(a->client_mac, iv->client_mac, ETH_ALEN);
}

/* Copies what an answer needs of a request waiting in slot i of its
 * session's ring. */
static __always_inline void answered_from_ring(struct answered *a, const struct rev_val *rv, __u32 i)
{
	i &= INFLIGHT_RING - 1;
	a->idx = rv->backend_idx;
	a->client = rv->client;
	a->vip = rv->vip;
	a->snat = rv->snat;
	a->echo_id = rv->echo_id;
	a->reply_csum = rv->reply_csum[i];
	a->sampled = (rv->sampled >> i) & 1;
	__builtin_memcpy(a->client_mac, rv->client_mac, ETH_ALEN);
}

/* A reply whose request is not in its session's ring: in the inflight map,
 * or no one's. Not inlined, like every rare path: the verifier's stack
 * limit covers the inlined paths together. */
static __noinline int reply_overflow(struct xdp_md *ctx, struct icmp_pkt *p)
{
	struct inflight_key ik = { .backend = p->src, .nat_id = p->icmp->id, .seq = p->icmp->seq };
	struct inflight_val *found;
	struct answered a;
	struct backend *be;
	enum reason r;
	__u64 now;

	if (!bpf_map_lookup_elem(&snat_addrs, &p->dst))
		return count(REASON_NOT_VIP, XDP_PASS);
	r = reply_sane(ctx, p);
	if (r != PARSED)
		return count(r, XDP_PASS);
	found = bpf_map_lookup_elem(&inflight, &ik);
	if (!found)
		return reply_unmatched(p);
	answered_from(&a, found);
	be = bpf_map_lookup_elem(&backends, &a.idx);
	if (!be || !addr_eq(&be->addr, &p->src))
		return count(REASON_CONNTRACK_MISS, XDP_PASS);
	/* One-arm: a backend's frames come from its next hop. Anyone else on
	 * the segment who takes its address has another MAC. */
	if (!mac_eq(be->mac, p->eth->h_source))
		return count(REASON_REPLY_SPOOFED, XDP_PASS);
	if (a.reply_csum != csum_norm(p->icmp->checksum) || !addr_eq(&a.snat, &p->dst))
		return count(REASON_REPLY_MISMATCH, XDP_PASS);
	now = bpf_ktime_get_ns();
	if (!awaited(a.sent, now))
		return reply_unmatched(p);
	/* Of two copies of a reply racing on two CPUs, only the one that
	 * deletes the request is returned and measured. */
	if (bpf_map_delete_elem(&inflight, &ik))
		return reply_unmatched(p);
	return reply_return(ctx, p, &a, now);
}

/* What handle_reply returns for a reply whose request is not in its
 * session's ring: its caller then calls reply_overflow, so that the two
 * stack frames never add up against the verifier's limit. */
#define NOT_IN_RING -1

static __noinline int handle_reply(struct xdp_md *ctx, struct icmp_pkt *p)
{
	struct rev_key rk = { .backend = p->src, .nat_id = p->icmp->id };
	struct answered a;
	struct rev_val *rv;
	struct backend *be;
	int other_snat;
	enum reason r;
	__u64 now;
	__u32 i;

	rv = bpf_map_lookup_elem(&ct_rev, &rk);
	if (!rv)
		return NOT_IN_RING;
	i = bpf_ntohs(p->icmp->seq) & (INFLIGHT_RING - 1);
	a.sent = rv->sent_ns[i];
	/* Read before the rest of the slot: see track_request. */
	barrier();
	if (!a.sent || rv->seq[i] != p->icmp->seq)
		return NOT_IN_RING;
	/* Its request went from another address than the reply comes to. */
	other_snat = !addr_eq(&rv->snat, &p->dst);
	if (other_snat && !bpf_map_lookup_elem(&snat_addrs, &p->dst))
		return count(REASON_NOT_VIP, XDP_PASS);
	r = reply_sane(ctx, p);
	if (r != PARSED)
		return count(r, XDP_PASS);
	answered_from_ring(&a, rv, i);
	be = bpf_map_lookup_elem(&backends, &a.idx);
	if (!be || !addr_eq(&be->addr, &p->src))
		return count(REASON_CONNTRACK_MISS, XDP_PASS);
	if (!mac_eq(be->mac, p->eth->h_source))
		return count(REASON_REPLY_SPOOFED, XDP_PASS);
	if (other_snat || a.reply_csum != csum_norm(p->icmp->checksum))
		return count(REASON_REPLY_MISMATCH, XDP_PASS);
	now = bpf_ktime_get_ns();
	if (!awaited(a.sent, now))
		return reply_unmatched(p);
	/* Of two copies of a reply racing on two CPUs, only the one that takes
	 * the slot back is returned and measured. */
	if (__sync_val_compare_and_swap(&rv->sent_ns[i], a.sent, 0) != a.sent)
		return reply_unmatched(p);
	return reply_return(ctx, p, &a, now);
}

/* The kind of an ICMP error the balancer translates, or ICMP_ERRORS for
 * any other message (redirects above all: they are about the balancer's own
 * routing, not about a backend). */
static __always_inline enum icmp_error error_kind(const struct icmp_pkt *p)
{
	__u8 type = p->icmp->type;

	if (p->v6) {
		if (type == ICMPV6_DEST_UNREACH)
			return ICMP_ERROR_UNREACHABLE;
		if (type == ICMPV6_PKT_TOOBIG)
			return ICMP_ERROR_PACKET_TOO_BIG;
		if (type == ICMPV6_TIME_EXCEED)
			return ICMP_ERROR_TIME_EXCEEDED;
		return ICMP_ERRORS;
	}
	if (type == ICMP_DEST_UNREACH)
		return p->icmp->code == ICMP_FRAG_NEEDED ? ICMP_ERROR_PACKET_TOO_BIG : ICMP_ERROR_UNREACHABLE;
	if (type == ICMP_TIME_EXCEEDED)
		return ICMP_ERROR_TIME_EXCEEDED;
	return ICMP_ERRORS;
}

/* The request an error quotes, as the balancer sent it. */
struct quoted {
	struct icmp_echo *icmp;
	struct iphdr *ip;    /* IPv4 only */
	struct ipv6hdr *ip6; /* IPv6 only */
	struct ipaddr src, dst;
};

/* Finds the echo request an error quotes: returns PARSED, or the reason to
 * pass the error. The balancer sends only echo requests from a SNAT address
 * without IPv4 options, IPv6 extension headers or fragmentation. */
static __always_inline enum reason parse_quote(struct xdp_md *ctx, const struct icmp_pkt *p, struct quoted *q)
{
	void *data_end = (void *)(long)ctx->data_end;

	if (p->v6) {
		struct icmp6_quote *q6 = (void *)(p->icmp + 1);

		if ((void *)(q6 + 1) > data_end || p->len < sizeof(struct icmp_echo) + sizeof(*q6))
			return REASON_ERROR_TRUNCATED;
		if (q6->ip.version != 6 || q6->ip.nexthdr != IPPROTO_ICMPV6 || q6->icmp.type != ICMPV6_ECHO_REQUEST ||
		    q6->icmp.code != 0)
			return REASON_ERROR_FOREIGN;
		q->icmp = &q6->icmp;
		q->ip = NULL;
		q->ip6 = &q6->ip;
		addr_from6(&q->src, q6->ip.saddr);
		addr_from6(&q->dst, q6->ip.daddr);
		/* Never on the wire: see parse_ipv6. */
		if (addr_is4(&q->src) || addr_is4(&q->dst))
			return REASON_ERROR_FOREIGN;
	} else {
		struct icmp_quote *q4 = (void *)(p->icmp + 1);

		if ((void *)(q4 + 1) > data_end || p->len < sizeof(struct icmp_echo) + sizeof(*q4))
			return REASON_ERROR_TRUNCATED;
		if (q4->ip.version != 4 || q4->ip.ihl != 5 || q4->ip.protocol != IPPROTO_ICMP ||
		    (q4->ip.frag_off & bpf_htons(IP_OFFSET)) || q4->icmp.type != ICMP_ECHO || q4->icmp.code != 0)
			return REASON_ERROR_FOREIGN;
		q->icmp = &q4->icmp;
		q->ip = &q4->ip;
		q->ip6 = NULL;
		addr_from4(&q->src, q4->ip.saddr);
		addr_from4(&q->dst, q4->ip.daddr);
	}
	if (!addr_eq(&q->src, &p->dst))
		return REASON_ERROR_FOREIGN;
	return PARSED;
}

/* Turns an error about a forwarded request into one about the client's
 * request: the quote goes client -> VIP with the client's echo id, the
 * error from the VIP to the client. Each quoted checksum is updated with
 * its fields, so the quote's ones'-complement sum is unchanged: the
 * error's own checksum changes only with the addresses of its ICMPv6
 * pseudo-header, and not at all for ICMPv4. */
static __always_inline void translate_error(struct icmp_pkt *p, struct quoted *q, const struct answered *a)
{
	/* Both headers are tested, not the family: the verifier does not
	 * carry that one implies the other. */
	if (q->ip6 && p->ip6) {
		__u32 sum = (__u16)~p->icmp->checksum;

		rewrite6(q->ip6, q->icmp, &a->client, &a->vip, a->echo_id);
		sum = csum_add128(sum, p->ip6->saddr, a->vip.w);
		sum = csum_add128(sum, p->ip6->daddr, a->client.w);
		p->icmp->checksum = ~csum_fold(sum);
#pragma unroll
		for (int i = 0; i < 4; i++) {
			p->ip6->saddr[i] = a->vip.w[i];
			p->ip6->daddr[i] = a->client.w[i];
		}
	} else if (q->ip && p->ip) {
		rewrite_addrs(q->ip, a->client.w[3], a->vip.w[3]);
		rewrite_echo_id(q->icmp, a->echo_id);
		rewrite_addrs(p->ip, a->vip.w[3], a->client.w[3]);
	}
	rewrite_macs(p->eth, a->client_mac);
}

/* An ICMP error to a SNAT address about a request the balancer forwarded
 * (its quote: SNAT -> backend, a NAT id): sent on to that request's client
 * as if the VIP had sent it about the client's own request, and counted as
 * the request's answer. It must come from the backend's next hop, the only
 * host that sees the request on its way, and quote a request still
 * awaited, with its sequence and its checksum: anything else could hand a
 * stranger's forgery to a client or take a request's answer away.
 *
 * Errors about replies the balancer returned come to a VIP, not to a SNAT
 * address, and pass: the backend would drop an error about an echo reply
 * (no socket awaits one), and the exchange was already measured. Not
 * inlined: a rare path, kept off the stack of the request and reply ones. */
static __noinline int handle_error(struct xdp_md *ctx, struct icmp_pkt *p, enum icmp_error kind)
{
	__u64 *slot = NULL; /* the request's sent_ns in its session's ring */
	struct inflight_key ik = {};
	struct backend_counters *bs;
	struct answered a = {};
	struct quoted q;
	struct rev_val *rv;
	struct backend *be;
	enum reason r;
	__u64 now;

	if (!bpf_map_lookup_elem(&snat_addrs, &p->dst))
		return count(REASON_NOT_VIP, XDP_PASS);
	if (p->ttl == 0)
		return count(REASON_TTL_ZERO, XDP_PASS);
	if (!pkt_csum_ok(ctx, p))
		return count(REASON_MALFORMED, XDP_PASS);
	r = parse_quote(ctx, p, &q);
	if (r != PARSED)
		return count(r, XDP_PASS);
	/* About the agent's own probe: its socket takes it. */
	if (q.icmp->id == bpf_htons(PROBE_ECHO_ID))
		return count(REASON_PROBE_REPLY, XDP_PASS);

	ik.backend = q.dst;
	ik.nat_id = q.icmp->id;
	ik.seq = q.icmp->seq;
	{
		struct rev_key rk = { .backend = ik.backend, .nat_id = ik.nat_id };
		__u32 i = bpf_ntohs(ik.seq) & (INFLIGHT_RING - 1);

		rv = bpf_map_lookup_elem(&ct_rev, &rk);
		if (rv) {
			slot = &rv->sent_ns[i];
			a.sent = *slot;
			/* Read before the rest of the slot: see track_request. */
			barrier();
			if (a.sent && rv->seq[i] == ik.seq)
				answered_from_ring(&a, rv, i);
			else
				slot = NULL;
		}
	}
	if (!slot) {
		struct inflight_val *iv = bpf_map_lookup_elem(&inflight, &ik);

		if (!iv)
			return count(REASON_ERROR_UNMATCHED, XDP_PASS);
		answered_from(&a, iv);
	}
	be = bpf_map_lookup_elem(&backends, &a.idx);
	if (!be || !addr_eq(&be->addr, &ik.backend))
		return count(REASON_ERROR_UNMATCHED, XDP_PASS);
	if (!mac_eq(be->mac, p->eth->h_source))
		return count(REASON_REPLY_SPOOFED, XDP_PASS);
	/* The quoted checksum is the request's as it left: its reply's, with
	 * the type changed, is what the request's slot holds. */
	if (!addr_eq(&a.snat, &p->dst) || a.reply_csum != reply_csum_of(q.icmp->checksum, p->v6))
		return count(REASON_REPLY_MISMATCH, XDP_PASS);
	now = bpf_ktime_get_ns();
	if (!awaited(a.sent, now))
		return count(REASON_ERROR_UNMATCHED, XDP_PASS);
	/* Of two copies racing on two CPUs, or an error racing the reply, only
	 * the one that takes the request answers it. */
	if (slot) {
		if (__sync_val_compare_and_swap(slot, a.sent, 0) != a.sent)
			return count(REASON_ERROR_UNMATCHED, XDP_PASS);
	} else if (bpf_map_delete_elem(&inflight, &ik)) {
		return count(REASON_ERROR_UNMATCHED, XDP_PASS);
	}
	bs = bpf_map_lookup_elem(&backend_stats, &a.idx);
	if (bs)
		error_measured(bs, a.idx, a.sent, a.sampled, &a.client, a.echo_id, &ik.backend, ik.seq, now, kind);
	translate_error(p, &q, &a);
	return count(REASON_ERROR_RETURNED, XDP_TX);
}

/* An echo request: to its session's backend, or to a new one if it is to
 * a VIP. Not inlined, like handle_reply and handle_error: each path's
 * stack then counts apart against the verifier's limit. */
static __noinline int handle_echo_request(struct xdp_md *ctx, struct icmp_pkt *p)
{
	struct fwd_key fk = { .client = p->src, .vip = p->dst, .echo_id = p->icmp->id };
	const struct service *svc = bpf_map_lookup_elem(&services, &fk.vip);

	if (!svc)
		return count(REASON_NOT_VIP, XDP_PASS);
	return handle_request(ctx, p, svc, &fk);
}

SEC("xdp")
int icmplb(struct xdp_md *ctx)
{
	struct icmp_pkt p;
	enum reason r = parse_icmp(ctx, &p);
	__u8 request = ICMP_ECHO, reply = ICMP_ECHOREPLY;
	enum icmp_error kind;

	if (r != PARSED)
		return count(r, XDP_PASS);
	if (p.v6) {
		request = ICMPV6_ECHO_REQUEST;
		reply = ICMPV6_ECHO_REPLY;
	}
	if (p.icmp->type == request && p.icmp->code == 0)
		return handle_echo_request(ctx, &p);
	/* Whether a reply is to a SNAT address is known from its session's
	 * ring, or else looked up. */
	if (p.icmp->type == reply && p.icmp->code == 0) {
		int verdict = handle_reply(ctx, &p);

		return verdict == NOT_IN_RING ? reply_overflow(ctx, &p) : verdict;
	}
	kind = error_kind(&p);
	if (kind != ICMP_ERRORS)
		return handle_error(ctx, &p, kind);
	/* Neighbour discovery above all: the kernel's. */
	return count(REASON_NOT_ECHO, XDP_PASS);
}

struct bpf_map {
	__u32 id;
} __attribute__((preserve_access_index));
extern __s64 bpf_map_sum_elem_count(const struct bpf_map *map) __ksym;

/* Run by the agent at scrape time (BPF_PROG_RUN): the kernel keeps element
 * counts of hash maps, so occupancy costs one call, not a walk of the map. */
SEC("syscall")
int conntrack_count(void *ctx)
{
	__u32 k0 = 0, k1 = 1, k2 = 2;
	__s64 n;

	n = bpf_map_sum_elem_count((const struct bpf_map *)&ct_fwd);
	bpf_map_update_elem(&conntrack_entries, &k0, &n, BPF_ANY);
	n = bpf_map_sum_elem_count((const struct bpf_map *)&ct_rev);
	bpf_map_update_elem(&conntrack_entries, &k1, &n, BPF_ANY);
	n = bpf_map_sum_elem_count((const struct bpf_map *)&inflight);
	bpf_map_update_elem(&conntrack_entries, &k2, &n, BPF_ANY);
	return 0;
}

static long sweep_inflight(void *map, struct inflight_key *k, struct inflight_val *v, __u64 *now)
{
	/* Entries stamped after the sweep began are newer than *now. */
	if (!awaited(v->sent_ns, *now))
		bpf_map_delete_elem(&inflight, k);
	return 0;
}

static long sweep_rev(void *map, struct rev_key *k, struct rev_val *v, __u64 *now)
{
	__u32 idx = v->backend_idx;
	__u32 *n;

	/* A retired entry only waits for the replies of its ring. */
	if (v->flags & REV_F_RETIRED) {
		if (!ring_awaited(v, *now))
			bpf_map_delete_elem(&ct_rev, k);
		return 0;
	}
	if (v->last_seen_ns + cfg_nat_idle_ns < *now) {
		/* The session ends, but its NAT id stays held while its
		 * requests may still be answered. */
		drop_session(k, v);
		if (ring_awaited(v, *now))
			v->flags |= REV_F_RETIRED;
		else
			bpf_map_delete_elem(&ct_rev, k);
		return 0;
	}
	/* The agent zeroes the counts before each sweep. */
	n = bpf_map_lookup_elem(&slot_sessions, &idx);
	if (n)
		*n += 1;
	return 0;
}

/* Run by the agent (BPF_PROG_RUN): removes requests that can no longer be
 * answered and sessions idle for longer than cfg_nat_idle_ns, so that the
 * maps' occupancy is live state, not history waiting for LRU eviction.
 * Only ct_rev is walked: a session's ct_fwd entry goes with it (see
 * drop_session). A walk costs every bucket of a map, full or not: args
 * say which maps are due, so that each is walked as often as its own
 * timeout needs. */
SEC("syscall")
int sweep(struct sweep_args *args)
{
	__u64 now = bpf_ktime_get_ns();

	if (args->what & SWEEP_INFLIGHT)
		bpf_for_each_map_elem(&inflight, sweep_inflight, &now, 0);
	if (args->what & SWEEP_SESSIONS) {
		bpf_for_each_map_elem(&ct_rev, sweep_rev, &now, 0);
	}
	return 0;
}

