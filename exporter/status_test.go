// SPDX-License-Identifier: MIT

package exporter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/icmplb/icmplb/exporter/telemetry"
)

var (
	statusVIP2    = netip.MustParseAddr("10.0.1.100")
	statusSNAT2   = netip.MustParseAddr("10.0.1.1")
	statusGoneVIP = netip.MustParseAddr("10.0.9.100")
	statusBE3     = netip.MustParseAddr("10.0.0.4")
)

// rttWith is newRTT with counts at the given bucket positions.
func rttWith(counts map[int]uint64) telemetry.Histogram {
	h := newRTT()
	for k, n := range counts {
		h.Buckets[k] = n
	}
	return h
}

// statusRTT is the StatusHistogram of newRTT's layout with these buckets.
func statusRTT(buckets ...uint64) StatusHistogram {
	h := newRTT()
	if buckets == nil {
		buckets = []uint64{}
	}
	return StatusHistogram{Schema: h.Schema, Offset: h.Offset, Buckets: buckets}
}

func TestNewStatus(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	snap := &telemetry.Snapshot{
		Services: []telemetry.Service{
			{VIP: testVIP, SNAT: testVIP},
			{VIP: statusVIP2, SNAT: statusSNAT2},
		},
		// Interleaved across services: the document groups them, keeping
		// the snapshot's order within each service.
		Backends: []telemetry.Backend{
			{VIP: statusVIP2, Addr: testBE1, Up: true, Weight: 0, Sessions: 3, Requests: 30, Replies: 28, Lost: 2,
				RTT: rttWith(map[int]uint64{0: 1, 3: 2})},
			{VIP: testVIP, Addr: testBE2, Up: false, Weight: 5, Sessions: 1, Requests: 10, Replies: 0, Lost: 10,
				RTT: newRTT()},
			// A removed service's backend, still draining its sessions.
			{VIP: statusGoneVIP, Addr: statusBE3, Up: true, Weight: 0, Removed: true, Sessions: 7, Requests: 70, Replies: 70,
				RTT: rttWith(map[int]uint64{100: 70})},
			{VIP: testVIP, Addr: testBE1, Up: true, Weight: 100, Sessions: 2, Requests: 20, Replies: 19, Lost: 1,
				RTT: rttWith(map[int]uint64{255: 1})},
			// Removed wins over a weight and a resolved next hop.
			{VIP: testVIP, Addr: statusBE3, Up: true, Weight: 3, Removed: true, Requests: 1, Replies: 1,
				RTT: rttWith(map[int]uint64{1: 1})},
			// Draining wins over unresolved.
			{VIP: statusVIP2, Addr: testBE2, Up: false, Weight: 0, RTT: newRTT()},
		},
	}

	want := &Status{Time: now, Services: []StatusService{
		{VIP: testVIP, SNAT: testVIP, Backends: []StatusBackend{
			{Address: testBE2, Weight: 5, State: StateUnresolved, Sessions: 1, Requests: 10, Lost: 10, RTT: statusRTT()},
			{Address: testBE1, Weight: 100, State: StateUp, Sessions: 2, Requests: 20, Replies: 19, Lost: 1,
				RTT: statusRTT(rttWith(map[int]uint64{255: 1}).Buckets...)},
			{Address: statusBE3, Weight: 3, State: StateDraining, Requests: 1, Replies: 1, RTT: statusRTT(0, 1)},
		}},
		{VIP: statusVIP2, SNAT: statusSNAT2, Backends: []StatusBackend{
			{Address: testBE1, Weight: 0, State: StateDraining, Sessions: 3, Requests: 30, Replies: 28, Lost: 2,
				RTT: statusRTT(1, 0, 0, 2)},
			{Address: testBE2, Weight: 0, State: StateDraining, RTT: statusRTT()},
		}},
		{VIP: statusGoneVIP, Backends: []StatusBackend{
			{Address: statusBE3, Weight: 0, State: StateDraining, Sessions: 7, Requests: 70, Replies: 70,
				RTT: statusRTT(rttWith(map[int]uint64{100: 70}).Buckets[:101]...)},
		}},
	}}
	got := NewStatus(snap, now)
	if !reflect.DeepEqual(got, want) {
		gotJSON, _ := json.MarshalIndent(got, "", " ")
		wantJSON, _ := json.MarshalIndent(want, "", " ")
		t.Errorf("NewStatus:\n%s\nwant\n%s", gotJSON, wantJSON)
	}
}

func TestNewStatusEmpty(t *testing.T) {
	got := NewStatus(&telemetry.Snapshot{}, time.Unix(0, 0))
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	// A list, not null: scripts iterate over it.
	if !strings.Contains(string(b), `"services":[]`) {
		t.Errorf("empty snapshot gives %s, want an empty list of services", b)
	}
}

func TestStatusHandler(t *testing.T) {
	snap := snapshotWith(map[netip.Addr][]time.Duration{testBE1: {time.Millisecond, 3 * time.Millisecond}})
	for _, tc := range []struct {
		name     string
		src      *fakeSource
		wantCode int
		wantBody string // for errors
	}{
		{name: "not attached", src: &fakeSource{}, wantCode: http.StatusServiceUnavailable, wantBody: "not ready"},
		{name: "read error", src: &fakeSource{err: errors.New("map lookup: EPERM")}, wantCode: http.StatusInternalServerError,
			wantBody: "map lookup: EPERM"},
		{name: "document", src: &fakeSource{snap: snap}, wantCode: http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now()
			rec := httptest.NewRecorder()
			statusHandler(tc.src).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, StatusPath, nil))
			after := time.Now()
			if rec.Code != tc.wantCode {
				t.Fatalf("code %d, want %d (body %q)", rec.Code, tc.wantCode, rec.Body)
			}
			if tc.wantCode != http.StatusOK {
				if !strings.Contains(rec.Body.String(), tc.wantBody) {
					t.Errorf("body %q, want it to contain %q", rec.Body, tc.wantBody)
				}
				return
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			dec := json.NewDecoder(rec.Body)
			dec.DisallowUnknownFields()
			var got Status
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if got.Time.Before(before) || got.Time.After(after) {
				t.Errorf("time %v, want within [%v, %v]", got.Time, before, after)
			}
			want := NewStatus(tc.src.snap, got.Time)
			if !reflect.DeepEqual(got.Services, want.Services) {
				t.Errorf("decoded services\n%+v\nwant\n%+v", got.Services, want.Services)
			}
		})
	}
}

// StatusPath goes through Handler with the agent's source, GET only.
func TestHandlerServesStatus(t *testing.T) {
	src := &fakeSource{snap: snapshotWith(nil)}
	srv := httptest.NewServer(Handler(prometheus.NewRegistry(), &atomic.Bool{}, "test", &Agent{Source: src}))
	t.Cleanup(srv.Close)
	code, ct, body := get(t, srv.URL+StatusPath, "")
	if code != http.StatusOK || ct != "application/json" {
		t.Fatalf("GET %s: %d %q", StatusPath, code, ct)
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Services) != 1 || st.Services[0].VIP != testVIP || len(st.Services[0].Backends) != 2 {
		t.Errorf("document %s, want %s with two backends", body, testVIP)
	}
}

// windowDoc is a status document at t with one backend per (VIP, address)
// as given, in that order.
type windowBE struct {
	vip, addr               netip.Addr
	requests, replies, lost uint64
	rtt                     map[int]uint64
}

func windowDoc(at time.Time, bes ...windowBE) *Status {
	st := &Status{Time: at, Services: []StatusService{}}
	pos := map[netip.Addr]int{}
	for _, b := range bes {
		j, ok := pos[b.vip]
		if !ok {
			j = len(st.Services)
			pos[b.vip] = j
			st.Services = append(st.Services, StatusService{VIP: b.vip, SNAT: b.vip})
		}
		h := rttWith(b.rtt)
		last := 0
		for k, n := range h.Buckets {
			if n > 0 {
				last = k + 1
			}
		}
		st.Services[j].Backends = append(st.Services[j].Backends, StatusBackend{
			Address: b.addr, Weight: 100, State: StateUp, Sessions: 4,
			Requests: b.requests, Replies: b.replies, Lost: b.lost,
			RTT: StatusHistogram{Schema: h.Schema, Offset: h.Offset, Buckets: h.Buckets[:last]},
		})
	}
	return st
}

// ub is the upper bound of bucket k in newRTT's layout.
func ub(k int) *float64 {
	h := newRTT()
	v := h.UpperBound(k)
	return &v
}

func ratioOf(lost, settled uint64) *float64 {
	v := float64(lost) / float64(settled)
	return &v
}

func fmtPtr(p *float64) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprintf("%g", *p)
}

func samePtr(a, b *float64) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

func TestWindow(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	t2 := t0.Add(2 * time.Second)

	type want struct {
		vip, addr netip.Addr
		rate      float64
		loss      *float64
		p50, p99  *float64
	}
	for _, tc := range []struct {
		name      string
		prev, cur *Status
		want      []want
	}{
		{
			name: "deltas over the window",
			// The backend's history sits in bucket 90; the window's replies
			// are elsewhere: quantiles must come from the deltas alone.
			prev: windowDoc(t0, windowBE{testVIP, testBE1, 1000, 900, 100, map[int]uint64{90: 900}}),
			cur: windowDoc(t2, windowBE{testVIP, testBE1, 1200, 1090, 110,
				map[int]uint64{90: 900, 100: 95, 110: 90, 130: 5}}),
			want: []want{{testVIP, testBE1, 100, ratioOf(10, 200), ub(100), ub(130)}},
		},
		{
			name: "no traffic in the window",
			prev: windowDoc(t0, windowBE{testVIP, testBE1, 50, 45, 5, map[int]uint64{100: 45}}),
			cur:  windowDoc(t2, windowBE{testVIP, testBE1, 50, 45, 5, map[int]uint64{100: 45}}),
			want: []want{{testVIP, testBE1, 0, nil, nil, nil}},
		},
		{
			name: "requests not yet settled",
			prev: windowDoc(t0, windowBE{testVIP, testBE1, 50, 45, 5, map[int]uint64{100: 45}}),
			cur:  windowDoc(t2, windowBE{testVIP, testBE1, 60, 45, 5, map[int]uint64{100: 45}}),
			want: []want{{testVIP, testBE1, 5, nil, nil, nil}},
		},
		{
			name: "all lost",
			prev: windowDoc(t0, windowBE{testVIP, testBE1, 0, 0, 0, nil}),
			cur:  windowDoc(t2, windowBE{testVIP, testBE1, 8, 0, 8, nil}),
			want: []want{{testVIP, testBE1, 4, ratioOf(8, 8), nil, nil}},
		},
		{
			name: "new backend measured from zero",
			prev: windowDoc(t0, windowBE{testVIP, testBE1, 10, 10, 0, map[int]uint64{100: 10}}),
			cur: windowDoc(t2,
				windowBE{testVIP, testBE1, 10, 10, 0, map[int]uint64{100: 10}},
				windowBE{testVIP, testBE2, 40, 30, 10, map[int]uint64{120: 30}}),
			want: []want{
				{testVIP, testBE1, 0, nil, nil, nil},
				{testVIP, testBE2, 20, ratioOf(10, 40), ub(120), ub(120)},
			},
		},
		{
			// The agent restarted between the two documents: its counters
			// start over, lower than before.
			name: "restarted counters measured from zero",
			prev: windowDoc(t0, windowBE{testVIP, testBE1, 5000, 4900, 100, map[int]uint64{100: 4900}}),
			cur:  windowDoc(t2, windowBE{testVIP, testBE1, 40, 30, 2, map[int]uint64{100: 10, 120: 20}}),
			want: []want{{testVIP, testBE1, 20, ratioOf(2, 32), ub(120), ub(120)}},
		},
		{
			// One address behind two VIPs is two backends; rows follow cur,
			// whatever prev's order.
			name: "rows follow cur, keyed by VIP and address",
			prev: windowDoc(t0,
				windowBE{testVIP, testBE1, 100, 100, 0, nil},
				windowBE{statusVIP2, testBE2, 0, 0, 0, nil},
				windowBE{statusVIP2, testBE1, 10, 10, 0, nil}),
			cur: windowDoc(t2,
				windowBE{statusVIP2, testBE1, 30, 30, 0, nil},
				windowBE{statusVIP2, testBE2, 2, 2, 0, nil},
				windowBE{testVIP, testBE1, 300, 300, 0, nil}),
			want: []want{
				{statusVIP2, testBE1, 10, ratioOf(0, 20), nil, nil},
				{statusVIP2, testBE2, 1, ratioOf(0, 2), nil, nil},
				{testVIP, testBE1, 100, ratioOf(0, 200), nil, nil},
			},
		},
		{
			// A removed backend is gone from cur: no row.
			name: "backend gone from cur",
			prev: windowDoc(t0, windowBE{testVIP, testBE1, 1, 1, 0, nil}, windowBE{testVIP, testBE2, 1, 1, 0, nil}),
			cur:  windowDoc(t2, windowBE{testVIP, testBE2, 3, 3, 0, nil}),
			want: []want{{testVIP, testBE2, 1, ratioOf(0, 2), nil, nil}},
		},
		{
			// Two documents of one instant: no rate rather than Inf or NaN.
			name: "zero-length window",
			prev: windowDoc(t0, windowBE{testVIP, testBE1, 1, 1, 0, nil}),
			cur:  windowDoc(t0, windowBE{testVIP, testBE1, 3, 3, 0, nil}),
			want: []want{{testVIP, testBE1, 0, ratioOf(0, 2), nil, nil}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows := Window(tc.prev, tc.cur)
			if len(rows) != len(tc.want) {
				t.Fatalf("%d rows, want %d: %+v", len(rows), len(tc.want), rows)
			}
			for i, w := range tc.want {
				r := rows[i]
				if r.VIP != w.vip || r.Backend != w.addr {
					t.Errorf("row %d is %s/%s, want %s/%s", i, r.VIP, r.Backend, w.vip, w.addr)
					continue
				}
				if r.RequestsPerSecond != w.rate {
					t.Errorf("%s/%s: %v req/s, want %v", r.VIP, r.Backend, r.RequestsPerSecond, w.rate)
				}
				if !samePtr(r.LossRatio, w.loss) {
					t.Errorf("%s/%s: loss %s, want %s", r.VIP, r.Backend, fmtPtr(r.LossRatio), fmtPtr(w.loss))
				}
				if !samePtr(r.P50, w.p50) || !samePtr(r.P99, w.p99) {
					t.Errorf("%s/%s: p50 %s p99 %s, want %s and %s", r.VIP, r.Backend,
						fmtPtr(r.P50), fmtPtr(r.P99), fmtPtr(w.p50), fmtPtr(w.p99))
				}
				if r.Weight != 100 || r.State != StateUp || r.Sessions != 4 {
					t.Errorf("%s/%s: weight %d state %q sessions %d, want cur's 100 up 4", r.VIP, r.Backend, r.Weight, r.State, r.Sessions)
				}
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		buckets map[int]uint64
		q       float64
		want    *float64
	}{
		{name: "empty", q: 0.5, want: nil},
		{name: "all in the zero bucket p50", buckets: map[int]uint64{0: 5}, q: 0.5, want: ub(0)},
		{name: "all in the zero bucket p99", buckets: map[int]uint64{0: 5}, q: 0.99, want: ub(0)},
		{name: "one sample", buckets: map[int]uint64{140: 1}, q: 0.5, want: ub(140)},
		// The 99th of 100 samples is a low one: one slow reply in a
		// hundred is the 100th percentile, not the 99th.
		{name: "p99 of 100, one high", buckets: map[int]uint64{100: 99, 200: 1}, q: 0.99, want: ub(100)},
		{name: "p100 of 100, one high", buckets: map[int]uint64{100: 99, 200: 1}, q: 1, want: ub(200)},
		{name: "p99 of 100, two high", buckets: map[int]uint64{100: 98, 200: 2}, q: 0.99, want: ub(200)},
		{name: "p99 of 1000, ten high", buckets: map[int]uint64{100: 990, 200: 10}, q: 0.99, want: ub(100)},
		{name: "p50 on a boundary", buckets: map[int]uint64{100: 50, 110: 50}, q: 0.5, want: ub(100)},
		{name: "p50 past a boundary", buckets: map[int]uint64{100: 49, 110: 51}, q: 0.5, want: ub(110)},
		// q = 0 is the lowest sample's bucket, not an empty bucket below.
		{name: "p0", buckets: map[int]uint64{120: 3, 130: 1}, q: 0, want: ub(120)},
		{name: "last bucket", buckets: map[int]uint64{255: 4}, q: 0.99, want: ub(255)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := rttWith(tc.buckets)
			if got := quantile(&h, tc.q); !samePtr(got, tc.want) {
				t.Errorf("quantile(%v) = %s, want %s", tc.q, fmtPtr(got), fmtPtr(tc.want))
			}
		})
	}
	t.Run("no buckets", func(t *testing.T) {
		if got := quantile(&telemetry.Histogram{Schema: 3}, 0.5); got != nil {
			t.Errorf("quantile of a histogram without buckets = %v, want nil", *got)
		}
	})
}

var fieldRE = regexp.MustCompile(`\S+`)

func TestWriteTable(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	rows := []StatusRow{
		{VIP: testVIP, Backend: testBE1, Weight: 100, State: StateUp, Sessions: 12345, RequestsPerSecond: 1234.56,
			LossRatio: f(0.05), ErrorsPerSecond: 2.25, P50: f(0.125), P99: f(1.5)},
		{VIP: testVIP, Backend: testBE2, Weight: 0, State: StateDraining},
		{VIP: statusVIP2, Backend: statusBE3, Weight: 7, State: StateUnresolved, Sessions: 1, RequestsPerSecond: 0.5,
			LossRatio: f(0), P50: f(0.0005), P99: f(0.0078125)},
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 1+len(rows) {
		t.Fatalf("%d lines, want a header and %d rows:\n%s", len(lines), len(rows), buf.String())
	}
	header := []string{"VIP", "BACKEND", "WEIGHT", "STATE", "SESSIONS", "REQ/S", "LOSS", "ERR/S", "P50", "P99"}
	if got := strings.Fields(lines[0]); !reflect.DeepEqual(got, header) {
		t.Errorf("header %q, want %q", got, header)
	}
	want := [][]string{
		{"10.0.0.100", "10.0.0.2", "100", "up", "12345", "1234.6", "5.0%", "2.2", "125ms", "1.50s"},
		{"10.0.0.100", "10.0.0.3", "0", "draining", "0", "0.0", "-", "0.0", "-", "-"},
		{"10.0.1.100", "10.0.0.4", "7", "unresolved", "1", "0.5", "0.0%", "0.0", "500µs", "7.81ms"},
	}
	for i, w := range want {
		if got := strings.Fields(lines[i+1]); !reflect.DeepEqual(got, w) {
			t.Errorf("row %d: %q, want %q", i, got, w)
		}
	}
	// Right-aligned columns: every field of a column ends at the same
	// column of the terminal (in runes: µ is two bytes, one cell).
	ends := func(line string) []int {
		var e []int
		for _, m := range fieldRE.FindAllStringIndex(line, -1) {
			e = append(e, utf8.RuneCountInString(line[:m[1]]))
		}
		return e
	}
	hdr := ends(lines[0])
	for i, l := range lines[1:] {
		if got := ends(l); !reflect.DeepEqual(got, hdr) {
			t.Errorf("row %d not aligned with the header:\n%s\n%s", i, lines[0], l)
		}
	}
}

func TestWriteTableNoRows(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteTable(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(buf.String()); len(got) != 10 || got[0] != "VIP" {
		t.Errorf("no rows gives %q, want the header alone", buf.String())
	}
}

// The table's durations keep their unit whatever the value: schema 3 has
// bucket bounds of exactly 125, 250 and 500 ms.
func TestTableDurations(t *testing.T) {
	for _, tc := range []struct {
		secs float64
		want string
	}{
		{0.000001, "1µs"},
		{0.0005, "500µs"},
		{0.0009765625, "976µs"},
		{0.001, "1ms"},
		{0.0078125, "7.81ms"},
		{0.0105, "10.50ms"},
		{0.125, "125ms"},
		{0.25, "250ms"},
		{0.5, "500ms"},
		{0.99999, "999.99ms"},
		{1, "1.00s"},
		{2.5, "2.50s"},
	} {
		v := tc.secs
		if got := seconds(&v); got != tc.want {
			t.Errorf("seconds(%v) = %q, want %q", tc.secs, got, tc.want)
		}
	}
	if got := seconds(nil); got != "-" {
		t.Errorf("seconds(nil) = %q, want -", got)
	}
}

// Errors are a rate of their own over the window, all types together, and
// leave the loss ratio alone: an error is neither a reply nor a loss.
func TestWindowErrors(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	prev := windowDoc(t0, windowBE{testVIP, testBE1, 100, 90, 0, nil})
	prev.Services[0].Backends[0].Errors = map[string]uint64{telemetry.ErrorUnreachable: 10}
	cur := windowDoc(t0.Add(4*time.Second), windowBE{testVIP, testBE1, 140, 110, 2, nil})
	cur.Services[0].Backends[0].Errors = map[string]uint64{telemetry.ErrorUnreachable: 22, telemetry.ErrorTimeExceeded: 6}
	rows := Window(prev, cur)
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1", len(rows))
	}
	if r := rows[0]; r.ErrorsPerSecond != 4.5 || r.LossRatio == nil || *r.LossRatio != 2.0/22 {
		t.Errorf("errors %v/s, loss %v; want 4.5/s ((12+6)/4s) and 2/22", r.ErrorsPerSecond, r.LossRatio)
	}
}
