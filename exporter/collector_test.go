// SPDX-License-Identifier: MIT

package exporter

import (
	"errors"
	"math"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/icmplb/icmplb/exporter/telemetry"
	"github.com/icmplb/icmplb/internal/histquant"
)

type fakeSource struct {
	snap *telemetry.Snapshot
	err  error
}

func (f *fakeSource) Snapshot() (*telemetry.Snapshot, error) { return f.snap, f.err }

var (
	testVIP = netip.MustParseAddr("10.0.0.100")
	testBE1 = netip.MustParseAddr("10.0.0.2")
	testBE2 = netip.MustParseAddr("10.0.0.3")
)

// newRTT is an empty histogram of the data plane's layout: schema 3 and a
// zero bucket up to 2^-20 s (bpf/rtt.go); the collector reads the layout
// from the histogram, so these tests need not import the data plane.
func newRTT() telemetry.Histogram {
	return telemetry.Histogram{Schema: 3, Offset: 160, Buckets: make([]uint64, 256)}
}

// bucketOf is the bucket of h an RTT falls in (the float reference of the
// data plane's mapping, see bpf/rtt_test.go).
func bucketOf(h *telemetry.Histogram, d time.Duration) int {
	for k := range h.Buckets {
		if d.Seconds() <= h.UpperBound(k) {
			return k
		}
	}
	return len(h.Buckets) - 1
}

// testVerdicts are verdicts as the balancer names them, with the reasons
// of its own loss marked.
var testVerdicts = []telemetry.Verdict{
	{Verdict: "tx", Reason: "request_forwarded"},
	{Verdict: "tx", Reason: "reply_returned"},
	{Verdict: "pass", Reason: "not_ip"},
	{Verdict: "pass", Reason: "nat_exhausted", BalancerLoss: true},
	{Verdict: "drop", Reason: "inflight_full", BalancerLoss: true},
}

func snapshotWith(rtts map[netip.Addr][]time.Duration) *telemetry.Snapshot {
	snap := &telemetry.Snapshot{Verdicts: slices.Clone(testVerdicts),
		Services: []telemetry.Service{{VIP: testVIP, SNAT: testVIP, BalancerLost: map[string]uint64{}}}}
	for _, addr := range []netip.Addr{testBE1, testBE2} {
		b := telemetry.Backend{VIP: testVIP, Addr: addr, Up: addr == testBE1, Requests: 10, Replies: 7, Lost: 3,
			RequestBytes: 980, ReplyBytes: 686, Late: 1, Unmatched: 2, RTT: newRTT(),
			Errors: map[string]uint64{telemetry.ErrorUnreachable: 5, telemetry.ErrorTimeExceeded: 1}}
		for _, d := range rtts[addr] {
			b.RTT.Buckets[bucketOf(&b.RTT, d)]++
			b.RTT.Sum += d
		}
		snap.Backends = append(snap.Backends, b)
	}
	snap.Conntrack = telemetry.Conntrack{Known: true, Sessions: 5, Capacity: 100, InFlight: 2, InFlightCapacity: 400}
	snap.TraceEventsDropped = 4
	return snap
}

func gather(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func labelsOf(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return strings.Join(parts, ",")
}

func value(t *testing.T, mfs map[string]*dto.MetricFamily, name, labels string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("metric %s not exported", name)
	}
	for _, m := range mf.GetMetric() {
		if labelsOf(m) == labels {
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s{%s} not exported", name, labels)
	return 0
}

func TestCollectorCounters(t *testing.T) {
	mfs := gather(t, NewCollector(&fakeSource{snap: snapshotWith(nil)}, nil, "v1.2.3"))
	be := "backend=10.0.0.2,vip=10.0.0.100"
	for name, want := range map[string]float64{
		"icmplb_backend_requests_total":          10,
		"icmplb_backend_replies_total":           7,
		"icmplb_backend_lost_total":              3,
		"icmplb_backend_late_replies_total":      1,
		"icmplb_backend_unmatched_replies_total": 2,
		"icmplb_backend_request_bytes_total":     980,
		"icmplb_backend_reply_bytes_total":       686,
		"icmplb_backend_up":                      1,
	} {
		if got := value(t, mfs, name, be); got != want {
			t.Errorf("%s{%s} = %v, want %v", name, be, got, want)
		}
	}
	// Every type has a series, so that rate() sees the first error.
	for typ, want := range map[string]float64{"unreachable": 5, "packet_too_big": 0, "time_exceeded": 1} {
		labels := "backend=10.0.0.2,type=" + typ + ",vip=10.0.0.100"
		if got := value(t, mfs, "icmplb_backend_errors_total", labels); got != want {
			t.Errorf("icmplb_backend_errors_total{%s} = %v, want %v", labels, got, want)
		}
	}
	if got := value(t, mfs, "icmplb_backend_up", "backend=10.0.0.3,vip=10.0.0.100"); got != 0 {
		t.Errorf("down backend has up = %v", got)
	}
	if got := value(t, mfs, "icmplb_conntrack_entries", "map=sessions"); got != 5 {
		t.Errorf("conntrack sessions = %v", got)
	}
	if got := value(t, mfs, "icmplb_conntrack_capacity", "map=inflight"); got != 400 {
		t.Errorf("inflight capacity = %v", got)
	}
	if got := value(t, mfs, "icmplb_trace_events_dropped_total", "stage=kernel"); got != 4 {
		t.Errorf("kernel trace drops = %v", got)
	}
	if got := value(t, mfs, "icmplb_build_info", "goversion="+runtime.Version()+",version=v1.2.3"); got != 1 {
		t.Errorf("build info = %v", got)
	}
	if n := len(mfs["icmplb_packets_total"].GetMetric()); n != len(testVerdicts) {
		t.Errorf("%d verdict series, want one per reason (%d)", n, len(testVerdicts))
	}
}

// Each backend carries its service, so one address serving two VIPs is two
// series, and the balancer's own loss is each service's own.
func TestCollectorBackendOfTwoVIPs(t *testing.T) {
	snap := snapshotWith(nil)
	other := snap.Backends[0]
	other.VIP, other.Requests, other.Weight, other.Sessions = netip.MustParseAddr("10.0.0.101"), 42, 3, 7
	snap.Backends = append(snap.Backends, other)
	snap.Verdicts[3].Packets = 5 + 6 // nat_exhausted, both services
	snap.Services[0].BalancerLost["nat_exhausted"] = 5
	snap.Services = append(snap.Services, telemetry.Service{VIP: other.VIP, SNAT: other.VIP,
		BalancerLost: map[string]uint64{"nat_exhausted": 6}})
	mfs := gather(t, NewCollector(&fakeSource{snap: snap}, nil, "v"))
	if got := value(t, mfs, "icmplb_backend_requests_total", "backend=10.0.0.2,vip=10.0.0.100"); got != 10 {
		t.Errorf("requests to 10.0.0.2 for 10.0.0.100 = %v, want 10", got)
	}
	if got := value(t, mfs, "icmplb_backend_requests_total", "backend=10.0.0.2,vip=10.0.0.101"); got != 42 {
		t.Errorf("requests to 10.0.0.2 for 10.0.0.101 = %v, want 42", got)
	}
	if n := len(mfs["icmplb_backend_rtt_seconds"].GetMetric()); n != 3 {
		t.Errorf("%d RTT histograms, want one per (vip, backend): 3", n)
	}
	if got := value(t, mfs, "icmplb_balancer_lost_requests_total", "reason=nat_exhausted,vip=10.0.0.100"); got != 5 {
		t.Errorf("balancer loss = %v, want 5", got)
	}
	if got := value(t, mfs, "icmplb_balancer_lost_requests_total", "reason=nat_exhausted,vip=10.0.0.101"); got != 6 {
		t.Errorf("balancer loss of 10.0.0.101 = %v, want 6", got)
	}
	if n := len(mfs["icmplb_balancer_lost_requests_total"].GetMetric()); n != 4 {
		t.Errorf("%d balancer loss series, want one per service and reason marked BalancerLoss: 4", n)
	}
	if got := value(t, mfs, "icmplb_backend_weight", "backend=10.0.0.2,vip=10.0.0.101"); got != 3 {
		t.Errorf("weight = %v, want 3", got)
	}
	if got := value(t, mfs, "icmplb_backend_sessions", "backend=10.0.0.2,vip=10.0.0.101"); got != 7 {
		t.Errorf("sessions = %v, want 7", got)
	}
}

func TestCollectorNotAttachedAndErrors(t *testing.T) {
	src := &fakeSource{}
	c := NewCollector(src, nil, "v")
	mfs := gather(t, c)
	if _, ok := mfs["icmplb_backend_requests_total"]; ok {
		t.Error("backend metrics exported before the data plane is attached")
	}
	if got := value(t, mfs, "icmplb_exporter_scrape_errors_total", ""); got != 0 {
		t.Errorf("scrape errors = %v before any error", got)
	}

	src.err = errors.New("map read failed")
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "map read failed") {
		t.Errorf("gather error %v, want the source's error", err)
	}
	src.err = nil
	src.snap = snapshotWith(nil)
	mfs = gather(t, c)
	if got := value(t, mfs, "icmplb_exporter_scrape_errors_total", ""); got != 1 {
		t.Errorf("scrape errors = %v after one failed scrape, want 1", got)
	}
}

func TestRTTHistogramNativeAndClassic(t *testing.T) {
	rtts := []time.Duration{
		500 * time.Nanosecond,                        // zero bucket
		30 * time.Microsecond, 31 * time.Microsecond, // below the first classic bound
		2 * time.Millisecond, 2 * time.Millisecond, 2100 * time.Microsecond,
		20 * time.Millisecond, 25 * time.Millisecond,
		time.Second, // exactly a bound of both
		40 * time.Second,
	}
	mfs := gather(t, NewCollector(&fakeSource{snap: snapshotWith(map[netip.Addr][]time.Duration{testBE1: rtts})}, nil, "v"))
	var h *dto.Histogram
	for _, m := range mfs["icmplb_backend_rtt_seconds"].GetMetric() {
		if labelsOf(m) == "backend=10.0.0.2,vip=10.0.0.100" {
			h = m.GetHistogram()
		}
	}
	if h == nil {
		t.Fatal("no RTT histogram for 10.0.0.2")
	}
	if h.GetSchema() != 3 || h.GetZeroThreshold() != math.Ldexp(1, -20) || h.GetZeroCount() != 1 {
		t.Errorf("schema %d, zero threshold %g, zero count %d", h.GetSchema(), h.GetZeroThreshold(), h.GetZeroCount())
	}
	if h.GetSampleCount() != uint64(len(rtts)) {
		t.Errorf("count %d, want %d", h.GetSampleCount(), len(rtts))
	}
	var sum time.Duration
	for _, d := range rtts {
		sum += d
	}
	if math.Abs(h.GetSampleSum()-sum.Seconds()) > 1e-12 {
		t.Errorf("sum %v, want %v", h.GetSampleSum(), sum.Seconds())
	}

	// Every RTT sits in the native bucket whose bounds enclose it.
	want := map[int]uint64{}
	for _, d := range rtts[1:] {
		want[int(math.Ceil(8*math.Log2(d.Seconds())))]++
	}
	got := histquant.Buckets(h)
	if len(got) != len(want) {
		t.Errorf("native buckets %v, want %v", got, want)
	}
	for idx, n := range want {
		if got[idx] != n {
			t.Errorf("native bucket %d (le %g) has %d, want %d", idx, math.Exp2(float64(idx)/8), got[idx], n)
		}
	}

	// Classic buckets are cumulative and exact at their bounds.
	for _, b := range h.GetBucket() {
		var n uint64
		for _, d := range rtts {
			if d.Seconds() <= b.GetUpperBound() {
				n++
			}
		}
		if b.GetCumulativeCount() != n {
			t.Errorf("classic bucket le=%g has %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), n)
		}
	}
	if n := len(h.GetBucket()); n != classicLast-classicFirst+1 {
		t.Errorf("%d classic buckets", n)
	}
}

// TestQuantileWithinTenPercent checks the export's resolution: a quantile
// interpolated in the exported native buckets is within 10% of the truth,
// for many delays, where log2 buckets would be off by up to 2x.
func TestQuantileWithinTenPercent(t *testing.T) {
	for _, d := range []time.Duration{
		37 * time.Microsecond, 250 * time.Microsecond, 1 * time.Millisecond, 2 * time.Millisecond,
		3333 * time.Microsecond, 10 * time.Millisecond, 20 * time.Millisecond, 77 * time.Millisecond,
		450 * time.Millisecond, 900 * time.Millisecond,
	} {
		rtts := make([]time.Duration, 100)
		for i := range rtts {
			rtts[i] = d + time.Duration(i)*d/1000 // 10% spread, median d·1.05
		}
		mfs := gather(t, NewCollector(&fakeSource{snap: snapshotWith(map[netip.Addr][]time.Duration{testBE1: rtts})}, nil, "v"))
		h := mfs["icmplb_backend_rtt_seconds"].GetMetric()[0].GetHistogram()
		p50 := histquant.Quantile(0.5, h)
		truth := rtts[49].Seconds()
		if rel := math.Abs(p50-truth) / truth; rel > 0.10 {
			t.Errorf("delay %v: p50 %.6f s from the export, true %.6f s (%.1f%% off)", d, p50, truth, rel*100)
		}
	}
}

func TestExemplarOnHistogram(t *testing.T) {
	tracer := NewTracer(sdktrace.NewTracerProvider(), time.Second)
	at := time.Now()
	tracer.exemplars.Observe(testBE1, "0123456789abcdef0123456789abcdef", "0123456789abcdef", 3*time.Millisecond, at)
	mfs := gather(t, NewCollector(&fakeSource{snap: snapshotWith(map[netip.Addr][]time.Duration{
		testBE1: {3 * time.Millisecond}})}, tracer, "v"))
	for _, m := range mfs["icmplb_backend_rtt_seconds"].GetMetric() {
		h := m.GetHistogram()
		found := false
		for _, ex := range h.GetExemplars() {
			if ex.GetValue() == 0.003 && labelsOfPairs(ex.GetLabel()) == "span_id=0123456789abcdef,trace_id=0123456789abcdef0123456789abcdef" {
				found = true
			}
		}
		classic := false
		for _, b := range h.GetBucket() {
			if b.GetExemplar() != nil {
				classic = b.GetUpperBound() >= 0.003 && b.GetUpperBound()/math.Sqrt2 < 0.003
			}
		}
		be := labelsOf(m)
		if be == "backend=10.0.0.2,vip=10.0.0.100" && (!found || !classic) {
			t.Errorf("%s: native exemplar %v, classic exemplar in the right bucket %v", be, found, classic)
		}
		if be == "backend=10.0.0.3,vip=10.0.0.100" && len(h.GetExemplars()) != 0 {
			t.Errorf("%s has another backend's exemplar", be)
		}
	}
	if got := value(t, mfs, "icmplb_trace_events_dropped_total", "stage=pipeline"); got != 0 {
		t.Errorf("pipeline drops %v", got)
	}
}

func labelsOfPairs(ls []*dto.LabelPair) string {
	var parts []string
	for _, l := range ls {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// Health: one state series per state with the backend's at 1, ejections
// by every reason (zeros too), moved sessions, the probe families only for
// a probed backend, and the service's all-down gauge.
func TestCollectorHealth(t *testing.T) {
	snap := snapshotWith(nil)
	b := &snap.Backends[0]
	b.State, b.Ejections, b.SessionsMoved = telemetry.StateEjected, map[string]uint64{telemetry.EjectLoss: 2}, 9
	b.Probe = &telemetry.Probe{Requests: 10, Replies: 7, Lost: 3, RTT: newRTT()}
	b.Probe.RTT.Buckets[bucketOf(&b.Probe.RTT, 3*time.Millisecond)] = 7
	b.Probe.RTT.Sum = 21 * time.Millisecond
	snap.Backends[1].State = telemetry.StateUp
	snap.Services[0].AllDown = true
	mfs := gather(t, NewCollector(&fakeSource{snap: snap}, nil, "v"))
	for _, st := range telemetry.States {
		want := 0.0
		if st == telemetry.StateEjected {
			want = 1
		}
		if got := value(t, mfs, "icmplb_backend_state", "backend=10.0.0.2,state="+st+",vip=10.0.0.100"); got != want {
			t.Errorf("state %s of 10.0.0.2 = %v, want %v", st, got, want)
		}
	}
	if got := value(t, mfs, "icmplb_backend_ejections_total", "backend=10.0.0.2,reason=loss,vip=10.0.0.100"); got != 2 {
		t.Errorf("ejections{loss} = %v, want 2", got)
	}
	if got := value(t, mfs, "icmplb_backend_ejections_total", "backend=10.0.0.2,reason=probe,vip=10.0.0.100"); got != 0 {
		t.Errorf("ejections{probe} = %v, want a 0 series", got)
	}
	if got := value(t, mfs, "icmplb_backend_sessions_moved_total", "backend=10.0.0.2,vip=10.0.0.100"); got != 9 {
		t.Errorf("sessions moved = %v, want 9", got)
	}
	if got := value(t, mfs, "icmplb_probe_lost_total", "backend=10.0.0.2,vip=10.0.0.100"); got != 3 {
		t.Errorf("probe lost = %v, want 3", got)
	}
	if n := len(mfs["icmplb_probe_requests_total"].GetMetric()); n != 1 {
		t.Errorf("%d probe series, want only the probed backend's", n)
	}
	h := mfs["icmplb_probe_rtt_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 7 || h.GetSampleSum() != 0.021 || h.GetSchema() != 3 {
		t.Errorf("probe RTT histogram: count %d, sum %v, schema %d", h.GetSampleCount(), h.GetSampleSum(), h.GetSchema())
	}
	if got := value(t, mfs, "icmplb_service_all_down", "vip=10.0.0.100"); got != 1 {
		t.Errorf("all down = %v, want 1", got)
	}
}
