// SPDX-License-Identifier: MIT

package exporter

import (
	"net/netip"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/icmplb/icmplb/exporter/telemetry"
)

var testClient = netip.MustParseAddr("10.0.0.1")

func newTestTracer(t *testing.T) (*Tracer, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(t.Context()) })
	return NewTracer(tp, time.Second), rec
}

func exchange(kind telemetry.TraceKind, sent time.Time, rtt time.Duration, seq uint16) telemetry.TraceEvent {
	return telemetry.TraceEvent{Kind: kind, Sent: sent, RTT: rtt, VIP: testVIP, Client: testClient,
		Backend: testBE1, EchoID: 4242, Seq: seq}
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	out := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		out[kv.Key] = kv.Value
	}
	return out
}

func TestTracerAnsweredExchange(t *testing.T) {
	tr, rec := newTestTracer(t)
	sent := time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.UTC)
	tr.Handle(exchange(telemetry.TraceRequest, sent, 0, 7))
	tr.Handle(exchange(telemetry.TraceReply, sent, 2500*time.Microsecond, 7))

	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.Name() != "icmp echo" || s.SpanKind() != trace.SpanKindClient {
		t.Errorf("span %q kind %v", s.Name(), s.SpanKind())
	}
	if !s.StartTime().Equal(sent) || !s.EndTime().Equal(sent.Add(2500*time.Microsecond)) {
		t.Errorf("span %v..%v, want the kernel's %v + 2.5ms", s.StartTime(), s.EndTime(), sent)
	}
	if s.Status().Code != codes.Ok {
		t.Errorf("status %v", s.Status())
	}
	a := attrs(s)
	for k, want := range map[attribute.Key]any{
		"network.peer.address": "10.0.0.1", AttrVIP: "10.0.0.100", AttrBackend: "10.0.0.2",
		AttrEchoID: int64(4242), AttrEchoSeq: int64(7), AttrRTT: 0.0025,
	} {
		if got := a[k].AsInterface(); got != want {
			t.Errorf("attribute %s = %v, want %v", k, got, want)
		}
	}
	if ok, lost, dropped := tr.Stats(); ok != 1 || lost != 0 || dropped != 0 {
		t.Errorf("stats ok %d lost %d dropped %d", ok, lost, dropped)
	}
	ex, found := tr.exemplars.get(testBE1)
	if !found || ex.Labels["trace_id"] != s.SpanContext().TraceID().String() || ex.Value != 0.0025 {
		t.Errorf("exemplar %+v does not point at the span %s", ex, s.SpanContext().TraceID())
	}
}

func TestTracerLostRequest(t *testing.T) {
	tr, rec := newTestTracer(t)
	sent := time.Now().Add(-3 * time.Second)
	tr.Handle(exchange(telemetry.TraceRequest, sent, 0, 1))
	tr.Handle(exchange(telemetry.TraceRequest, time.Now(), 0, 2)) // still within the timeout
	tr.Expire(time.Now())

	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans after expiry, want only the timed-out one", len(spans))
	}
	s := spans[0]
	if s.Status().Code != codes.Error || !s.EndTime().Equal(sent.Add(time.Second)) {
		t.Errorf("lost span status %v end %v, want error at sent + loss timeout", s.Status(), s.EndTime())
	}
	if a := attrs(s); !a[AttrLost].AsBool() || a[AttrEchoSeq].AsInt64() != 1 {
		t.Errorf("lost span attributes %v", a)
	}
	if _, lost, _ := tr.Stats(); lost != 1 {
		t.Errorf("lost spans %d", lost)
	}
	if _, ok := tr.exemplars.get(testBE1); ok {
		t.Error("a lost request became an exemplar")
	}
}

func TestTracerLateReply(t *testing.T) {
	tr, rec := newTestTracer(t)
	ev := exchange(telemetry.TraceReply, time.Now(), 2*time.Second, 3)
	ev.Late = true
	tr.Handle(ev)
	if s := rec.Ended(); len(s) != 1 || s[0].Status().Code != codes.Error {
		t.Fatalf("late reply spans %v, want one error span", s)
	}
}

// An ICMP error answers the request: an error span with its type, neither
// lost nor an RTT exemplar.
func TestTracerICMPError(t *testing.T) {
	tr, rec := newTestTracer(t)
	sent := time.Now()
	tr.Handle(exchange(telemetry.TraceRequest, sent, 0, 5))
	ev := exchange(telemetry.TraceError, sent, 3*time.Millisecond, 5)
	ev.Error = telemetry.ErrorTimeExceeded
	tr.Handle(ev)
	tr.Expire(sent.Add(5 * time.Second))

	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.Status().Code != codes.Error || s.Status().Description != "answered by ICMP time_exceeded" ||
		!s.EndTime().Equal(sent.Add(3*time.Millisecond)) {
		t.Errorf("span status %v end %v, want an error at the error's arrival", s.Status(), s.EndTime())
	}
	a := attrs(s)
	if a[AttrICMPError].AsString() != "time_exceeded" || a[AttrLost].AsBool() {
		t.Errorf("attributes %v, want icmplb.icmp_error=time_exceeded and not lost", a)
	}
	if _, ok := a[AttrRTT]; ok {
		t.Errorf("an error span has an RTT: %v", a)
	}
	if _, ok := tr.exemplars.get(testBE1); ok {
		t.Error("an ICMP error became an RTT exemplar")
	}
}

func TestTracerPendingBounded(t *testing.T) {
	tr, _ := newTestTracer(t)
	tr.maxPending = 10
	for seq := range uint16(15) {
		tr.Handle(exchange(telemetry.TraceRequest, time.Now(), 0, seq))
	}
	if _, _, dropped := tr.Stats(); dropped != 5 {
		t.Errorf("dropped %d requests past the bound, want 5", dropped)
	}
}

// BenchmarkTracer measures the trace pipeline's throughput, requests and
// replies through span creation and batching to a discarding exporter: the
// rate of sampled events userspace sustains before the kernel drops.
func BenchmarkTracer(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter(), sdktrace.WithBlocking()))
	defer tp.Shutdown(b.Context())
	tr := NewTracer(tp, time.Second)
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		seq := uint16(i)
		tr.Handle(exchange(telemetry.TraceRequest, now, 0, seq))
		tr.Handle(exchange(telemetry.TraceReply, now, time.Millisecond, seq))
		i++
	}
	b.ReportMetric(float64(2*b.N)/b.Elapsed().Seconds(), "events/s")
}
