package main

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"os/exec"
	"strconv"
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
func pingSessions(topo *topology.Topology, host string, n, first, count int, interval string) []pingResult {
	results := make([]pingResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			results[i] = ping(topo, host, "-q", "-e", strconv.Itoa(first+i), "-c", strconv.Itoa(count),
				"-i", interval, "-W", "2", vip)
		})
	}
	wg.Wait()
	return results
}

// TestMeasuredLatencyAndLoss checks the agent's measurements against backends
// whose delay and loss are set: h2 answers in 2 ms and loses nothing, h3
// answers in 20 ms and loses 30%. Requests go out every 10 ms per session,
// so two or three are in flight at once and replies must be matched by
// sequence.
func TestMeasuredLatencyAndLoss(t *testing.T) {
	testenv.Privileged(t)
	topo := topology.NewT(t, topology.Seed())
	configs := map[string]responder.Config{
		backend1: {Delay: 2 * time.Millisecond, Seed: 1},
		backend2: {Delay: 20 * time.Millisecond, Loss: 0.3, Seed: 2},
	}
	resp := map[string]*responder.Responder{
		backend1: startResponder(t, topo, topology.SeedBackend1, configs[backend1]),
		backend2: startResponder(t, topo, topology.SeedBackend2, configs[backend2]),
	}
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1, "--backend", backend2,
		"--web.listen-address", metricsAddr, "--loss-timeout", "1s")

	for _, r := range pingSessions(topo, topology.SeedClient, 16, 2000, 200, "0.01") {
		if r.sent != 200 {
			t.Fatalf("ping session did not send all its requests: %s", r)
		}
	}

	// Loss is settled a loss timeout plus up to ~1.3 s after a request.
	var mfs map[string]*dto.MetricFamily
	deadline := time.Now().Add(10 * time.Second)
	for {
		mfs = scrape(t, topo)
		settled := true
		for be := range configs {
			req, _, dropped := resp[be].Stats()
			if counterOf(mfs, "icmplb_backend_requests_total", be) != req ||
				counterOf(mfs, "icmplb_backend_lost_total", be) < dropped {
				settled = false
			}
		}
		if settled || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}

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
		requests := counterOf(mfs, "icmplb_backend_requests_total", be)
		replies := counterOf(mfs, "icmplb_backend_replies_total", be)
		lost := counterOf(mfs, "icmplb_backend_lost_total", be)
		late := counterOf(mfs, "icmplb_backend_late_replies_total", be)
		h := backendMetric(mfs, "icmplb_backend_rtt_seconds", be).GetHistogram()
		p50 := histquant.Quantile(0.5, h)
		p99 := histquant.Quantile(0.99, h)
		lossRatio := float64(lost) / float64(requests)
		seen, replied, dropped := resp[be].Stats()
		t.Logf("backend %s (delay %v, loss %.0f%%): requests %d, replies %d, lost %d (ratio %.4f), late %d; p50 %.3f ms, p99 %.3f ms; responder saw %d, replied %d, dropped %d",
			be, cfg.Delay, cfg.Loss*100, requests, replies, lost, lossRatio, late, p50*1e3, p99*1e3, seen, replied, dropped)

		if requests < 500 {
			t.Errorf("backend %s got only %d requests: the test needs both backends busy", be, requests)
		}
		if requests != seen {
			t.Errorf("backend %s: %d requests counted, the backend received %d", be, requests, seen)
		}
		if replies != replied || h.GetSampleCount()+late != replies {
			t.Errorf("backend %s: %d replies counted, %d in the histogram + %d late, the backend sent %d",
				be, replies, h.GetSampleCount(), late, replied)
		}
		if rel := math.Abs(p50-cfg.Delay.Seconds()) / cfg.Delay.Seconds(); rel > 0.10 {
			t.Errorf("backend %s: p50 RTT %.3f ms is %.1f%% off the configured %v", be, p50*1e3, rel*100, cfg.Delay)
		}
		if d := math.Abs(lossRatio - cfg.Loss); d > 0.02 {
			t.Errorf("backend %s: loss ratio %.4f, configured %.2f (%.1f points off)", be, lossRatio, cfg.Loss, d*100)
		}
		if lost != dropped {
			t.Errorf("backend %s: %d lost counted, the backend dropped %d", be, lost, dropped)
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
			startResponder(t, topo, topology.SeedBackend1, responder.Config{Delay: 3 * time.Millisecond, Seed: 1})
			lossy := startResponder(t, topo, topology.SeedBackend2, responder.Config{Delay: 3 * time.Millisecond, Loss: 0.5, Seed: 2})
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
			spans, err := rcv.WaitSpans(sent, 10*time.Second)
			if err != nil {
				t.Fatalf("%v: %d spans of %d exchanges arrived", err, len(rcv.Spans()), sent)
			}
			_, _, dropped := lossy.Stats()
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
					if math.Abs(d.Seconds()-rtt) > 1e-9 || d < 3*time.Millisecond || d > 50*time.Millisecond {
						t.Errorf("answered span lasts %v with RTT attribute %v s, want the RTT of a 3 ms backend", d, rtt)
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
			t.Logf("%s: %d spans for %d exchanges, %d lost", proto, len(spans), sent, lostSpans)
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
	startResponder(t, topo, topology.SeedBackend1, responder.Config{Delay: 10 * time.Millisecond, Seed: 1})
	startAgent(t, topo, nil, "run", "--iface", "eth0", "--vip", vip, "--backend", backend1,
		"--web.listen-address", metricsAddr)

	runs := []pingResult{
		ping(topo, topology.SeedClient, "-q", "-e", "7000", "-c", "500", "-i", "0.002", "-W", "2", vip),
		ping(topo, topology.SeedClient, "-q", "-e", "7001", "-f", "-c", "300", "-W", "2", vip),
	}
	sent := uint64(0)
	for _, r := range runs {
		if r.received != r.sent || r.sent == 0 {
			t.Fatalf("not every request answered: %s", r)
		}
		sent += uint64(r.sent)
	}
	mfs := scrape(t, topo)
	requests := counterOf(mfs, "icmplb_backend_requests_total", backend1)
	replies := counterOf(mfs, "icmplb_backend_replies_total", backend1)
	unmatched := counterOf(mfs, "icmplb_backend_unmatched_replies_total", backend1)
	h := backendMetric(mfs, "icmplb_backend_rtt_seconds", backend1).GetHistogram()
	p50 := histquant.Quantile(0.5, h)
	t.Logf("%d requests, %d replies, %d unmatched, %d measured, p50 %.3f ms", requests, replies, unmatched, h.GetSampleCount(), p50*1e3)
	if requests != sent || replies != sent || unmatched != 0 || h.GetSampleCount() != sent {
		t.Errorf("%d sent: %d requests, %d replies, %d unmatched, %d measured; want every one matched and measured",
			sent, requests, replies, unmatched, h.GetSampleCount())
	}
	if rel := math.Abs(p50-0.010) / 0.010; rel > 0.10 {
		t.Errorf("p50 %.3f ms, %.1f%% off the backend's 10 ms", p50*1e3, rel*100)
	}
}
