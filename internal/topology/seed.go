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

// Seed returns the spec of the project's reference network: clients h1 and
// h4, backends h2 and h3, and the balancer lb owning the VIP, all on one
// 10.0.0.0/24 bridge.
func Seed() Spec {
	on := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, SeedNet.Bits()) }
	return Spec{Hosts: []HostSpec{
		{Name: SeedClient, Addr: on(SeedH1)},
		{Name: SeedBackend1, Addr: on(SeedH2)},
		{Name: SeedBackend2, Addr: on(SeedH3)},
		{Name: SeedClient2, Addr: on(SeedH4)},
		{Name: SeedBalancer, Addr: on(SeedLB), Extra: []netip.Prefix{netip.PrefixFrom(SeedVIP, 32)}},
	}}
}
