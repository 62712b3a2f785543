// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

//go:build ignore

// Programs of the end-to-end throughput benchmark (IcmplbBench), which the
// agent never loads: a load generator run through BPF_PROG_RUN in
// live-frames mode, a sink that counts what comes back, a responder that
// answers forwarded requests as their backend would, and a reflector that
// bounces every frame (the path's physical limit). Only proto.h is shared
// with the data plane, so the data plane's changes do not change this
// object.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "proto.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* What loadgen writes: the Go side validates it (internal/loadgen). Frame i
 * (counted per CPU from the first run) goes from client + (i / sessions) %
 * clients with echo id id_base + i % sessions and sequence i / sessions:
 * every session is visited once per pass, and its sequence number is the
 * pass. */
struct loadgen_cfg {
	__u8 dst_mac[ETH_ALEN];
	__u8 src_mac[ETH_ALEN];
	__be32 client;    /* first client address */
	__be32 dst;       /* the VIP */
	__u32 clients;    /* client addresses cycled over, at least 1 */
	__u32 sessions;   /* echo ids cycled over, at least 1 */
	__u16 id_base;    /* first echo id, host order */
	__u16 ip_len;     /* IP total length: the frame is 14 bytes longer */
	__u8 icmp_type;   /* ICMP_ECHO, or ICMP_ECHOREPLY for a reply test */
	__u8 ttl;
	__u16 payload_sum; /* ones'-complement sum of the payload's 16-bit words, in memory order */
};

/* loadgen_config: 0 -> the settings. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct loadgen_cfg);
	__uint(max_entries, 1);
} loadgen_config SEC(".maps");

/* loadgen_sent: 0 -> frames generated on this CPU (what decides the next
 * frame's session), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} loadgen_sent SEC(".maps");

/* What the sink counts a frame as; a frame is in SINK_FRAMES and at most one
 * other class. */
enum sink_class : __u32 {
	SINK_FRAMES = 0,       /* every frame */
	SINK_REQUEST_VIP,      /* echo request to the VIP: generated, or reflected */
	SINK_REQUEST_BACKEND,  /* echo request to a backend: forwarded by a balancer */
	SINK_REPLY_CLIENT,     /* echo reply to a client: returned by a balancer */
	SINK_CLASSES,
};

/* Keeps enum sink_class in the object's BTF, for bpf2go to give it to Go. */
const enum sink_class *unused_sink_class __attribute__((unused));

/* The sink's and the responder's view of the addresses; the client and
 * backend ranges are prefixes (address and mask, network order). */
volatile const __be32 sink_vip;
volatile const __be32 sink_backend_net;
volatile const __be32 sink_backend_mask;
volatile const __be32 sink_client_net;
volatile const __be32 sink_client_mask;

/* sink_counts: enum sink_class -> frames, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SINK_CLASSES);
} sink_counts SEC(".maps");

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Writes every header field, so that nothing a far end wrote into a
 * recycled page survives, and both checksums from scratch: the ICMP one from
 * the header words and the payload's constant sum. */
SEC("xdp")
int loadgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct icmp_echo *icmp = (void *)(ip + 1);
	struct loadgen_cfg *c;
	__u32 zero = 0, sum = 0, round;
	__u16 *w;
	__u64 *sent, n;

	if ((void *)(icmp + 1) > data_end)
		return XDP_ABORTED;
	c = bpf_map_lookup_elem(&loadgen_config, &zero);
	sent = bpf_map_lookup_elem(&loadgen_sent, &zero);
	if (!c || !sent || c->sessions == 0 || c->clients == 0 ||
	    (__u64)(data_end - data) != sizeof(*eth) + (__u64)c->ip_len)
		return XDP_ABORTED;
	n = (*sent)++;
	round = n / c->sessions;

	__builtin_memcpy(eth->h_dest, c->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, c->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(c->ip_len);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = c->ttl;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = bpf_htonl(bpf_ntohl(c->client) + round % c->clients);
	ip->daddr = c->dst;
	w = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	ip->check = ~fold(sum);

	icmp->type = c->icmp_type;
	icmp->code = 0;
	icmp->checksum = 0;
	icmp->id = bpf_htons(c->id_base + (__u16)(n % c->sessions));
	icmp->seq = bpf_htons((__u16)round);
	w = (__u16 *)icmp;
	sum = c->payload_sum;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*icmp) / 2); i++)
		sum += w[i];
	icmp->checksum = ~fold(sum);
	return XDP_TX;
}

static __always_inline void count(__u32 class)
{
	__u64 *v = bpf_map_lookup_elem(&sink_counts, &class);

	if (v)
		(*v)++;
}

/* Counts the frame in SINK_FRAMES and its class; returns the class, or
 * SINK_CLASSES for a frame in no other class. */
static __always_inline __u32 classify(struct xdp_md *ctx, struct ethhdr **ethp, struct iphdr **ipp,
				      struct icmp_echo **icmpp)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct icmp_echo *icmp = (void *)(ip + 1);
	__u32 class = SINK_CLASSES;

	count(SINK_FRAMES);
	if ((void *)(icmp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_ICMP || icmp->code != 0)
		return class;
	if (icmp->type == ICMP_ECHO && ip->daddr == sink_vip)
		class = SINK_REQUEST_VIP;
	else if (icmp->type == ICMP_ECHO && (ip->daddr & sink_backend_mask) == sink_backend_net)
		class = SINK_REQUEST_BACKEND;
	else if (icmp->type == ICMP_ECHOREPLY && (ip->daddr & sink_client_mask) == sink_client_net)
		class = SINK_REPLY_CLIENT;
	if (class != SINK_CLASSES)
		count(class);
	*ethp = eth;
	*ipp = ip;
	*icmpp = icmp;
	return class;
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct icmp_echo *icmp;

	classify(ctx, &eth, &ip, &icmp);
	return XDP_DROP;
}

/* A sink that answers each request a balancer forwarded to a backend as that
 * backend would (from its address and from the MAC the balancer sent to),
 * so that the balancer sees a reply to every request; the replies it
 * returns to clients are counted and dropped. */
SEC("xdp")
int responder(struct xdp_md *ctx)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct icmp_echo *icmp;
	__u8 mac[ETH_ALEN];
	__be32 addr;
	__u32 sum;

	if (classify(ctx, &eth, &ip, &icmp) != SINK_REQUEST_BACKEND)
		return XDP_DROP;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	/* Swapping the addresses leaves the IP checksum as it is. */
	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	icmp->type = ICMP_ECHOREPLY;
	sum = (__u16)~icmp->checksum + (__u16)~bpf_htons(ICMP_ECHO << 8) + bpf_htons(ICMP_ECHOREPLY << 8);
	icmp->checksum = ~fold(sum);
	return XDP_TX;
}

/* Sends every frame back where it came from: what the path costs with
 * nothing to decide. */
SEC("xdp")
int reflector(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 mac[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return XDP_TX;
}
