// SPDX-License-Identifier: MIT

package otlptest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Timestamps with nanoseconds that no clock or float conversion would
// produce by accident, to prove they travel exactly.
var (
	t0       = time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	rootEnd  = t0.Add(12*time.Millisecond + 345)
	childBeg = t0.Add(1*time.Millisecond + 7)
	childEnd = t0.Add(11*time.Millisecond + 999)
	eventAt  = t0.Add(5*time.Millisecond + 1)
)

type exported struct {
	root, child trace.SpanContext
}

// export sends a root span and an erroring child through a real SDK
// pipeline and shuts it down, which flushes everything to the receiver.
func export(t *testing.T, exp sdktrace.SpanExporter) exported {
	t.Helper()
	res := resource.NewSchemaless(
		attribute.String("service.name", "icmplb-test"),
		attribute.Int64("host.pid", 4242),
	)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSyncer(exp),
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
	)
	tr := tp.Tracer("otlptest/test")
	ctx, root := tr.Start(context.Background(), "probe",
		trace.WithTimestamp(t0),
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("backend", "10.0.0.2"),
			attribute.Int64("seq", 17),
			attribute.Float64("rtt_ms", 10.25),
			attribute.Bool("lost", false),
			attribute.StringSlice("tags", []string{"a", "b"}),
		))
	_, child := tr.Start(ctx, "wait-reply", trace.WithTimestamp(childBeg))
	child.AddEvent("timeout", trace.WithTimestamp(eventAt), trace.WithAttributes(attribute.Int64("after_ms", 5)))
	child.SetStatus(codes.Error, "no reply within 1s")
	child.End(trace.WithTimestamp(childEnd))
	root.SetStatus(codes.Ok, "")
	root.End(trace.WithTimestamp(rootEnd))
	if err := tp.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	return exported{root: root.SpanContext(), child: child.SpanContext()}
}

func check(t *testing.T, r *Receiver, e exported) {
	t.Helper()
	spans, err := r.WaitSpans(2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) != 2 {
		t.Fatalf("got %d spans, want 2", len(spans))
	}
	by := map[string]*Span{}
	for _, s := range spans {
		by[s.Name] = s
	}
	root, child := by["probe"], by["wait-reply"]
	if root == nil || child == nil {
		t.Fatalf("spans %v, want probe and wait-reply", by)
	}

	wantRes := map[string]any{"service.name": "icmplb-test", "host.pid": int64(4242)}
	for _, s := range spans {
		if !reflect.DeepEqual(s.Resource, wantRes) {
			t.Errorf("%s: resource %v, want %v", s.Name, s.Resource, wantRes)
		}
		if s.Scope != "otlptest/test" {
			t.Errorf("%s: scope %q", s.Name, s.Scope)
		}
	}

	if root.TraceID != e.root.TraceID().String() || child.TraceID != root.TraceID {
		t.Errorf("trace ids: root %s child %s, want %s", root.TraceID, child.TraceID, e.root.TraceID())
	}
	if root.SpanID != e.root.SpanID().String() || child.SpanID != e.child.SpanID().String() {
		t.Errorf("span ids: root %s child %s, want %s %s", root.SpanID, child.SpanID, e.root.SpanID(), e.child.SpanID())
	}
	if root.ParentSpanID != "" || child.ParentSpanID != root.SpanID {
		t.Errorf("parents: root %q child %q, want \"\" and %s", root.ParentSpanID, child.ParentSpanID, root.SpanID)
	}

	for _, c := range []struct {
		name      string
		got, want time.Time
	}{
		{"root start", root.Start, t0},
		{"root end", root.End, rootEnd},
		{"child start", child.Start, childBeg},
		{"child end", child.End, childEnd},
	} {
		if c.got.UnixNano() != c.want.UnixNano() {
			t.Errorf("%s: %s, want %s", c.name, c.got.Format(time.RFC3339Nano), c.want.Format(time.RFC3339Nano))
		}
	}
	if d := root.End.Sub(root.Start); d != 12*time.Millisecond+345 {
		t.Errorf("root duration %v", d)
	}

	if root.Kind != trace.SpanKindClient || child.Kind != trace.SpanKindInternal {
		t.Errorf("kinds: root %v child %v, want client, internal", root.Kind, child.Kind)
	}
	if root.StatusCode != codes.Ok || root.StatusMessage != "" {
		t.Errorf("root status %v %q, want Ok", root.StatusCode, root.StatusMessage)
	}
	if child.StatusCode != codes.Error || child.StatusMessage != "no reply within 1s" {
		t.Errorf("child status %v %q, want Error \"no reply within 1s\"", child.StatusCode, child.StatusMessage)
	}

	wantAttrs := map[string]any{
		"backend": "10.0.0.2",
		"seq":     int64(17),
		"rtt_ms":  10.25,
		"lost":    false,
		"tags":    []any{"a", "b"},
	}
	if !reflect.DeepEqual(root.Attrs, wantAttrs) {
		t.Errorf("root attrs %#v, want %#v", root.Attrs, wantAttrs)
	}
	if len(child.Attrs) != 0 {
		t.Errorf("child attrs %v, want none", child.Attrs)
	}
	want := Event{Name: "timeout", Time: eventAt, Attrs: map[string]any{"after_ms": int64(5)}}
	if len(child.Events) != 1 || child.Events[0].Name != want.Name ||
		child.Events[0].Time.UnixNano() != want.Time.UnixNano() || !reflect.DeepEqual(child.Events[0].Attrs, want.Attrs) {
		t.Errorf("child events %+v, want [%+v]", child.Events, want)
	}
}

func TestGRPC(t *testing.T) {
	for _, compressor := range []string{"", "gzip"} {
		t.Run("compression="+compressor, func(t *testing.T) {
			r := NewGRPC(t)
			if strings.Contains(r.Endpoint(), "://") || !strings.HasPrefix(r.Endpoint(), "127.0.0.1:") {
				t.Fatalf("endpoint %q, want 127.0.0.1:PORT", r.Endpoint())
			}
			opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(r.Endpoint()), otlptracegrpc.WithInsecure()}
			if compressor != "" {
				opts = append(opts, otlptracegrpc.WithCompressor(compressor))
			}
			exp, err := otlptracegrpc.New(context.Background(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			check(t, r, export(t, exp))
		})
	}
}

func TestHTTP(t *testing.T) {
	for _, gz := range []bool{false, true} {
		name := "plain"
		if gz {
			name = "gzip"
		}
		t.Run(name, func(t *testing.T) {
			r := NewHTTP(t)
			if !strings.HasPrefix(r.Endpoint(), "http://127.0.0.1:") {
				t.Fatalf("endpoint %q, want http://127.0.0.1:PORT", r.Endpoint())
			}
			opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(r.TracesURL())}
			if gz {
				opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
			}
			exp, err := otlptracehttp.New(context.Background(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			check(t, r, export(t, exp))
		})
	}
}

// The base URL must work the way OTEL_EXPORTER_OTLP_ENDPOINT does: the
// exporter appends /v1/traces itself.
func TestHTTPBaseEndpointFromEnv(t *testing.T) {
	r := NewHTTP(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.Endpoint())
	exp, err := otlptracehttp.New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	check(t, r, export(t, exp))
}

func TestHTTPRejects(t *testing.T) {
	r := NewHTTP(t)
	post := func(path, ctype, enc string, body []byte) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, r.Endpoint()+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", ctype)
		if enc != "" {
			req.Header.Set("Content-Encoding", enc)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for _, c := range []struct {
		name, path, ctype, enc string
		body                   []byte
		want                   int
	}{
		{"json", "/v1/traces", "application/json", "", []byte("{}"), http.StatusUnsupportedMediaType},
		{"garbage", "/v1/traces", "application/x-protobuf", "", []byte{0xff, 0xff, 0xff}, http.StatusBadRequest},
		{"bad gzip", "/v1/traces", "application/x-protobuf", "gzip", []byte("not gzip"), http.StatusBadRequest},
		{"brotli", "/v1/traces", "application/x-protobuf", "br", nil, http.StatusUnsupportedMediaType},
		{"wrong path", "/v1/metrics", "application/x-protobuf", "", nil, http.StatusNotFound},
		{"empty request", "/v1/traces", "application/x-protobuf", "", nil, http.StatusOK},
	} {
		if resp := post(c.path, c.ctype, c.enc, c.body); resp.StatusCode != c.want {
			t.Errorf("%s: status %d, want %d", c.name, resp.StatusCode, c.want)
		}
	}
	resp, err := http.Get(r.TracesURL())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: status %d, want 405", resp.StatusCode)
	}
	if n := len(r.Spans()); n != 0 {
		t.Errorf("%d spans from rejected requests", n)
	}
}

func TestWaitSpansTimeout(t *testing.T) {
	r := NewGRPC(t)
	start := time.Now()
	spans, err := r.WaitSpans(1, 100*time.Millisecond)
	if err == nil || len(spans) != 0 {
		t.Fatalf("WaitSpans on an idle receiver: %d spans, err %v", len(spans), err)
	}
	// Only the lower end is exact; the upper one just tells a wait that
	// ended from one that hung, however busy the machine.
	if d := time.Since(start); d < 100*time.Millisecond || d > 20*time.Second {
		t.Errorf("timed out after %v, want 100ms or a little more", d)
	}
}

// Spans hands out copies: a test editing them must not change what the
// next caller sees.
func TestSpansAreCopies(t *testing.T) {
	r := NewGRPC(t)
	exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(r.Endpoint()), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	export(t, exp)
	a := r.Spans()
	a[0].Name = "changed"
	a[0].Attrs["x"] = 1
	a[0].Resource["x"] = 1
	for _, s := range r.Spans() {
		if s.Name == "changed" || s.Attrs["x"] != nil || s.Resource["x"] != nil {
			t.Fatalf("Spans returned shared state: %+v", s)
		}
	}
}
