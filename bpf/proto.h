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
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88a8
#define IPPROTO_ICMP 1
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4 /* code of ICMP_DEST_UNREACH */
#define ICMP_TIME_EXCEEDED 11
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

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return *(__u32 *)a == *(__u32 *)b && *(__u16 *)(a + 4) == *(__u16 *)(b + 4);
}
