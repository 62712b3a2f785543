// SPDX-License-Identifier: MIT

package balancer

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

func deniedList(prefixes ...string) []string {
	var ps []netip.Prefix
	for _, p := range prefixes {
		ps = append(ps, netip.MustParsePrefix(p))
	}
	var list []string
	for a := range deniedSources(ps) {
		list = append(list, a.String())
	}
	slices.Sort(list)
	return list
}

func TestDeniedSources(t *testing.T) {
	got := deniedList("10.0.0.100/24", "192.168.7.9/30", "172.16.0.1/31")
	want := []string{"10.0.0.0", "10.0.0.100", "10.0.0.255", "172.16.0.1", "192.168.7.11", "192.168.7.8", "192.168.7.9"}
	if !slices.Equal(got, want) {
		t.Errorf("denied %v, want %v", got, want)
	}
}

// An IPv6 subnet has no broadcast address: its own address and the
// subnet-router anycast address are denied, the latter only where the
// prefix has one (not /127, RFC 6164, nor /128). Nothing is denied in
// another family's place.
func TestDeniedSourcesIPv6(t *testing.T) {
	got := deniedList("fd00:1cb::10/64", "fd00:1cb::100/128", "2001:db8:7::3/127", "2001:db8:8::5/126", "fe80::10/64", "10.0.1.1/32")
	want := []string{"10.0.1.1", "2001:db8:7::3", "2001:db8:8::4", "2001:db8:8::5", "fd00:1cb::", "fd00:1cb::10", "fd00:1cb::100", "fe80::", "fe80::10"}
	if !slices.Equal(got, want) {
		t.Errorf("denied %v, want %v", got, want)
	}
}

// ifacePrefixes reads both families off the seed balancer's eth0, each
// with its own prefix length (an IPv4 mask read in 16 bytes is not /120).
func TestIfacePrefixesBothFamilies(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	var got []netip.Prefix
	err := topo.InNS(topology.SeedBalancer, func() error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		got, err = ifacePrefixes(iface.Index)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []netip.Prefix{
		netip.PrefixFrom(topology.SeedLB, 24), netip.PrefixFrom(topology.SeedVIP, 32),
		netip.PrefixFrom(topology.SeedLB6, 64), netip.PrefixFrom(topology.SeedVIP6, 128),
	} {
		if !slices.Contains(got, want) {
			t.Errorf("prefixes of eth0 %v lack %s", got, want)
		}
	}
	if !slices.ContainsFunc(got, func(p netip.Prefix) bool { return p.Addr().IsLinkLocalUnicast() && p.Bits() == 64 }) {
		t.Errorf("prefixes of eth0 %v lack its link-local fe80::/64 address", got)
	}
}
