// SPDX-License-Identifier: MIT

package exporter

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/icmplb/icmplb/internal/testenv"
)

func testServer(t *testing.T) (*httptest.Server, *atomic.Bool) {
	t.Helper()
	snap := snapshotWith(map[netip.Addr][]time.Duration{testBE1: {time.Millisecond, 2 * time.Millisecond}})
	reg, err := NewRegistry(NewCollector(&fakeSource{snap: snap}, nil, "v0.1.0"))
	if err != nil {
		t.Fatal(err)
	}
	ready := &atomic.Bool{}
	srv := httptest.NewServer(Handler(reg, ready, "v0.1.0", nil))
	t.Cleanup(srv.Close)
	return srv, ready
}

func get(t *testing.T, url, accept string) (int, string, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), body
}

func TestHealthAndReadiness(t *testing.T) {
	srv, ready := testServer(t)
	if code, _, _ := get(t, srv.URL+"/healthz", ""); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, _, body := get(t, srv.URL+"/readyz", ""); code != 503 || !strings.Contains(string(body), "not attached") {
		t.Errorf("/readyz before attach: %d %q", code, body)
	}
	ready.Store(true)
	if code, _, _ := get(t, srv.URL+"/readyz", ""); code != 200 {
		t.Errorf("/readyz after attach: %d", code)
	}
	if code, ct, body := get(t, srv.URL+"/", ""); code != 200 || !strings.HasPrefix(ct, "text/html") || !strings.Contains(string(body), `href="/metrics"`) || !strings.Contains(string(body), `href="/readyz"`) {
		t.Errorf("landing page %d %s %q", code, ct, body)
	}
	if code, _, _ := get(t, srv.URL+"/nope", ""); code != 404 {
		t.Errorf("/nope %d", code)
	}
}

func TestMetricsNegotiation(t *testing.T) {
	srv, _ := testServer(t)
	for _, tc := range []struct{ accept, wantType, wantBody string }{
		{"", "text/plain", "icmplb_backend_rtt_seconds_bucket"},
		{"application/openmetrics-text; version=1.0.0", "application/openmetrics-text", "# EOF"},
		{"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
			"application/vnd.google.protobuf", "icmplb_backend_rtt_seconds"},
	} {
		code, ct, body := get(t, srv.URL+"/metrics", tc.accept)
		if code != 200 || !strings.HasPrefix(ct, tc.wantType) || !bytes.Contains(body, []byte(tc.wantBody)) {
			t.Errorf("Accept %q: %d %s, body has %q: %v", tc.accept, code, ct, tc.wantBody, bytes.Contains(body, []byte(tc.wantBody)))
		}
	}
	// The protobuf form carries the native buckets the text form cannot.
	_, _, body := get(t, srv.URL+"/metrics", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	dec := expfmt.NewDecoder(bytes.NewReader(body), expfmt.NewFormat(expfmt.TypeProtoDelim))
	native := false
	for {
		mf := new(dto.MetricFamily)
		if err := dec.Decode(mf); err != nil {
			break
		}
		if mf.GetName() == "icmplb_backend_rtt_seconds" {
			for _, m := range mf.GetMetric() {
				native = native || len(m.GetHistogram().GetPositiveSpan()) > 0
			}
		}
	}
	if !native {
		t.Error("protobuf scrape has no native RTT buckets")
	}
}

// TestPromtoolCheckMetrics runs Prometheus's own linter on a scrape.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := testenv.Tool(t, "promtool", "prometheus")
	srv, _ := testServer(t)
	_, _, body := get(t, srv.URL+"/metrics", "")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

var _ prometheus.Collector = (*Collector)(nil)
