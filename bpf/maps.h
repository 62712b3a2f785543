// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/* The product's load-time settings and maps. Each setting and each map size
 * of 1 is a placeholder: bpf/spec.go sets it from the agent's configuration
 * on the CollectionSpec before loading, so that no default lives in C. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"

/* Slots of each service's Maglev table. */
volatile const __u32 cfg_maglev_size;
/* A NAT id whose session was idle this long may be given to a new session. */
volatile const __u64 cfg_nat_idle_ns;
/* A reply later than this does not count as an answer: its request is lost. */
volatile const __u64 cfg_loss_timeout_ns;
/* One exchange in cfg_trace_sample is sent to userspace as a trace; 0: none. */
volatile const __u32 cfg_trace_sample;

/* services: VIP -> its SNAT address and Maglev table. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipaddr);
	__type(value, struct service);
	__uint(max_entries, 1);
} services SEC(".maps");

/* snat_addrs: the services' SNAT addresses -> services using it. Replies
 * come back to them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipaddr);
	__type(value, __u32);
	__uint(max_entries, 1);
} snat_addrs SEC(".maps");

/* A Maglev table: slot (hash % cfg_maglev_size) -> backend index. */
struct maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
};

/* maglev_tables: struct service's table -> its Maglev table. The agent
 * changes a table by filling a new one and swapping it in with one update,
 * so no packet sees a table half written. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 1);
	__array(values, struct maglev_table);
} maglev_tables SEC(".maps");

/* backends: backend index -> address, next-hop MAC, flags. A retired
 * backend's slot keeps its address (flags 0) so that pinned sessions and
 * requests never land on another backend's counters. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(max_entries, 1);
} backends SEC(".maps");

/* backend_addrs: backend address -> a backend index of that address (the
 * first service's), for replies that match no request: was it the backend
 * (unmatched) or someone spoofing it? */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipaddr);
	__type(value, __u32);
	__uint(max_entries, 1);
} backend_addrs SEC(".maps");

/* src_deny: source addresses no client can have -> 1: the balancer's own
 * (every VIP and SNAT address) and those of the interface's subnets that
 * depend on the host (its addresses, IPv4 network and broadcast addresses,
 * IPv6 subnet-router anycast addresses),
 * kept by the agent, so that a request's source costs one lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipaddr);
	__type(value, __u8);
	__uint(max_entries, 1);
} src_deny SEC(".maps");

/* ct_fwd: (client, echo id) -> (backend, NAT id, client's MAC). An LRU:
 * losing an entry makes a session away from its home open again with
 * another NAT id; a session at its home writes it again (refresh_fwd). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct fwd_key);
	__type(value, struct fwd_val);
	__uint(max_entries, 1);
} ct_fwd SEC(".maps");

/* ct_rev: (backend, NAT id) -> the session holding it, with its requests
 * awaiting replies. A plain hash, not an LRU, for the inflight map's
 * reason: evicting a session would forget its requests in flight, turning
 * the balancer's shortage into a backend's loss, and free its NAT id for
 * another client while replies are on the way. When full, new sessions are
 * refused (nat_exhausted) and running ones go on; the sweeper frees the
 * sessions idle for the NAT idle time. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct rev_key);
	__type(value, struct rev_val);
	__uint(max_entries, 1);
} ct_rev SEC(".maps");

/* Map values built per CPU: on the stack they would not fit beside the
 * request path's (the verifier's 512 bytes cover a chain of calls). */
struct scratch {
	struct rev_val rev;
	struct fwd_val fwd;
	struct inflight_val inflight;
};

/* scratch: [0] -> this CPU's struct scratch. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct scratch);
	__uint(max_entries, 1);
} scratch SEC(".maps");

/* nat_pools: backend index -> key and counter of its NAT id permutation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nat_pool);
	__uint(max_entries, 1);
} nat_pools SEC(".maps");

/* stats: enum reason -> packets, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, enum reason);
	__type(value, __u64);
	__uint(max_entries, REASON_MAX);
} stats SEC(".maps");

/* svc_stats: struct service's table * REASON_MAX + enum reason -> its
 * requests, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} svc_stats SEC(".maps");

/* backend_stats: backend index -> counters, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct backend_counters);
	__uint(max_entries, 1);
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
	__uint(max_entries, 1);
} inflight SEC(".maps");

/* rtt_hist: backend index * RTT_BUCKETS + bucket -> replies, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} rtt_hist SEC(".maps");

/* epochs: backend index * EPOCHS + epoch % EPOCHS -> requests sent and
 * answered in that epoch, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct epoch_count);
	__uint(max_entries, 1);
} epochs SEC(".maps");

/* events: sampled exchanges (struct trace_event) for the trace pipeline. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1);
} events SEC(".maps");

/* trace_dropped: [0] -> trace events lost to a full ring buffer, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} trace_dropped SEC(".maps");

/* slot_sessions: backend index -> live sessions, counted by each sweep. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} slot_sessions SEC(".maps");

/* loss_ledger: backend index -> lost requests as the agent settled them. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct loss_state);
	__uint(max_entries, 1);
} loss_ledger SEC(".maps");

/* layout_id: [0] -> fingerprint of the maps' layout, written by the agent that
 * created them: a later agent taking the pinned maps over compares it with
 * its own before it touches them. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} layout_id SEC(".maps");

/* conntrack_entries: [0] -> ct_fwd entries, [1] -> ct_rev entries, [2] ->
 * inflight entries, filled by conntrack_count. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __s64);
	__uint(max_entries, 3);
} conntrack_entries SEC(".maps");
