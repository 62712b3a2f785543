// SPDX-License-Identifier: MIT

package exporter

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	reloadOK      = "icmplb_config_last_reload_successful"
	reloadOKTime  = "icmplb_config_last_reload_success_timestamp_seconds"
	reloadsTotal  = "icmplb_config_reloads_total"
	resultSuccess = "result=success"
	resultFailure = "result=failure"
)

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// nowSeconds is time.Now as Gauge.SetToCurrentTime writes it, so that the
// comparisons below are not off by a float rounding.
func nowSeconds() float64 { return float64(time.Now().UnixNano()) / 1e9 }

type reloadState struct {
	ok               float64
	success, failure float64
	successTimestamp float64
}

func readReloader(t *testing.T, r *Reloader) reloadState {
	t.Helper()
	mfs := gather(t, r)
	return reloadState{
		ok:               value(t, mfs, reloadOK, ""),
		success:          value(t, mfs, reloadsTotal, resultSuccess),
		failure:          value(t, mfs, reloadsTotal, resultFailure),
		successTimestamp: value(t, mfs, reloadOKTime, ""),
	}
}

// The configuration the agent started with is the first successful load:
// alerts on icmplb_config_last_reload_successful == 0 must not fire at
// startup, and both results are exported at 0 so that increase() sees the
// first failure.
func TestReloaderStartsSuccessful(t *testing.T) {
	before := nowSeconds()
	r := NewReloader(func() error { return nil }, quietLog())
	after := nowSeconds()
	s := readReloader(t, r)
	if s.ok != 1 {
		t.Errorf("%s = %v at startup, want 1", reloadOK, s.ok)
	}
	if s.successTimestamp < before || s.successTimestamp > after {
		t.Errorf("%s = %v at startup, want within [%v, %v]", reloadOKTime, s.successTimestamp, before, after)
	}
	if s.success != 0 || s.failure != 0 {
		t.Errorf("%s success %v failure %v at startup, want both exported at 0", reloadsTotal, s.success, s.failure)
	}
}

// A refused reload leaves the running configuration, so the success
// timestamp stays that of the configuration that runs; a later success
// moves it on.
func TestReloaderOutcomes(t *testing.T) {
	var fail atomic.Bool
	refusal := errors.New("services[0].backends[1]: weight 1001")
	r := NewReloader(func() error {
		if fail.Load() {
			return refusal
		}
		return nil
	}, quietLog())
	start := readReloader(t, r)

	steps := []struct {
		name        string
		fail        bool
		wantOK      float64
		wantSuccess float64
		wantFailure float64
		// newTime: the success timestamp moves to now; else it stays.
		newTime bool
	}{
		{name: "refused", fail: true, wantOK: 0, wantSuccess: 0, wantFailure: 1},
		{name: "refused again", fail: true, wantOK: 0, wantSuccess: 0, wantFailure: 2},
		{name: "applied", fail: false, wantOK: 1, wantSuccess: 1, wantFailure: 2, newTime: true},
		{name: "applied again", fail: false, wantOK: 1, wantSuccess: 2, wantFailure: 2, newTime: true},
		{name: "refused after success", fail: true, wantOK: 0, wantSuccess: 2, wantFailure: 3},
	}
	last := start.successTimestamp
	for _, st := range steps {
		// Gauge timestamps have sub-microsecond resolution: a few
		// milliseconds apart, a new one is strictly greater.
		time.Sleep(5 * time.Millisecond)
		fail.Store(st.fail)
		before := nowSeconds()
		err := r.Reload("test")
		if st.fail && !errors.Is(err, refusal) {
			t.Errorf("%s: Reload = %v, want the reload function's error", st.name, err)
		}
		if !st.fail && err != nil {
			t.Errorf("%s: Reload = %v, want nil", st.name, err)
		}
		s := readReloader(t, r)
		if s.ok != st.wantOK || s.success != st.wantSuccess || s.failure != st.wantFailure {
			t.Errorf("%s: successful %v, reloads success %v failure %v; want %v, %v, %v",
				st.name, s.ok, s.success, s.failure, st.wantOK, st.wantSuccess, st.wantFailure)
		}
		switch {
		case st.newTime && (s.successTimestamp < before || s.successTimestamp <= last):
			t.Errorf("%s: success timestamp %v, want a new one ≥ %v and > %v", st.name, s.successTimestamp, before, last)
		case !st.newTime && s.successTimestamp != last:
			t.Errorf("%s: success timestamp %v, want it kept at %v", st.name, s.successTimestamp, last)
		}
		last = s.successTimestamp
	}
}

// SIGHUP and POST /-/reload may come together: two reloads running at once
// would interleave their changes to the maps.
func TestReloaderSerializes(t *testing.T) {
	var running, overlaps, calls atomic.Int64
	r := NewReloader(func() error {
		if running.Add(1) > 1 {
			overlaps.Add(1)
		}
		defer running.Add(-1)
		calls.Add(1)
		// Long enough for the other goroutines to arrive while this one
		// runs, were nothing to stop them.
		time.Sleep(time.Millisecond)
		return nil
	}, quietLog())

	const goroutines, each = 8, 5
	var wg sync.WaitGroup
	for g := range goroutines {
		trigger := "signal"
		if g%2 == 0 {
			trigger = "http"
		}
		wg.Go(func() {
			for range each {
				if err := r.Reload(trigger); err != nil {
					t.Errorf("Reload: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if n := overlaps.Load(); n != 0 {
		t.Errorf("the reload function ran concurrently %d times", n)
	}
	if n := calls.Load(); n != goroutines*each {
		t.Errorf("the reload function ran %d times, want %d", n, goroutines*each)
	}
	if s := readReloader(t, r); s.success != goroutines*each {
		t.Errorf("%s{%s} = %v, want %d", reloadsTotal, resultSuccess, s.success, goroutines*each)
	}
}

func TestReloaderServeHTTP(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		wantCode int
		wantBody string
	}{
		{name: "applied", wantCode: http.StatusOK, wantBody: "reloaded\n"},
		{name: "refused", err: errors.New("services.yml line 7: weight must be 0..1000"), wantCode: http.StatusInternalServerError,
			wantBody: "services.yml line 7: weight must be 0..1000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReloader(func() error { return tc.err }, quietLog())
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/-/reload", nil))
			body := rec.Body.String()
			if rec.Code != tc.wantCode {
				t.Errorf("code %d, want %d (body %q)", rec.Code, tc.wantCode, body)
			}
			if tc.err == nil && body != tc.wantBody {
				t.Errorf("body %q, want %q", body, tc.wantBody)
			}
			if tc.err != nil && !strings.Contains(body, tc.wantBody) {
				t.Errorf("body %q does not give the reason %q", body, tc.wantBody)
			}
			s := readReloader(t, r)
			if wantOK := map[bool]float64{true: 1, false: 0}[tc.err == nil]; s.ok != wantOK {
				t.Errorf("%s = %v, want %v", reloadOK, s.ok, wantOK)
			}
		})
	}
}

// The reload endpoint changes state: only POST reaches it, so that a
// crawler or a browser's prefetch does not reload; without an agent (the
// exporter alone) neither API route exists.
func TestHandlerAgentRoutes(t *testing.T) {
	var reloads atomic.Int64
	r := NewReloader(func() error { reloads.Add(1); return nil }, quietLog())
	src := &fakeSource{snap: snapshotWith(nil)}

	type request struct {
		method, path string
		wantCode     int
	}
	for _, tc := range []struct {
		name        string
		agent       *Agent
		requests    []request
		wantReloads int64
	}{
		{name: "no agent", agent: nil, requests: []request{
			{http.MethodPost, "/-/reload", http.StatusNotFound},
			{http.MethodGet, "/-/reload", http.StatusNotFound},
			{http.MethodGet, StatusPath, http.StatusNotFound},
		}},
		{name: "empty agent", agent: &Agent{}, requests: []request{
			{http.MethodPost, "/-/reload", http.StatusNotFound},
			{http.MethodGet, StatusPath, http.StatusNotFound},
		}},
		{name: "reloader only", agent: &Agent{Reloader: r}, wantReloads: 1, requests: []request{
			{http.MethodGet, "/-/reload", http.StatusMethodNotAllowed},
			{http.MethodPut, "/-/reload", http.StatusMethodNotAllowed},
			{http.MethodPost, "/-/reload", http.StatusOK},
			{http.MethodGet, StatusPath, http.StatusNotFound},
		}},
		{name: "source and reloader", agent: &Agent{Source: src, Reloader: r}, wantReloads: 1, requests: []request{
			{http.MethodPost, "/-/reload", http.StatusOK},
			{http.MethodGet, StatusPath, http.StatusOK},
			{http.MethodPost, StatusPath, http.StatusMethodNotAllowed},
			{http.MethodGet, "/healthz", http.StatusOK},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reloads.Store(0)
			h := Handler(prometheus.NewRegistry(), &atomic.Bool{}, "test", tc.agent)
			for _, req := range tc.requests {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(req.method, req.path, nil))
				if rec.Code != req.wantCode {
					body, _ := io.ReadAll(rec.Body)
					t.Errorf("%s %s: %d, want %d (body %q)", req.method, req.path, rec.Code, req.wantCode, body)
				}
			}
			if n := reloads.Load(); n != tc.wantReloads {
				t.Errorf("%d reloads ran, want %d", n, tc.wantReloads)
			}
		})
	}
}
