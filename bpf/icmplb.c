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
static __always_inline int bogus_source(struct ethhdr *eth, __be32 saddr)
{
	__u8 first = bpf_ntohl(saddr) >> 24;
	__u8 zero_mac[ETH_ALEN] = {};

	if ((eth->h_source[0] & 1) || mac_eq(eth->h_source, zero_mac))
		return 1;
	/* 0/8 (this network), 127/8 (loopback), 224/4 and 240/4 (multicast,
	 * reserved, limited broadcast). */
	if (first == 0 || first == 127 || first >= 224)
		return 1;
	/* The VIPs and SNAT addresses are in it too. */
	return bpf_map_lookup_elem(&src_deny, &saddr) != NULL;
}

static __always_inline __u32 session_hash(__be32 client, __be16 echo_id)
{
	__u64 h = ((__u64)client << 16) | echo_id;

	/* murmur3 fmix64: spreads nearby addresses and ids over the table. */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (__u32)h;
}

/* A request to a VIP: fk is its session's key, fv its ct_fwd entry if any,
 * and gen the generation of svc to cache in it (0: none known). */
static __always_inline int handle_request(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					  struct icmp_echo *icmp, const struct service *svc,
					  const struct fwd_key *key, struct fwd_val *fv, __u32 gen)
{
	__be32 vip = ip->daddr;
	struct fwd_key fk = *key;
	struct rev_key rk = {};
	struct rev_key old_rk = {};
	__be32 snat = svc->snat;
	__u32 table = svc->table;
	__u32 moved_from = NO_SLOT;
	int moving = 0;
	__u8 client_mac[ETH_ALEN];
	struct rev_val *cur;
	struct backend *be;
	__u64 now;
	__u32 idx;

	if (svc->flags & SERVICE_F_PASS)
		return count_svc(table, REASON_ALL_DOWN, XDP_PASS);
	if (ip->ttl == 0)
		return count_svc(table, REASON_TTL_ZERO, XDP_PASS);
	if (!icmp_csum_ok(ctx, bpf_ntohs(ip->tot_len) - sizeof(*ip)))
		return count_svc(table, REASON_MALFORMED, XDP_PASS);

	__builtin_memcpy(client_mac, eth->h_source, ETH_ALEN);
	now = bpf_ktime_get_ns();

	if (fv) {
		rk.backend = fv->backend;
		rk.nat_id = fv->nat_id;
		cur = bpf_map_lookup_elem(&ct_rev, &rk);
		if (cur && cur->client == fk.client && cur->echo_id == fk.echo_id && cur->vip == vip &&
		    !(cur->flags & REV_F_RETIRED)) {
			/* The session is live: it belongs to the MAC that opened it.
			 * Anyone else on the segment could otherwise take its
			 * replies by sending one request with its address. */
			if (!mac_eq(fv->client_mac, client_mac))
				return count_svc(table, REASON_SESSION_MAC_MISMATCH, XDP_DROP);
			idx = fv->backend_idx;
			be = bpf_map_lookup_elem(&backends, &idx);
			/* It stays on its backend while that backend is in the
			 * service's pool (draining included) and reachable. */
			if (be && (be->flags & BACKEND_F_UP) == BACKEND_F_UP && be->addr == fv->backend &&
			    be->vip == vip) {
				cur->last_seen_ns = now;
				if (fv->svc_gen != gen) {
					fv->snat = snat;
					fv->table = table;
					fv->svc_gen = gen;
				}
				goto forward;
			}
			/* Its backend left the pool: the session moves. Its old
			 * entry keeps waiting for the replies of its ring once the
			 * move succeeded; until then the session stays bound to
			 * its MAC. */
			if (be && be->addr == fv->backend && be->vip == vip)
				moved_from = idx;
			old_rk = rk;
			moving = 1;
		}
	}

	/* A session's source was checked when it opened: a known session's
	 * address is one a client had. */
	if (bogus_source(eth, ip->saddr))
		return count_svc(table, REASON_BOGUS_SOURCE, XDP_PASS);
	{
		__u32 slot = session_hash(fk.client, fk.echo_id) % cfg_maglev_size;
		void *tbl = bpf_map_lookup_elem(&maglev_tables, &table);
		__u32 *pick;

		if (!tbl)
			return count_svc(table, REASON_NO_BACKEND, XDP_DROP);
		pick = bpf_map_lookup_elem(tbl, &slot);
		if (!pick)
			return count_svc(table, REASON_NO_BACKEND, XDP_DROP);
		idx = *pick;
		be = bpf_map_lookup_elem(&backends, &idx);
		if (!be || !(be->flags & BACKEND_F_ACTIVE) || be->vip != vip)
			return count_svc(table, REASON_NO_BACKEND, XDP_DROP);
	}
	if (!(be->flags & BACKEND_F_NEIGH))
		return count_svc(table, REASON_NEIGH_UNRESOLVED, XDP_PASS);
	/* The agent takes an unhealthy backend out of the table before it
	 * clears the flag; this only closes the window of a racing update. */
	if (!(be->flags & BACKEND_F_HEALTHY))
		return count_svc(table, REASON_NO_BACKEND, XDP_DROP);

	rk.backend = be->addr;
	{
		struct rev_val rv = {
			.client = fk.client,
			.echo_id = fk.echo_id,
			.backend_idx = idx,
			.vip = vip,
			.last_seen_ns = now,
		};

		__builtin_memcpy(rv.client_mac, client_mac, ETH_ALEN);
		if (!nat_alloc(idx, &rk, &rv, now))
			return count_svc(table, REASON_NAT_EXHAUSTED, XDP_PASS);
	}
	cur = bpf_map_lookup_elem(&ct_rev, &rk);
	/* Freed at once by a sweep on another CPU (an idle time shorter than
	 * this packet's way here): no NAT id after all. */
	if (!cur)
		return count_svc(table, REASON_NAT_EXHAUSTED, XDP_PASS);
	{
		/* Its service's generation is not known here (read after the
		 * service, it could be newer than what was read): the session's
		 * next request caches it. */
		struct fwd_val nv = {
			.backend = be->addr,
			.backend_idx = idx,
			.nat_id = rk.nat_id,
			.snat = snat,
			.table = table,
		};

		__builtin_memcpy(nv.client_mac, client_mac, ETH_ALEN);
		bpf_map_update_elem(&ct_fwd, &fk, &nv, BPF_ANY);
	}
	if (moving) {
		/* Looked up again: the sweeper may have freed it meanwhile. */
		struct rev_val *old = bpf_map_lookup_elem(&ct_rev, &old_rk);

		if (old && old->client == fk.client && old->echo_id == fk.echo_id && old->vip == vip)
			old->flags |= REV_F_RETIRED;
	}
	if (moved_from != NO_SLOT) {
		struct backend_counters *old = bpf_map_lookup_elem(&backend_stats, &moved_from);

		if (old)
			old->moved++;
	}

forward:
	rewrite(eth, ip, icmp, be->mac, snat, be->addr, rk.nat_id);
	switch (track_request(be, idx, cur, &fk, snat, client_mac, icmp, now)) {
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
		struct backend_counters *bs = bpf_map_lookup_elem(&backend_stats, &idx);

		if (bs) {
			bs->requests++;
			bs->request_bytes += ctx->data_end - ctx->data;
		}
	}
	return count_svc(table, REASON_REQUEST_FORWARDED, XDP_TX);
}

/* A reply that answers no request we remember: the backend's (duplicate, or
 * later than the sweeper's horizon) or a forgery from someone else. */
static __always_inline int reply_unmatched(struct ethhdr *eth, struct iphdr *ip)
{
	__be32 saddr = ip->saddr;
	__u32 *idx = bpf_map_lookup_elem(&backend_addrs, &saddr);
	struct backend_counters *bs;
	struct backend *be;

	if (!idx)
		return count(REASON_CONNTRACK_MISS, XDP_PASS);
	be = bpf_map_lookup_elem(&backends, idx);
	if (!be || !mac_eq(be->mac, eth->h_source))
		return count(REASON_REPLY_SPOOFED, XDP_PASS);
	bs = bpf_map_lookup_elem(&backend_stats, idx);
	if (bs)
		bs->unmatched++;
	return count(REASON_CONNTRACK_MISS, XDP_PASS);
}

/* Sends a matched reply back to its client, measured: the exchange's
 * request was taken off the ring or the inflight map by this CPU. */
static __always_inline int reply_return(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					struct icmp_echo *icmp, __u32 idx, __u64 sent, __u16 sampled,
					const __u8 *client_mac, __be32 vip, __be32 client, __be16 echo_id, __u64 now)
{
	struct backend_counters *bs = bpf_map_lookup_elem(&backend_stats, &idx);

	if (bs) {
		bs->replies++;
		bs->reply_bytes += ctx->data_end - ctx->data;
		reply_measured(bs, idx, sent, sampled, client, echo_id, ip->saddr, icmp->seq, now);
	}
	rewrite(eth, ip, icmp, client_mac, vip, client, echo_id);
	/* An incremental update writes 0x0000 both for a message whose other
	 * words sum to 0xffff, where it is right, and for one whose other words
	 * are all zero (id 0, seq 0, zero data), which only 0xffff verifies:
	 * the rare zero is settled by verifying it. */
	if (icmp->checksum == 0 && !icmp_csum_ok(ctx, bpf_ntohs(ip->tot_len) - sizeof(*ip)))
		icmp->checksum = 0xffff;
	return count(REASON_REPLY_RETURNED, XDP_TX);
}

/* Checks common to every reply to a SNAT address, before its request is
 * looked for: returns the reason to pass it, or PARSED. */
static __always_inline enum reason reply_sane(struct xdp_md *ctx, struct iphdr *ip, struct icmp_echo *icmp)
{
	if (ip->ttl == 0)
		return REASON_TTL_ZERO;
	if (!icmp_csum_ok(ctx, bpf_ntohs(ip->tot_len) - sizeof(*ip)))
		return REASON_MALFORMED;
	/* The agent's own probe: its socket takes it (no NAT id is ever
	 * PROBE_ECHO_ID, so this is no session's). */
	if (icmp->id == bpf_htons(PROBE_ECHO_ID))
		return REASON_PROBE_REPLY;
	return PARSED;
}

/* A reply whose request is not in its session's ring: in the inflight map,
 * or no one's. */
static __always_inline int reply_overflow(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					  struct icmp_echo *icmp)
{
	struct inflight_key ik = { .backend = ip->saddr, .nat_id = icmp->id, .seq = icmp->seq };
	__be32 daddr = ip->daddr;
	struct inflight_val *found, iv;
	struct backend *be;
	enum reason r;
	__u64 now;
	__u32 idx;

	if (!bpf_map_lookup_elem(&snat_addrs, &daddr))
		return count(REASON_NOT_VIP, XDP_PASS);
	r = reply_sane(ctx, ip, icmp);
	if (r != PARSED)
		return count(r, XDP_PASS);
	found = bpf_map_lookup_elem(&inflight, &ik);
	if (!found)
		return reply_unmatched(eth, ip);
	idx = found->backend_idx;
	be = bpf_map_lookup_elem(&backends, &idx);
	if (!be || be->addr != ip->saddr)
		return count(REASON_CONNTRACK_MISS, XDP_PASS);
	/* One-arm: a backend's frames come from its next hop. Anyone else on
	 * the segment who takes its address has another MAC. */
	if (!mac_eq(be->mac, eth->h_source))
		return count(REASON_REPLY_SPOOFED, XDP_PASS);
	if (found->reply_csum != csum_norm(icmp->checksum) || found->snat != ip->daddr)
		return count(REASON_REPLY_MISMATCH, XDP_PASS);
	now = bpf_ktime_get_ns();
	if (!awaited(found->sent_ns, now))
		return reply_unmatched(eth, ip);
	iv = *found;
	/* Of two copies of a reply racing on two CPUs, only the one that
	 * deletes the request is returned and measured. */
	if (bpf_map_delete_elem(&inflight, &ik))
		return reply_unmatched(eth, ip);
	return reply_return(ctx, eth, ip, icmp, idx, iv.sent_ns, iv.sampled, iv.client_mac, iv.vip, iv.client,
			    iv.echo_id, now);
}

static __always_inline int handle_reply(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					struct icmp_echo *icmp)
{
	struct rev_key rk = { .backend = ip->saddr, .nat_id = icmp->id };
	struct ring_slot *slot;
	struct rev_val *rv;
	struct backend *be;
	__u8 client_mac[ETH_ALEN];
	__be32 vip, client;
	__be16 echo_id;
	__u64 now, sent;
	__u16 sampled;
	int other_snat;
	enum reason r;
	__u32 idx, i;

	rv = bpf_map_lookup_elem(&ct_rev, &rk);
	if (!rv)
		return reply_overflow(ctx, eth, ip, icmp);
	i = bpf_ntohs(icmp->seq) & (INFLIGHT_RING - 1);
	slot = &rv->ring[i];
	sent = slot->sent_ns;
	/* Read before the rest of the slot: see track_request. */
	barrier();
	if (!sent || slot->seq != icmp->seq)
		return reply_overflow(ctx, eth, ip, icmp);
	/* Its request went from another address than the reply comes to. */
	other_snat = slot->snat != ip->daddr;
	if (other_snat && !bpf_map_lookup_elem(&snat_addrs, &ip->daddr))
		return count(REASON_NOT_VIP, XDP_PASS);
	r = reply_sane(ctx, ip, icmp);
	if (r != PARSED)
		return count(r, XDP_PASS);
	idx = rv->backend_idx;
	be = bpf_map_lookup_elem(&backends, &idx);
	if (!be || be->addr != ip->saddr)
		return count(REASON_CONNTRACK_MISS, XDP_PASS);
	if (!mac_eq(be->mac, eth->h_source))
		return count(REASON_REPLY_SPOOFED, XDP_PASS);
	if (other_snat || slot->reply_csum != csum_norm(icmp->checksum))
		return count(REASON_REPLY_MISMATCH, XDP_PASS);
	now = bpf_ktime_get_ns();
	if (!awaited(sent, now))
		return reply_unmatched(eth, ip);
	sampled = (rv->sampled >> i) & 1;
	client = rv->client;
	echo_id = rv->echo_id;
	vip = rv->vip;
	__builtin_memcpy(client_mac, rv->client_mac, ETH_ALEN);
	/* Of two copies of a reply racing on two CPUs, only the one that takes
	 * the slot back is returned and measured. */
	if (__sync_val_compare_and_swap(&slot->sent_ns, sent, 0) != sent)
		return reply_unmatched(eth, ip);
	return reply_return(ctx, eth, ip, icmp, idx, sent, sampled, client_mac, vip, client, echo_id, now);
}

/* The kind of an ICMP error the balancer translates, or ICMP_ERRORS for
 * any other message (redirects above all: they are about the balancer's own
 * routing, not about a backend). */
static __always_inline enum icmp_error error_kind(const struct icmp_echo *icmp)
{
	if (icmp->type == ICMP_DEST_UNREACH)
		return icmp->code == ICMP_FRAG_NEEDED ? ICMP_ERROR_PACKET_TOO_BIG : ICMP_ERROR_UNREACHABLE;
	if (icmp->type == ICMP_TIME_EXCEEDED)
		return ICMP_ERROR_TIME_EXCEEDED;
	return ICMP_ERRORS;
}

/* What an error needs of the request it answers. */
struct answered {
	__u64 sent;
	__u32 idx;
	__be32 client;
	__be32 vip;
	__be32 snat;
	__be16 echo_id;
	__sum16 reply_csum;
	__u16 sampled;
	__u8 client_mac[ETH_ALEN];
};

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
 * (no socket awaits one), and the exchange was already measured. */
static __always_inline int handle_error(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					struct icmp_echo *icmp, enum icmp_error kind)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct icmp_quote *q = (void *)(icmp + 1);
	__be32 daddr = ip->daddr;
	struct ring_slot *slot = NULL;
	struct inflight_key ik = {};
	struct backend_counters *bs;
	struct answered a = {};
	struct rev_val *rv;
	struct backend *be;
	__u64 now;

	if (!bpf_map_lookup_elem(&snat_addrs, &daddr))
		return count(REASON_NOT_VIP, XDP_PASS);
	if (ip->ttl == 0)
		return count(REASON_TTL_ZERO, XDP_PASS);
	if (!icmp_csum_ok(ctx, bpf_ntohs(ip->tot_len) - sizeof(*ip)))
		return count(REASON_MALFORMED, XDP_PASS);
	if ((void *)(q + 1) > data_end ||
	    bpf_ntohs(ip->tot_len) < sizeof(*ip) + sizeof(*icmp) + sizeof(*q))
		return count(REASON_ERROR_TRUNCATED, XDP_PASS);
	/* The balancer sends only option-less, unfragmented echo requests
	 * from a SNAT address. */
	if (q->ip.version != 4 || q->ip.ihl != 5 || q->ip.protocol != IPPROTO_ICMP ||
	    (q->ip.frag_off & bpf_htons(IP_OFFSET)) || q->ip.saddr != daddr || q->icmp.type != ICMP_ECHO ||
	    q->icmp.code != 0)
		return count(REASON_ERROR_FOREIGN, XDP_PASS);
	/* About the agent's own probe: its socket takes it. */
	if (q->icmp.id == bpf_htons(PROBE_ECHO_ID))
		return count(REASON_PROBE_REPLY, XDP_PASS);

	ik.backend = q->ip.daddr;
	ik.nat_id = q->icmp.id;
	ik.seq = q->icmp.seq;
	{
		struct rev_key rk = { .backend = ik.backend, .nat_id = ik.nat_id };
		__u32 i = bpf_ntohs(ik.seq) & (INFLIGHT_RING - 1);

		rv = bpf_map_lookup_elem(&ct_rev, &rk);
		if (rv) {
			slot = &rv->ring[i];
			a.sent = slot->sent_ns;
			/* Read before the rest of the slot: see track_request. */
			barrier();
			if (a.sent && slot->seq == ik.seq) {
				a.idx = rv->backend_idx;
				a.client = rv->client;
				a.vip = rv->vip;
				a.snat = slot->snat;
				a.echo_id = rv->echo_id;
				a.reply_csum = slot->reply_csum;
				a.sampled = (rv->sampled >> i) & 1;
				__builtin_memcpy(a.client_mac, rv->client_mac, ETH_ALEN);
			} else {
				slot = NULL;
			}
		}
	}
	if (!slot) {
		struct inflight_val *iv = bpf_map_lookup_elem(&inflight, &ik);

		if (!iv)
			return count(REASON_ERROR_UNMATCHED, XDP_PASS);
		a.sent = iv->sent_ns;
		a.idx = iv->backend_idx;
		a.client = iv->client;
		a.vip = iv->vip;
		a.snat = iv->snat;
		a.echo_id = iv->echo_id;
		a.reply_csum = iv->reply_csum;
		a.sampled = iv->sampled;
		__builtin_memcpy(a.client_mac, iv->client_mac, ETH_ALEN);
	}
	be = bpf_map_lookup_elem(&backends, &a.idx);
	if (!be || be->addr != ik.backend)
		return count(REASON_ERROR_UNMATCHED, XDP_PASS);
	if (!mac_eq(be->mac, eth->h_source))
		return count(REASON_REPLY_SPOOFED, XDP_PASS);
	/* The quoted checksum is the request's as it left: its reply's, with
	 * the type changed, is what the request's slot holds. */
	if (a.snat != daddr || a.reply_csum != reply_csum_of(q->icmp.checksum))
		return count(REASON_REPLY_MISMATCH, XDP_PASS);
	now = bpf_ktime_get_ns();
	if (!awaited(a.sent, now))
		return count(REASON_ERROR_UNMATCHED, XDP_PASS);
	/* Of two copies racing on two CPUs, or an error racing the reply, only
	 * the one that takes the request answers it. */
	if (slot) {
		if (__sync_val_compare_and_swap(&slot->sent_ns, a.sent, 0) != a.sent)
			return count(REASON_ERROR_UNMATCHED, XDP_PASS);
	} else if (bpf_map_delete_elem(&inflight, &ik)) {
		return count(REASON_ERROR_UNMATCHED, XDP_PASS);
	}
	bs = bpf_map_lookup_elem(&backend_stats, &a.idx);
	if (bs)
		error_measured(bs, a.idx, a.sent, a.sampled, a.client, a.echo_id, ik.backend, ik.seq, now, kind);

	/* The quote becomes the client's request (client -> VIP, its echo id)
	 * and the error goes from the VIP to the client. Each quoted checksum
	 * is updated with its fields, so the quote's ones'-complement sum is
	 * unchanged: the error's own checksum, which covers the quote but no
	 * address of its own header, stays right as it is. */
	rewrite_addrs(&q->ip, a.client, a.vip);
	rewrite_echo_id(&q->icmp, a.echo_id);
	rewrite_addrs(ip, a.vip, a.client);
	rewrite_macs(eth, a.client_mac);
	return count(REASON_ERROR_RETURNED, XDP_TX);
}

SEC("xdp")
int icmplb(struct xdp_md *ctx)
{
	struct icmp_pkt p;
	enum reason r = parse_icmp(ctx, &p);

	if (r != PARSED)
		return count(r, XDP_PASS);
	if (p.icmp->type == ICMP_ECHO && p.icmp->code == 0) {
		struct fwd_key fk = { .client = p.ip->saddr, .vip = p.ip->daddr, .echo_id = p.icmp->id };
		struct fwd_val *fv = bpf_map_lookup_elem(&ct_fwd, &fk);
		struct service cached = {};
		const struct service *svc;
		__u32 gen = 0;

		/* A known session's service as it cached it, while current. The
		 * generation is read before the service: a write between the
		 * two leaves the cache stale by one generation, never current
		 * with an old service. */
		if (fv) {
			__u32 table = fv->table;
			__u32 *g = bpf_map_lookup_elem(&service_gens, &table);

			gen = g ? *g : 0;
			if (gen && gen == fv->svc_gen) {
				cached.snat = fv->snat;
				cached.table = table;
				return handle_request(ctx, p.eth, p.ip, p.icmp, &cached, &fk, fv, gen);
			}
		}
		svc = bpf_map_lookup_elem(&services, &fk.vip);
		if (!svc)
			return count(REASON_NOT_VIP, XDP_PASS);
		return handle_request(ctx, p.eth, p.ip, p.icmp, svc, &fk, fv,
				      fv && svc->table == fv->table ? gen : 0);
	}
	/* Whether a reply is to a SNAT address is known from its session's
	 * ring, or else looked up. */
	if (p.icmp->type == ICMP_ECHOREPLY && p.icmp->code == 0)
		return handle_reply(ctx, p.eth, p.ip, p.icmp);
	{
		enum icmp_error kind = error_kind(p.icmp);

		if (kind != ICMP_ERRORS)
			return handle_error(ctx, p.eth, p.ip, p.icmp, kind);
	}
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

