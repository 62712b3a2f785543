// SPDX-License-Identifier: MIT

package balancer

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

func TestNeighFamily(t *testing.T) {
	for a, want := range map[string]int{
		"10.0.0.2": netlink.FAMILY_V4, "::ffff:10.0.0.2": netlink.FAMILY_V4,
		"fd00:1cb::2": netlink.FAMILY_V6, "fe80::1": netlink.FAMILY_V6,
	} {
		if got := neighFamily(netip.MustParseAddr(a)); got != want {
			t.Errorf("%s resolved in family %d, want %d", a, got, want)
		}
	}
}

// TestNeighboursBothFamilies solicits backend h2's IPv4 and IPv6 addresses
// from the balancer's eth0 (ARP and NDP) and finds both, with h2's MAC, in
// one listing of the interface's neighbours.
func TestNeighboursBothFamilies(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	want := topo.Host(topology.SeedBackend1).MAC
	err := topo.InNS(topology.SeedBalancer, func() error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		addrs := []netip.Addr{topology.SeedH2, topology.SeedH2v6}
		for _, a := range addrs {
			if err := solicitOn(iface.Index, a); err != nil {
				return fmt.Errorf("solicit %s: %w", a, err)
			}
		}
		var byIP map[netip.Addr]netlink.Neigh
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if byIP, err = neighboursOf(iface.Index); err != nil {
				return err
			}
			done := 0
			for _, a := range addrs {
				if n, ok := byIP[a]; ok && n.State&usableNUD != 0 && bytes.Equal(n.HardwareAddr, want) {
					done++
				}
			}
			if done == len(addrs) {
				return nil
			}
		}
		return fmt.Errorf("neighbours of eth0 after soliciting %v: %v; want both at %s", addrs, byIP, want)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRouteNextHops finds a backend's next hop in either family: the
// backend itself on-link, an IPv6 router for an IPv6 route, and an IPv6
// router for an IPv4 route via inet6.
func TestRouteNextHops(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	router := topology.SeedH3v6
	for _, r := range [][]string{
		{"-6", "route", "add", "2001:db8:5::/64", "via", router.String(), "dev", "eth0"},
		{"route", "add", "192.0.2.0/24", "via", "inet6", router.String(), "dev", "eth0"},
	} {
		if out, err := topo.Run(topology.SeedBalancer, "ip", r...); err != nil {
			t.Fatalf("ip %v: %v %s", r, err, out)
		}
	}
	err := topo.InNS(topology.SeedBalancer, func() error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		b := &Balancer{iface: iface}
		for to, want := range map[netip.Addr]netip.Addr{
			topology.SeedH2:                      topology.SeedH2,
			topology.SeedH2v6:                    topology.SeedH2v6,
			netip.MustParseAddr("2001:db8:5::1"): router,
			netip.MustParseAddr("192.0.2.1"):     router,
		} {
			hop, err := b.route(to)
			if err != nil || hop != want {
				t.Errorf("route(%s) = %s, %v; want %s", to, hop, err, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
