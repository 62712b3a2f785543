// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/* The ABI shared with Go: map keys and values, the trace event, and the
 * enums whose values Go uses. bpf2go generates a Go declaration for each
 * type named with -type in gen.go, so Go never restates a constant. */
#pragma once

#include <linux/types.h>

#include "proto.h"

/* Why a packet got its verdict; index into the stats map. Go names each one. */
enum reason {
	REASON_REQUEST_FORWARDED = 0,
	REASON_REPLY_RETURNED,
	REASON_NOT_IP,               /* neither IPv4 nor IPv6 (ARP, LLDP, ...) */
	REASON_NOT_ICMP,
	REASON_NOT_ECHO,
	REASON_NOT_VIP,
	REASON_FRAGMENT,
	REASON_IP_OPTIONS,           /* IPv4 options, IPv6 extension headers */
	REASON_MALFORMED,
	REASON_CONNTRACK_MISS,
	REASON_NEIGH_UNRESOLVED,
	REASON_NAT_EXHAUSTED,
	REASON_NO_BACKEND,
	REASON_NOT_UNICAST,
	REASON_VLAN,                 /* tagged in the frame: not ours to balance */
	REASON_BOGUS_SOURCE,         /* request from an address no client can have */
	REASON_TTL_ZERO,
	REASON_SESSION_MAC_MISMATCH, /* a session's request from another MAC: dropped */
	REASON_REPLY_SPOOFED,        /* backend's address, not its next-hop MAC */
	REASON_REPLY_MISMATCH,       /* right id and seq, not the request's data */
	REASON_NAT_COLLISION,        /* NAT id and seq still awaited by another session */
	REASON_INFLIGHT_FULL,        /* no room to remember the request: dropped */
	REASON_PROBE_REPLY,          /* a reply to the agent's own probe: the kernel's */
	REASON_ALL_DOWN,             /* no healthy backend, service set to pass */
	REASON_ERROR_RETURNED,       /* an ICMP error about a forwarded request, sent to its client */
	REASON_ERROR_UNMATCHED,      /* an error quoting a request of ours that is not awaited */
	REASON_ERROR_FOREIGN,        /* an error to a SNAT address quoting something we never send */
	REASON_ERROR_TRUNCATED,      /* an error whose quote is too short to tell what it is about */
	REASON_MAX,
};

/* Sizes shared with Go.
 *
 * RTT histogram: bucket k counts RTTs in (bound[k-1], bound[k]] ns where
 * bound[k] = floor(1e9 * 2^((k - RTT_BUCKET_OFFSET) / 8)), so bucket k is
 * bucket k - RTT_BUCKET_OFFSET of a Prometheus native histogram of seconds
 * with schema 3. Bucket 0 is the zero bucket, [0, bound[0]].
 *
 * Requests are counted in epochs of 2^EPOCH_SHIFT ns (about 1.07 s) so that
 * userspace can count the lost ones once an epoch's loss timeout has passed,
 * with a ring of EPOCHS slots per backend instead of a scan of all requests.
 *
 * The ICMP checksum is verified for messages of up to ICMP_MAX_LEN bytes
 * (jumbo frames); longer ones are malformed to the program. */
enum layout {
	RTT_BUCKETS = 256,
	RTT_BUCKET_OFFSET = 160,
	RTT_SCHEMA = 3,
	EPOCH_SHIFT = 30,
	EPOCHS = 32,
	ICMP_MAX_LEN = 9000,
	/* The echo identifier of the agent's probes: never a NAT id, so that
	 * a probe's reply is never taken for a session's, nor the reverse. */
	PROBE_ECHO_ID = 0xfffe,
	/* Requests of a session awaiting replies in its ct_rev entry, slot
	 * seq % INFLIGHT_RING (a power of two). */
	INFLIGHT_RING = 4,
	/* Permuted values below it are homes of sessions, the others the
	 * counter's (see struct nat_pool). */
	NAT_HOMES = 0x8000,
	/* A session found at its home looks up its ct_fwd entry once every
	 * FWD_REFRESH units of 2^FWD_REFRESH_SHIFT ns (about a second), see
	 * rev_val's fwd_ref. */
	FWD_REFRESH_SHIFT = 24,
	FWD_REFRESH = 64,
};

/* The ICMP errors translated back to the client whose request they are
 * about, ICMPv4 and ICMPv6; index into struct backend_counters' errors. */
enum icmp_error {
	ICMP_ERROR_UNREACHABLE = 0,    /* destination unreachable, but for fragmentation needed */
	ICMP_ERROR_PACKET_TOO_BIG = 1, /* fragmentation needed (RFC 1191), packet too big (RFC 4443) */
	ICMP_ERROR_TIME_EXCEEDED = 2,  /* TTL or hop limit exceeded in transit, or reassembly time */
	ICMP_ERRORS = 3,
};

/* An address of either family: IPv6, or IPv4 mapped into IPv6
 * (::ffff:a.b.c.d, RFC 4291 2.5.5.2), as Go's netip.Addr.As16 writes it. In
 * network byte order, like the packet's. */
struct ipaddr {
	__be32 w[4];
};

/* struct backend's flags. The fixed underlying type (a clang extension in C
 * before C23) keeps the field two bytes wide and gives Go a typed field. */
enum backend_flags : __u16 {
	BACKEND_F_ACTIVE = 0x1,  /* slot holds a backend */
	BACKEND_F_NEIGH = 0x2,   /* mac is the resolved next hop */
	BACKEND_F_HEALTHY = 0x4, /* not ejected, probes pass (or the service fails open) */
	BACKEND_F_UP = BACKEND_F_ACTIVE | BACKEND_F_NEIGH | BACKEND_F_HEALTHY,
};

/* backends[idx]: what the data plane needs to send to one backend of one
 * service. A backend of several services has a slot per service, so that
 * each service's counters are its own. */
struct backend {
	struct ipaddr addr;
	__u8 mac[ETH_ALEN];
	enum backend_flags flags;
	struct ipaddr vip; /* the service's: a session stays only on its own service's slot */
};

/* struct service's flags. */
enum service_flags : __u32 {
	/* No backend is healthy and the service is set to pass: its requests
	 * go to the kernel. */
	SERVICE_F_PASS = 0x1,
};

/* services[vip]: one balanced service, of one family: its VIP, SNAT
 * address and backends are all IPv4 or all IPv6. */
struct service {
	struct ipaddr snat; /* source address of its requests towards backends */
	__u32 table;        /* its Maglev table: index into maglev_tables */
	enum service_flags flags;
};

/* ct_fwd key: one client's ping session to one VIP. */
struct fwd_key {
	struct ipaddr client;
	struct ipaddr vip;
	__be16 echo_id;
	__u16 pad;
};

/* ct_fwd value: where that session goes, and the MAC that opened it: only
 * that MAC may send the session's requests, and its replies go back to it.
 * Looked up for sessions away from their home NAT id and new ones (see
 * handle_request), by a session at its home once every FWD_REFRESH, and by
 * the end of a session (drop_session). */
struct fwd_val {
	struct ipaddr backend;
	__u32 backend_idx;
	__be16 nat_id;
	__u8 client_mac[ETH_ALEN];
};

/* ct_rev key: what a backend's reply carries (source address, echo id). */
struct rev_key {
	struct ipaddr backend;
	__be16 nat_id;
	__u16 pad;
};

/* rev_val's flags. */
enum rev_flags : __u8 {
	/* The session moved to another backend, or went idle with requests
	 * still awaited: the entry only waits for the replies of its ring,
	 * then the sweeper frees it. */
	REV_F_RETIRED = 0x1,
};

/* ct_rev value: which session holds a NAT id, since when it is idle, and
 * its requests awaiting replies. A request and its reply then touch no map
 * but the session's: request seq waits in slot seq % INFLIGHT_RING of the
 * ring; those that do not fit (more than INFLIGHT_RING at once, two
 * sequences a multiple of it apart, or sent from another SNAT address
 * than the ring's while the ring awaits replies) go to the inflight map.
 *
 * Every field is read by both a request and a reply, so its size is what a
 * packet of a session out of the cache pays for: the ring is three arrays,
 * not an array of padded slots, and an entry of the map (the kernel's
 * 48-byte header, the key and this value) is 192 bytes, three whole cache
 * lines (checked by bpf/spec_test.go). */
struct rev_val {
	struct ipaddr client;
	struct ipaddr vip;  /* replies leave from it */
	struct ipaddr snat; /* the ring's requests went from it: their replies come back to it */
	__be16 echo_id;
	__u8 client_mac[ETH_ALEN]; /* replies go back to it */
	__u32 backend_idx;
	enum rev_flags flags;
	__u8 sampled; /* bit i: slot i's exchange is traced */
	/* When the session last looked up its ct_fwd entry, in units of
	 * 2^FWD_REFRESH_SHIFT ns, wrapping. A session found at its home needs
	 * none, but that entry is what finds it once Maglev picks another
	 * backend, and an LRU entry never looked up is the first evicted. */
	__u16 fwd_ref;
	__u64 last_seen_ns;
	/* The ring: when slot i's request was sent (0: free; a reply takes
	 * it back), its sequence, and what its reply's ICMP checksum must be. */
	__u64 sent_ns[INFLIGHT_RING];
	__be16 seq[INFLIGHT_RING];
	__sum16 reply_csum[INFLIGHT_RING];
};

/* nat_pools[idx]: the NAT ids of one backend are a keyed permutation of
 * 16-bit values, so an observer of some ids cannot predict others. Half
 * are homes (values below NAT_HOMES): a session's home is a keyed hash of
 * the session (see nat_home). The other half are counted out by next, for
 * sessions whose home is taken: the two never collide. */
struct nat_pool {
	__u32 key[4];
	__u32 next;
	__u32 salt; /* mixed into every home of the pool */
};

/* backend_stats[idx], per CPU. */
struct backend_counters {
	__u64 requests;
	__u64 request_bytes;
	__u64 replies;
	__u64 reply_bytes;
	__u64 rtt_sum_ns;   /* of the replies in the RTT histogram */
	__u64 late;         /* replies matched after the loss timeout */
	__u64 unmatched;    /* replies without an in-flight request */
	__u64 moved;        /* running sessions moved off it: it left the pool */
	/* Requests answered by an ICMP error instead of a reply, by enum
	 * icmp_error: neither replies (no RTT) nor lost. */
	__u64 errors[ICMP_ERRORS];
};


/* epochs[idx * EPOCHS + epoch % EPOCHS], per CPU. */
struct epoch_count {
	__u64 epoch;
	__u64 sent;
	__u64 answered; /* replies within the loss timeout */
};

/* loss_ledger[idx]: the agent's count of backend slot idx's lost requests,
 * kept in a map only so that a restarted agent carries it on. */
struct loss_state {
	__u64 lost;
	__u64 next_epoch; /* first epoch not settled */
};

/* inflight key: one request on its way to a backend. */
struct inflight_key {
	struct ipaddr backend;
	__be16 nat_id;
	__be16 seq;
};

/* inflight value: everything a reply needs, so that a reply is returned
 * only to the client whose request it answers, whatever happened to the
 * session meanwhile (evicted, idle, NAT id reused). */
struct inflight_val {
	__u64 sent_ns;
	__u32 backend_idx;
	struct ipaddr client;
	__be16 echo_id;
	__sum16 reply_csum; /* what the reply's ICMP checksum must be */
	__u8 client_mac[ETH_ALEN];
	__u16 sampled;
	struct ipaddr vip;  /* the reply leaves from it */
	struct ipaddr snat; /* the reply must come back to it */
};

/* The sweep program's argument: which maps to sweep. */
enum sweep_what : __u32 {
	SWEEP_INFLIGHT = 0x1, /* requests past twice the loss timeout */
	SWEEP_SESSIONS = 0x2, /* sessions idle past the NAT idle time, and their counts */
};

struct sweep_args {
	enum sweep_what what;
};

enum trace_kind {
	TRACE_REQUEST = 1,
	TRACE_REPLY = 2,
	TRACE_ERROR = 3, /* an ICMP error answered the request */
};

/* A sampled exchange, sent to userspace through the events ring buffer. */
struct trace_event {
	__u64 sent_ns;  /* bpf_ktime_get_ns() when the request was forwarded */
	__u64 rtt_ns;   /* TRACE_REPLY, TRACE_ERROR: when the answer came, after sent_ns */
	struct ipaddr client;
	struct ipaddr backend;
	__be16 echo_id; /* the client's */
	__be16 seq;
	__u32 backend_idx;
	enum trace_kind kind;
	__u32 late;     /* TRACE_REPLY or TRACE_ERROR after the loss timeout */
	enum icmp_error error; /* TRACE_ERROR only */
	__u32 pad;
};
