// SPDX-License-Identifier: MIT

package main

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.opentelemetry.io/otel/codes"

	"github.com/icmplb/icmplb/internal/histquant"
	"github.com/icmplb/icmplb/internal/otlptest"
	"github.com/icmplb/icmplb/internal/responder"
	"github.com/icmplb/icmplb/internal/testenv"
	"github.com/icmplb/icmplb/internal/topology"
)

// metricsAddr is where the agent serves metrics in the lb namespace: every
// namespace has its own loopback, so a fixed port never collides.
const metricsAddr = "127.0.0.1:10047"

// startResponder makes host answer pings itself with cfg's delay and loss.
func startResponder(t *testing.T, topo *topology.Topology, host string, cfg responder.Config) *responder.Responder {
	t.Helper()
	if err := responder.DisableKernelEcho(topo, host); err != nil {
		t.Fatal(err)
	}
	var r *responder.Responder
	err := topo.InNS(host, func() error {
		var err error
		r, err = responder.Listen(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("responder on %s: %v", host, err)
	}
	go r.Serve()
	t.Cleanup(func() { r.Close() })
	return r
}

// scrape fetches /metrics from the agent in lb as protobuf, the format that
// carries native histograms.
func scrape(t *testing.T, topo *topology.Topology) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+metricsAddr+"/metrics", nil)
	req.Header.Set("Accept", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	resp, err := topo.HTTPClient(topology.SeedBalancer).Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	dec := expfmt.NewDecoder(bytes.NewReader(body), expfmt.NewFormat(expfmt.TypeProtoDelim))
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			break
		}
		out[mf.GetName()] = mf
	}
	return out
}

// backendMetric finds a backend's series of a family.
func backendMetric(mfs map[string]*dto.MetricFamily, name, backend string) *dto.Metric {
	for _, m := range mfs[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "backend" && l.GetValue() == backend {
				return m
			}
		}
	}
	return nil
}

func counterOf(mfs map[string]*dto.MetricFamily, name, backend string) uint64 {
	return uint64(backendMetric(mfs, name, backend).GetCounter().GetValue())
}

// pingSessions runs n concurrent ping sessions from host, each with its own
// echo identifier (first, first+1, ...) and count requests every interval.
// Each result has the round trip of every reply as the client saw it.
func pingSessions(topo *topology.Topology, host string, n, first, count int, interval string) []pingResult {
	results := make([]pingResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			results[i] = ping(topo, host, "-n", "-e", strconv.Itoa(first+i), "-c", strconv.Itoa(count),
				"-i", interval, "-W", "5", vip)
		})
	}
	wg.Wait()
	return results
}

// backendTruth is what happened to the client exchanges through one
// backend, measured in the same run outside the balancer: the responder's
// record, and for every reply the round trip its client saw. Each round
// trip the balancer measures lies between the two: it sees the request
// before the backend received it and the reply after the backend sent it,
// and the client sent before and received after the balancer saw them.
type backendTruth struct {
	requests, replied, dropped uint64
	// holds and client are in seconds, one per reply, unordered. A reply
	// its client never got has +Inf in client: nothing bounds it above.
	holds, client []float64
	// undelivered counts those replies.
	undelivered int
}

// over counts the values above d.
func over(xs []float64, d time.Duration) (n uint64) {
	for _, x := range xs {
		if x > d.Seconds() {
			n++
		}
	}
	return n
}

// natSession is one echo identifier as a backend saw it (behind the NAT).
type natSession struct {
	backend  string
	id       int
	sent     int
	answered map[int]bool
	taken    bool
}

// truthOf gathers the truth of each backend from its responder (requests
// from the VIP, the balancer's source address: nothing else reaches the
// backends through it) and from the ping sessions that used it. A session's
// backend is found by its fingerprint: it sent as many requests as one NAT
// session (echo identifier) at a backend received, and every reply it got
// is one that NAT session's backend sent; of those, the NAT session that
// sent the fewest replies the client did not get. The loss scheme drops
// different sequence numbers in each block, so a session on a lossy backend
// fits only its own NAT session, and one on a lossless backend only NAT
// sessions of that backend, unless it lost replies on the way back.
func truthOf(t *testing.T, resp map[string]*responder.Responder, sessions []pingResult) map[string]*backendTruth {
	t.Helper()
	out := map[string]*backendTruth{}
	var nats []*natSession
	for be, r := range resp {
		bt := &backendTruth{}
		out[be] = bt
		byID := map[int]*natSession{}
		for _, e := range r.Exchanges() {
			if e.Src != topology.SeedVIP {
				continue
			}
			bt.requests++
			n := byID[e.ID]
			if n == nil {
				n = &natSession{backend: be, id: e.ID, answered: map[int]bool{}}
				byID[e.ID] = n
				nats = append(nats, n)
			}
			n.sent++
			switch {
			case e.Dropped:
				bt.dropped++
			case e.Replied():
				bt.replied++
				bt.holds = append(bt.holds, e.Hold().Seconds())
				n.answered[e.Seq] = true
			}
		}
	}
	for _, s := range sessions {
		var rtts []float64
		got := map[int]bool{}
		for _, p := range s.parsed.Replies {
			if !p.Dup {
				got[p.Seq] = true
				rtts = append(rtts, p.Max.Seconds())
			}
		}
		var best *natSession
		bestMissing, tie := 0, false
	nat:
		for _, n := range nats {
			if n.taken || n.sent != s.sent {
				continue
			}
			for seq := range got {
				if !n.answered[seq] {
					continue nat
				}
			}
			switch missing := len(n.answered) - len(got); {
			case best == nil || missing < bestMissing:
				best, bestMissing, tie = n, missing, false
			case missing == bestMissing && n.backend != best.backend:
				tie = true
			}
		}
		if best == nil || tie {
			t.Errorf("ping session %v (sent %d, got %d replies) fits no NAT session at one backend alone:\n%s",
				s.args, s.sent, len(got), s.out)
			continue
		}
		best.taken = true
		bt := out[best.backend]
		bt.client = append(bt.client, rtts...)
		for range bestMissing {
			bt.client = append(bt.client, math.Inf(1))
		}
		bt.undelivered += bestMissing
	}
	if t.Failed() {
		for _, n := range nats {
			if !n.taken {
				t.Logf("unmatched NAT session: backend %s id %d, %d requests, %d answered", n.backend, n.id, n.sent, len(n.answered))
			}
		}
	}
	return out
}

// softnetDrops sums the packets the kernel dropped because a CPU's backlog
// was full (the second column of /proc/net/softnet_stat), machine-wide: a
// busy machine drops there, after the balancer has done its part.
func softnetDrops(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		t.Logf("read softnet_stat: %v", err)
		return 0
	}
	var sum uint64
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 1 {
			v, _ := strconv.ParseUint(f[1], 16, 64)
			sum += v
		}
	}
	return sum
}

// judgeRTT checks a backend's RTT histogram against the truth of the same
// run at several quantiles, within the histogram's resolution (a bucket,
// about 9%), and logs the comparison.
func judgeRTT(t *testing.T, be string, h *dto.Histogram, bt *backendTruth) {
	t.Helper()
	for _, q := range []float64{0.1, 0.5, 0.9, 0.99} {
		k := histquant.Rank(q, h.GetSampleCount())
		t.Logf("backend %s p%g: measured %.3f ms; true value between the hold %.3f ms and the client's %.3f ms",
			be, q*100, histquant.Quantile(q, h)*1e3, histquant.Nth(k, bt.holds)*1e3, histquant.Nth(k, bt.client)*1e3)
		if err := histquant.Check(q, h, bt.holds, bt.client); err != nil {
			t.Errorf("backend %s: %v", be, err)
		}
	}
}

// TestMeasuredLatencyAndLoss checks the agent's measurements against what
// the backends and the clients measured in the same run: h2 answers after
// 2 ms and loses nothing, h3 after 20 ms and loses 30%. Requests go out
// every 10 ms per session, so two or three are in flight at once and
// replies must be matched by sequence. The configured delays are never the
// reference: a busy machine holds replies longer (see backendTruth).
func TestMeasuredLatencyAndLoss(t *testing.T) {
	testenv.Privileged(t)
	const lossTimeout = time.Second
	topo := topology.NewT(t, topology.Seed())
	configs := map[string]responder.Config{
		backend1: {Delay: 2 * time.Millisecond, Seed: 1, Record: true},
		backend2: {Delay: 20 * time.Millisecond, Loss: 0.3, Seed: 2, Record: true},
	}
	resp := map[string]*responder.Responder{
		backend1: startResponder(t, topo, topology.SeedBackend1, configs[backend1]),
		backend2: startResponder(t, topo, topology.SeedBackend2, configs[backend2]),
	}
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--web.listen-address", metricsAddr, "--loss-timeout", lossTimeout.String())

	drops := softnetDrops(t)
	sessions := pingSessions(topo, topology.SeedClient, 16, 2000, 200, "0.01")
	drops = softnetDrops(t) - drops
	for _, r := range sessions {
		if r.sent != 200 {
			t.Fatalf("ping session did not send all its requests: %s", r)
		}
	}

	// A request's loss is settled a loss timeout plus a sweep after it was
	// sent; replies still held by a busy responder arrive meanwhile.
	var mfs map[string]*dto.MetricFamily
	var truth map[string]*backendTruth
	deadline := time.Now().Add(30 * time.Second)
	for {
		mfs = scrape(t, topo)
		settled := true
		for be, r := range resp {
			req, replied, dropped := r.Stats()
			if counterOf(mfs, "icmplb_backend_requests_total", be) != req ||
				counterOf(mfs, "icmplb_backend_replies_total", be) != replied ||
				counterOf(mfs, "icmplb_backend_lost_total", be) < dropped {
				settled = false
			}
		}
		if settled || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	truth = truthOf(t, resp, sessions)

	promtoolCheck(t, topo)

	// Every reply found its session: a miss would be a reply passed to the
	// kernel instead of returned to its client.
	for _, m := range mfs["icmplb_packets_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetValue() == "conntrack_miss" && m.GetCounter().GetValue() != 0 {
				t.Errorf("%v replies missed their conntrack entry", m.GetCounter().GetValue())
			}
		}
	}
	for be, cfg := range configs {
		bt := truth[be]
		requests := counterOf(mfs, "icmplb_backend_requests_total", be)
		replies := counterOf(mfs, "icmplb_backend_replies_total", be)
		lost := counterOf(mfs, "icmplb_backend_lost_total", be)
		late := counterOf(mfs, "icmplb_backend_late_replies_total", be)
		h := backendMetric(mfs, "icmplb_backend_rtt_seconds", be).GetHistogram()
		lossRatio := float64(lost) / float64(requests)
		t.Logf("backend %s (configured delay %v, loss %.0f%%): requests %d, replies %d, lost %d (ratio %.4f), late %d; responder saw %d, replied %d, dropped %d; clients got %d replies",
			be, cfg.Delay, cfg.Loss*100, requests, replies, lost, lossRatio, late, bt.requests, bt.replied, bt.dropped, len(bt.client)-bt.undelivered)

		if requests < 500 {
			t.Errorf("backend %s got only %d requests: the test needs both backends busy", be, requests)
		}
		if requests != bt.requests {
			t.Errorf("backend %s: %d requests counted, the backend received %d", be, requests, bt.requests)
		}
		if replies != bt.replied || h.GetSampleCount()+late != replies {
			t.Errorf("backend %s: %d replies counted, %d in the histogram + %d late, the backend sent %d",
				be, replies, h.GetSampleCount(), late, bt.replied)
		}
		// A reply lost after the balancer counted it is no error of its
		// measurement (the machine's backlogs overflow under load); the
		// reply is then bounded only below.
		if bt.undelivered > 0 {
			t.Logf("backend %s: %d replies the balancer counted never reached their client (kernel backlog drops machine-wide meanwhile: %d)",
				be, bt.undelivered, drops)
		}
		// A reply later than the loss timeout is a request counted lost,
		// then a late reply. Which replies were that late the truth
		// tells: those the backend held longer for sure, those the client
		// waited longer for at most.
		if lost != bt.dropped+late {
			t.Errorf("backend %s: %d lost counted, the backend dropped %d and %d replies came late", be, lost, bt.dropped, late)
		}
		if lo, hi := over(bt.holds, lossTimeout), over(bt.client, lossTimeout); late < lo || late > hi {
			t.Errorf("backend %s: %d replies counted late; %d were held longer than the loss timeout %v, and the clients waited longer for %d",
				be, late, lo, lossTimeout, hi)
		}
		if h.GetSampleCount() > 0 {
			judgeRTT(t, be, h, bt)
		}
	}
}

// TestTracesOverOTLP runs the agent with every exchange sampled and checks the
// spans that reach a real OTLP receiver, over gRPC and over HTTP.
func TestTracesOverOTLP(t *testing.T) {
	for _, proto := range []string{"grpc", "http/protobuf"} {
		t.Run(proto, func(t *testing.T) {
			testenv.Privileged(t)
			t.Parallel()
			topo := topology.NewT(t, topology.Seed())
			// The agent runs in lb, so the receiver listens there.
			var rcv *otlptest.Receiver
			err := topo.InNS(topology.SeedBalancer, func() error {
				if proto == "grpc" {
					rcv = otlptest.NewGRPC(t)
				} else {
					rcv = otlptest.NewHTTP(t)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			endpoint := rcv.Endpoint()
			if proto == "grpc" {
				endpoint = "http://" + endpoint
			}
			good := startResponder(t, topo, topology.SeedBackend1, responder.Config{Delay: 3 * time.Millisecond, Seed: 1, Record: true})
			lossy := startResponder(t, topo, topology.SeedBackend2, responder.Config{Delay: 3 * time.Millisecond, Loss: 0.5, Seed: 2, Record: true})
			startAgent(t, topo, []string{
				"OTEL_EXPORTER_OTLP_ENDPOINT=" + endpoint,
				"OTEL_EXPORTER_OTLP_PROTOCOL=" + proto,
				"OTEL_BSP_SCHEDULE_DELAY=100",
			}, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
				"--web.listen-address", metricsAddr, "--trace.sample", "1", "--loss-timeout", "500ms")

			start := time.Now()
			results := pingSessions(topo, topology.SeedClient, 8, 3000, 10, "0.02")
			end := time.Now()
			sent := 0
			for _, r := range results {
				sent += r.sent
			}
			spans, err := rcv.WaitSpans(sent, 30*time.Second)
			if err != nil {
				t.Fatalf("%v: %d spans of %d exchanges arrived", err, len(rcv.Spans()), sent)
			}
			_, _, dropped := lossy.Stats()
			// An answered span lasts the balancer's RTT, which is at least
			// the backend's hold of the request and at most the round trip
			// the client saw.
			minHold, maxClient := time.Duration(math.MaxInt64), time.Duration(0)
			for _, r := range []*responder.Responder{good, lossy} {
				for _, e := range r.Exchanges() {
					if e.Replied() {
						minHold = min(minHold, e.Hold())
					}
				}
			}
			// The round trip each client printed, by (echo id, sequence):
			// ping stops waiting twice its longest round trip after its
			// last request, so a reply the balancer returned later is one
			// no client printed, and nothing bounds its span above.
			type exchange struct{ id, seq int64 }
			printed := map[exchange]time.Duration{}
			for i, r := range results {
				for _, p := range r.parsed.Replies {
					maxClient = max(maxClient, p.Max)
					printed[exchange{int64(3000 + i), int64(p.Seq)}] = p.Max
				}
			}
			lostSpans := 0
			for _, s := range spans {
				if s.Name != "icmp echo" {
					t.Errorf("span named %q", s.Name)
					continue
				}
				id, _ := s.Attrs["icmp.echo.identifier"].(int64)
				if s.Attrs["icmplb.vip"] != vip || s.Attrs["network.peer.address"] != topology.SeedH1.String() ||
					(s.Attrs["icmplb.backend"] != backend1 && s.Attrs["icmplb.backend"] != backend2) ||
					id < 3000 || id >= 3008 || s.Attrs["icmp.echo.sequence"] == nil {
					t.Errorf("span attributes %v", s.Attrs)
				}
				if s.Start.Before(start) || s.End.After(end.Add(time.Second)) {
					t.Errorf("span %v..%v outside the run %v..%v: kernel clock not converted to wall clock", s.Start, s.End, start, end)
				}
				switch s.StatusCode {
				case codes.Ok:
					rtt, _ := s.Attrs["icmplb.rtt_seconds"].(float64)
					d := s.End.Sub(s.Start)
					seq, _ := s.Attrs["icmp.echo.sequence"].(int64)
					client, ok := printed[exchange{id, seq}]
					if !ok {
						client = time.Duration(math.MaxInt64)
					}
					if math.Abs(d.Seconds()-rtt) > 1e-9 || d < minHold || d > client {
						t.Errorf("answered span of id %d seq %d lasts %v with RTT attribute %v s, want between the backends' shortest hold %v and the round trip its client printed %v",
							id, seq, d, rtt, minHold, client)
					}
				case codes.Error:
					lostSpans++
					if s.Attrs["icmplb.backend"] != backend2 || s.Attrs["icmplb.lost"] != true || s.End.Sub(s.Start) != 500*time.Millisecond {
						t.Errorf("lost span %+v: want backend %s, lost, 500ms", s, backend2)
					}
				default:
					t.Errorf("span status %v", s.StatusCode)
				}
				if s.Resource["service.name"] != "icmplb" || s.Resource["icmplb.iface"] != "eth0" || s.Resource["host.name"] == nil {
					t.Errorf("resource %v", s.Resource)
				}
			}
			if uint64(lostSpans) != dropped {
				t.Errorf("%d spans with an error status, the lossy backend dropped %d requests", lostSpans, dropped)
			}
			t.Logf("%s: %d spans for %d exchanges, %d lost; answered spans judged against holds from %v and client round trips up to %v",
				proto, len(spans), sent, lostSpans, minHold, maxClient)
		})
	}
}

// promtoolCheck runs Prometheus's linter on a text scrape of the real agent.
func promtoolCheck(t *testing.T, topo *topology.Topology) {
	t.Helper()
	promtool := testenv.Tool(t, "promtool", "prometheus")
	resp, err := topo.HTTPClient(topology.SeedBalancer).Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = resp.Body
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("promtool check metrics on the agent's scrape: %v\n%s", err, out)
	}
}

// TestManyInFlight sends one session's requests faster than the backend
// answers (every 2 ms against 10 ms, then a flood): every reply must be
// matched with its own request by sequence number and measured.
func TestManyInFlight(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	r := startResponder(t, topo, topology.SeedBackend1, responder.Config{Delay: 10 * time.Millisecond, Seed: 1, Record: true})
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1,
		"--web.listen-address", metricsAddr)

	runs := []pingResult{
		ping(topo, topology.SeedClient, "-n", "-e", "7000", "-c", "500", "-i", "0.002", "-W", "5", vip),
		ping(topo, topology.SeedClient, "-q", "-e", "7001", "-f", "-c", "300", "-W", "5", vip),
	}
	sent := uint64(0)
	for _, r := range runs {
		if r.received != r.sent || r.sent == 0 {
			t.Fatalf("not every request answered: %s", r)
		}
		sent += uint64(r.sent)
	}
	// The replies have all reached the client, so the balancer has counted
	// them; a scrape is consistent in itself.
	mfs := scrape(t, topo)
	requests := counterOf(mfs, "icmplb_backend_requests_total", backend1)
	replies := counterOf(mfs, "icmplb_backend_replies_total", backend1)
	unmatched := counterOf(mfs, "icmplb_backend_unmatched_replies_total", backend1)
	h := backendMetric(mfs, "icmplb_backend_rtt_seconds", backend1).GetHistogram()
	t.Logf("%d requests, %d replies, %d unmatched, %d measured", requests, replies, unmatched, h.GetSampleCount())
	if requests != sent || replies != sent || unmatched != 0 || h.GetSampleCount() != sent {
		t.Errorf("%d sent: %d requests, %d replies, %d unmatched, %d measured; want every one matched and measured",
			sent, requests, replies, unmatched, h.GetSampleCount())
	}

	// The truth: the responder's holds, and the client's round trips; a
	// flood prints no per-reply times, so each of its replies is bounded
	// by the flood's longest round trip.
	bt := &backendTruth{}
	for _, e := range r.Exchanges() {
		if e.Replied() && e.Src == topology.SeedVIP {
			bt.holds = append(bt.holds, e.Hold().Seconds())
		}
	}
	bt.client = runs[0].parsed.Bounds()
	for range runs[1].parsed.Received {
		bt.client = append(bt.client, runs[1].parsed.MaxBound.Seconds())
	}
	if len(bt.holds) != int(sent) || len(bt.client) != int(sent) {
		t.Fatalf("%d sent, the responder answered %d, the client printed %d round trips", sent, len(bt.holds), len(bt.client))
	}
	judgeRTT(t, backend1, h, bt)
}
