// SPDX-License-Identifier: MIT

package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icmplb/icmplb/exporter"
	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/responder"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// stateOf reads a backend's icmplb_backend_state: the state at 1, or "".
func (m metrics) stateOf(be string) string {
	for _, s := range m["icmplb_backend_state"].GetMetric() {
		if labelsMatch(s, []string{"backend", be}) && s.GetGauge().GetValue() == 1 {
			for _, l := range s.GetLabel() {
				if l.GetName() == "state" {
					return l.GetValue()
				}
			}
		}
	}
	return ""
}

// waitState polls until backend be is in state, and returns the interval in
// which it got there: after the start of the last scrape that saw another
// state, before the end of the first that saw it. A poll sees a change up to
// one period late, so a test bounding a duration between two changes must
// take the interval's far ends; the test fails after timeout.
func waitState(t *testing.T, topo *topology.Topology, be, state string, timeout time.Duration) (after, before time.Time) {
	t.Helper()
	var last string
	after = time.Now()
	if !waitFor(timeout, func() bool {
		start := time.Now()
		last = scrapeM(t, topo).stateOf(be)
		if last != state {
			after = start
		}
		return last == state
	}) {
		t.Fatalf("backend %s still %q %v later, want %q", be, last, timeout, state)
	}
	return after, time.Now()
}

// lossOf sums the unanswered requests of ping runs.
func lossOf(rs []pingResult) (sent, lost int) {
	for _, r := range rs {
		sent += r.sent
		lost += r.sent - r.received
	}
	return sent, lost
}

// TestOutlierEjection: a backend that starts losing half of its replies is
// ejected within the window plus one settle period; afterwards the clients'
// running and new sessions lose nothing, answered by the other backend; it
// returns after its ejection time once healthy again.
func TestOutlierEjection(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	const (
		window   = 4 * time.Second
		lossTO   = 500 * time.Millisecond
		ejection = 8 * time.Second
	)
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--web.listen-address", metricsAddr, "--loss-timeout", lossTO.String(), "--nat-idle", "60s",
		"--outlier.window", window.String(), "--outlier.min-requests", "20", "--outlier.max-loss-ratio", "0.2",
		"--outlier.base-ejection-time", ejection.String(), "--outlier.max-ejection-percent", "50", "--probe.interval", "0")

	// 16 running sessions, ids 100..115, about half of them on h3.
	sessions := func(count int) []pingResult {
		return pingSessions(topo, topology.SeedClient, 16, 100, count, "0.05")
	}
	if _, lost := lossOf(sessions(10)); lost != 0 {
		t.Fatalf("%d requests lost while both backends were healthy", lost)
	}

	// h3 starts losing half of its replies.
	lossy := startResponder(t, topo, topology.SeedBackend2, responder.Config{Loss: 0.5, Seed: 7})
	lossStart := time.Now()
	var during []pingResult
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			during = append(during, sessions(10)...)
		}
	})
	settle := lossTO + 1300*time.Millisecond + time.Second // settling, plus the judge's tick
	ejectedAfter, ejectedAt := waitState(t, topo, backend2, "ejected", window+settle+10*time.Second)
	close(done)
	wg.Wait()
	toEject := ejectedAt.Sub(lossStart)
	sentDuring, lostDuring := lossOf(during)
	t.Logf("h3 ejected %v after it started losing half of its replies (window %v + settle %v); clients lost %d of %d meanwhile",
		toEject.Round(100*time.Millisecond), window, settle, lostDuring, sentDuring)
	if toEject > window+settle+2*time.Second {
		t.Errorf("ejected %v after the loss started, want within the window %v plus one settle period %v", toEject, window, settle)
	}
	if lostDuring == 0 {
		t.Errorf("clients lost nothing before the ejection: h3 was not losing, nothing was tested")
	}
	if !strings.Contains(a.Log(), "backend ejected") || !strings.Contains(a.Log(), "reason=loss") {
		t.Errorf("no log line of the ejection with its reason:\n%s", a.Log())
	}

	// Running sessions (same ids) and new ones: all answered, by h2.
	before := snap(t, topo)
	running := sessions(10)
	fresh := pingSessions(topo, topology.SeedClient, 16, 500, 10, "0.05")
	d := before.since(t, topo)
	sentAfter, lostAfter := lossOf(append(running, fresh...))
	t.Logf("after the ejection: clients lost %d of %d (running and new sessions); %s", lostAfter, sentAfter, d)
	if lostAfter != 0 {
		t.Errorf("clients lost %d of %d requests after the ejection, want 0", lostAfter, sentAfter)
	}
	m := scrapeM(t, topo)
	if moved := m.backend("icmplb_backend_sessions_moved_total", backend2); moved == 0 {
		t.Error("no session counted as moved off the ejected backend")
	}
	if n := m.counter("icmplb_backend_ejections_total", "backend", backend2, "reason", "loss"); n != 1 {
		t.Errorf("icmplb_backend_ejections_total{reason=loss} of h3 = %d, want 1", n)
	}
	out, _, _ := lbRun(t, topo, []string{agenttest.Binary(t)}, "status", "--agent", "http://"+metricsAddr, "--interval", "500ms", "-o", "json")
	var rows []exporter.StatusRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, r := range rows {
		if r.Backend.String() == backend2 && (r.State != "ejected" || !strings.Contains(r.Reason, "lost")) {
			t.Errorf("status of h3: %+v, want ejected with the loss figures", r)
		}
	}

	// Healthy again (its kernel answers): back after its ejection time.
	lossy.Close()
	if _, err := topo.Run(topology.SeedBackend2, "sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=0"); err != nil {
		t.Fatal(err)
	}
	healthy := time.Now()
	_, backAt := waitState(t, topo, backend2, "up", ejection+10*time.Second)
	// At the latest seen back minus at the earliest ejected: the longest the
	// ejection can have lasted, which a correct agent holds at least ejection.
	lasted := backAt.Sub(ejectedAfter)
	t.Logf("h3 returned %v after it was healthy again (ejection time %v, counted from the ejection: at most %v)",
		backAt.Sub(healthy).Round(100*time.Millisecond), ejection, lasted.Round(100*time.Millisecond))
	if lasted < ejection {
		t.Errorf("h3 returned at most %v after its ejection, before its ejection time %v", lasted, ejection)
	}
}

// TestProbesTakeOutDeadBackend: a backend whose interface goes down while
// no client pings it is taken out by the probes within fall × interval,
// and comes back once it answers rise probes.
func TestProbesTakeOutDeadBackend(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	const (
		interval = 200 * time.Millisecond
		fall     = 3
		rise     = 2
	)
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--web.listen-address", metricsAddr, "--probe.interval", interval.String(), "--probe.timeout", interval.String(),
		"--probe.fall", "3", "--probe.rise", "2")
	waitFor(5*time.Second, func() bool { return scrapeM(t, topo).backend("icmplb_probe_replies_total", backend2) >= 3 })
	if _, err := topo.Run(topology.SeedBackend2, "ip", "link", "set", "eth0", "down"); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	var state string
	waitFor(fall*interval+5*time.Second, func() bool {
		state = scrapeM(t, topo).stateOf(backend2)
		return state != "up"
	})
	out := time.Since(down)
	t.Logf("h3's link down: out as %q %v later (fall %d × interval %v = %v)", state, out.Round(10*time.Millisecond), fall, interval, fall*interval)
	if state != "probe_failed" {
		t.Fatalf("h3 is %q after its link went down, want probe_failed", state)
	}
	if limit := fall*interval + interval + time.Second; out > limit {
		t.Errorf("taken out %v after its link went down, want within fall × interval plus a probe timeout and a scrape (%v)", out, limit)
	}
	m := scrapeM(t, topo)
	if n := m.counter("icmplb_backend_ejections_total", "backend", backend2, "reason", "probe"); n != 1 {
		t.Errorf("ejections{reason=probe} of h3 = %d, want 1", n)
	}
	if m.backend("icmplb_probe_lost_total", backend2) < fall {
		t.Errorf("icmplb_probe_lost_total of h3 = %d, want at least %d", m.backend("icmplb_probe_lost_total", backend2), fall)
	}
	// New sessions avoid it meanwhile.
	for _, r := range pingSessions(topo, topology.SeedClient, 16, 700, 2, "0.05") {
		if err := r.check(2, vip); err != nil {
			t.Fatalf("session while h3 is out: %v\n%s", err, r)
		}
	}
	if !strings.Contains(a.Log(), "backend failed its probes") {
		t.Errorf("no log line of the probe failure:\n%s", a.Log())
	}
	if _, err := topo.Run(topology.SeedBackend2, "ip", "link", "set", "eth0", "up"); err != nil {
		t.Fatal(err)
	}
	upAt := time.Now()
	waitState(t, topo, backend2, "up", 10*time.Second)
	t.Logf("h3's link up: back %v later (rise %d × interval %v, plus ARP)", time.Since(upAt).Round(10*time.Millisecond), rise, interval)
}

// TestProbesBesideClients: probes every 100 ms and clients at once, one of
// them using the probes' echo id: every client reply reaches its client,
// every probe reply reaches the prober.
func TestProbesBesideClients(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	// The SNAT address is the balancer's own, where the probes come from:
	// the session's replies and the probes' replies reach the same address.
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--snat", lbAddr, "--web.listen-address", metricsAddr, "--probe.interval", "100ms", "--probe.timeout", "100ms")
	before := scrapeM(t, topo)
	var rs []pingResult
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, host := range []string{topology.SeedClient, topology.SeedClient2} {
		wg.Go(func() {
			r := pingSessions(topo, host, 8, 0xfff8, 40, "0.05") // ids 0xfff8..0xffff: 0xfffe is the probes'
			mu.Lock()
			rs = append(rs, r...)
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, r := range rs {
		if err := r.check(40, vip); err != nil {
			t.Errorf("client session beside the probes: %v\n%s", err, r)
		}
	}
	after := scrapeM(t, topo)
	for _, be := range []string{backend1, backend2} {
		req := after.backend("icmplb_probe_requests_total", be) - before.backend("icmplb_probe_requests_total", be)
		rep := after.backend("icmplb_probe_replies_total", be) - before.backend("icmplb_probe_replies_total", be)
		lost := after.backend("icmplb_probe_lost_total", be) - before.backend("icmplb_probe_lost_total", be)
		t.Logf("probes of %s meanwhile: %d sent, %d answered, %d lost", be, req, rep, lost)
		if req == 0 || lost != 0 || rep+1 < req { // the last may be in flight
			t.Errorf("probes of %s: %d sent, %d answered, %d lost: want every probe answered", be, req, rep, lost)
		}
		if after.stateOf(be) != "up" {
			t.Errorf("%s is %q", be, after.stateOf(be))
		}
	}
	if n := after.reason("probe_reply") - before.reason("probe_reply"); n == 0 {
		t.Error("no probe reply crossed the data plane as probe_reply")
	}
}

// TestAllDown: every backend's probes fail while the clients' traffic
// still gets through (the backends cannot answer the balancer's own
// address). Failing open keeps serving the clients; pass hands them to this
// host's kernel. icmplb_service_all_down says so either way.
func TestAllDown(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	file := filepath.Join(t.TempDir(), "services.yml")
	conf := func(mode string) string {
		return "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2, 10.0.0.3]\n    probe: {interval: 200ms, timeout: 200ms, fall: 2}\n    all_down: " + mode + "\n"
	}
	writeFile(t, file, conf("fail-open"))
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--config.file", file, "--web.listen-address", metricsAddr)
	for _, h := range []string{topology.SeedBackend1, topology.SeedBackend2} {
		// Replies to the balancer's own address go nowhere.
		if _, err := topo.Run(h, "ip", "route", "add", "blackhole", lbAddr+"/32"); err != nil {
			t.Fatal(err)
		}
	}
	waitState(t, topo, backend1, "probe_failed", 10*time.Second)
	waitState(t, topo, backend2, "probe_failed", 10*time.Second)
	if v, _ := scrapeM(t, topo).gauge("icmplb_service_all_down", "vip", vip); v != 1 {
		t.Errorf("icmplb_service_all_down = %v with every backend's probes failing, want 1", v)
	}
	probes := func(m metrics) uint64 { return m.counter("icmplb_probe_requests_total") }
	// Probes are read before and after the backends' counts, so that every
	// probe the backends count is in pd; one per backend may be on its way
	// as the probe count is read.
	p0 := probes(scrapeM(t, topo))
	before := snap(t, topo)
	rs := pingSessions(topo, topology.SeedClient, 8, 900, 5, "0.05")
	d := before.since(t, topo)
	pd := probes(scrapeM(t, topo)) - p0
	for _, r := range rs {
		if err := r.check(5, vip); err != nil {
			t.Errorf("fail-open: %v\n%s", err, r)
		}
	}
	t.Logf("fail-open: %s, of which %d probes", d, pd)
	if d.backends() < 40 || d.backends() > 40+pd+2 || d.lbOut != 0 {
		t.Errorf("fail-open: want the backends to answer all 40 requests; %s, of which %d probes", d, pd)
	}

	writeFile(t, file, conf("pass"))
	if !reload(t, topo, a) {
		t.Fatalf("reload refused:\n%s", a.Log())
	}
	m0 := scrapeM(t, topo)
	before = snap(t, topo)
	rs = pingSessions(topo, topology.SeedClient, 8, 950, 5, "0.05")
	d = before.since(t, topo)
	m1 := scrapeM(t, topo)
	passed, pd := m1.reason("all_down")-m0.reason("all_down"), probes(m1)-probes(m0)
	t.Logf("pass: %s, of which %d probes; all_down +%d", d, pd, passed)
	for _, r := range rs {
		if r.received != 5 {
			t.Errorf("pass: %v", r)
		}
	}
	if d.backends() > pd+2 || d.lbOut != 40 || passed != 40 {
		t.Errorf("pass: want this host's kernel to answer all 40 requests, counted all_down; %s, all_down +%d", d, passed)
	}
}
