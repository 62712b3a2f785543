// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/* Wire formats: the few protocol headers the program reads and writes, as
 * its own structs: the kernel's <linux/icmp.h> drags in glibc socket headers
 * that do not build for the BPF target, and include/ vendors only what the
 * build needs. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define ETH_ALEN 6
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88a8
#define IPPROTO_ICMP 1
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4 /* code of ICMP_DEST_UNREACH */
#define ICMP_TIME_EXCEEDED 11
#define IPPROTO_ICMPV6 58
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
/* Next headers that are IPv6 extension headers (RFC 8200 4, RFC 7045). */
#define IPV6_NH_HOPOPTS 0
#define IPV6_NH_ROUTING 43
#define IPV6_NH_FRAGMENT 44
#define IPV6_NH_ESP 50
#define IPV6_NH_AH 51
#define IPV6_NH_DSTOPTS 60
#define IPV6_NH_MOBILITY 135
#define IPV6_NH_HIP 139
#define IPV6_NH_SHIM6 140
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct ethhdr {
	__u8 h_dest[ETH_ALEN];
	__u8 h_source[ETH_ALEN];
	__be16 h_proto;
} __attribute__((packed));

struct iphdr {
	__u8 ihl : 4, version : 4;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ipv6hdr {
	__u8 priority : 4, version : 4;
	__u8 flow_lbl[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__be32 saddr[4];
	__be32 daddr[4];
};

/* The echo header of ICMPv4 (RFC 792) and ICMPv6 (RFC 4443): the same
 * layout, and for errors the same 8-byte header before the quote. */
struct icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 seq;
};

/* What an ICMP error (RFC 792) carries after its 8-byte header: the header
 * of the datagram it is about and at least the first 8 bytes of its
 * payload, here those of an echo request. */
struct icmp_quote {
	struct iphdr ip;
	struct icmp_echo icmp;
};

/* The same for ICMPv6 (RFC 4443 3): as much of the packet as fits in the
 * minimum MTU, so at least its header and echo header when it has no
 * extension header. */
struct icmp6_quote {
	struct ipv6hdr ip;
	struct icmp_echo icmp;
};

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return *(__u32 *)a == *(__u32 *)b && *(__u16 *)(a + 4) == *(__u16 *)(b + 4);
}
