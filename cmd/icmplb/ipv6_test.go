// SPDX-License-Identifier: MIT

package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icmplb/icmplb/exporter"
	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// The seed's IPv6 side as the agent's flags, ping and the metrics' labels
// print it.
var (
	vip6      = topology.SeedVIP6.String()
	backend16 = topology.SeedH2v6.String()
	backend26 = topology.SeedH3v6.String()
)

// icmp6Echos reads a host's ICMPv6 echo requests received from
// /proc/net/snmp6 in its namespace: the IPv6 side of icmpOf.
func icmp6Echos(t *testing.T, topo *topology.Topology, host string) uint64 {
	t.Helper()
	out, err := topo.Run(host, "cat", "/proc/net/snmp6")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "Icmp6InEchos" {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("%s: Icmp6InEchos %q: %v", host, f[1], err)
			}
			return n
		}
	}
	t.Fatalf("%s: no Icmp6InEchos in /proc/net/snmp6:\n%s", host, out)
	return 0
}

func echos6(t *testing.T, topo *topology.Topology) map[string]uint64 {
	t.Helper()
	m := map[string]uint64{}
	for _, h := range []string{topology.SeedBackend1, topology.SeedBackend2, topology.SeedBalancer} {
		m[h] = icmp6Echos(t, topo, h)
	}
	return m
}

// allSeqs says what is wrong with the replies of a run of count requests
// unless each icmp_seq from 1 to count was answered once, from from.
func allSeqs(r pingResult, count int, from string) error {
	seen := map[int]int{}
	for _, p := range r.parsed.Replies {
		if p.From != from {
			return fmt.Errorf("reply to icmp_seq=%d from %s, want %s", p.Seq, p.From, from)
		}
		seen[p.Seq]++
	}
	for seq := 1; seq <= count; seq++ {
		if seen[seq] != 1 {
			return fmt.Errorf("icmp_seq=%d answered %d times, want once", seq, seen[seq])
		}
	}
	if len(seen) != count {
		return fmt.Errorf("replies to %d sequence numbers, want %d", len(seen), count)
	}
	return nil
}

// TestIPv6Echo: one agent balances an IPv4 and an IPv6 service from one
// services file. Two clients ping the IPv6 VIP with the same echo id while
// one of them also pings the IPv4 VIP with that id: every reply comes from
// the VIP of its family, each client gets exactly its own, the per-backend
// counters of both families add up to what the clients sent and what the
// backends' kernels received, and `icmplb status` shows the IPv6 backends.
func TestIPv6Echo(t *testing.T) {
	testenv.Privileged(t)
	start := time.Now()
	topo := topology.NewT(t, topology.Seed())
	file := filepath.Join(t.TempDir(), "services.yml")
	// h3 is written uncompressed and in capitals: the labels and status
	// must show the canonical form all the same (RFC 5952).
	writeFile(t, file, `services:
  - vip: 10.0.0.100
    backends: [10.0.0.2, 10.0.0.3]
  - vip: fd00:1cb::100
    backends:
      - fd00:1cb::2
      - FD00:1CB:0:0:0:0:0:3
`)
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--config.file", file, "--web.listen-address", metricsAddr,
		"--loss-timeout", errorsLossTimeout.String())
	before4, before6, beforeM := snap(t, topo), echos6(t, topo), scrapeM(t, topo)

	// The shared echo id is one session per client and family; the 16
	// sessions of h1 with ids of their own spread over both IPv6 backends.
	const id, count, n, spreadCount = 600, 40, 16, 10
	args := func(to string, extra ...string) []string {
		return append(append([]string{"-n", "-e", strconv.Itoa(id), "-c", strconv.Itoa(count), "-i", "0.05", "-W", "5"}, extra...), to)
	}
	var shared []pingResult
	var spread []pingResult
	var wg sync.WaitGroup
	wg.Go(func() {
		shared = pingAll(topo,
			pingCmd{h1, args(vip6, "-6")},
			pingCmd{h4, args(vip6, "-6")},
			pingCmd{h1, args(vip)})
	})
	wg.Go(func() {
		spread = make([]pingResult, n)
		var swg sync.WaitGroup
		for i := range n {
			swg.Go(func() {
				spread[i] = ping(topo, h1, "-6", "-n", "-e", strconv.Itoa(700+i), "-c", strconv.Itoa(spreadCount), "-i", "0.1", "-W", "5", vip6)
			})
		}
		swg.Wait()
	})
	// Status compares two scrapes a second apart while the pings run.
	time.Sleep(200 * time.Millisecond)
	status, stderr, code := lbRun(t, topo, []string{agenttest.Binary(t)}, "status", "--agent", "http://"+metricsAddr, "--interval", "1s", "--output", "json")
	wg.Wait()

	for i, want := range []string{vip6, vip6, vip} {
		r := shared[i]
		if err := r.check(count, want); err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(r.args, " "), err, r)
		} else if err := allSeqs(r, count, want); err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(r.args, " "), err, r)
		}
	}
	for _, r := range spread {
		if err := r.check(spreadCount, vip6); err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(r.args, " "), err, r)
		}
	}

	// The requests settle loss-timeout after their epoch: only then does
	// lost say that none was.
	ended := time.Now()
	var m metrics
	waitFor(errorsSettle+5*time.Second, func() bool {
		m = scrapeM(t, topo)
		return time.Since(ended) >= errorsSettle
	})
	d4 := before4.since(t, topo)
	now6 := echos6(t, topo)
	in6 := func(h string) uint64 { return now6[h] - before6[h] }
	dc := func(name string, kv ...string) uint64 { return m.counter(name, kv...) - beforeM.counter(name, kv...) }
	req := func(v, be string) uint64 { return dc("icmplb_backend_requests_total", "vip", v, "backend", be) }
	rep := func(v, be string) uint64 { return dc("icmplb_backend_replies_total", "vip", v, "backend", be) }
	lost := func(v, be string) uint64 { return dc("icmplb_backend_lost_total", "vip", v, "backend", be) }
	sent6 := uint64(2*count + n*spreadCount)
	t.Logf("IPv6: %s requests %d replies %d lost %d, %s requests %d replies %d lost %d (clients sent %d); kernels received h2 %d, h3 %d, lb %d",
		backend16, req(vip6, backend16), rep(vip6, backend16), lost(vip6, backend16),
		backend26, req(vip6, backend26), rep(vip6, backend26), lost(vip6, backend26), sent6, in6(topology.SeedBackend1), in6(topology.SeedBackend2), in6(lb))
	t.Logf("IPv4: %s requests %d replies %d, %s requests %d replies %d (client sent %d); %s", backend1, req(vip, backend1), rep(vip, backend1),
		backend2, req(vip, backend2), rep(vip, backend2), count, d4)
	t.Logf("packets: %s", m.reasons(beforeM))

	if got := req(vip6, backend16) + req(vip6, backend26); got != sent6 {
		t.Errorf("%d requests counted for the IPv6 backends, the clients sent %d", got, sent6)
	}
	if req(vip6, backend16) == 0 || req(vip6, backend26) == 0 {
		t.Errorf("%d IPv6 sessions all went to one backend", n+2)
	}
	for _, be := range []string{backend16, backend26} {
		if r, q := rep(vip6, be), req(vip6, be); r != q || lost(vip6, be) != 0 {
			t.Errorf("%s: %d requests, %d replies, %d lost: want every request answered", be, q, r, lost(vip6, be))
		}
	}
	// The labels are the canonical form, whatever the file said; none of
	// the other spelling exists.
	for _, s := range m["icmplb_backend_requests_total"].GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() != "backend" && l.GetName() != "vip" {
				continue
			}
			if a, err := netip.ParseAddr(l.GetValue()); err != nil || a.String() != l.GetValue() {
				t.Errorf("label %s=%q is not an address in canonical form", l.GetName(), l.GetValue())
			}
		}
	}
	if in6(topology.SeedBackend1) != req(vip6, backend16) || in6(topology.SeedBackend2) != req(vip6, backend26) {
		t.Errorf("the IPv6 backends' kernels received h2 %d, h3 %d echo requests; the balancer counted %d, %d",
			in6(topology.SeedBackend1), in6(topology.SeedBackend2), req(vip6, backend16), req(vip6, backend26))
	}
	if in6(lb) != 0 || d4.lbIn != 0 {
		t.Errorf("lb's own kernel received %d ICMPv6 and %d ICMPv4 echo requests: the balancer passed them instead of forwarding", in6(lb), d4.lbIn)
	}
	if got := req(vip, backend1) + req(vip, backend2); got != count || d4.backends() != count {
		t.Errorf("IPv4: %d requests counted, the backends received %d; the client sent %d", got, d4.backends(), count)
	}
	// Requests of one family must never be counted under the other's VIP.
	for _, be := range []string{backend1, backend2} {
		if m.has("icmplb_backend_requests_total", "vip", vip6, "backend", be) {
			t.Errorf("a series of IPv4 backend %s under the IPv6 VIP", be)
		}
	}

	if code != 0 {
		t.Fatalf("icmplb status: exit %d: %s", code, stderr)
	}
	var rows []exporter.StatusRow
	if err := json.Unmarshal([]byte(status), &rows); err != nil {
		t.Fatalf("icmplb status -o json: %v\n%s", err, status)
	}
	t.Logf("icmplb status -o json:\n%s", status)
	var got6 []string
	for _, r := range rows {
		if r.VIP == topology.SeedVIP6 {
			got6 = append(got6, r.Backend.String())
			if r.State != exporter.StateUp || r.RequestsPerSecond <= 0 {
				t.Errorf("row %+v: want state up and requests flowing", r)
			}
		}
	}
	slices.Sort(got6)
	if len(rows) != 4 || !slices.Equal(got6, []string{backend16, backend26}) {
		t.Errorf("status: %d rows, IPv6 backends %v; want 4 rows, %s and %s under %s", len(rows), got6, backend16, backend26, vip6)
	}
	t.Logf("wall time %v", time.Since(start).Round(10*time.Millisecond))
}

// The IPv6 side of errorsSpec: the routers and b5 get addresses on the
// seed's IPv6 network, and b5 owns farBackend6, reachable only through r.
var (
	farBackend6 = netip.MustParseAddr("fd00:9::5")
	farAddr6    = netip.MustParseAddr("fd00:1cb::5")
	routerAddr6 = netip.MustParseAddr("fd00:1cb::20")
	router2Add6 = netip.MustParseAddr("fd00:1cb::21")
)

func errorsSpec6() topology.Spec {
	s := errorsSpec()
	on6 := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, topology.SeedNet6.Bits()) }
	for i := range s.Hosts {
		h := &s.Hosts[i]
		switch h.Name {
		case router:
			h.Addr6 = on6(routerAddr6)
		case router2:
			h.Addr6 = on6(router2Add6)
		case farHost:
			h.Addr6 = on6(farAddr6)
			h.Extra = append(slices.Clone(h.Extra), netip.PrefixFrom(farBackend6, 128))
		}
	}
	return s
}

// TestIPv6ErrorsTranslated is TestICMPErrorsTranslated over IPv6: r turns
// into an unreachable route, then a hop-limit loop with r2, then a path
// with a small MTU. Each ICMPv6 error must reach the client as from the
// VIP, be counted by type, and keep its request out of the lost count.
func TestIPv6ErrorsTranslated(t *testing.T) {
	testenv.Privileged(t)
	start := time.Now()
	topo := topology.NewT(t, errorsSpec6())
	far := farBackend6.String()
	viaR := routerAddr6.String()
	// IPv6 has no send_redirects switch: r redirects whatever it forwards
	// back out its one interface, so the hosts it redirects (lb for the
	// requests, b5 for the replies) must ignore redirects instead, or they
	// would learn the way around r. The ICMPv6 rate limit is per namespace.
	noRedirects := []string{"sysctl", "-qw", "net.ipv6.conf.all.accept_redirects=0", "net.ipv6.conf.eth0.accept_redirects=0"}
	router6 := []string{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.icmp.ratelimit=0"}
	for _, c := range []struct {
		host string
		args []string
	}{
		{router, router6},
		{router2, router6},
		{topology.SeedBalancer, noRedirects},
		{farHost, noRedirects},
		{router, []string{"ip", "-6", "route", "add", far + "/128", "via", farAddr6.String()}},
		{router2, []string{"ip", "-6", "route", "add", far + "/128", "via", viaR}},
		{router2, []string{"ip", "-6", "route", "add", vip6 + "/128", "via", viaR}},
		{farHost, []string{"ip", "-6", "route", "add", vip6 + "/128", "via", viaR}},
		{topology.SeedBalancer, []string{"ip", "-6", "route", "add", far + "/128", "via", viaR}},
	} {
		if out, err := topo.Run(c.host, c.args[0], c.args[1:]...); err != nil {
			t.Fatalf("%s: %s: %v\n%s", c.host, strings.Join(c.args, " "), err, out)
		}
	}
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip6, "--backend", far,
		"--web.listen-address", metricsAddr, "--loss-timeout", errorsLossTimeout.String())

	if r := ping(topo, h1, "-6", "-n", "-e", "700", "-c", "3", "-i", "0.2", "-W", "2", vip6); r.check(3, vip6) != nil {
		t.Fatalf("before any error: %v\n%s", r.check(3, vip6), r)
	}

	routeOnR := func(t *testing.T, route ...string) {
		t.Helper()
		if out, err := topo.Run(router, "ip", append([]string{"-6", "route", "replace"}, route...)...); err != nil {
			t.Fatalf("r: ip -6 route replace %s: %v\n%s", strings.Join(route, " "), err, out)
		}
	}
	// As in TestICMPErrorsTranslated: one echo id for both clients, h4 at
	// half the rate, a new id per phase.
	sameID := func(id string, extra ...string) []pingResult {
		a := func(c, i string) []string {
			return slices.Concat([]string{"-6", "-n", "-e", id, "-c", c, "-i", i, "-W", "1"}, extra, []string{vip6})
		}
		return pingAll(topo, pingCmd{h1, a("6", "0.3")}, pingCmd{h4, a("3", "0.6")})
	}
	t.Run("Unreachable", func(t *testing.T) {
		routeOnR(t, "unreachable", far+"/128")
		before := scrapeM(t, topo)
		judgeErrors(t, topo, before, sameID("701"), far, vip6, "unreachable", "Destination unreachable: No route")
	})
	t.Run("TimeExceeded", func(t *testing.T) {
		routeOnR(t, far+"/128", "via", router2Add6.String())
		before := scrapeM(t, topo)
		judgeErrors(t, topo, before, sameID("702"), far, vip6, "time_exceeded", "Time exceeded: Hop limit")
	})
	t.Run("PacketTooBig", func(t *testing.T) {
		// Below IPv6's minimum MTU on purpose: r still reports 1000, but a
		// client never lowers its path MTU under 1280, so each 1248-byte
		// request goes out and gets its error, with no cache to flush
		// between them as IPv4 needs.
		const mtu = 1000
		routeOnR(t, far+"/128", "via", farAddr6.String(), "mtu", "lock", strconv.Itoa(mtu))
		before := scrapeM(t, topo)
		judgeErrors(t, topo, before, sameID("703", "-M", "do", "-s", "1200"), far, vip6, "packet_too_big", fmt.Sprintf("Packet too big: mtu=%d", mtu))
	})
	t.Logf("wall time %v", time.Since(start).Round(10*time.Millisecond))
}
