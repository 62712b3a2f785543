// SPDX-License-Identifier: MIT

// Package otlptest is an OTLP trace receiver for tests: a real gRPC or HTTP
// server on the loopback interface that accepts what an OpenTelemetry
// exporter sends and keeps the spans for the test to inspect, so tests cover
// the exporter's wire format and transport and not just an in-process fake.
//
// It speaks OTLP/gRPC (opentelemetry.proto.collector.trace.v1.TraceService)
// and OTLP/HTTP with protobuf bodies, optionally gzip-compressed; OTLP/JSON
// is refused with 415, as its hex-encoded IDs would need a decoder of their
// own.
package otlptest

import (
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	// Registers the gzip codec, so exporters configured with gzip
	// compression are understood.
	_ "google.golang.org/grpc/encoding/gzip"

	"github.com/icmplb/icmplb/internal/testenv"
)

// Span is one received span, flattened together with its resource and scope
// into plain Go values.
type Span struct {
	Name         string
	TraceID      string // 32 lowercase hex digits
	SpanID       string // 16 lowercase hex digits
	ParentSpanID string // 16 lowercase hex digits, empty for a root span
	Start, End   time.Time
	// Kind and StatusCode use the OpenTelemetry API's types, so tests
	// compare them with what they passed to the SDK. (The OTLP wire
	// numbering of status codes differs from codes.Code; it is converted.)
	Kind          trace.SpanKind
	StatusCode    codes.Code
	StatusMessage string
	// Attrs and Resource hold string, int64, float64 and bool values;
	// array attributes become []any, maps map[string]any, bytes []byte.
	Attrs    map[string]any
	Resource map[string]any
	Scope    string // instrumentation scope (tracer) name
	Events   []Event
}

// Event is one span event.
type Event struct {
	Name  string
	Time  time.Time
	Attrs map[string]any
}

// Receiver collects the spans exported to it.
type Receiver struct {
	endpoint string

	mu      sync.Mutex
	spans   []*Span
	changed chan struct{} // closed and replaced whenever spans grow
}

func newReceiver() *Receiver {
	return &Receiver{changed: make(chan struct{})}
}

// NewGRPC starts an OTLP/gRPC receiver on 127.0.0.1 and stops it when the
// test ends. It serves plaintext, so exporters need their insecure option.
func NewGRPC(t testenv.TB) *Receiver {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("otlptest: listen: %v", err)
	}
	r := newReceiver()
	r.endpoint = lis.Addr().String()
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, &traceService{r: r})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		// Stop, not GracefulStop: an exporter the test forgot to shut
		// down must not hold up the test's end.
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("otlptest: grpc serve: %v", err)
		}
	})
	return r
}

type traceService struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

func (s *traceService) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.r.add(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// Endpoint is where exporters send to: "127.0.0.1:PORT" for gRPC (for
// otlptracegrpc.WithEndpoint), "http://127.0.0.1:PORT" for HTTP (the base
// URL, as in OTEL_EXPORTER_OTLP_ENDPOINT; see TracesURL).
func (r *Receiver) Endpoint() string { return r.endpoint }

// TracesURL is Endpoint with the OTLP/HTTP traces path appended, the form
// otlptracehttp.WithEndpointURL and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT take.
// It is meaningful only for an HTTP receiver.
func (r *Receiver) TracesURL() string { return r.endpoint + tracesPath }

// Spans returns a copy of every span received so far, in arrival order.
func (r *Receiver) Spans() []*Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return cloneSpans(r.spans)
}

// WaitSpans waits until at least n spans have arrived and returns them all.
// On timeout it returns those received so far together with an error.
func (r *Receiver) WaitSpans(n int, timeout time.Duration) ([]*Span, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		got, changed := len(r.spans), r.changed
		if got >= n {
			s := cloneSpans(r.spans)
			r.mu.Unlock()
			return s, nil
		}
		r.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			s := r.Spans()
			return s, fmt.Errorf("otlptest: %d spans after %v, want %d", len(s), timeout, n)
		}
	}
}

func (r *Receiver) add(req *coltracepb.ExportTraceServiceRequest) {
	spans := flatten(req)
	if len(spans) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans = append(r.spans, spans...)
	close(r.changed)
	r.changed = make(chan struct{})
}

// cloneSpans copies spans, their maps and events, so a test may edit what
// it got without changing what the next caller sees.
func cloneSpans(in []*Span) []*Span {
	out := make([]*Span, len(in))
	for i, s := range in {
		c := *s
		c.Attrs = maps.Clone(s.Attrs)
		c.Resource = maps.Clone(s.Resource)
		c.Events = slices.Clone(s.Events)
		for j := range c.Events {
			c.Events[j].Attrs = maps.Clone(c.Events[j].Attrs)
		}
		out[i] = &c
	}
	return out
}

func flatten(req *coltracepb.ExportTraceServiceRequest) []*Span {
	var out []*Span
	for _, rs := range req.GetResourceSpans() {
		res := attrMap(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			scope := ss.GetScope().GetName()
			for _, sp := range ss.GetSpans() {
				out = append(out, convertSpan(sp, res, scope))
			}
		}
	}
	return out
}

func convertSpan(sp *tracepb.Span, res map[string]any, scope string) *Span {
	s := &Span{
		Name:          sp.GetName(),
		TraceID:       hex.EncodeToString(sp.GetTraceId()),
		SpanID:        hex.EncodeToString(sp.GetSpanId()),
		ParentSpanID:  hex.EncodeToString(sp.GetParentSpanId()),
		Start:         unixNano(sp.GetStartTimeUnixNano()),
		End:           unixNano(sp.GetEndTimeUnixNano()),
		Kind:          trace.SpanKind(sp.GetKind()), // same numbering on both sides
		StatusMessage: sp.GetStatus().GetMessage(),
		Attrs:         attrMap(sp.GetAttributes()),
		Resource:      maps.Clone(res),
		Scope:         scope,
	}
	switch sp.GetStatus().GetCode() {
	case tracepb.Status_STATUS_CODE_OK:
		s.StatusCode = codes.Ok
	case tracepb.Status_STATUS_CODE_ERROR:
		s.StatusCode = codes.Error
	default:
		s.StatusCode = codes.Unset
	}
	for _, e := range sp.GetEvents() {
		s.Events = append(s.Events, Event{
			Name:  e.GetName(),
			Time:  unixNano(e.GetTimeUnixNano()),
			Attrs: attrMap(e.GetAttributes()),
		})
	}
	return s
}

// unixNano keeps the zero timestamp the zero time.Time, so a missing time
// reads as IsZero and not as 1970.
func unixNano(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(ns))
}

func attrMap(kvs []*commonpb.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = anyValue(kv.GetValue())
	}
	return m
}

func anyValue(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_BytesValue:
		return slices.Clone(x.BytesValue)
	case *commonpb.AnyValue_ArrayValue:
		var a []any
		for _, e := range x.ArrayValue.GetValues() {
			a = append(a, anyValue(e))
		}
		return a
	case *commonpb.AnyValue_KvlistValue:
		return attrMap(x.KvlistValue.GetValues())
	}
	return nil
}
