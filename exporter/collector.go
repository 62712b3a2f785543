// SPDX-License-Identifier: MIT

// Package exporter turns what the balancer's data plane measured into
// Prometheus metrics (read from the BPF maps at scrape time) and
// OpenTelemetry spans (from the kernel's sampled exchanges). It works on the
// values of package telemetry, which the balancer fills, so it is built and
// tested without BPF.
package exporter

import (
	"math"
	"net/netip"
	"runtime"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/icmplb/icmplb/exporter/telemetry"
)

// Source is where the collector reads the data plane: *balancer.Balancer.
// A nil snapshot without error means there is no data plane yet.
type Source interface {
	Snapshot() (*telemetry.Snapshot, error)
}

// Classic histogram buckets: every fourth bucket bound of the native schema
// (steps of √2) from 2^-14 s (61 µs) to 2^4 s (16 s), so that each classic
// count is an exact sum of native buckets.
const (
	classicFirst = -28 // 2^(-28/2) s
	classicLast  = 8   // 2^(8/2) s
)

// Collector is a prometheus.Collector of the data plane's counters,
// histograms and gauges. It reads the maps once per scrape and keeps no copy.
type Collector struct {
	src    Source
	tracer *Tracer
	info   []string

	requests, replies, lost, late, unmatched *prometheus.Desc
	icmpErrors                               *prometheus.Desc
	requestBytes, replyBytes                 *prometheus.Desc
	rtt, up, weight, sessions                *prometheus.Desc
	state, ejections, moved, allDown         *prometheus.Desc
	probeRequests, probeReplies, probeLost   *prometheus.Desc
	probeRTT                                 *prometheus.Desc
	packets, ctEntries, ctCapacity           *prometheus.Desc
	balancerLost                             *prometheus.Desc
	traceDropped, traceSpans                 *prometheus.Desc
	scrapeErrors, buildInfo                  *prometheus.Desc

	mu     sync.Mutex
	errors float64
}

// NewCollector returns a collector reading src. A tracer, when not nil,
// adds its counters and puts a recent traced exchange on each RTT histogram
// as an exemplar.
func NewCollector(src Source, tracer *Tracer, version string) *Collector {
	bl := []string{"vip", "backend"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &Collector{
		src: src, tracer: tracer, info: []string{version, runtime.Version()},
		requests:      d("icmplb_backend_requests_total", "Echo requests forwarded to the backend.", bl...),
		replies:       d("icmplb_backend_replies_total", "Echo replies from the backend returned to clients.", bl...),
		lost:          d("icmplb_backend_lost_total", "Echo requests the backend did not answer within the loss timeout.", bl...),
		late:          d("icmplb_backend_late_replies_total", "Replies that came after the loss timeout (up to twice it); their requests count as lost.", bl...),
		unmatched:     d("icmplb_backend_unmatched_replies_total", "Replies from the backend that answered no request awaited (duplicates, or later than twice the loss timeout); passed to the kernel, not returned to a client.", bl...),
		icmpErrors:    d("icmplb_backend_errors_total", "Echo requests to the backend answered by an ICMP error (from the backend or a router on its way) instead of a reply, by type: unreachable, packet_too_big or time_exceeded. The error is returned to the client; the request counts neither as replied nor, if the error came within the loss timeout, as lost.", append(bl, "type")...),
		requestBytes:  d("icmplb_backend_request_bytes_total", "Bytes of echo requests forwarded to the backend (Ethernet frames).", bl...),
		replyBytes:    d("icmplb_backend_reply_bytes_total", "Bytes of echo replies from the backend (Ethernet frames).", bl...),
		rtt:           d("icmplb_backend_rtt_seconds", "Time from a request leaving the balancer to its reply arriving, for replies within the loss timeout.", bl...),
		up:            d("icmplb_backend_up", "1 while the backend's next hop is resolved, else 0 (then it takes no new session). A draining backend (icmplb_backend_weight 0) may be up.", bl...),
		weight:        d("icmplb_backend_weight", "The backend's configured share of the service's new sessions; 0 while it drains (weight 0, or removed by a reload until its sessions end).", bl...),
		sessions:      d("icmplb_backend_sessions", "Ping sessions of the service on the backend: clients heard from within the NAT idle time.", bl...),
		state:         d("icmplb_backend_state", "1 for the backend's state, 0 for the others: up (takes new sessions), draining (weight 0 or removed), ejected (loss or latency too high), probe_failed (the agent's probes failed), unresolved (no ARP or NDP answer).", append(bl, "state")...),
		ejections:     d("icmplb_backend_ejections_total", "Times the backend was taken out of its service for its health, by reason: loss, latency (outlier ejection) or probe (probes failed).", append(bl, "reason")...),
		moved:         d("icmplb_backend_sessions_moved_total", "Running sessions moved off the backend to another one because it left the service's pool (ejected, probes failed, next hop lost).", bl...),
		allDown:       d("icmplb_service_all_down", "1 while no backend of the service is healthy, so that its --all-down mode (fail-open or pass) is in effect.", "vip"),
		probeRequests: d("icmplb_probe_requests_total", "Echo requests the agent sent to the backend to probe it.", bl...),
		probeReplies:  d("icmplb_probe_replies_total", "Probe replies received within the probe timeout.", bl...),
		probeLost:     d("icmplb_probe_lost_total", "Probes unanswered within the probe timeout.", bl...),
		probeRTT:      d("icmplb_probe_rtt_seconds", "Round trip of the agent's probes of the backend (same buckets as icmplb_backend_rtt_seconds, to compare with real traffic).", bl...),
		balancerLost:  d("icmplb_balancer_lost_requests_total", "Echo requests to the VIP the balancer itself failed, by reason: nat_exhausted (no free NAT id, or the sessions map full), nat_collision (its NAT id and sequence still awaited by another client's request) or inflight_full (no room to track it). Never counted as a backend's loss.", "vip", "reason"),
		packets:       d("icmplb_packets_total", "Packets seen by the XDP program, by verdict (tx, pass, drop) and reason.", "verdict", "reason"),
		ctEntries:     d("icmplb_conntrack_entries", "Entries in a conntrack map: sessions (client, echo id) active within the NAT idle time, or inflight requests (sent within twice the loss timeout, not answered yet, beyond the 4 each session holds).", "map"),
		ctCapacity:    d("icmplb_conntrack_capacity", "Capacity of a conntrack map; at capacity new sessions are refused (nat_exhausted) and the inflight map refuses the requests that need it (inflight_full), nothing in flight is evicted.", "map"),
		traceDropped:  d("icmplb_trace_events_dropped_total", "Sampled exchanges not traced because the pipeline fell behind: stage kernel (ring buffer full) or pipeline (too many requests awaiting replies).", "stage"),
		traceSpans:    d("icmplb_trace_spans_total", "Spans emitted, by status: ok (answered) or error (lost, late, or answered by an ICMP error).", "status"),
		scrapeErrors:  d("icmplb_exporter_scrape_errors_total", "Scrapes that failed to read the data plane's maps."),
		buildInfo:     d("icmplb_build_info", "Always 1; labels carry the build.", "version", "goversion"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.replies, c.lost, c.late, c.unmatched, c.icmpErrors,
		c.requestBytes, c.replyBytes, c.rtt, c.up, c.weight, c.sessions, c.state, c.ejections, c.moved, c.allDown,
		c.probeRequests, c.probeReplies, c.probeLost, c.probeRTT, c.balancerLost, c.packets, c.ctEntries, c.ctCapacity,
		c.traceDropped, c.traceSpans, c.scrapeErrors, c.buildInfo} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1, c.info...)
	snap, err := c.src.Snapshot()
	c.mu.Lock()
	if err != nil {
		c.errors++
	}
	errs := c.errors
	c.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.scrapeErrors, prometheus.CounterValue, errs)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.scrapeErrors, err)
		return
	}
	if snap == nil {
		return // not attached yet
	}

	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for i := range snap.Backends {
		b := &snap.Backends[i]
		vip, be := b.VIP.String(), b.Addr.String()
		counter(c.requests, b.Requests, vip, be)
		counter(c.replies, b.Replies, vip, be)
		counter(c.lost, b.Lost, vip, be)
		counter(c.late, b.Late, vip, be)
		counter(c.unmatched, b.Unmatched, vip, be)
		for _, e := range telemetry.ErrorTypes {
			counter(c.icmpErrors, b.Errors[e], vip, be, e)
		}
		counter(c.requestBytes, b.RequestBytes, vip, be)
		counter(c.replyBytes, b.ReplyBytes, vip, be)
		up := 0.0
		if b.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, vip, be)
		ch <- prometheus.MustNewConstMetric(c.weight, prometheus.GaugeValue, float64(b.Weight), vip, be)
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(b.Sessions), vip, be)
		ch <- c.histogram(c.rtt, &b.RTT, b.Addr, vip, be, true)
		if b.State != "" {
			for _, st := range telemetry.States {
				v := 0.0
				if st == b.State {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, vip, be, st)
			}
		}
		for _, r := range telemetry.EjectReasons {
			counter(c.ejections, b.Ejections[r], vip, be, r)
		}
		counter(c.moved, b.SessionsMoved, vip, be)
		if p := b.Probe; p != nil {
			counter(c.probeRequests, p.Requests, vip, be)
			counter(c.probeReplies, p.Replies, vip, be)
			counter(c.probeLost, p.Lost, vip, be)
			ch <- c.histogram(c.probeRTT, &p.RTT, b.Addr, vip, be, false)
		}
	}
	for _, v := range snap.Verdicts {
		counter(c.packets, v.Packets, v.Verdict, v.Reason)
	}
	for _, svc := range snap.Services {
		down := 0.0
		if svc.AllDown {
			down = 1
		}
		ch <- prometheus.MustNewConstMetric(c.allDown, prometheus.GaugeValue, down, svc.VIP.String())
		for _, v := range snap.Verdicts {
			if v.BalancerLoss {
				counter(c.balancerLost, svc.BalancerLost[v.Reason], svc.VIP.String(), v.Reason)
			}
		}
	}
	if snap.Conntrack.Known {
		ch <- prometheus.MustNewConstMetric(c.ctEntries, prometheus.GaugeValue, float64(snap.Conntrack.Sessions), "sessions")
		ch <- prometheus.MustNewConstMetric(c.ctEntries, prometheus.GaugeValue, float64(snap.Conntrack.InFlight), "inflight")
	}
	ch <- prometheus.MustNewConstMetric(c.ctCapacity, prometheus.GaugeValue, float64(snap.Conntrack.Capacity), "sessions")
	ch <- prometheus.MustNewConstMetric(c.ctCapacity, prometheus.GaugeValue, float64(snap.Conntrack.InFlightCapacity), "inflight")
	counter(c.traceDropped, snap.TraceEventsDropped, "kernel")
	if c.tracer != nil {
		ok, lost, dropped := c.tracer.Stats()
		counter(c.traceDropped, dropped, "pipeline")
		counter(c.traceSpans, ok, "ok")
		counter(c.traceSpans, lost, "error")
	}
}

// histogram builds the RTT histogram with native buckets (one per kernel
// bucket, in the schema the snapshot carries; at least 1, so that every
// classic bound below is a native one) and classic buckets summed exactly
// from them.
func (c *Collector) histogram(desc *prometheus.Desc, rtt *telemetry.Histogram, addr netip.Addr, vip, backend string, exemplars bool) prometheus.Metric {
	var zero uint64
	if len(rtt.Buckets) > 0 {
		zero = rtt.Buckets[0]
	}
	h := &dto.Histogram{
		Schema:        new(rtt.Schema),
		ZeroThreshold: new(rtt.ZeroThreshold()),
		ZeroCount:     new(zero),
	}
	total := zero
	// Native buckets as spans of consecutive indexes, counts delta-encoded.
	var prevCount int64
	lastIdx := math.MinInt32
	for k := 1; k < len(rtt.Buckets); k++ {
		n := rtt.Buckets[k]
		if n == 0 {
			continue
		}
		total += n
		idx := rtt.Index(k)
		if idx != lastIdx+1 {
			offset := int32(idx)
			if lastIdx != math.MinInt32 {
				offset = int32(idx - lastIdx - 1)
			}
			h.PositiveSpan = append(h.PositiveSpan, &dto.BucketSpan{Offset: new(offset), Length: new(uint32(0))})
		}
		*h.PositiveSpan[len(h.PositiveSpan)-1].Length++
		h.PositiveDelta = append(h.PositiveDelta, int64(n)-prevCount)
		prevCount = int64(n)
		lastIdx = idx
	}
	if len(h.PositiveSpan) == 0 && total == 0 {
		// An empty native histogram needs a span to be recognised as native.
		h.PositiveSpan = []*dto.BucketSpan{{Offset: new(int32(0)), Length: new(uint32(0))}}
	}
	h.SampleCount = new(total)
	h.SampleSum = new(rtt.Sum.Seconds())

	// One allocation per array rather than three per bucket: a scrape of
	// 1000 backends builds 37 000 of them.
	n := len(classicBounds)
	buckets := make([]dto.Bucket, n)
	counts := make([]uint64, n)
	h.Bucket = make([]*dto.Bucket, n)
	var cum uint64
	k := 0
	for i := range classicBounds {
		// Classic bound i, 2^((classicFirst+i)/2) s, is the bound of native
		// index (classicFirst+i)·2^schema/2.
		for ; k < len(rtt.Buckets) && rtt.Index(k) <= (classicFirst+i)<<rtt.Schema>>1; k++ {
			cum += rtt.Buckets[k]
		}
		counts[i] = cum
		buckets[i] = dto.Bucket{UpperBound: &classicBounds[i], CumulativeCount: &counts[i]}
		h.Bucket[i] = &buckets[i]
	}

	var m prometheus.Metric = &constHistogram{desc: desc, labels: prometheus.MakeLabelPairs(desc, []string{vip, backend}), h: h}
	if exemplars && c.tracer != nil {
		if ex, ok := c.tracer.exemplars.get(addr); ok {
			if withEx, err := prometheus.NewMetricWithExemplars(m, ex); err == nil {
				m = withEx
			}
		}
	}
	return m
}

// classicBounds are the classic buckets' upper bounds, shared read-only by
// every histogram a scrape builds.
var classicBounds = func() []float64 {
	b := make([]float64, classicLast-classicFirst+1)
	for i := range b {
		b[i] = math.Exp2(float64(classicFirst+i) / 2)
	}
	return b
}()

// constHistogram is a histogram with both classic and native buckets, which
// client_golang's const constructors do not build.
type constHistogram struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair
	h      *dto.Histogram
}

func (m *constHistogram) Desc() *prometheus.Desc { return m.desc }

func (m *constHistogram) Write(out *dto.Metric) error {
	out.Label = m.labels
	out.Histogram = m.h
	return nil
}
