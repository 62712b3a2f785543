// SPDX-License-Identifier: MIT

package topology

import "net/netip"

// Logical host names of the seed topology.
const (
	SeedClient   = "h1" // the client
	SeedBackend1 = "h2" // first backend
	SeedBackend2 = "h3" // second backend
	SeedClient2  = "h4" // a second client, to tell clients apart
	SeedBalancer = "lb" // the balancer host, owner of the VIP
)

// Addresses of the seed topology.
var (
	SeedNet = netip.MustParsePrefix("10.0.0.0/24")
	SeedH1  = netip.MustParseAddr("10.0.0.1")
	SeedH2  = netip.MustParseAddr("10.0.0.2")
	SeedH3  = netip.MustParseAddr("10.0.0.3")
	SeedH4  = netip.MustParseAddr("10.0.0.4")
	SeedLB  = netip.MustParseAddr("10.0.0.10")
	// SeedVIP is on the balancer's eth0 as a /32 so the balancer host
	// answers ARP for it and clients reach it without any routing.
	SeedVIP = netip.MustParseAddr("10.0.0.100")
)

// IPv6 addresses of the seed topology: the same hosts on a unique local
// prefix, each with the IPv4 address's last byte as its interface id (lb
// ::10, VIP ::100 are written alike). The hosts are named SeedH1v6 and so
// on, since SeedH16 would read as host 16.
var (
	SeedNet6 = netip.MustParsePrefix("fd00:1cb::/64")
	SeedH1v6 = netip.MustParseAddr("fd00:1cb::1")
	SeedH2v6 = netip.MustParseAddr("fd00:1cb::2")
	SeedH3v6 = netip.MustParseAddr("fd00:1cb::3")
	SeedH4v6 = netip.MustParseAddr("fd00:1cb::4")
	SeedLB6  = netip.MustParseAddr("fd00:1cb::10")
	// SeedVIP6 is on the balancer's eth0 as a /128 so the balancer host
	// answers neighbour solicitations for it, as for SeedVIP.
	SeedVIP6 = netip.MustParseAddr("fd00:1cb::100")
)

// Seed returns the spec of the project's reference network: clients h1 and
// h4, backends h2 and h3, and the balancer lb owning the VIPs, all on one
// bridge, dual stack: 10.0.0.0/24 and fd00:1cb::/64.
func Seed() Spec {
	on := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, SeedNet.Bits()) }
	on6 := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, SeedNet6.Bits()) }
	return Spec{Hosts: []HostSpec{
		{Name: SeedClient, Addr: on(SeedH1), Addr6: on6(SeedH1v6)},
		{Name: SeedBackend1, Addr: on(SeedH2), Addr6: on6(SeedH2v6)},
		{Name: SeedBackend2, Addr: on(SeedH3), Addr6: on6(SeedH3v6)},
		{Name: SeedClient2, Addr: on(SeedH4), Addr6: on6(SeedH4v6)},
		{Name: SeedBalancer, Addr: on(SeedLB), Addr6: on6(SeedLB6),
			Extra: []netip.Prefix{netip.PrefixFrom(SeedVIP, 32), netip.PrefixFrom(SeedVIP6, 128)}},
	}}
}
