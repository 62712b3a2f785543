// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/* Full NAT: allocation of NAT ids per backend and the rewrite of a frame's
 * MACs, addresses and echo identifier. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"
#include "csum.h"
#include "maps.h"
#include "measure.h"
#include "parse.h"
#include "proto.h"

#define NAT_ID_TRIES 8

/* Replaces an IPv4 header's addresses, its checksum updated to match. */
static __always_inline void rewrite_addrs(struct iphdr *ip, __be32 saddr, __be32 daddr)
{
	__u32 sum = (__u16)~ip->check;

	sum = csum_add32(sum, ip->saddr, saddr);
	sum = csum_add32(sum, ip->daddr, daddr);
	ip->check = ~csum_fold(sum);
	ip->saddr = saddr;
	ip->daddr = daddr;
}

/* Replaces an echo message's identifier. ICMPv4 has no pseudo-header: only
 * the identifier touches its checksum. */
static __always_inline void rewrite_echo_id(struct icmp_echo *icmp, __be16 echo_id)
{
	__u32 sum = (__u16)~icmp->checksum;

	sum = csum_add16(sum, icmp->id, echo_id);
	icmp->checksum = ~csum_fold(sum);
	icmp->id = echo_id;
}

/* Sends the frame back out to dst_mac, from the MAC it came to. */
static __always_inline void rewrite_macs(struct ethhdr *eth, const __u8 *dst_mac)
{
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, dst_mac, ETH_ALEN);
}

/* Replaces an IPv6 header's addresses and an echo message's identifier.
 * ICMPv6's checksum covers the addresses through its pseudo-header. */
static __always_inline void rewrite6(struct ipv6hdr *ip6, struct icmp_echo *icmp, const struct ipaddr *saddr,
				     const struct ipaddr *daddr, __be16 echo_id)
{
	__u32 sum = (__u16)~icmp->checksum;

	sum = csum_add128(sum, ip6->saddr, saddr->w);
	sum = csum_add128(sum, ip6->daddr, daddr->w);
	sum = csum_add16(sum, icmp->id, echo_id);
	icmp->checksum = ~csum_fold(sum);
	icmp->id = echo_id;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		ip6->saddr[i] = saddr->w[i];
		ip6->daddr[i] = daddr->w[i];
	}
}

/* Sends an echo on from saddr to daddr with echo_id, to dst_mac, every
 * checksum updated. */
static __always_inline void rewrite(struct icmp_pkt *p, const __u8 *dst_mac, const struct ipaddr *saddr,
				    const struct ipaddr *daddr, __be16 echo_id)
{
	rewrite_macs(p->eth, dst_mac);
	if (p->ip6) {
		rewrite6(p->ip6, p->icmp, saddr, daddr, echo_id);
		return;
	}
	if (p->ip) {
		rewrite_addrs(p->ip, saddr->w[3], daddr->w[3]);
		rewrite_echo_id(p->icmp, echo_id);
	}
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

/* What nat_home returns when a session has no home NAT id. */
#define NO_HOME 0xffffffffU

/* A session's home NAT id at a backend, from the session's hash h (the
 * one Maglev picks its backend by), its VIP and the pool's salt: what
 * nat_alloc tries first, so that a request finds its session at (backend,
 * home id) with no lookup of ct_fwd. The salt goes in before the 15 bits
 * are taken, through a bijective mix, so that which sessions share a home
 * depends on the pool's secret: sessions crafted to share a victim's home
 * cannot be chosen offline. Through the pool's keyed permutation, so that
 * the id is no more predictable than the counted ones. Never
 * PROBE_ECHO_ID: a session whose home would be that one has none. */
static __always_inline __u32 nat_home(const struct nat_pool *pool, const struct ipaddr *vip, __u32 h)
{
	__u32 x = h ^ vip->w[0] ^ vip->w[1] ^ vip->w[2] ^ vip->w[3] ^ pool->salt;
	__u16 id;

	/* murmur3 fmix32 */
	x ^= x >> 16;
	x *= 0x85ebca6bU;
	x ^= x >> 13;
	x *= 0xc2b2ae35U;
	x ^= x >> 16;
	id = nat_permute(pool, (__u16)x & (NAT_HOMES - 1));
	return id == PROBE_ECHO_ID ? NO_HOME : id;
}

/* Ends the session that holds NAT id rk (rv): its ct_fwd entry goes, if it
 * still points there (a session that moved points elsewhere). Called
 * wherever a ct_rev entry stops being its session's, so that a session's
 * ct_fwd entry lives exactly while its ct_rev entry does, without a walk
 * of ct_fwd. */
static __always_inline void drop_session(const struct rev_key *rk, const struct rev_val *rv)
{
	struct fwd_key fk = { .client = rv->client, .vip = rv->vip, .echo_id = rv->echo_id };
	struct fwd_val *fv = bpf_map_lookup_elem(&ct_fwd, &fk);

	if (fv && addr_eq(&fv->backend, &rk->backend) && fv->nat_id == rk->nat_id)
		bpf_map_delete_elem(&ct_fwd, &fk);
}

/* What nat_alloc did. */
enum nat_alloc_result {
	NAT_NONE,	  /* no id: none of those tried is free, or the map is full */
	NAT_NEW,	  /* a new entry at rk */
	NAT_ADOPTED,	  /* the session's own live entry at its home, opened by another CPU meanwhile */
	NAT_MAC_MISMATCH, /* that entry is the session's, opened from another MAC */
};

/* Whether ct_rev entry rv is the live (not retired) entry of the session
 * of client, vip and echo_id. */
static __always_inline int rev_is(const struct rev_val *rv, const struct ipaddr *client, const struct ipaddr *vip,
				  __be16 echo_id)
{
	return addr_eq(&rv->client, client) && rv->echo_id == echo_id && addr_eq(&rv->vip, vip) &&
	       !(rv->flags & REV_F_RETIRED);
}

/* Tries the session rv's home NAT id at backend idx (rk's backend).
 *
 * A home is only ever inserted where none is, never taken over from an
 * idle session as counted ids are: two CPUs may compute the same home at
 * once (the same session's first requests, or two sessions sharing it),
 * and an overwrite by one would let a reply of the other's session reach
 * the wrong client. An idle session's home frees when the sweeper ends it.
 * When the insert fails because another CPU just opened this very
 * session there, the session adopts that entry instead of taking a second
 * id, unless it came from another MAC (the first one owns it). */
static __always_inline enum nat_alloc_result nat_take_home(__u32 idx, struct rev_key *rk, const struct rev_val *rv,
							   __u32 home)
{
	struct rev_val *old;
	long err;

	rk->nat_id = bpf_htons(home);
	err = bpf_map_update_elem(&ct_rev, rk, rv, BPF_NOEXIST);
	if (err == 0)
		return NAT_NEW;
	if (err == -7 /* E2BIG */)
		return NAT_NONE;
	old = bpf_map_lookup_elem(&ct_rev, rk);
	if (!old || !rev_is(old, &rv->client, &rv->vip, rv->echo_id) || old->backend_idx != idx)
		return NAT_NONE;
	return mac_eq(old->client_mac, rv->client_mac) ? NAT_ADOPTED : NAT_MAC_MISMATCH;
}

/* Gives the session rv a NAT id no live session holds at backend idx (rk's
 * backend): its home (nat_home, unless NO_HOME) when free, else the first
 * free of NAT_ID_TRIES counted ids. A counted id whose session is idle is
 * taken over, by one CPU at a time. */
static __always_inline enum nat_alloc_result nat_alloc(__u32 idx, struct rev_key *rk, struct rev_val *rv, __u64 now,
						       __u32 home)
{
	struct nat_pool *pool = bpf_map_lookup_elem(&nat_pools, &idx);

	if (!pool)
		return NAT_NONE;
	if (home != NO_HOME) {
		enum nat_alloc_result r = nat_take_home(idx, rk, rv, home);

		if (r != NAT_NONE)
			return r;
	}
#pragma unroll
	for (int i = 0; i < NAT_ID_TRIES; i++) {
		__u16 cand = nat_permute(pool, NAT_HOMES | (__sync_fetch_and_add(&pool->next, 1) & (NAT_HOMES - 1)));
		struct rev_val *old;
		long err;

		if (cand == PROBE_ECHO_ID)
			continue;
		rk->nat_id = bpf_htons(cand);
		old = bpf_map_lookup_elem(&ct_rev, rk);
		/* Another CPU may have stamped the entry after our `now`: compare
		 * by addition, since now - last_seen would wrap around. An id
		 * whose holder still awaits a reply is not free either, whatever
		 * the idle time: the reply would be taken for the new session's. */
		if (old) {
			__u64 seen = old->last_seen_ns;

			if (seen + cfg_nat_idle_ns > now || ring_awaited(old, now))
				continue;
			/* Claimed by one CPU only: another pool of the same
			 * backend address (the host serves another VIP) counts
			 * over the same ids, so two CPUs may hold this one at
			 * once, and two overwrites would let one session's reply
			 * reach the other's client. The claim stamps the entry,
			 * so the loser sees it live. */
			if (__sync_val_compare_and_swap(&old->last_seen_ns, seen, now) != seen)
				continue;
			if (!(old->flags & REV_F_RETIRED))
				drop_session(rk, old);
		}
		/* An id free when looked up may be taken before the update (by
		 * another pool of the address, or this one's counter after a
		 * wrap): it is not overwritten. */
		err = bpf_map_update_elem(&ct_rev, rk, rv, old ? BPF_ANY : BPF_NOEXIST);
		if (err == 0)
			return NAT_NEW;
		/* The sessions map is full: no other id has room either. */
		if (err == -7 /* E2BIG */)
			return NAT_NONE;
	}
	return NAT_NONE;
}
