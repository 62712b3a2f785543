// SPDX-License-Identifier: MIT

package topology

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/testenv"
)

// needRoot skips tests that call New directly (NewT skips by itself).
func needRoot(t *testing.T) {
	t.Helper()
	testenv.Privileged(t)
}

// ping pings to once from the host; ping picks the family from to.
func ping(t *testing.T, topo *Topology, from string, to netip.Addr) {
	t.Helper()
	if _, err := topo.Run(from, "ping", "-c1", "-W5", to.String()); err != nil {
		t.Errorf("ping %s -> %s: %v", from, to, err)
	}
}

func nsList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	return string(out)
}

func assertGone(t *testing.T, prefix string) {
	t.Helper()
	for line := range strings.Lines(nsList(t)) {
		if strings.HasPrefix(line, prefix+"-") {
			t.Errorf("namespace %q still listed", strings.TrimSpace(line))
		}
	}
}

func TestSeedPingAllPairs(t *testing.T) {
	start := time.Now()
	topo := NewT(t, Seed())
	t.Logf("seed built in %v (prefix %s)", time.Since(start), topo.Prefix)

	names := topo.HostNames()
	if len(names) != 5 {
		t.Fatalf("hosts = %v, want 5", names)
	}
	for _, n := range names {
		h := topo.Hosts[n]
		if len(h.MAC) != 6 || h.NS != topo.Prefix+"-"+n || h.Iface != "eth0" {
			t.Errorf("host %s = %+v", n, h)
		}
	}
	var wg sync.WaitGroup
	for _, from := range names {
		for _, to := range names {
			if from != to {
				wg.Go(func() { ping(t, topo, from, topo.Addr(to)) })
			}
		}
	}
	wg.Wait()
}

// TestSeedIPv6 checks the seed's IPv6 side right after New returns: every
// address usable at once (DAD off, nothing tentative), the VIP on lb as a
// /128 answered by lb, and every pair of hosts reachable over IPv6.
func TestSeedIPv6(t *testing.T) {
	start := time.Now()
	topo := NewT(t, Seed())
	t.Logf("seed built in %v (prefix %s)", time.Since(start), topo.Prefix)

	want := map[string]netip.Addr{SeedClient: SeedH1v6, SeedBackend1: SeedH2v6, SeedBackend2: SeedH3v6,
		SeedClient2: SeedH4v6, SeedBalancer: SeedLB6}
	names := topo.HostNames()
	for _, n := range names {
		if got := topo.Addr6(n); got != want[n] || !SeedNet6.Contains(got) {
			t.Errorf("Addr6(%s) = %v, want %v in %v", n, got, want[n], SeedNet6)
		}
		out, err := topo.Run(n, "ip", "-6", "-o", "addr", "show", "dev", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		// Read before any ping: a test that pings at once must not find
		// an address still in duplicate address detection.
		if strings.Contains(out, "tentative") || !strings.Contains(out, want[n].String()+"/64") || !strings.Contains(out, "scope link") {
			t.Errorf("%s: IPv6 addresses right after New:\n%s\nwant %v/64 and a link-local address, none tentative", n, out, want[n])
		}
	}
	if got := topo.Addr6("nope"); got.IsValid() {
		t.Errorf("Addr6 of an unknown host = %v", got)
	}
	out, err := topo.Run(SeedBalancer, "ip", "-6", "-br", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(out, SeedVIP6.String()+"/128") {
		t.Errorf("lb IPv6 addresses = %q, %v; want the VIP as /128", out, err)
	}

	var wg sync.WaitGroup
	for _, from := range names {
		for _, to := range names {
			if from != to {
				wg.Go(func() { ping(t, topo, from, topo.Addr6(to)) })
			}
		}
		if from != SeedBalancer {
			wg.Go(func() { ping(t, topo, from, SeedVIP6) })
		}
	}
	wg.Wait()

	// As for IPv4 (TestVIPAnsweredByLB): the neighbour entry shows which
	// host answered for the VIP.
	out, err = topo.Run(SeedClient, "ip", "-j", "-6", "neigh", "show", SeedVIP6.String())
	if err != nil {
		t.Fatal(err)
	}
	if lbMAC := topo.Hosts[SeedBalancer].MAC.String(); !strings.Contains(out, `"lladdr":"`+lbMAC+`"`) {
		t.Errorf("h1 neighbour entry for the IPv6 VIP = %s, want lladdr %s (lb)", out, lbMAC)
	}
}

// TestIPv4OnlyHost: a host without IPv6 addresses is built as before, and a
// dual-stack neighbour reaches it over IPv4 only.
func TestIPv4OnlyHost(t *testing.T) {
	topo := NewT(t, Spec{Hosts: []HostSpec{
		{Name: "a", Addr: netip.MustParsePrefix("10.0.0.1/24"), Addr6: netip.MustParsePrefix("fd00:1cb::1/64")},
		{Name: "b", Addr: netip.MustParsePrefix("10.0.0.2/24"),
			Extra: []netip.Prefix{netip.MustParsePrefix("fd00:1cb::2/64")}},
		{Name: "c", Addr: netip.MustParsePrefix("10.0.0.3/24")},
	}})
	if got := topo.Addr6("c"); got.IsValid() {
		t.Errorf("Addr6(c) = %v, want none", got)
	}
	ping(t, topo, "a", topo.Addr("c"))
	// An IPv6 address among Extra gets the same treatment as Addr6.
	ping(t, topo, "a", netip.MustParseAddr("fd00:1cb::2"))
	out, err := topo.Run("c", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("c has global IPv6 addresses %q (%v), want none", out, err)
	}
}

func TestVIPAnsweredByLB(t *testing.T) {
	topo := NewT(t, Seed())
	if got := topo.Addr(SeedBalancer); got != SeedLB {
		t.Fatalf("Addr(lb) = %v, want %v", got, SeedLB)
	}
	ping(t, topo, SeedClient, SeedVIP)

	// The reply's source address proves nothing (any host could own the
	// VIP); the MAC h1 resolved it to shows which host answered.
	out, err := topo.Run(SeedClient, "ip", "-j", "neigh", "show", SeedVIP.String())
	if err != nil {
		t.Fatal(err)
	}
	lbMAC := topo.Hosts[SeedBalancer].MAC.String()
	if !strings.Contains(out, `"lladdr":"`+lbMAC+`"`) {
		t.Errorf("h1 neighbour entry for VIP = %s, want lladdr %s (lb)", out, lbMAC)
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	needRoot(t)
	topo, err := New(Seed())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(nsList(t), topo.SwitchNS) {
		t.Fatalf("switch namespace %s not listed after New", topo.SwitchNS)
	}
	if err := topo.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertGone(t, topo.Prefix)
	if err := topo.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestConcurrentTopologiesDoNotCollide(t *testing.T) {
	needRoot(t)
	var topos [2]*Topology
	var errs [2]error
	var wg sync.WaitGroup
	for i := range topos {
		wg.Go(func() { topos[i], errs[i] = New(Seed()) })
	}
	wg.Wait()
	for i, topo := range topos {
		if topo != nil {
			t.Cleanup(func() {
				if err := topo.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
		}
		if errs[i] != nil {
			t.Fatalf("topology %d: %v", i, errs[i])
		}
	}
	a, b := topos[0], topos[1]
	if a.Prefix == b.Prefix || a.SwitchNS == b.SwitchNS {
		t.Fatalf("same names: %s %s", a.Prefix, b.Prefix)
	}
	// Same addresses in both, yet each h1 must reach its own lb only.
	for _, topo := range topos {
		ping(t, topo, SeedClient, SeedVIP)
		out, err := topo.Run(SeedClient, "ip", "neigh", "show", SeedVIP.String())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, topo.Hosts[SeedBalancer].MAC.String()) {
			t.Errorf("%s: h1 resolved VIP to %q, not its own lb %s", topo.Prefix, out, topo.Hosts[SeedBalancer].MAC)
		}
	}
}

func TestRootNamespaceUntouched(t *testing.T) {
	needRoot(t)
	snapshot := func() string {
		t.Helper()
		var all []byte
		for _, args := range [][]string{{"-o", "link"}, {"-o", "addr"}, {"route", "show", "table", "all"}} {
			out, err := exec.Command("ip", args...).CombinedOutput()
			if err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
			all = append(all, out...)
		}
		return string(all)
	}
	before := snapshot()
	topo, err := New(Seed())
	if err != nil {
		t.Fatal(err)
	}
	during := snapshot()
	ping(t, topo, SeedClient, SeedVIP)
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	after := snapshot()
	if during != before {
		t.Errorf("root namespace changed while the topology was up:\nbefore:\n%s\nduring:\n%s", before, during)
	}
	if after != before {
		t.Errorf("root namespace changed after Close:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestInNS(t *testing.T) {
	topo := NewT(t, Seed())
	h := topo.Hosts[SeedBackend1]
	var got net.HardwareAddr
	err := topo.InNS(SeedBackend1, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		got = ifi.HardwareAddr
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, h.MAC) {
		t.Errorf("eth0 in %s has MAC %s, want %s", h.NS, got, h.MAC)
	}

	var ports int
	if err := topo.InSwitch(func() error {
		for _, n := range topo.HostNames() {
			if _, err := net.InterfaceByName(topo.Hosts[n].Port); err != nil {
				return err
			}
			ports++
		}
		return nil
	}); err != nil || ports != 5 {
		t.Errorf("InSwitch: found %d ports, err %v", ports, err)
	}

	// The caller's threads must stay in the root namespace.
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifi := range ifs {
		if bytes.Equal(ifi.HardwareAddr, h.MAC) {
			t.Errorf("host MAC %s visible from the root namespace on %s", h.MAC, ifi.Name)
		}
	}

	sentinel := errors.New("boom")
	if err := topo.InNS(SeedClient, func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("InNS error = %v, want %v", err, sentinel)
	}
	if err := topo.InNS("nope", func() error { return nil }); err == nil {
		t.Error("InNS on unknown host: no error")
	}
	func() {
		defer func() {
			if v := recover(); v != "fn panic" {
				t.Errorf("recovered %v, want the panic of fn", v)
			}
		}()
		_ = topo.InNS(SeedClient, func() error { panic("fn panic") })
	}()
}

func TestCommandAndRun(t *testing.T) {
	topo := NewT(t, Seed())
	if out, err := topo.Run(SeedClient, "ip", "-br", "addr", "show", "dev", "eth0"); err != nil || !strings.Contains(out, "10.0.0.1/24") {
		t.Errorf("Run = %q, %v", out, err)
	}
	out, err := topo.Run(SeedBalancer, "ip", "-br", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(out, "10.0.0.100/32") {
		t.Errorf("lb addresses = %q, %v; want the VIP", out, err)
	}
	out, err = topo.SwitchRun("ip", "-br", "link", "show", "master", "br0")
	up := 0
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 1 && f[1] == "UP" {
			up++
		}
	}
	if err != nil || up != 5 {
		t.Errorf("SwitchRun = %q, %v; want 5 ports UP", out, err)
	}
	if _, err := topo.Run("nope", "true"); err == nil {
		t.Error("Run on unknown host: no error")
	}
	// A failing command's error must carry its output.
	if _, err := topo.Run(SeedClient, "ip", "link", "show", "dev", "nope"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("err = %v, want one quoting the command's output", err)
	}
}

func TestNewNamedRefusesExisting(t *testing.T) {
	needRoot(t)
	prefix := randomPrefix()
	first, err := NewNamed(prefix, Seed())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Close() })
	if second, err := NewNamed(prefix, Seed()); err == nil {
		_ = second.Close()
		t.Fatal("second NewNamed with the same prefix succeeded")
	}
	// The failed attempt must not have removed the first topology.
	ping(t, first, SeedClient, SeedH3)
	if err := DeleteNamed(prefix); err != nil {
		t.Fatal(err)
	}
	assertGone(t, prefix)
	if err := DeleteNamed(prefix); err != nil {
		t.Errorf("DeleteNamed when absent: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Errorf("Close after DeleteNamed: %v", err)
	}
}

func TestPartialFailureCleansUp(t *testing.T) {
	needRoot(t)
	// A duplicate address on one eth0 passes validation but fails in the
	// middle of the build, after all namespaces and veths exist.
	spec := Spec{Hosts: []HostSpec{
		{Name: "a", Addr: netip.MustParsePrefix("10.0.0.1/24")},
		{Name: "b", Addr: netip.MustParsePrefix("10.0.0.2/24"),
			Extra: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}},
	}}
	prefix := randomPrefix()
	if _, err := NewNamed(prefix, spec); err == nil {
		t.Fatal("NewNamed with a duplicate address succeeded")
	} else {
		t.Logf("expected error: %v", err)
	}
	assertGone(t, prefix)
}

func TestSpecValidation(t *testing.T) {
	good := netip.MustParsePrefix("10.0.0.1/24")
	for name, spec := range map[string]Spec{
		"empty":     {},
		"reserved":  {Hosts: []HostSpec{{Name: "sw", Addr: good}}},
		"long":      {Hosts: []HostSpec{{Name: "abcdefghijklmno", Addr: good}}},
		"dash":      {Hosts: []HostSpec{{Name: "a-b", Addr: good}}},
		"duplicate": {Hosts: []HostSpec{{Name: "a", Addr: good}, {Name: "a", Addr: good}}},
		"noaddr":    {Hosts: []HostSpec{{Name: "a"}}},
		"addr6v4":   {Hosts: []HostSpec{{Name: "a", Addr: good, Addr6: good}}},
		"addr6map":  {Hosts: []HostSpec{{Name: "a", Addr: good, Addr6: netip.MustParsePrefix("::ffff:10.0.0.1/120")}}},
		"badextra":  {Hosts: []HostSpec{{Name: "a", Addr: good, Extra: []netip.Prefix{{}}}}},
	} {
		if _, err := plan("tpx", spec); err == nil {
			t.Errorf("%s: spec accepted", name)
		}
	}
	if _, err := plan("a-b", Seed()); err == nil {
		t.Error("prefix with '-' accepted")
	}
	if _, err := plan("tpx", Seed()); err != nil {
		t.Errorf("seed rejected: %v", err)
	}
}

func BenchmarkSeed(b *testing.B) {
	testenv.Privileged(b)
	for b.Loop() {
		topo, err := New(Seed())
		if err != nil {
			b.Fatal(err)
		}
		if err := topo.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
