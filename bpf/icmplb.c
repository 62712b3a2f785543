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

/* backends: backend index -> address, next-hop MAC, flags. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(max_entries, 1024);
} backends SEC(".maps");

/* ct_fwd: (client, echo id) -> (backend, NAT id). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct fwd_key);
	__type(value, struct fwd_val);
	__uint(max_entries, 65536);
} ct_fwd SEC(".maps");

/* ct_rev: (backend, NAT id) -> (client, echo id, client's next-hop MAC). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct rev_key);
	__type(value, struct rev_val);
	__uint(max_entries, 65536);
} ct_rev SEC(".maps");

/* nat_next: [0] -> next NAT id candidate, shared by all CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} nat_next SEC(".maps");

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

/* inflight: (backend, NAT id, sequence) -> when the request was forwarded. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
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

/* Remembers a forwarded request until its reply, and counts it in its epoch. */
static __always_inline void request_sent(struct backend *be, __u32 idx, __be16 nat_id, struct fwd_key *fk,
					 __be16 seq, __u64 now)
{
	struct inflight_key ik = { .backend = be->addr, .nat_id = nat_id, .seq = seq };
	struct inflight_val iv = { .sent_ns = now, .backend_idx = idx };
	struct epoch_count *ep = epoch_slot(idx, now >> EPOCH_SHIFT);

	if (ep) {
		if (ep->epoch != now >> EPOCH_SHIFT) {
			ep->epoch = now >> EPOCH_SHIFT;
			ep->sent = 0;
			ep->answered = 0;
		}
		ep->sent++;
	}
	iv.sampled = cfg_trace_sample && bpf_get_prandom_u32() % cfg_trace_sample == 0;
	bpf_map_update_elem(&inflight, &ik, &iv, BPF_ANY);
	if (iv.sampled)
		trace(TRACE_REQUEST, now, 0, fk->client, be->addr, fk->echo_id, seq, idx, 0);
}

/* Matches a reply with its request: RTT into the histogram, answer into the
 * request's epoch, or late when past the loss timeout. */
static __always_inline void reply_received(struct backend_counters *bs, struct rev_val *rv, __be32 backend,
					   __be16 nat_id, __be16 seq, __u64 now)
{
	struct inflight_key ik = { .backend = backend, .nat_id = nat_id, .seq = seq };
	struct inflight_val *iv = bpf_map_lookup_elem(&inflight, &ik);
	__u32 idx = rv->backend_idx;
	__u64 sent, rtt;
	__u32 sampled, late;

	if (!iv) {
		bs->unmatched++;
		return;
	}
	sent = iv->sent_ns;
	sampled = iv->sampled;
	bpf_map_delete_elem(&inflight, &ik);
	rtt = now - sent;
	late = rtt > cfg_loss_timeout_ns;
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
	if (sampled)
		trace(TRACE_REPLY, sent, rtt, rv->client, backend, rv->echo_id, seq, idx, late);
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

/* Gives the session a NAT id unused at this backend, or 0 when none was free. */
static __always_inline int nat_alloc(struct rev_key *rk, struct rev_val *rv, __u64 now)
{
	__u32 zero = 0;
	__u32 *next = bpf_map_lookup_elem(&nat_next, &zero);

	if (!next)
		return 0;
#pragma unroll
	for (int i = 0; i < NAT_ID_TRIES; i++) {
		__u16 cand = (__u16)__sync_fetch_and_add(next, 1);
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
	struct backend *be = NULL;
	struct fwd_val *fv;
	__u64 now = bpf_ktime_get_ns();
	__u32 idx;

	__builtin_memcpy(rv.client_mac, eth->h_source, ETH_ALEN);
	rv.last_seen_ns = now;

	fv = bpf_map_lookup_elem(&ct_fwd, &fk);
	if (fv) {
		idx = fv->backend_idx;
		be = bpf_map_lookup_elem(&backends, &idx);
		/* The session stays on its backend while that backend is in the pool
		 * and reachable, and its NAT id still belongs to this session. */
		if (be && (be->flags & BACKEND_F_UP) == BACKEND_F_UP && be->addr == fv->backend) {
			struct rev_val *cur;

			rk.backend = fv->backend;
			rk.nat_id = fv->nat_id;
			cur = bpf_map_lookup_elem(&ct_rev, &rk);
			if (cur && cur->client == fk.client && cur->echo_id == fk.echo_id) {
				__builtin_memcpy(cur->client_mac, eth->h_source, ETH_ALEN);
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
	if (!nat_alloc(&rk, &rv, now))
		return count(REASON_NAT_EXHAUSTED, XDP_PASS);
	{
		struct fwd_val nv = { .backend = be->addr, .backend_idx = idx, .nat_id = rk.nat_id };

		bpf_map_update_elem(&ct_fwd, &fk, &nv, BPF_ANY);
	}

forward:
	{
		struct backend_counters *bs = bpf_map_lookup_elem(&backend_stats, &idx);

		if (bs) {
			bs->requests++;
			bs->request_bytes += ctx->data_end - ctx->data;
		}
	}
	request_sent(be, idx, rk.nat_id, &fk, icmp->seq, now);
	rewrite(eth, ip, icmp, be->mac, cfg_snat, be->addr, rk.nat_id);
	return count(REASON_REQUEST_FORWARDED, XDP_TX);
}

static __always_inline int handle_reply(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					struct icmp_echo *icmp)
{
	struct rev_key rk = { .backend = ip->saddr, .nat_id = icmp->id };
	struct rev_val *rv = bpf_map_lookup_elem(&ct_rev, &rk);
	struct backend_counters *bs;
	__u32 idx;

	if (!rv)
		return count(REASON_CONNTRACK_MISS, XDP_PASS);
	idx = rv->backend_idx;
	bs = bpf_map_lookup_elem(&backend_stats, &idx);
	if (bs) {
		bs->replies++;
		bs->reply_bytes += ctx->data_end - ctx->data;
		reply_received(bs, rv, ip->saddr, icmp->id, icmp->seq, bpf_ktime_get_ns());
	}
	rewrite(eth, ip, icmp, rv->client_mac, cfg_vip, rv->client, rv->echo_id);
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
