// SPDX-License-Identifier: MIT

package balancer

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// seedHost is what the seed balancer knows of itself: eth0 holds
// 10.0.0.10/24 and fd00:1cb::10/64, the VIPs as a /32 and a /128, a /31, a
// /127 and a link-local address.
func seedHost() hostAddrs {
	h := hostAddrs{iface: "eth0", local: map[netip.Addr]bool{}}
	for _, p := range []string{"10.0.0.10/24", "10.0.0.100/32", "10.0.1.0/31",
		"fd00:1cb::10/64", "fd00:1cb::100/128", "fd00:2::/127", "fe80::10/64"} {
		h.subnets = append(h.subnets, netip.MustParsePrefix(p))
		h.local[netip.MustParsePrefix(p).Addr()] = true
	}
	h.local[netip.MustParseAddr("127.0.0.1")], h.local[netip.IPv6Loopback()] = true, true
	return h
}

// seed6 makes c the seed topology's IPv6 service.
func seed6(c *config.Config) {
	c.VIP = topology.SeedVIP6
	c.Backends = []config.Backend{{Addr: topology.SeedH2v6, Weight: 1}, {Addr: topology.SeedH3v6, Weight: 1}}
}

// TestHostCheckAddrs: one line per case; an error or a warning must name
// the address, the setting and the remedy.
func TestHostCheckAddrs(t *testing.T) {
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name    string
		set     func(*config.Config)
		err     []string
		warning []string
	}{
		{"seed", func(c *config.Config) {}, nil, nil},
		{"backend broadcast", func(c *config.Config) { c.Backends[1].Addr = a("10.0.0.255") }, []string{"backend 10.0.0.255 is the broadcast address of 10.0.0.0/24 on eth0 (--backend, ICMPLB_BACKENDS)", "give a host's address"}, nil},
		{"backend network", func(c *config.Config) { c.Backends[1].Addr = a("10.0.0.0") }, []string{"backend 10.0.0.0 is the network address of 10.0.0.0/24"}, nil},
		{"backend is this host", func(c *config.Config) { c.Backends[1].Addr = a("10.0.0.10") }, []string{"backend 10.0.0.10 is an address of this host (--backend, ICMPLB_BACKENDS)"}, nil},
		{"backend on a /31", func(c *config.Config) { c.Backends[1].Addr = a("10.0.1.1") }, nil, nil},
		{"backend off-link", func(c *config.Config) { c.Backends[1].Addr = a("192.0.2.1") }, nil, nil},
		{"VIP broadcast", func(c *config.Config) { c.VIP = a("10.0.0.255") }, []string{"VIP 10.0.0.255 is the broadcast address", "(--vip, ICMPLB_VIP)"}, nil},
		{"SNAT network", func(c *config.Config) { c.SNAT = a("10.0.0.0") }, []string{"SNAT address 10.0.0.0 is the network address", "(--snat, ICMPLB_SNAT)"}, nil},
		{"VIP on-link, not here", func(c *config.Config) { c.VIP = a("10.0.0.200") }, nil, []string{"VIP 10.0.0.200 is in eth0's subnet 10.0.0.0/24 but not an address of this host", "find it by ARP", "ip addr add 10.0.0.200/32 dev eth0"}},
		{"SNAT on-link, not here", func(c *config.Config) { c.SNAT = a("10.0.0.201") }, nil, []string{"SNAT address 10.0.0.201", "backends' replies", "ip addr add 10.0.0.201/32 dev eth0"}},
		{"VIP routed here", func(c *config.Config) { c.VIP = a("192.0.2.100") }, nil, nil},

		{"IPv6 seed", seed6, nil, nil},
		{"backend subnet-router anycast", func(c *config.Config) { seed6(c); c.Backends[1].Addr = a("fd00:1cb::") },
			[]string{"backend fd00:1cb:: is the subnet-router anycast address of fd00:1cb::/64 on eth0 (--backend, ICMPLB_BACKENDS)", "give a host's address"}, nil},
		{"backend IPv6 is this host", func(c *config.Config) { seed6(c); c.Backends[1].Addr = a("fd00:1cb::10") },
			[]string{"backend fd00:1cb::10 is an address of this host"}, nil},
		{"backend on a /127", func(c *config.Config) { seed6(c); c.Backends[1].Addr = a("fd00:2::1") }, nil, nil},
		{"backend IPv6 off-link", func(c *config.Config) { seed6(c); c.Backends[1].Addr = a("2001:db8::1") }, nil, nil},
		{"SNAT subnet-router anycast", func(c *config.Config) { seed6(c); c.SNAT = a("fd00:1cb::") },
			[]string{"SNAT address fd00:1cb:: is the subnet-router anycast address", "(--snat, ICMPLB_SNAT)"}, nil},
		{"VIP IPv6 on-link, not here", func(c *config.Config) { seed6(c); c.VIP = a("fd00:1cb::200") }, nil,
			[]string{"VIP fd00:1cb::200 is in eth0's subnet fd00:1cb::/64 but not an address of this host", "find it by NDP", "ip addr add fd00:1cb::200/128 dev eth0"}},
		{"VIP IPv6 routed here", func(c *config.Config) { seed6(c); c.VIP = a("2001:db8::100") }, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := seedConfig()
			tc.set(&c)
			warnings, err := checkAddrs(c, seedHost())
			if (err != nil) != (tc.err != nil) {
				t.Fatalf("error %v, want one with %q", err, tc.err)
			}
			for _, w := range tc.err {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if len(warnings) != min(1, len(tc.warning)) {
				t.Fatalf("warnings %q, want one with %q", warnings, tc.warning)
			}
			for _, w := range tc.warning {
				if !strings.Contains(warnings[0], w) {
					t.Errorf("warning %q does not contain %q", warnings[0], w)
				}
			}
		})
	}
}

// TestHostCheckInNamespace runs the check on the seed balancer's real
// interface: the addresses come from the kernel.
func TestHostCheckInNamespace(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	check := func(set func(*config.Config)) (string, error) {
		c := seedConfig()
		set(&c)
		var log bytes.Buffer
		err := topo.InNS(topology.SeedBalancer, func() error {
			iface, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			return checkHost(c, iface, slog.New(slog.NewTextHandler(&log, nil)))
		})
		return log.String(), err
	}
	if log, err := check(func(*config.Config) {}); err != nil || log != "" {
		t.Errorf("seed configuration: error %v, log %q", err, log)
	}
	if _, err := check(func(c *config.Config) { c.Backends[1].Addr = netip.MustParseAddr("10.0.0.255") }); err == nil ||
		!strings.Contains(err.Error(), "broadcast address of 10.0.0.0/24 on eth0") {
		t.Errorf("broadcast backend: error %v", err)
	}
	if _, err := check(func(c *config.Config) { c.Backends[1].Addr = topology.SeedLB }); err == nil ||
		!strings.Contains(err.Error(), "address of this host") {
		t.Errorf("the balancer as backend: error %v", err)
	}
	if log, err := check(func(c *config.Config) { c.VIP = netip.MustParseAddr("10.0.0.200") }); err != nil ||
		!strings.Contains(log, "level=WARN") || !strings.Contains(log, "ip addr add 10.0.0.200/32 dev eth0") {
		t.Errorf("VIP not on the balancer: error %v, log %q", err, log)
	}
	if log, err := check(seed6); err != nil || log != "" {
		t.Errorf("IPv6 seed configuration: error %v, log %q", err, log)
	}
	if _, err := check(func(c *config.Config) { seed6(c); c.Backends[1].Addr = topology.SeedNet6.Addr() }); err == nil ||
		!strings.Contains(err.Error(), "subnet-router anycast address of "+topology.SeedNet6.String()+" on eth0") {
		t.Errorf("subnet-router anycast backend: error %v", err)
	}
	if _, err := check(func(c *config.Config) { seed6(c); c.Backends[1].Addr = topology.SeedLB6 }); err == nil ||
		!strings.Contains(err.Error(), "address of this host") {
		t.Errorf("the balancer's IPv6 address as backend: error %v", err)
	}
	if log, err := check(func(c *config.Config) { seed6(c); c.VIP = netip.MustParseAddr("fd00:1cb::200") }); err != nil ||
		!strings.Contains(log, "level=WARN") || !strings.Contains(log, "ip addr add fd00:1cb::200/128 dev eth0") {
		t.Errorf("IPv6 VIP not on the balancer: error %v, log %q", err, log)
	}
}

// TestHostUnresolvedBackendWarns starts the balancer with a backend nobody
// answers ARP (or NDP, for IPv6) for: it starts (backends may come up
// later) and names that backend in a warning.
func TestHostUnresolvedBackendWarns(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	for _, tc := range []struct {
		family, by string
		set        func(*config.Config)
		absent     netip.Addr
	}{
		{"IPv4", "ARP", func(*config.Config) {}, netip.MustParseAddr("10.0.0.50")},
		{"IPv6", "NDP", seed6, netip.MustParseAddr("fd00:1cb::50")},
	} {
		t.Run(tc.family, func(t *testing.T) {
			c := seedConfig()
			tc.set(&c)
			present := c.Backends[0].Addr
			c.Backends[1].Addr = tc.absent
			var log bytes.Buffer
			err := topo.InNS(topology.SeedBalancer, func() error {
				b, err := New(c, slog.New(slog.NewTextHandler(&log, nil)))
				if err != nil {
					return err
				}
				return b.Close()
			})
			if err != nil {
				t.Fatalf("New with one backend down: %v", err)
			}
			var warned string
			for line := range strings.SplitSeq(log.String(), "\n") {
				if strings.Contains(line, "did not answer "+tc.by) {
					warned += line + "\n"
				}
			}
			if !strings.Contains(warned, "backend="+tc.absent.String()) || strings.Contains(warned, "backend="+present.String()+" ") {
				t.Errorf("want one warning naming %s only; log:\n%s", tc.absent, log.String())
			}
		})
	}
}

// seedConfig is the seed topology's configuration with every default.
func seedConfig() config.Config {
	c := config.Default()
	c.Iface = "eth0"
	c.VIP = netip.MustParseAddr("10.0.0.100")
	c.Backends = []config.Backend{{Addr: netip.MustParseAddr("10.0.0.2"), Weight: 1}, {Addr: netip.MustParseAddr("10.0.0.3"), Weight: 1}}
	return c
}
