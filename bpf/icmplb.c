//go:build ignore

// XDP ICMP echo load balancer: full NAT of echo requests to a VIP towards a
// backend chosen by Maglev hashing, and reverse NAT of the backends' replies
// through an LRU conntrack. Everything it does not own goes to the kernel
// untouched (XDP_PASS).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "icmplb.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Set by the agent on the CollectionSpec before loading. */
volatile const __be32 cfg_vip;
volatile const __be32 cfg_snat;
volatile const __u32 cfg_maglev_size = 1;
/* A NAT id whose session was idle this long may be given to a new session. */
volatile const __u64 cfg_nat_idle_ns = 60ULL * 1000000000ULL;
/* A reply later than this does not count as an answer: its request is lost. */
volatile const __u64 cfg_loss_timeout_ns = 1000000000ULL;
/* One exchange in cfg_trace_sample is sent to userspace as a trace; 0: none. */
volatile const __u32 cfg_trace_sample;
/* Upper bounds (ns) of the RTT histogram buckets; see icmplb.h. */
volatile const __u64 cfg_rtt_bounds[RTT_BUCKETS];

#define NAT_ID_TRIES 8

/* maglev: slot (hash % cfg_maglev_size) -> backend index. Size set by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 65537);
} maglev SEC(".maps");

/* backends: backend index -> address, next-hop MAC, flags. A retired
 * backend's slot keeps its address (flags 0) so that pinned sessions and
 * requests never land on another backend's counters. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(max_entries, 1024);
} backends SEC(".maps");

/* backend_addrs: backend address -> backend index, for replies that match no
 * request: was it the backend (unmatched) or someone spoofing it? */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, __u32);
	__uint(max_entries, 1024);
} backend_addrs SEC(".maps");

/* src_deny: source addresses no client can have that depend on the host (the
 * network and broadcast addresses of the interface's subnets) -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, __u8);
	__uint(max_entries, 256);
} src_deny SEC(".maps");

/* ct_fwd: (client, echo id) -> (backend, NAT id, client's MAC). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct fwd_key);
	__type(value, struct fwd_val);
	__uint(max_entries, 65536);
} ct_fwd SEC(".maps");

/* ct_rev: (backend, NAT id) -> the session holding it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct rev_key);
	__type(value, struct rev_val);
	__uint(max_entries, 65536);
} ct_rev SEC(".maps");

/* nat_pools: backend index -> key and counter of its NAT id permutation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nat_pool);
	__uint(max_entries, 1024);
} nat_pools SEC(".maps");

/* stats: enum reason -> packets, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, enum reason);
	__type(value, __u64);
	__uint(max_entries, REASON_MAX);
} stats SEC(".maps");

/* backend_stats: backend index -> counters, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct backend_counters);
	__uint(max_entries, 1024);
} backend_stats SEC(".maps");

/* inflight: (backend, NAT id, sequence) -> the request awaiting its reply.
 * A plain hash, not an LRU: evicting a request would turn the balancer's
 * shortage into a backend's loss and free its key for another client while
 * its reply is on the way. When full, new requests are refused and counted;
 * the sweeper frees entries older than twice the loss timeout. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct inflight_key);
	__type(value, struct inflight_val);
	__uint(max_entries, 262144);
} inflight SEC(".maps");

/* rtt_hist: backend index * RTT_BUCKETS + bucket -> replies, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1024 * RTT_BUCKETS);
} rtt_hist SEC(".maps");

/* epochs: backend index * EPOCHS + epoch % EPOCHS -> requests sent and
 * answered in that epoch, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct epoch_count);
	__uint(max_entries, 1024 * EPOCHS);
} epochs SEC(".maps");

/* events: sampled exchanges (struct trace_event) for the trace pipeline. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* trace_dropped: [0] -> trace events lost to a full ring buffer, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} trace_dropped SEC(".maps");

static __always_inline int count(enum reason r, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &r);

	if (n)
		*n += 1;
	return verdict;
}

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

static __always_inline void rewrite(struct ethhdr *eth, struct iphdr *ip, struct icmp_echo *icmp,
				    const __u8 *dst_mac, __be32 saddr, __be32 daddr, __be16 echo_id)
{
	__u32 sum;

	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, dst_mac, ETH_ALEN);

	sum = (__u16)~ip->check;
	sum = csum_add32(sum, ip->saddr, saddr);
	sum = csum_add32(sum, ip->daddr, daddr);
	ip->check = ~csum_fold(sum);
	ip->saddr = saddr;
	ip->daddr = daddr;

	/* ICMPv4 has no pseudo-header: only the identifier touches its checksum. */
	sum = (__u16)~icmp->checksum;
	sum = csum_add16(sum, icmp->id, echo_id);
	icmp->checksum = ~csum_fold(sum);
	icmp->id = echo_id;
}

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

static __always_inline struct epoch_count *epoch_slot(__u32 idx, __u64 epoch)
{
	__u32 key = idx * EPOCHS + (__u32)(epoch % EPOCHS);

	return bpf_map_lookup_elem(&epochs, &key);
}

/* Keeps struct trace_event in the object's BTF for bpf2go: the ring buffer
 * has no value type to carry it. */
const struct trace_event *unused_trace_event __attribute__((unused));
const enum layout *unused_layout __attribute__((unused));

static __always_inline void trace(enum trace_kind kind, __u64 sent_ns, __u64 rtt_ns, __be32 client,
				  __be32 backend, __be16 echo_id, __be16 seq, __u32 idx, __u32 late)
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
	e->client = client;
	e->backend = backend;
	e->echo_id = echo_id;
	e->seq = seq;
	e->backend_idx = idx;
	e->kind = kind;
	e->late = late;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return *(__u32 *)a == *(__u32 *)b && *(__u16 *)(a + 4) == *(__u16 *)(b + 4);
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
	for (i = 0; i < ICMP_MAX_LEN / 4; i++) {
		__u32 *w = msg + i * 4;

		if (i * 4 + 4 > len)
			break;
		if ((void *)(w + 1) > data_end)
			return 0;
		sum += *w;
	}
	{
		__u8 *t = msg + (len & ~3U);

		if ((len & ~3U) > ICMP_MAX_LEN)
			return 0;
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
	if (saddr == cfg_vip || saddr == cfg_snat)
		return 1;
	return bpf_map_lookup_elem(&src_deny, &saddr) != NULL;
}

enum track {
	TRACK_NEW,  /* remembered: its reply will be measured */
	TRACK_DUP,  /* the same session resent a request still awaited */
	TRACK_COLLISION,
	TRACK_FULL,
};

/* Remembers a forwarded request (already rewritten) until its reply, and
 * counts it in its epoch. Never overwrites another session's request: its
 * reply would then go to the wrong client. */
static __always_inline enum track track_request(struct backend *be, __u32 idx, struct fwd_key *fk,
						const __u8 *client_mac, struct icmp_echo *icmp, __u64 now)
{
	struct inflight_key ik = { .backend = be->addr, .nat_id = icmp->id, .seq = icmp->seq };
	struct inflight_val iv = {
		.sent_ns = now,
		.backend_idx = idx,
		.client = fk->client,
		.echo_id = fk->echo_id,
		.reply_csum = reply_csum_of(icmp->checksum),
	};
	struct epoch_count *ep;
	long err;

	__builtin_memcpy(iv.client_mac, client_mac, ETH_ALEN);
	iv.sampled = cfg_trace_sample && bpf_get_prandom_u32() % cfg_trace_sample == 0;
	err = bpf_map_update_elem(&inflight, &ik, &iv, BPF_NOEXIST);
	if (err == -17 /* EEXIST */) {
		struct inflight_val *old = bpf_map_lookup_elem(&inflight, &ik);

		/* A request older than the sweeper's horizon is already lost: its
		 * key may be taken over, by its own session too (the sequence
		 * wrapped), which makes a new, counted request. */
		if (old && old->sent_ns + 2 * cfg_loss_timeout_ns >= now) {
			if (old->client == fk->client && old->echo_id == fk->echo_id)
				return TRACK_DUP;
			return TRACK_COLLISION;
		}
		err = bpf_map_update_elem(&inflight, &ik, &iv, BPF_ANY);
	}
	if (err)
		return TRACK_FULL;

	ep = epoch_slot(idx, now >> EPOCH_SHIFT);
	if (ep) {
		if (ep->epoch != now >> EPOCH_SHIFT) {
			ep->epoch = now >> EPOCH_SHIFT;
			ep->sent = 0;
			ep->answered = 0;
		}
		ep->sent++;
	}
	if (iv.sampled)
		trace(TRACE_REQUEST, now, 0, fk->client, be->addr, fk->echo_id, icmp->seq, idx, 0);
	return TRACK_NEW;
}

/* Counts a matched reply: RTT into the histogram and answer into the
 * request's epoch, or late when past the loss timeout. */
static __always_inline void reply_measured(struct backend_counters *bs, struct inflight_val *iv, __be32 backend,
					   __be16 seq, __u64 now)
{
	__u32 idx = iv->backend_idx;
	__u64 sent = iv->sent_ns;
	__u64 rtt = now - sent;
	__u32 late = rtt > cfg_loss_timeout_ns;

	if (late) {
		bs->late++;
	} else {
		__u32 key = idx * RTT_BUCKETS + rtt_bucket(rtt);
		__u64 *n = bpf_map_lookup_elem(&rtt_hist, &key);
		struct epoch_count *ep = epoch_slot(idx, sent >> EPOCH_SHIFT);

		if (n)
			*n += 1;
		bs->rtt_sum_ns += rtt;
		if (ep) {
			if (ep->epoch < sent >> EPOCH_SHIFT) {
				ep->epoch = sent >> EPOCH_SHIFT;
				ep->sent = 0;
				ep->answered = 0;
			}
			if (ep->epoch == sent >> EPOCH_SHIFT)
				ep->answered++;
		}
	}
	if (iv->sampled)
		trace(TRACE_REPLY, sent, rtt, iv->client, backend, iv->echo_id, seq, idx, late);
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

/* A 4-round Feistel network on the two bytes of x: a permutation of the 16-bit
 * ids, so a counter walks all of them before one repeats, in an order that
 * depends on the pool's secret keys. */
static __always_inline __u16 nat_permute(const struct nat_pool *p, __u16 x)
{
	__u8 l = x >> 8, r = x & 0xff;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u8 f = (__u8)((((__u32)r + p->key[i]) * 0x9e3779b1U) >> 24);
		__u8 t = l ^ f;

		l = r;
		r = t;
	}
	return ((__u16)l << 8) | r;
}

/* Gives the session a NAT id no live session holds at this backend, or 0. */
static __always_inline int nat_alloc(__u32 idx, struct rev_key *rk, struct rev_val *rv, __u64 now)
{
	struct nat_pool *pool = bpf_map_lookup_elem(&nat_pools, &idx);

	if (!pool)
		return 0;
#pragma unroll
	for (int i = 0; i < NAT_ID_TRIES; i++) {
		__u16 cand = nat_permute(pool, (__u16)__sync_fetch_and_add(&pool->next, 1));
		struct rev_val *old;

		rk->nat_id = bpf_htons(cand);
		old = bpf_map_lookup_elem(&ct_rev, rk);
		/* Another CPU may have stamped the entry after our `now`: compare
		 * by addition, since now - last_seen would wrap around. */
		if (old && old->last_seen_ns + cfg_nat_idle_ns > now)
			continue;
		if (bpf_map_update_elem(&ct_rev, rk, rv, BPF_ANY) == 0)
			return 1;
	}
	return 0;
}

static __always_inline int handle_request(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					  struct icmp_echo *icmp)
{
	struct fwd_key fk = { .client = ip->saddr, .echo_id = icmp->id };
	struct rev_key rk = {};
	struct rev_val rv = { .client = ip->saddr, .echo_id = icmp->id };
	__u8 client_mac[ETH_ALEN];
	struct backend *be = NULL;
	struct fwd_val *fv;
	__u64 now = bpf_ktime_get_ns();
	__u32 idx;

	if (bogus_source(eth, ip->saddr))
		return count(REASON_BOGUS_SOURCE, XDP_PASS);
	if (ip->ttl == 0)
		return count(REASON_TTL_ZERO, XDP_PASS);
	if (!icmp_csum_ok(ctx, bpf_ntohs(ip->tot_len) - sizeof(*ip)))
		return count(REASON_MALFORMED, XDP_PASS);

	__builtin_memcpy(client_mac, eth->h_source, ETH_ALEN);
	rv.last_seen_ns = now;

	fv = bpf_map_lookup_elem(&ct_fwd, &fk);
	if (fv) {
		struct rev_val *cur;

		rk.backend = fv->backend;
		rk.nat_id = fv->nat_id;
		cur = bpf_map_lookup_elem(&ct_rev, &rk);
		if (cur && cur->client == fk.client && cur->echo_id == fk.echo_id) {
			/* The session is live: it belongs to the MAC that opened it.
			 * Anyone else on the segment could otherwise take its
			 * replies by sending one request with its address. */
			if (!mac_eq(fv->client_mac, client_mac))
				return count(REASON_SESSION_MAC_MISMATCH, XDP_DROP);
			idx = fv->backend_idx;
			be = bpf_map_lookup_elem(&backends, &idx);
			/* It stays on its backend while that backend is in the
			 * pool and reachable. */
			if (be && (be->flags & BACKEND_F_UP) == BACKEND_F_UP && be->addr == fv->backend) {
				cur->last_seen_ns = now;
				goto forward;
			}
		}
	}

	{
		__u32 slot = session_hash(fk.client, fk.echo_id) % cfg_maglev_size;
		__u32 *pick = bpf_map_lookup_elem(&maglev, &slot);

		if (!pick)
			return count(REASON_NO_BACKEND, XDP_DROP);
		idx = *pick;
		be = bpf_map_lookup_elem(&backends, &idx);
		if (!be || !(be->flags & BACKEND_F_ACTIVE))
			return count(REASON_NO_BACKEND, XDP_DROP);
	}
	if (!(be->flags & BACKEND_F_NEIGH))
		return count(REASON_NEIGH_UNRESOLVED, XDP_PASS);

	rk.backend = be->addr;
	rv.backend_idx = idx;
	if (!nat_alloc(idx, &rk, &rv, now))
		return count(REASON_NAT_EXHAUSTED, XDP_PASS);
	{
		struct fwd_val nv = { .backend = be->addr, .backend_idx = idx, .nat_id = rk.nat_id };

		__builtin_memcpy(nv.client_mac, client_mac, ETH_ALEN);
		bpf_map_update_elem(&ct_fwd, &fk, &nv, BPF_ANY);
	}

forward:
	rewrite(eth, ip, icmp, be->mac, cfg_snat, be->addr, rk.nat_id);
	switch (track_request(be, idx, &fk, client_mac, icmp, now)) {
	case TRACK_COLLISION:
		return count(REASON_NAT_COLLISION, XDP_DROP);
	case TRACK_FULL:
		return count(REASON_INFLIGHT_FULL, XDP_DROP);
	case TRACK_DUP:
		/* Forwarded, not counted again: the first copy's reply answers it. */
		return count(REASON_REQUEST_FORWARDED, XDP_TX);
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
	return count(REASON_REQUEST_FORWARDED, XDP_TX);
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

static __always_inline int handle_reply(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					struct icmp_echo *icmp)
{
	struct inflight_key ik = { .backend = ip->saddr, .nat_id = icmp->id, .seq = icmp->seq };
	struct inflight_val *found, iv;
	struct backend_counters *bs;
	struct backend *be;
	__u64 now;
	__u32 idx;

	if (ip->ttl == 0)
		return count(REASON_TTL_ZERO, XDP_PASS);
	if (!icmp_csum_ok(ctx, bpf_ntohs(ip->tot_len) - sizeof(*ip)))
		return count(REASON_MALFORMED, XDP_PASS);
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
	if (found->reply_csum != csum_norm(icmp->checksum))
		return count(REASON_REPLY_MISMATCH, XDP_PASS);
	now = bpf_ktime_get_ns();
	if (found->sent_ns + 2 * cfg_loss_timeout_ns < now)
		return reply_unmatched(eth, ip);
	iv = *found;
	/* Of two copies of a reply racing on two CPUs, only the one that
	 * deletes the request is returned and measured. */
	if (bpf_map_delete_elem(&inflight, &ik))
		return reply_unmatched(eth, ip);

	bs = bpf_map_lookup_elem(&backend_stats, &idx);
	if (bs) {
		bs->replies++;
		bs->reply_bytes += ctx->data_end - ctx->data;
		reply_measured(bs, &iv, ip->saddr, icmp->seq, now);
	}
	rewrite(eth, ip, icmp, iv.client_mac, cfg_vip, iv.client, iv.echo_id);
	return count(REASON_REPLY_RETURNED, XDP_TX);
}

SEC("xdp")
int icmplb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct icmp_echo *icmp;
	__u16 tot_len;

	if ((void *)(eth + 1) > data_end)
		return count(REASON_MALFORMED, XDP_PASS);
	/* A tag in the frame means another network than the one we serve. A
	 * tag the NIC or veth took out into metadata is invisible here; the
	 * agent warns about interfaces that strip tags. */
	if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD))
		return count(REASON_VLAN, XDP_PASS);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count(REASON_NOT_IPV4, XDP_PASS);
	/* A group destination MAC would become the source MAC of the rewrite. */
	if (eth->h_dest[0] & 1)
		return count(REASON_NOT_UNICAST, XDP_PASS);

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return count(REASON_MALFORMED, XDP_PASS);
	if (ip->protocol != IPPROTO_ICMP)
		return count(REASON_NOT_ICMP, XDP_PASS);
	if (ip->version != 4 || ip->ihl < 5)
		return count(REASON_MALFORMED, XDP_PASS);
	if (ip->ihl != 5)
		return count(REASON_IP_OPTIONS, XDP_PASS);
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return count(REASON_FRAGMENT, XDP_PASS);
	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < sizeof(*ip) + sizeof(*icmp) || (void *)ip + tot_len > data_end ||
	    !ip_csum_ok(ip))
		return count(REASON_MALFORMED, XDP_PASS);

	icmp = (void *)(ip + 1);
	if ((void *)(icmp + 1) > data_end)
		return count(REASON_MALFORMED, XDP_PASS);

	if (icmp->type == ICMP_ECHO && icmp->code == 0) {
		if (ip->daddr != cfg_vip)
			return count(REASON_NOT_VIP, XDP_PASS);
		return handle_request(ctx, eth, ip, icmp);
	}
	if (icmp->type == ICMP_ECHOREPLY && icmp->code == 0) {
		if (ip->daddr != cfg_snat)
			return count(REASON_NOT_VIP, XDP_PASS);
		return handle_reply(ctx, eth, ip, icmp);
	}
	return count(REASON_NOT_ECHO, XDP_PASS);
}

struct bpf_map {
	__u32 id;
} __attribute__((preserve_access_index));
extern __s64 bpf_map_sum_elem_count(const struct bpf_map *map) __ksym;

/* conntrack_entries: [0] -> ct_fwd entries, [1] -> ct_rev entries, [2] ->
 * inflight entries, filled by conntrack_count. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __s64);
	__uint(max_entries, 3);
} conntrack_entries SEC(".maps");

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

/* Entries of requests older than this are lost even to late replies. */
#define INFLIGHT_MAX_AGE(timeout) (2 * (timeout))

static long sweep_inflight(void *map, struct inflight_key *k, struct inflight_val *v, __u64 *now)
{
	/* Entries stamped after the sweep began are newer than *now. */
	if (v->sent_ns + INFLIGHT_MAX_AGE(cfg_loss_timeout_ns) < *now)
		bpf_map_delete_elem(&inflight, k);
	return 0;
}

static long sweep_rev(void *map, struct rev_key *k, struct rev_val *v, __u64 *now)
{
	if (v->last_seen_ns + cfg_nat_idle_ns < *now)
		bpf_map_delete_elem(&ct_rev, k);
	return 0;
}

static long sweep_fwd(void *map, struct fwd_key *k, struct fwd_val *v, __u64 *now)
{
	struct rev_key rk = { .backend = v->backend, .nat_id = v->nat_id };
	struct rev_val *rv = bpf_map_lookup_elem(&ct_rev, &rk);

	if (!rv || rv->client != k->client || rv->echo_id != k->echo_id)
		bpf_map_delete_elem(&ct_fwd, k);
	return 0;
}

/* Run by the agent every few hundred milliseconds (BPF_PROG_RUN): removes
 * requests that can no longer be answered and sessions idle for longer than
 * cfg_nat_idle_ns, so that the maps' occupancy is live state, not history
 * waiting for LRU eviction. ct_rev goes first: a session's ct_fwd entry is
 * kept exactly while its ct_rev entry is. */
SEC("syscall")
int sweep(void *ctx)
{
	__u64 now = bpf_ktime_get_ns();

	bpf_for_each_map_elem(&inflight, sweep_inflight, &now, 0);
	bpf_for_each_map_elem(&ct_rev, sweep_rev, &now, 0);
	bpf_for_each_map_elem(&ct_fwd, sweep_fwd, &now, 0);
	return 0;
}

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
