// SPDX-License-Identifier: MIT

package exporter

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/icmplb/icmplb/exporter/telemetry"
)

// Span attribute keys of icmplb's own (no semantic convention covers them).
const (
	AttrVIP     = attribute.Key("icmplb.vip")
	AttrBackend = attribute.Key("icmplb.backend")
	AttrEchoID  = attribute.Key("icmp.echo.identifier")
	AttrEchoSeq = attribute.Key("icmp.echo.sequence")
	AttrRTT     = attribute.Key("icmplb.rtt_seconds")
	AttrLost    = attribute.Key("icmplb.lost")
	// AttrICMPError is the type of the ICMP error that answered the
	// request (telemetry.ErrorTypes).
	AttrICMPError = attribute.Key("icmplb.icmp_error")
)

// DefaultMaxPending bounds the sampled requests awaiting their reply.
const DefaultMaxPending = 65536

type exchangeKey struct {
	client, backend netip.Addr
	echoID, seq     uint16
}

// Tracer turns the kernel's sampled exchanges into spans named "icmp echo"
// that start when the request was forwarded and end when its reply came, on
// the kernel's own clock. A sampled request without a reply within the loss
// timeout becomes a span with an error status.
type Tracer struct {
	tracer      trace.Tracer
	lossTimeout time.Duration
	exemplars   *Exemplars
	maxPending  int

	mu      sync.Mutex
	pending map[exchangeKey]telemetry.TraceEvent
	dropped uint64 // requests not tracked: pending full
	spans   [2]uint64
}

// NewTracer returns a pipeline emitting spans through tp. It keeps each
// backend's latest answered exchange as an exemplar for the RTT histogram.
func NewTracer(tp trace.TracerProvider, lossTimeout time.Duration) *Tracer {
	return &Tracer{
		tracer:      tp.Tracer("github.com/icmplb/icmplb/exporter"),
		lossTimeout: lossTimeout,
		exemplars:   NewExemplars(),
		maxPending:  DefaultMaxPending,
		pending:     map[exchangeKey]telemetry.TraceEvent{},
	}
}

// Handle takes one event from the kernel.
func (t *Tracer) Handle(ev telemetry.TraceEvent) {
	key := exchangeKey{ev.Client, ev.Backend, ev.EchoID, ev.Seq}
	t.mu.Lock()
	if ev.Kind == telemetry.TraceRequest {
		if len(t.pending) < t.maxPending {
			t.pending[key] = ev
		} else {
			t.dropped++
		}
		t.mu.Unlock()
		return
	}
	delete(t.pending, key)
	t.mu.Unlock()
	t.emit(ev, ev.Sent.Add(ev.RTT), ev.Kind == telemetry.TraceReply && !ev.Late)
}

// Expire ends, as lost, the sampled requests still unanswered at now minus
// the loss timeout.
func (t *Tracer) Expire(now time.Time) {
	var lost []telemetry.TraceEvent
	t.mu.Lock()
	for k, ev := range t.pending {
		if now.Sub(ev.Sent) > t.lossTimeout {
			lost = append(lost, ev)
			delete(t.pending, k)
		}
	}
	t.mu.Unlock()
	for _, ev := range lost {
		t.emit(ev, ev.Sent.Add(t.lossTimeout), false)
	}
}

// Run expires lost requests every tick until ctx is done.
func (t *Tracer) Run(ctx context.Context, tick time.Duration) {
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tk.C:
			t.Expire(now)
		}
	}
}

func (t *Tracer) emit(ev telemetry.TraceEvent, end time.Time, answered bool) {
	attrs := []attribute.KeyValue{
		AttrVIP.String(ev.VIP.String()),
		semconv.NetworkPeerAddress(ev.Client.String()),
		AttrBackend.String(ev.Backend.String()),
		AttrEchoID.Int(int(ev.EchoID)),
		AttrEchoSeq.Int(int(ev.Seq)),
		semconv.NetworkTransportKey.String("icmp"),
	}
	switch {
	case ev.Kind == telemetry.TraceReply:
		attrs = append(attrs, AttrRTT.Float64(ev.RTT.Seconds()))
	case ev.Kind == telemetry.TraceError:
		attrs = append(attrs, AttrICMPError.String(ev.Error))
	}
	if !answered && (ev.Kind != telemetry.TraceError || ev.Late) {
		attrs = append(attrs, AttrLost.Bool(true))
	}
	_, span := t.tracer.Start(context.Background(), "icmp echo",
		trace.WithTimestamp(ev.Sent), trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	switch {
	case answered:
		span.SetStatus(codes.Ok, "")
	case ev.Kind == telemetry.TraceError:
		span.SetStatus(codes.Error, "answered by ICMP "+ev.Error)
	case ev.Kind == telemetry.TraceReply:
		span.SetStatus(codes.Error, "reply after the loss timeout: counted as lost")
	default:
		span.SetStatus(codes.Error, "no reply within the loss timeout")
	}
	span.End(trace.WithTimestamp(end))

	status := 0
	if !answered {
		status = 1
	}
	t.mu.Lock()
	t.spans[status]++
	t.mu.Unlock()
	if answered {
		sc := span.SpanContext()
		t.exemplars.Observe(ev.Backend, sc.TraceID().String(), sc.SpanID().String(), ev.RTT, end)
	}
}

// Stats returns the spans emitted, answered and lost, and the sampled
// requests that could not be tracked because too many were pending.
func (t *Tracer) Stats() (ok, lost, dropped uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.spans[0], t.spans[1], t.dropped
}
