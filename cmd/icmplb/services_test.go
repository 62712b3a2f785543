// SPDX-License-Identifier: MIT

package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/icmplb/icmplb/exporter"
	"github.com/icmplb/icmplb/internal/agenttest"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// vip2 is a second VIP on lb, for the tests of several services.
var vip2 = netip.MustParseAddr("10.0.0.101")

func servicesSpec() topology.Spec { return attackSpec(netip.PrefixFrom(vip2, 32)) }

// writeFile writes a services file atomically, as an editor or a
// ConfigMap update does, so that a reload never reads half of it.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// gauge reads a gauge series whose labels match kv; ok is false without one.
func (m metrics) gauge(name string, kv ...string) (float64, bool) {
	for _, s := range m[name].GetMetric() {
		if labelsMatch(s, kv) {
			return s.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

func (m metrics) has(name string, kv ...string) bool {
	for _, s := range m[name].GetMetric() {
		if labelsMatch(s, kv) {
			return true
		}
	}
	return false
}

// reload asks the agent to reload by SIGHUP and waits for the outcome in
// its metrics: true when applied, false when refused.
func reload(t *testing.T, topo *topology.Topology, a *agent) bool {
	t.Helper()
	before := scrapeM(t, topo)
	ok0, fail0 := before.counter("icmplb_config_reloads_total", "result", "success"), before.counter("icmplb_config_reloads_total", "result", "failure")
	if err := a.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var ok bool
	if !waitFor(cmdTimeout, func() bool {
		m := scrapeM(t, topo)
		ok = m.counter("icmplb_config_reloads_total", "result", "success") > ok0
		return ok || m.counter("icmplb_config_reloads_total", "result", "failure") > fail0
	}) {
		t.Fatalf("no reload counted %v after SIGHUP", cmdTimeout)
	}
	return ok
}

// postReload asks for a reload over HTTP: the status code and the body.
func postReload(t *testing.T, topo *topology.Topology) (int, string) {
	t.Helper()
	resp, err := topo.HTTPClient(topology.SeedBalancer).Post("http://"+metricsAddr+"/-/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// TestServicesFromFile: two VIPs from one file, one backend shared by both,
// each VIP answered by its own backends and measured on its own series;
// `icmplb status` shows both.
func TestServicesFromFile(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, servicesSpec())
	file := filepath.Join(t.TempDir(), "services.yml")
	writeFile(t, file, `services:
  - vip: 10.0.0.100
    backends: [10.0.0.2]
  - vip: 10.0.0.101
    backends:
      - 10.0.0.2
      - address: 10.0.0.3
        weight: 3
`)
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--config.file", file, "--web.listen-address", metricsAddr)
	before := snap(t, topo)

	const n, count = 16, 40
	var r1, r2 []pingResult
	var wg sync.WaitGroup
	wg.Go(func() { r1 = pingSessions(topo, topology.SeedClient, n, 100, count, "0.05") })
	// Other echo ids: ping's raw socket sees every reply to its host and
	// keeps those with its id, from whichever address.
	wg.Go(func() { r2 = pingSessionsTo(topo, topology.SeedClient, vip2.String(), n, 200, count, "0.05") })
	// Status reads two scrapes of the API a second apart while they run.
	time.Sleep(200 * time.Millisecond)
	out, stderr, code := lbRun(t, topo, []string{agenttest.Binary(t)}, "status", "--agent", "http://"+metricsAddr, "--interval", "1s", "--output", "json")
	wg.Wait()
	for _, r := range r1 {
		if err := r.check(count, vip); err != nil {
			t.Fatalf("VIP %s: %v\n%s", vip, err, r)
		}
	}
	for _, r := range r2 {
		if err := r.check(count, vip2.String()); err != nil {
			t.Fatalf("VIP %s: %v\n%s", vip2, err, r)
		}
	}
	d := before.since(t, topo)
	m := scrapeM(t, topo)
	to := func(v, be string) uint64 { return m.counter("icmplb_backend_requests_total", "vip", v, "backend", be) }
	t.Logf("requests: %s->h2 %d, %s->h2 %d, %s->h3 %d; the backends received h2 %d, h3 %d",
		vip, to(vip, backend1), vip2, to(vip2.String(), backend1), vip2, to(vip2.String(), backend2), d.h2In, d.h3In)
	if got := to(vip, backend1); got != count*n {
		t.Errorf("%s counted %d requests to h2, want all %d of its pings", vip, got, count*n)
	}
	if got := to(vip2.String(), backend1) + to(vip2.String(), backend2); got != count*n {
		t.Errorf("%s counted %d requests, want its %d pings", vip2, got, count*n)
	}
	if to(vip, backend2) != 0 || m.has("icmplb_backend_requests_total", "vip", vip, "backend", backend2) {
		t.Errorf("a series of h3 for %s, which h3 does not serve", vip)
	}
	if d.h2In != to(vip, backend1)+to(vip2.String(), backend1) || d.h3In != to(vip2.String(), backend2) {
		t.Errorf("backends received h2 %d, h3 %d; the per-VIP counters do not add up to that", d.h2In, d.h3In)
	}
	if w, _ := m.gauge("icmplb_backend_weight", "vip", vip2.String(), "backend", backend2); w != 3 {
		t.Errorf("icmplb_backend_weight of h3 for %s = %v, want 3", vip2, w)
	}

	if code != 0 {
		t.Fatalf("icmplb status: exit %d: %s", code, stderr)
	}
	var rows []exporter.StatusRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("icmplb status -o json: %v\n%s", err, out)
	}
	t.Logf("icmplb status -o json:\n%s", out)
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3 (one per service and backend)", len(rows))
	}
	for _, r := range rows {
		if r.State != exporter.StateUp || r.RequestsPerSecond <= 0 || r.P50 == nil || r.P99 == nil || *r.P50 > *r.P99 {
			t.Errorf("row %+v: want state up, requests flowing and RTT quantiles", r)
		}
		if r.LossRatio != nil && *r.LossRatio != 0 {
			t.Errorf("row %+v: loss %v, but every ping was answered", r, *r.LossRatio)
		}
	}
	table, stderr, code := lbRun(t, topo, []string{agenttest.Binary(t)}, "status", "--agent", "http://"+metricsAddr, "--interval", "500ms")
	t.Logf("icmplb status:\n%s", table)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if code != 0 || len(lines) != 4 || !strings.Contains(lines[0], "P99") || !strings.Contains(lines[3], vip2.String()) {
		t.Errorf("icmplb status: exit %d, stderr %q: want a header and 3 rows", code, stderr)
	}
	_, stderr, code = lbRun(t, topo, []string{agenttest.Binary(t)}, "status", "--agent", "http://127.0.0.1:1")
	if code == 0 || !strings.Contains(stderr, "is it running") {
		t.Errorf("status of no agent: exit %d, stderr %q: want a one-line reason", code, stderr)
	}
}

// pingSessionsTo is pingSessions to another address than the VIP.
func pingSessionsTo(topo *topology.Topology, host, to string, n, first, count int, interval string) []pingResult {
	results := make([]pingResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			results[i] = ping(topo, host, "-n", "-e", strconv.Itoa(first+i), "-c", strconv.Itoa(count), "-i", interval, "-W", "5", to)
		})
	}
	wg.Wait()
	return results
}

// TestReloadUnderFlood adds a backend by reload while `ping -f` floods the
// VIP and other sessions run: not one reply is lost, running sessions stay
// on their backend, and new ones reach the added backend. A broken file is
// refused and changes nothing.
func TestReloadUnderFlood(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, servicesSpec())
	file := filepath.Join(t.TempDir(), "services.yml")
	one := "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2]\n"
	two := "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2, 10.0.0.3]\n"
	writeFile(t, file, one)
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--config.file", file, "--web.listen-address", metricsAddr)

	// A flood sends as fast as replies return: size it from this machine's
	// rate, measured now, to last about 4 s, so that the reload lands in it.
	start := time.Now()
	if r := ping(topo, topology.SeedClient, "-n", "-q", "-f", "-c", "5000", "-W", "5", vip); r.received != 5000 {
		t.Fatalf("calibration flood: %s", r)
	}
	floodCount := min(2_000_000, int(4*5000/time.Since(start).Seconds()))
	before := snap(t, topo)
	var flood pingResult
	var sessions []pingResult
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		flood = ping(topo, topology.SeedClient, "-n", "-q", "-f", "-e", "77", "-c", strconv.Itoa(floodCount), "-W", "5", vip)
	}()
	var wg sync.WaitGroup
	wg.Go(func() { sessions = pingSessions(topo, topology.SeedClient2, 16, 300, 40, "0.05") })
	time.Sleep(500 * time.Millisecond)
	writeFile(t, file, two)
	if !reload(t, topo, a) {
		t.Fatalf("reload refused:\n%s", a.Log())
	}
	select {
	case <-floodDone:
		t.Fatalf("the flood ended before the reload was applied; nothing was tested under load: %s", flood)
	default:
	}
	<-floodDone
	wg.Wait()
	d := before.since(t, topo)
	t.Logf("flood: %d sent, %d received; 16 sessions of 40: %s", flood.sent, flood.received, d)
	if flood.sent == 0 || flood.received != flood.sent {
		t.Errorf("flood lost %d of %d replies across the reload: %s", flood.sent-flood.received, flood.sent, flood)
	}
	for _, r := range sessions {
		if err := r.check(40, vip); err != nil {
			t.Errorf("session across the reload: %v\n%s", err, r)
		}
	}
	if d.h3In != 0 {
		t.Errorf("h3 received %d requests of sessions that ran before it was added: they left their backend", d.h3In)
	}

	// New sessions use the added backend.
	before = snap(t, topo)
	for _, r := range pingSessions(topo, topology.SeedClient, 32, 1000, 1, "0.05") {
		if err := r.check(1, vip); err != nil {
			t.Fatalf("new session: %v\n%s", err, r)
		}
	}
	if d := before.since(t, topo); d.h3In == 0 || d.h2In == 0 {
		t.Errorf("32 new sessions went h2 %d, h3 %d: want both backends used", d.h2In, d.h3In)
	}

	// A broken file: refused by SIGHUP and by POST, the running services stay.
	writeFile(t, file, "services:\n  - vip: 10.0.0.100\n    backends:\n      - address: 10.0.0.2\n        weight: 1001\n")
	if reload(t, topo, a) {
		t.Fatal("a file with weight 1001 was applied")
	}
	code, body := postReload(t, topo)
	t.Logf("POST /-/reload: %d %s", code, body)
	if code != http.StatusInternalServerError || !strings.Contains(body, "services[0].backends[0].weight: must be 0..1000") {
		t.Errorf("POST /-/reload of a broken file: %d %q, want 500 naming the field", code, body)
	}
	m := scrapeM(t, topo)
	if v, _ := m.gauge("icmplb_config_last_reload_successful"); v != 0 {
		t.Errorf("icmplb_config_last_reload_successful = %v after a refused reload, want 0", v)
	}
	if !m.has("icmplb_backend_weight", "backend", backend2) {
		t.Error("the refused reload removed h3")
	}
	before = snap(t, topo)
	for _, r := range pingSessions(topo, topology.SeedClient, 32, 2000, 1, "0.05") {
		if err := r.check(1, vip); err != nil {
			t.Fatalf("after a refused reload: %v\n%s", err, r)
		}
	}
	if d := before.since(t, topo); d.h3In == 0 || d.h2In == 0 {
		t.Errorf("after the refused reload 32 new sessions went h2 %d, h3 %d: the running configuration changed", d.h2In, d.h3In)
	}
	writeFile(t, file, two)
	if code, body := postReload(t, topo); code != http.StatusOK {
		t.Errorf("POST /-/reload of a good file: %d %q", code, body)
	}
	if v, _ := scrapeM(t, topo).gauge("icmplb_config_last_reload_successful"); v != 1 {
		t.Errorf("icmplb_config_last_reload_successful = %v after a good reload, want 1", v)
	}
}

// TestReloadDrain: weight 0 keeps a backend's running sessions and gives it
// no new ones; a backend removed while it has sessions drains the same way,
// and its series go once they have ended.
func TestReloadDrain(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, servicesSpec())
	file := filepath.Join(t.TempDir(), "services.yml")
	both := "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2, 10.0.0.3]\n"
	drained := "services:\n  - vip: 10.0.0.100\n    backends: [{address: 10.0.0.2, weight: 0}, 10.0.0.3]\n"
	removed := "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.3]\n"
	writeFile(t, file, both)
	a := startAgent(t, topo, nil, "run", "--iface", "eth0", "--config.file", file, "--web.listen-address", metricsAddr,
		"--loss-timeout", "300ms", "--nat-idle", "1s")

	// drainWhile runs 16 sessions for 3 s and applies content after 1 s:
	// every reply must come back, and h2 must keep getting requests of
	// the sessions it had.
	drainWhile := func(content string) {
		t.Helper()
		var rs []pingResult
		var wg sync.WaitGroup
		wg.Go(func() { rs = pingSessions(topo, topology.SeedClient, 16, 100, 60, "0.05") })
		time.Sleep(time.Second)
		writeFile(t, file, content)
		if !reload(t, topo, a) {
			t.Fatalf("reload refused:\n%s", a.Log())
		}
		mid := snap(t, topo)
		wg.Wait()
		for _, r := range rs {
			if err := r.check(60, vip); err != nil {
				t.Errorf("session across the drain: %v\n%s", err, r)
			}
		}
		if d := mid.since(t, topo); d.h2In == 0 {
			t.Errorf("h2 got no request after the reload: its running sessions left it (%s)", d)
		} else {
			t.Logf("after the reload h2 still got %d requests of its running sessions (%s)", d.h2In, d)
		}
	}

	drainWhile(drained)
	if w, ok := scrapeM(t, topo).gauge("icmplb_backend_weight", "backend", backend1); !ok || w != 0 {
		t.Errorf("icmplb_backend_weight of h2 = %v (present %v), want 0 while draining", w, ok)
	}
	before := snap(t, topo)
	for _, r := range pingSessions(topo, topology.SeedClient, 32, 1000, 2, "0.05") {
		if err := r.check(2, vip); err != nil {
			t.Fatalf("new session while h2 drains: %v\n%s", err, r)
		}
	}
	if d := before.since(t, topo); d.h2In != 0 {
		t.Errorf("h2 (weight 0) received %d requests of new sessions", d.h2In)
	}

	writeFile(t, file, both)
	if !reload(t, topo, a) {
		t.Fatal("reload refused")
	}
	drainWhile(removed)
	// Its sessions end --nat-idle after their last request; the sweeper
	// then retires the backend and its series go.
	start := time.Now()
	if !waitFor(15*time.Second, func() bool {
		return !scrapeM(t, topo).has("icmplb_backend_requests_total", "backend", backend1)
	}) {
		t.Fatalf("h2's series still exported 15 s after its sessions ended")
	}
	t.Logf("h2's series went %v after its last session's last ping", time.Since(start).Round(100*time.Millisecond))
}

// TestRestartHitless restarts the agent on its pins while a client pings
// every 10 ms: no reply is lost, the session keeps its backend, and the
// counters carry on. Then "detach" takes everything away.
func TestRestartHitless(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	fs := bpffs(t)
	args := []string{"run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--bpffs", fs, "--web.listen-address", metricsAddr}
	first := startAgent(t, topo, nil, args...)
	before := snap(t, topo)
	const count = 600
	var r pingResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		r = ping(topo, topology.SeedClient, "-n", "-q", "-i", "0.01", "-c", strconv.Itoa(count), "-W", "5", vip)
	}()
	time.Sleep(time.Second)
	m1 := scrapeM(t, topo)
	took, err := stopAgent(first)
	if err != nil {
		t.Fatalf("stop: %v", err)
	}
	if x := xdpState(t, topo); x == "" {
		t.Fatal("the program detached when the agent exited with --bpffs.on-exit=keep")
	}
	start := time.Now()
	second := startAgent(t, topo, nil, args...)
	restart := time.Since(start)
	if !strings.Contains(second.Log(), "took_over=true") {
		t.Errorf("the second agent did not take the pinned link over:\n%s", second.Log())
	}
	<-done
	m2 := scrapeM(t, topo)
	d := before.since(t, topo)
	req1 := m1.counter("icmplb_backend_requests_total")
	req2 := m2.counter("icmplb_backend_requests_total")
	t.Logf("stop took %v, the new agent attached %v later; ping: %d sent, %d received; requests counted %d before, %d after; %s",
		took.Round(time.Millisecond), restart.Round(time.Millisecond), r.sent, r.received, req1, req2, d)
	select {
	case <-done:
	default:
	}
	if r.sent != count || r.received != count {
		t.Errorf("%d of %d replies lost across the restart: %s", r.sent-r.received, r.sent, r)
	}
	if req2 < req1 || req2 != uint64(count) {
		t.Errorf("icmplb_backend_requests_total went %d -> %d, want it to carry on to the %d requests sent", req1, req2, count)
	}
	if d.h2In != 0 && d.h3In != 0 {
		t.Errorf("one session went to both backends (%s): it lost its backend in the restart", d)
	}
	if d.lbIn != 0 {
		t.Errorf("lb's kernel answered %d requests: the program was not there for them", d.lbIn)
	}

	// An agent started while another runs waits for it to exit, then
	// takes over. With "detach" it takes the program and the pins away.
	thirdArgs := append(append([]string{}, args...), "--bpffs.on-exit", "detach", "--web.listen-address", "127.0.0.1:10048")
	third := agenttest.Start(t, "icmplb", topo.Command(topology.SeedBalancer, agenttest.Binary(t), healthOff(thirdArgs)...), agenttest.Env())
	t.Cleanup(func() { stopAgent(third) })
	third.WaitLog(t, "waiting for it to exit", attachTimeout)
	if _, err := stopAgent(second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	third.WaitLog(t, "msg=attached", attachTimeout)
	if !strings.Contains(third.Log(), "took_over=true") {
		t.Errorf("the third agent did not take the pinned link over:\n%s", third.Log())
	}
	if _, err := stopAgent(third); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if x := xdpState(t, topo); x != "" {
		t.Errorf("after --bpffs.on-exit=detach, XDP still attached: %s", x)
	}
	if left, _ := filepath.Glob(filepath.Join(fs, "icmplb", "eth0", "*")); len(left) != 0 {
		t.Errorf("after --bpffs.on-exit=detach, pins left: %v", left)
	}
}

// TestPinnedLayoutRefused: pins of another layout are refused, with the
// command that clears them; that command detaches the old program.
func TestPinnedLayoutRefused(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	fs := bpffs(t)
	args := []string{"run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--bpffs", fs}
	if _, err := stopAgent(startAgent(t, topo, nil, args...)); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(fs, "icmplb", "eth0")
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "layout_id"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// As an older or newer icmplb with another map layout would have left.
	if err := m.Put(uint32(0), uint64(0x1c3b)); err != nil {
		t.Fatal(err)
	}
	m.Close()
	_, stderr, code := lbRun(t, topo, []string{agenttest.Binary(t)}, args...)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	t.Logf("refusal: %s", last)
	if code == 0 || !strings.Contains(last, "do not fit this agent") || !strings.Contains(last, "`rm -r "+dir+"`") {
		t.Fatalf("exit %d, stderr %q: want a refusal with the command to clear the pins", code, stderr)
	}
	if x := xdpState(t, topo); x == "" {
		t.Fatal("the refused agent detached the running program")
	}
	if out, err := topo.Run(topology.SeedBalancer, "rm", "-r", dir); err != nil {
		t.Fatalf("rm -r %s: %v %s", dir, err, out)
	}
	if !waitFor(5*time.Second, func() bool { return xdpState(t, topo) == "" }) {
		t.Errorf("XDP still attached after `rm -r %s`: %s", dir, xdpState(t, topo))
	}
	startAgent(t, topo, nil, args...)
}
