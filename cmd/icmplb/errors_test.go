// SPDX-License-Identifier: MIT

package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icmplb/icmplb/bpf"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// The backend behind routers: b5 owns farBackend, which only the router r
// knows the way to, so that r (and r2, its loop partner) can answer the
// balancer's requests with ICMP errors instead of b5's replies.
const (
	farHost = "b5"
	router  = "r"
	router2 = "r2"
)

var (
	farBackend = netip.MustParseAddr("10.9.0.5")
	farAddr    = netip.MustParseAddr("10.0.0.5")
	routerAddr = netip.MustParseAddr("10.0.0.20")
	router2Add = netip.MustParseAddr("10.0.0.21")
)

// errorsSpec is the seed topology plus the routers and the backend behind
// them, all on the seed bridge: the path lb -> r -> b5 is made by routes,
// not links, and r forwards out the interface it received on.
func errorsSpec() topology.Spec {
	s := topology.Seed()
	on := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, topology.SeedNet.Bits()) }
	s.Hosts = append(s.Hosts,
		topology.HostSpec{Name: router, Addr: on(routerAddr)},
		topology.HostSpec{Name: router2, Addr: on(router2Add)},
		topology.HostSpec{Name: farHost, Addr: on(farAddr), Extra: []netip.Prefix{netip.PrefixFrom(farBackend, 32)}},
	)
	return s
}

// errorsLossTimeout is short so that the requests no error answered are
// settled soon.
const errorsLossTimeout = 200 * time.Millisecond

// errorsSettle is how long after its last request a phase's loss is
// settled: the request's epoch must end and the loss timeout plus the
// agent's grace pass, then the agent settles within a quarter epoch (see
// balancer.Run). The rest is margin for a loaded machine.
var errorsSettle = time.Duration(1<<bpf.EpochShift)*5/4 + errorsLossTimeout + 500*time.Millisecond

// TestICMPErrorsTranslated: a router between the balancer and a backend
// turns into an unreachable route, then into a TTL-exceeded loop, then a
// path with a small MTU. The client's ping must print each error as coming
// from the VIP (the balancer rewrote it back to the client's request), the
// metrics must count each error the client got, by type, and a request
// answered by an error must not count as lost: only the requests that got
// nothing (Linux rate-limits unreachable errors) are.
func TestICMPErrorsTranslated(t *testing.T) {
	testenv.Privileged(t)
	start := time.Now()
	topo := topology.NewT(t, errorsSpec())
	far := farBackend.String()
	viaR := routerAddr.String()
	for _, c := range []struct {
		host string
		args []string
	}{
		// r and r2 forward back out the interface they received on: a
		// redirect would teach lb the way around r. icmp_ratelimit (per
		// namespace) would leave most TTL errors unsent. The budget of
		// errors for unreachable routes (net.ipv4.route.error_cost and
		// error_burst) exists only in the root namespace, which stays
		// untouched: the test judges against what the clients got.
		{router, []string{"sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
			"net.ipv4.conf.eth0.send_redirects=0", "net.ipv4.icmp_ratelimit=0"}},
		{router2, []string{"sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
			"net.ipv4.conf.eth0.send_redirects=0", "net.ipv4.icmp_ratelimit=0"}},
		{router, []string{"ip", "route", "add", far + "/32", "via", farAddr.String()}},
		// Whatever r2 sends to the SNAT address (the VIP) goes through r,
		// and so does b5's reply: the balancer accepts frames about a
		// backend only from the backend's next hop, r.
		{router2, []string{"ip", "route", "add", far + "/32", "via", viaR}},
		{router2, []string{"ip", "route", "add", vip + "/32", "via", viaR}},
		{farHost, []string{"ip", "route", "add", vip + "/32", "via", viaR}},
		// The agent takes a backend's next hop from lb's route to it.
		{topology.SeedBalancer, []string{"ip", "route", "add", far + "/32", "via", viaR}},
	} {
		if out, err := topo.Run(c.host, c.args[0], c.args[1:]...); err != nil {
			t.Fatalf("%s: %s: %v\n%s", c.host, strings.Join(c.args, " "), err, out)
		}
	}
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", far,
		"--web.listen-address", metricsAddr, "--loss-timeout", errorsLossTimeout.String())

	// The path works before it breaks: what follows is about errors, not
	// a backend the balancer cannot reach.
	if r := ping(topo, h1, "-n", "-e", "700", "-c", "3", "-i", "0.2", "-W", "2", vip); r.check(3, vip) != nil {
		t.Fatalf("before any error: %v\n%s", r.check(3, vip), r)
	}

	routeOnR := func(t *testing.T, route ...string) {
		t.Helper()
		if out, err := topo.Run(router, "ip", append([]string{"route", "replace"}, route...)...); err != nil {
			t.Fatalf("r: ip route replace %s: %v\n%s", strings.Join(route, " "), err, out)
		}
	}
	// Both clients use the same echo id, so that only the NAT id tells
	// their errors apart. h4 sends half as many requests over the same
	// time: an error of h1's meant for h4 would show there as a sequence
	// h4 never sent, or twice. Each phase has an echo id of its own: a
	// request of the previous phase still awaited in the same session
	// would make its namesake a resend.
	sameID := func(id string) []pingResult {
		return pingAll(topo,
			pingCmd{h1, []string{"-n", "-e", id, "-c", "6", "-i", "0.3", "-W", "1", vip}},
			pingCmd{h4, []string{"-n", "-e", id, "-c", "3", "-i", "0.6", "-W", "1", vip}})
	}
	t.Run("Unreachable", func(t *testing.T) {
		routeOnR(t, "unreachable", far+"/32")
		before := scrapeM(t, topo)
		judgeErrors(t, topo, before, sameID("701"), far, vip, "unreachable", "Destination Host Unreachable")
	})
	t.Run("TimeExceeded", func(t *testing.T) {
		routeOnR(t, far+"/32", "via", router2Add.String())
		before := scrapeM(t, topo)
		judgeErrors(t, topo, before, sameID("702"), far, vip, "time_exceeded", "Time to live exceeded")
	})
	t.Run("PacketTooBig", func(t *testing.T) {
		const mtu = 1000
		routeOnR(t, far+"/32", "via", farAddr.String(), "mtu", "lock", strconv.Itoa(mtu))
		// A client learns the path MTU from the error it gets, and then
		// refuses to send the next request at all ("local error"): each
		// round starts with the clients' learnt MTU flushed, so that every
		// request goes out and gets its error.
		before := scrapeM(t, topo)
		var runs []pingResult
		for i := range 3 {
			for _, h := range []string{h1, h4} {
				if out, err := topo.Run(h, "ip", "route", "flush", "cache"); err != nil {
					t.Fatalf("%s: flush route cache: %v\n%s", h, err, out)
				}
			}
			args := []string{"-n", "-e", strconv.Itoa(710 + i), "-M", "do", "-s", "1200", "-c", "1", "-W", "1", vip}
			runs = append(runs, pingAll(topo, pingCmd{h1, args}, pingCmd{h4, args})...)
		}
		judgeErrors(t, topo, before, runs, far, vip, "packet_too_big", fmt.Sprintf("Frag needed and DF set (mtu = %d)", mtu))
	})
	t.Logf("wall time %v", time.Since(start).Round(10*time.Millisecond))
}

// pingCmd is one ping run: on host, with args.
type pingCmd struct {
	host string
	args []string
}

// pingAll runs the pings at once.
func pingAll(topo *topology.Topology, cmds ...pingCmd) []pingResult {
	out := make([]pingResult, len(cmds))
	var wg sync.WaitGroup
	for i, c := range cmds {
		wg.Go(func() { out[i] = ping(topo, c.host, c.args...) })
	}
	wg.Wait()
	return out
}

// errorTypes are the values of icmplb_backend_errors_total's type label.
var errorTypes = []string{"unreachable", "packet_too_big", "time_exceeded"}

// judgeErrors waits until the runs' requests are settled and judges the
// balancer's counts of the backend be since before against what the
// clients printed in the same runs: every error line from the VIP vip with
// the text ping gives errors of typ, as many errors counted, and as lost
// exactly the requests that got neither a reply nor an error. before must
// be taken once the earlier requests were settled. be and vip are of
// either family, as the metrics' labels and ping -n print them.
func judgeErrors(t *testing.T, topo *topology.Topology, before metrics, runs []pingResult, be, vip, typ, text string) {
	t.Helper()
	ended := time.Now()
	var sent, received, printed int
	for _, r := range runs {
		sent += r.parsed.Transmitted
		received += r.parsed.Received
		printed += len(r.parsed.Errors)
		if !r.parsed.Summary {
			t.Errorf("ping printed no summary:\n%s", r)
		}
		if r.parsed.ErrorCount != len(r.parsed.Errors) {
			t.Errorf("summary counts %d errors, %d error lines printed:\n%s", r.parsed.ErrorCount, len(r.parsed.Errors), r)
		}
		answered := map[int]bool{}
		for _, p := range r.parsed.Replies {
			answered[p.Seq] = true
		}
		for _, e := range r.parsed.Errors {
			if e.From != vip || e.Text != text {
				t.Errorf("error line %+v, want From %s with %q:\n%s", e, vip, text, r)
			}
			if e.Seq < 1 || e.Seq > r.parsed.Transmitted || answered[e.Seq] {
				t.Errorf("error for icmp_seq=%d, which this client did not send or had answered already: another's error:\n%s", e.Seq, r)
			}
			answered[e.Seq] = true
		}
	}
	lostTruth := uint64(sent - received - printed)
	var after metrics
	settled := waitFor(errorsSettle+5*time.Second, func() bool {
		after = scrapeM(t, topo)
		return time.Since(ended) >= errorsSettle &&
			after.backend("icmplb_backend_lost_total", be)-before.backend("icmplb_backend_lost_total", be) >= lostTruth
	})
	d := func(name string, kv ...string) uint64 {
		return after.counter(name, kv...) - before.counter(name, kv...)
	}
	requests := d("icmplb_backend_requests_total", "backend", be)
	replies := d("icmplb_backend_replies_total", "backend", be)
	lost := d("icmplb_backend_lost_total", "backend", be)
	errs := d("icmplb_backend_errors_total", "backend", be, "type", typ)
	returned := d("icmplb_packets_total", "verdict", "tx", "reason", "error_returned")
	rtts := after.hist(be).GetSampleCount() - before.hist(be).GetSampleCount()
	t.Logf("clients sent %d, got %d replies and printed %d errors (%s); balancer: requests +%d, replies +%d, errors{type=%q} +%d, tx/error_returned +%d, lost +%d (want %d), RTT samples +%d; settled %v",
		sent, received, printed, errorsBy(runs), requests, replies, typ, errs, returned, lost, lostTruth, rtts, settled)
	t.Logf("packets: %s", after.reasons(before))
	if printed == 0 {
		t.Errorf("no client printed an error:\n%s", runsString(runs))
	}
	if requests != uint64(sent) {
		t.Errorf("%d requests counted for %s, the clients sent %d", requests, be, sent)
	}
	if errs != uint64(printed) || returned != uint64(printed) {
		t.Errorf("%s errors counted %d, returned %d; the clients printed %d", typ, errs, returned, printed)
	}
	for _, other := range errorTypes {
		if n := d("icmplb_backend_errors_total", "backend", be, "type", other); other != typ && n != 0 {
			t.Errorf("%d errors counted as %s, want only %s", n, other, typ)
		}
	}
	if replies != uint64(received) || rtts != uint64(received) {
		t.Errorf("replies +%d, RTT samples +%d; the clients got %d replies", replies, rtts, received)
	}
	if lost != lostTruth {
		t.Errorf("%d requests counted lost; of %d sent, %d were answered by a reply and %d by an error: want %d",
			lost, sent, received, printed, lostTruth)
	}
	if t.Failed() {
		t.Logf("%s", runsString(runs))
	}
}

func errorsBy(runs []pingResult) string {
	var out []string
	for _, r := range runs {
		out = append(out, fmt.Sprintf("%d/%d", len(r.parsed.Errors), r.parsed.Transmitted))
	}
	return "errors/sent per run " + strings.Join(out, " ")
}

func runsString(runs []pingResult) string {
	var b strings.Builder
	for _, r := range runs {
		b.WriteString(r.String())
	}
	return b.String()
}
